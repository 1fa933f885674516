"""fednode.zk.devsetup: a Groth16 set-up from an r1cs without a ceremony.

The strong check: given the same secrets (gamma = delta = 1, as ``snarkjs groth16 setup`` leaves them),
our zkey's sections 1-9 are snarkjs's bytes and our vk.json is its ``zkey export verificationkey``.
Then keys from fresh secrets prove in snarkjs and verify in snarkjs and in ``update_proof.verify``."""

from __future__ import annotations

import ctypes
import json
import secrets
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fednode.workflows import zkprove as zp
from fednode.zk import binfile, devsetup, devtau, mcl
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import P, R, ZkError

N, K = 8, 16
SECRETS = (0x1234567890ABCDEF << 100 | 77, 31337 << 200 | 5, 0xC0FFEE << 180 | 9)  # tau, alpha, beta


def _sections(data: bytes) -> dict[int, bytes]:
    secs = binfile.sections(data, b"zkey", "zkey under test")
    assert sum(size + 12 for _, size in secs.values()) + 12 == len(data)  # nothing after the last section
    return {kind: data[off:off + size] for kind, (off, size) in secs.items()}


def _snarkjs(tools: zp.Tools, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.node, tools.snarkjs, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def circuit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """update_bound.circom compiled at n = 8 as ``zkprove.setup`` compiles it (r1cs kept)."""
    tools = zp.find_tools()
    work = tmp_path_factory.mktemp("devsetup")
    shutil.copy(zp.CIRCUIT, work / zp.CIRCUIT.name)
    sb = zp.bound_bits(N, K)
    main = f"component main {{public [hash, bound2, v, blind]}} = UpdateBound({N}, {K}, {sb});\n"
    (work / "update.circom").write_text(f'pragma circom 2.1.0;\ninclude "{zp.CIRCUIT.name}";\n{main}')
    zp._run([tools.node, tools.circom2, "update.circom", "--O2", "--r1cs", "--wasm", "-o", "."], work, "circom2")
    return work


def test_equals_snarkjs_groth16_setup_for_the_same_secrets(circuit: Path, tmp_path: Path) -> None:
    tools = zp.find_tools()
    r1cs = devsetup.read_r1cs(circuit / "update.r1cs")
    power = devsetup.domain_power(r1cs)
    assert r1cs.n_public == N + 4 and r1cs.n_constraints == zp.constraints(N, K)
    # a ptau one power larger: snarkjs's H points then come from the exact 2^(p+1) Lagrange basis
    devtau.write_ptau(tmp_path / "p.ptau", power + 1, _secrets=SECRETS)
    done = _snarkjs(tools, "groth16", "setup", str(circuit / "update.r1cs"), "p.ptau", "theirs.zkey", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    done = _snarkjs(tools, "zkey", "export", "verificationkey", "theirs.zkey", "theirs.json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    times = devsetup.groth16_setup(circuit / "update.r1cs", tmp_path / "ours.zkey", tmp_path / "ours.json",
                                   _secrets=(*SECRETS, 1, 1))
    assert set(times) >= {"read_s", "field_s", "g1_s", "g2_s", "total_s"}
    theirs, ours = _sections((tmp_path / "theirs.zkey").read_bytes()), _sections((tmp_path / "ours.zkey").read_bytes())
    assert sorted(ours) == sorted(theirs) == list(range(1, 11))
    for kind in range(1, 10):
        assert ours[kind] == theirs[kind], f"section {kind}"
    assert ours[10] == bytes(68)  # no csHash, no contributions
    assert json.loads((tmp_path / "ours.json").read_text()) == json.loads((tmp_path / "theirs.json").read_text())


def _points_on_curve(zkey: Path) -> None:
    """Every G1 row of sections 3, 5, 6, 8, 9 on the curve (or zero); the G2 rows in the subgroup."""
    sec = _sections(zkey.read_bytes())
    inv = pow(1 << 256, -1, P)
    for kind in (3, 5, 6, 8, 9):
        body = sec[kind]
        for i in range(0, len(body), 64):
            x, y = (int.from_bytes(body[i + j:i + j + 32], "little") * inv % P for j in (0, 32))
            assert (x, y) == (0, 0) or (y * y - x * x * x - 3) % P == 0, f"section {kind} row {i // 64}"
    lib = mcl._lib()
    lib.mclBnG2_isValidOrder.argtypes = [ctypes.c_void_p]
    one = ((1 << 256) % P).to_bytes(32, "little")
    body = sec[7]
    nonzero = 0
    for i in range(0, len(body), 128):
        if not any(body[i:i + 128]):
            continue
        pt = np.frombuffer(body[i:i + 128] + one + bytes(32), dtype=np.uint64).copy()
        assert lib.mclBnG2_isValidOrder(pt.ctypes.data), f"B2 row {i // 128}"
        nonzero += 1
    assert nonzero > N * K  # every bit wire has a B column


def test_fresh_keys_prove_and_verify_in_snarkjs_and_ours(circuit: Path, tmp_path: Path) -> None:
    tools = zp.find_tools()
    keys = tmp_path / "keys"
    shutil.copytree(circuit / "update_js", keys / "update_js")
    devsetup.groth16_setup(circuit / "update.r1cs", keys / "update.zkey", keys / "vk.json")
    _points_on_curve(keys / "update.zkey")
    done = _snarkjs(tools, "zkey", "export", "verificationkey", str(keys / "update.zkey"), "exported.json",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    vk_json = json.loads((keys / "vk.json").read_text())
    assert json.loads((tmp_path / "exported.json").read_text()) == vk_json
    # the rest of the key folder, as zkprove.setup makes it from vk.json
    ic = [zp._g1(p) for p in vk_json["IC"]]
    link_key, (a2, k1a2, k2a2) = up.link_setup(ic[4:], b"devsetup test")
    alpha1 = zp._g1(vk_json["vk_alpha_1"])
    assert alpha1 is not None
    vk = up.VerifyingKey(N, K, zp.bound_bits(N, K), b"devsetup test", alpha1, zp._g2(vk_json["vk_beta_2"]),
                         zp._g2(vk_json["vk_gamma_2"]), zp._g2(vk_json["vk_delta_2"]), tuple(ic[:4]), a2, k1a2, k2a2)
    (keys / "update.vk").write_bytes(vk.encode())
    (keys / "link.key").write_bytes(zp.encode_link_key(link_key))
    loaded = zp.load_keys(keys)
    values, blinding, commit_hash, bound2 = [1000, -7, 0, 32767], secrets.randbelow(R), secrets.token_bytes(32), 1 << 31
    proof = zp.prove(loaded, values, blinding, commit_hash, bound2, tools=tools)  # verifies before returning
    commitment = ped.commit(values, blinding, seed=b"devsetup test")
    up.verify(loaded.vk, proof, commitment, commit_hash, bound2)
    with pytest.raises(ZkError):
        up.verify(loaded.vk, proof, commitment, commit_hash, bound2 + 1)
    # snarkjs's verifier with our vk.json: the proof's Groth16 part, then a tampered copy
    pf = up.Proof.decode(proof)
    assert pf.a and pf.b and pf.c
    hi, lo = up.hash_limbs(commit_hash)
    public = [hi, lo, bound2, *(v % R for v in values + [0] * (N - len(values))), blinding]
    snark = {"pi_a": [str(pf.a[0]), str(pf.a[1]), "1"], "protocol": "groth16", "curve": "bn128",
             "pi_b": [[str(c) for c in pf.b[0]], [str(c) for c in pf.b[1]], ["1", "0"]],
             "pi_c": [str(pf.c[0]), str(pf.c[1]), "1"]}
    (tmp_path / "public.json").write_text(json.dumps([str(x) for x in public]))
    (tmp_path / "proof.json").write_text(json.dumps(snark))
    ok = _snarkjs(tools, "groth16", "verify", str(keys / "vk.json"), "public.json", "proof.json", cwd=tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    snark["pi_c"] = snark["pi_a"]
    (tmp_path / "proof.json").write_text(json.dumps(snark))
    bad = _snarkjs(tools, "groth16", "verify", str(keys / "vk.json"), "public.json", "proof.json", cwd=tmp_path)
    assert "OK" not in bad.stdout and "Invalid proof" in bad.stdout + bad.stderr


def test_keys_for_r1cs_py_circuits_prove_with_the_native_prover(tmp_path: Path) -> None:
    """The fast path end to end at n = 64: r1cs.py's system and witness, these keys, groth16.prove,
    and snarkjs's verifier with our vk.json."""
    from fednode.zk import groth16
    from fednode.zk import r1cs as r1cs_gen

    tools, n = zp.find_tools(), 64
    sb = zp.bound_bits(n, K)
    r1cs_gen.write_update_r1cs(tmp_path / "u.r1cs", n, K, sb)
    devsetup.groth16_setup(tmp_path / "u.r1cs", tmp_path / "u.zkey", tmp_path / "vk.json")
    values = [secrets.randbelow(1 << 16) - (1 << 15) for _ in range(n)]
    bound2, hi, lo, blind = sum(v * v for v in values), 12345, 67890, secrets.randbelow(R)
    witness = r1cs_gen.update_witness(n, K, sb, hi, lo, bound2, values, blind)
    a, b, c = groth16.prove(groth16.ProvingKey.load(tmp_path / "u.zkey"), witness)
    assert a and b and c
    snark = {"pi_a": [str(a[0]), str(a[1]), "1"], "protocol": "groth16", "curve": "bn128",
             "pi_b": [[str(x) for x in b[0]], [str(x) for x in b[1]], ["1", "0"]], "pi_c": [str(c[0]), str(c[1]), "1"]}
    (tmp_path / "proof.json").write_text(json.dumps(snark))
    for bound, verdict in ((bound2, "OK!"), (bound2 + 1, "Invalid proof")):
        public = [hi, lo, bound, *(v % R for v in values), blind]
        (tmp_path / "public.json").write_text(json.dumps([str(x) for x in public]))
        done = _snarkjs(tools, "groth16", "verify", "vk.json", "public.json", "proof.json", cwd=tmp_path)
        assert verdict in done.stdout + done.stderr, done.stdout + done.stderr


def test_fixed_base_rows_equal_mcl_mul() -> None:
    edge = [0, 1, 2, R - 1, (1 << 12) - 1, 1 << 12, 1 << 253, R - (1 << 200)]
    values = edge + [secrets.randbelow(R) for _ in range(200)] + [0]
    scalars = np.frombuffer(b"".join(v.to_bytes(32, "little") for v in values), dtype=np.uint64).reshape(-1, 4)
    for g2, window in ((False, 12), (True, 12), (False, 16), (True, 14)):  # 16 / 14: the tables of large set-ups
        ours = devsetup.fixed_base(g2, window).rows(scalars)
        assert ours == devsetup.mcl_rows(g2, scalars), (g2, window)
        size = 128 if g2 else 64
        assert ours[:size] == bytes(size) and ours[-size:] == bytes(size)  # infinity: zero rows


def test_refuses_what_is_not_an_r1cs_and_stores_nothing(circuit: Path, tmp_path: Path) -> None:
    (tmp_path / "x.r1cs").write_bytes(b"not an r1cs file at all")
    with pytest.raises(ZkError, match="not an r1cs file"):
        devsetup.groth16_setup(tmp_path / "x.r1cs", tmp_path / "k.zkey", tmp_path / "vk.json")
    data = (circuit / "update.r1cs").read_bytes()
    (tmp_path / "cut.r1cs").write_bytes(data[:len(data) // 2])
    with pytest.raises(ZkError, match="truncated"):
        devsetup.groth16_setup(tmp_path / "cut.r1cs", tmp_path / "k.zkey", tmp_path / "vk.json")
    # the first term's coefficient set to r itself: refused, where reducing it would hide the corruption
    pos = 12
    while struct.unpack_from("<I", data, pos)[0] != 2:  # walk the section table to the constraints
        pos += 12 + struct.unpack_from("<Q", data, pos + 4)[0]
    assert struct.unpack_from("<I", data, pos + 12)[0] >= 1  # constraint 0's A has a term
    at = pos + 12 + 4 + 4  # section header, the LC's term count, the term's wire id
    assert int.from_bytes(data[at:at + 32], "little") < R
    (tmp_path / "big.r1cs").write_bytes(data[:at] + R.to_bytes(32, "little") + data[at + 32:])
    with pytest.raises(ZkError, match="not reduced mod r"):
        devsetup.groth16_setup(tmp_path / "big.r1cs", tmp_path / "k.zkey", tmp_path / "vk.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.r1cs", "cut.r1cs", "x.r1cs"]
