"""``fednode.zk.devtau``: a prepared snarkjs powers-of-tau file written from known secrets.

``snarkjs powersoftau verify`` cannot accept such a file: it demands a contribution record whose
public key's ``g2_sp`` is hashed to G2 from the challenge transcript with snarkjs's own ChaCha-based
sampler, which we do not reproduce. So the tests check what verify would: the raw sections are the
right multiples of the generators (against py_ecc), ``snarkjs powersoftau prepare phase2`` run on our
unprepared file gives byte for byte our prepared file, and keys made from it prove and verify (snarkjs
``groth16 verify`` and our verifier).
"""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
from pathlib import Path

import pytest
from py_ecc.optimized_bn128 import G1, G2, multiply, normalize

from fednode.errors import FednodeError
from fednode.workflows import zkprove as zp
from fednode.zk import binfile, devtau
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import P, R, ZkError

SECRETS = (0x1234567890ABCDEF << 100 | 77, 31337 << 200 | 5, 0xC0FFEE << 180 | 9)  # tau, alpha, beta
MONT_INV = pow(1 << 256, -1, P)


def _sections(data: bytes) -> dict[int, bytes]:
    secs = binfile.sections(data, b"ptau", "ptau under test")
    assert sum(size + 12 for _, size in secs.values()) + 12 == len(data)  # nothing after the last section
    return {kind: data[off:off + size] for kind, (off, size) in secs.items()}


def _fp(raw: bytes) -> int:
    return int.from_bytes(raw, "little") * MONT_INV % P  # LEM: Montgomery form, little-endian


def _g1(body: bytes, i: int) -> tuple[int, int]:
    row = body[64 * i:64 * i + 64]
    return _fp(row[:32]), _fp(row[32:])


def _g2(body: bytes, i: int) -> tuple[tuple[int, int], tuple[int, int]]:
    row = body[128 * i:128 * i + 128]
    return (_fp(row[:32]), _fp(row[32:64])), (_fp(row[64:96]), _fp(row[96:]))


def _py_g1(s: int) -> tuple[int, int]:
    x, y = normalize(multiply(G1, s))
    return x.n, y.n


def _py_g2(s: int) -> tuple[tuple[int, int], tuple[int, int]]:
    x, y = normalize(multiply(G2, s))
    return (int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1]))


def test_devtau_equals_snarkjs_prepare_phase2_of_its_raw_sections(tmp_path: Path) -> None:
    tools = zp.find_tools()
    power = 5
    tau, alpha, beta = SECRETS
    raw = devtau.write_ptau(tmp_path / "raw.ptau", power, prepared=False, _secrets=SECRETS)
    ours = devtau.write_ptau(tmp_path / "ours.ptau", power, _secrets=SECRETS)
    sec = _sections(raw.read_bytes())
    assert sorted(sec) == [1, 2, 3, 4, 5, 6, 7] and sec[7] == bytes(4)  # no contribution records
    assert struct.unpack("<I", sec[1][36:40])[0] == power
    # the raw sections are the multiples of the standard generators that snarkjs expects
    assert len(sec[2]) == 64 * (2 ** (power + 1) - 1) and len(sec[3]) == 128 * 2 ** power
    assert _g1(sec[2], 0) == (1, 2) and _g1(sec[2], 1) == _py_g1(tau)
    assert _g1(sec[2], 2 ** (power + 1) - 2) == _py_g1(pow(tau, 2 ** (power + 1) - 2, R))
    assert _g2(sec[3], 1) == _py_g2(tau) and _g2(sec[6], 0) == _py_g2(beta)
    assert _g1(sec[4], 3) == _py_g1(alpha * tau**3) and _g1(sec[5], 0) == _py_g1(beta)
    # snarkjs's own phase-2 preparation of those sections is our prepared file, byte for byte
    theirs = tmp_path / "theirs.ptau"
    done = subprocess.run([tools.node, tools.snarkjs, "powersoftau", "prepare", "phase2", str(raw), str(theirs)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert theirs.read_bytes() == ours.read_bytes()
    assert zp.ptau_info(ours) == (power, True)
    # snarkjs's verify wants a contribution transcript (see the module docstring) and says so
    check = subprocess.run([tools.node, tools.snarkjs, "powersoftau", "verify", str(ours)],
                           capture_output=True, text=True, timeout=120, check=False)
    assert "has no contribution" in check.stdout + check.stderr


def test_devtau_refuses_powers_out_of_range(tmp_path: Path) -> None:
    for power in (0, devtau.MAX_POWER + 1):
        with pytest.raises(ZkError, match="devtau makes powers"):
            devtau.write_ptau(tmp_path / "x.ptau", power)
    assert list(tmp_path.iterdir()) == []


def test_keys_from_devtau_prove_and_verify_in_snarkjs_and_ours(tmp_path: Path) -> None:
    tools = zp.find_tools()
    meta = zp.setup(tmp_path / "keys", 2, tools=tools, ptau_maker="devtau")
    assert "devtau" in str(meta["ptau"]) and meta["ptau_power"] == 8
    assert isinstance(meta["ptau_s"], float) and meta["ptau_s"] < 30  # snarkjs: ~5 s at 2^8
    keys = zp.load_keys(tmp_path / "keys")
    values, blinding, commit_hash, bound2 = [1000, -7], secrets.randbelow(R), secrets.token_bytes(32), 1 << 24
    proof = zp.prove(keys, values, blinding, commit_hash, bound2, tools=tools)
    up.verify(keys.vk, proof, ped.commit(values, blinding), commit_hash, bound2)
    pf = up.Proof.decode(proof)
    assert pf.a and pf.b and pf.c
    hi, lo = up.hash_limbs(commit_hash)
    public = [hi, lo, bound2, *(v % R for v in values), blinding]
    snark_proof = {"pi_a": [str(pf.a[0]), str(pf.a[1]), "1"], "protocol": "groth16", "curve": "bn128",
                   "pi_b": [[str(c) for c in pf.b[0]], [str(c) for c in pf.b[1]], ["1", "0"]],
                   "pi_c": [str(pf.c[0]), str(pf.c[1]), "1"]}
    (tmp_path / "proof.json").write_text(json.dumps(snark_proof))
    (tmp_path / "public.json").write_text(json.dumps([str(x) for x in public]))
    done = subprocess.run([tools.node, tools.snarkjs, "groth16", "verify", str(keys.path / "vk.json"),
                           str(tmp_path / "public.json"), str(tmp_path / "proof.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    # a wrong public input fails in snarkjs too (the check above could not pass by accident)
    (tmp_path / "public.json").write_text(json.dumps([str(x) for x in [hi, lo, bound2 + 1, *public[3:]]]))
    bad = subprocess.run([tools.node, tools.snarkjs, "groth16", "verify", str(keys.path / "vk.json"),
                          str(tmp_path / "public.json"), str(tmp_path / "proof.json")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert "OK" not in bad.stdout


def test_snarkjs_ceremony_stays_reachable_and_unknown_makers_are_refused(tmp_path: Path) -> None:
    tools = zp.find_tools()
    with pytest.raises(FednodeError, match="no set-up maker 'mpc'"):
        zp.setup(tmp_path / "bad", 1, ptau_maker="mpc", tools=tools)
    assert list(tmp_path.iterdir()) == []
    meta = zp.setup(tmp_path / "keys", 1, ptau_maker="snarkjs", tools=tools)  # ~5 s: snarkjs's own 2^8 ceremony
    assert "snarkjs" in str(meta["ptau"]) and "devtau" not in str(meta["ptau"])
    assert zp.load_keys(tmp_path / "keys").vk.n == 1
