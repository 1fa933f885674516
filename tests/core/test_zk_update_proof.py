"""Update proofs (issue 15 item 3): a real circom circuit, real snarkjs keys and proofs, our verifiers.

One set of keys for n = 8 is made per session (a development powers of tau 2^8, ``fednode.zk.devtau``:
seconds); every proof is made by snarkjs and checked by both our verifiers (MCL batched, py_ecc one
equation at a time) and, once,
by snarkjs itself with the full public inputs.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
from pathlib import Path

import pytest

from fednode.errors import FednodeError
from fednode.workflows import zkprove as zp
from fednode.zk import groth16, r1cs
from fednode.zk import pairing as pr
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import P, R, ZkError, decode, encode

N = 8
BOUND2 = 3 << 30


@pytest.fixture(scope="session")
def tools() -> zp.Tools:
    return zp.find_tools()  # circom2 and snarkjs are pinned in package.json: their absence fails, never skips


@pytest.fixture(scope="session")
def keys(tools: zp.Tools, tmp_path_factory: pytest.TempPathFactory) -> zp.Keys:
    out = tmp_path_factory.mktemp("zkkeys") / "n8"
    meta = zp.setup(out, N, tools=tools)
    assert meta["ptau_power"] is None and meta["n"] == N and "devsetup" in str(meta["ptau"])  # no powers of tau
    return zp.load_keys(out)


@pytest.fixture(scope="session")
def honest(keys: zp.Keys, tools: zp.Tools) -> dict:
    values = [300, -300, 0, 5, -(1 << 15), 12, (1 << 15) - 1, -1]  # both ends of the signed 16-bit range
    blinding = secrets.randbelow(R)
    commit_hash = secrets.token_bytes(32)
    proof = zp.prove(keys, values, blinding, commit_hash, BOUND2, tools=tools)
    return {"values": values, "blinding": blinding, "hash": commit_hash, "proof": proof,
            "commitment": ped.commit(values, blinding)}


def _reasons(keys: zp.Keys, proof: bytes, commitment: bytes, commit_hash: bytes, bound2: int) -> set[str]:
    reasons = set()
    for name in ("mcl", "reference"):
        with pytest.raises(ZkError) as err:
            up.verify(keys.vk, proof, commitment, commit_hash, bound2, backend_name=name)
        reasons.add(str(err.value))
    assert len(reasons) == 1, reasons  # both verifiers give the same reason
    return reasons


def test_honest_proof_verifies_in_both_verifiers_and_in_snarkjs(keys: zp.Keys, honest: dict, tools: zp.Tools,
                                                                 tmp_path: Path) -> None:
    assert len(honest["proof"]) == up.PROOF_BYTES == 384
    for name in ("mcl", "reference"):
        up.verify(keys.vk, honest["proof"], honest["commitment"], honest["hash"], BOUND2, backend_name=name)
    # snarkjs, given every public input (the vector too), accepts A, B, C: our D is the share it computes
    pf = up.Proof.decode(honest["proof"])
    assert pf.a and pf.b and pf.c
    hi, lo = up.hash_limbs(honest["hash"])
    padded = honest["values"] + [0] * (N - len(honest["values"]))
    public = [hi, lo, BOUND2, *(v % R for v in padded), honest["blinding"]]
    snark_proof = {"pi_a": [str(pf.a[0]), str(pf.a[1]), "1"], "protocol": "groth16", "curve": "bn128",
                   "pi_b": [[str(c) for c in pf.b[0]], [str(c) for c in pf.b[1]], ["1", "0"]],
                   "pi_c": [str(pf.c[0]), str(pf.c[1]), "1"]}
    (tmp_path / "proof.json").write_text(json.dumps(snark_proof))
    (tmp_path / "public.json").write_text(json.dumps([str(x) for x in public]))
    done = subprocess.run([tools.node, tools.snarkjs, "groth16", "verify", str(keys.path / "vk.json"),
                           str(tmp_path / "public.json"), str(tmp_path / "proof.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    # and D is exactly that share: sum v_i IC_{4+i} + b IC_b over snarkjs's own IC points
    ic = [zp._g1(p) for p in json.loads((keys.path / "vk.json").read_text())["IC"]]
    be = ped.backend("mcl")
    assert be.msm(be.points(ic[4:]), [*padded, honest["blinding"]]) == pf.d


def test_short_vector_is_zero_padded_and_verifies(keys: zp.Keys, tools: zp.Tools) -> None:
    values, commit_hash = [3, -4], bytes(range(32))
    proof = zp.prove(keys, values, 0, commit_hash, 25, tools=tools)  # norm exactly at the bound, unblinded
    up.verify(keys.vk, proof, ped.commit(values), commit_hash, 25)


def test_proof_for_another_vector_fails_the_link(keys: zp.Keys, honest: dict) -> None:
    other = ped.commit([v + 1 for v in honest["values"]], honest["blinding"])
    assert _reasons(keys, honest["proof"], other, honest["hash"], BOUND2) == {
        "update proof: the link proof fails (D and the commitment do not open to the same vector)"}


def test_proof_bound_to_another_commit_hash_fails(keys: zp.Keys, honest: dict) -> None:
    other = bytes(32 - 1) + b"\x01"
    assert _reasons(keys, honest["proof"], honest["commitment"], other, BOUND2) == {
        "update proof: the Groth16 proof fails for this commit hash, norm bound and committed vector"}


def test_tampered_public_input_fails(keys: zp.Keys, honest: dict) -> None:
    assert _reasons(keys, honest["proof"], honest["commitment"], honest["hash"], BOUND2 - 1) == {
        "update proof: the Groth16 proof fails for this commit hash, norm bound and committed vector"}
    with pytest.raises(ZkError, match="norm bound B\\^2 must be an integer in"):
        up.verify(keys.vk, honest["proof"], honest["commitment"], honest["hash"], 1 << keys.vk.sb)


def test_moving_a_proof_by_shifting_d_passes_groth16_but_not_the_link(keys: zp.Keys, honest: dict) -> None:
    # The attack the link proof exists for: D absorbs the change of an explicit input, so vk_x and the
    # Groth16 equation are unchanged for another commit hash (or a bigger bound)...
    pf = up.Proof.decode(honest["proof"])
    hi, lo = up.hash_limbs(honest["hash"])
    other = (hi ^ 1).to_bytes(16, "big") + lo.to_bytes(16, "big")
    shift = (hi - (hi ^ 1)) % R
    be = ped.backend("mcl")
    moved_d = be.msm(be.points([pf.d, keys.vk.ic[1]]), [1, shift])
    moved = up.Proof(pf.a, pf.b, pf.c, moved_d, pf.link).encode()
    vk_x = be.msm(be.points([*keys.vk.ic, moved_d]), [1, hi ^ 1, lo, BOUND2, 1])
    neg = lambda p: (p[0], P - p[1])  # noqa: E731
    assert pr.check([(pf.a, pf.b), (neg(keys.vk.alpha1), keys.vk.beta2), (neg(vk_x), keys.vk.gamma2),
                     (neg(pf.c), keys.vk.delta2)])
    # ...and the link proof is what rejects it
    assert _reasons(keys, moved, honest["commitment"], other, BOUND2) == {
        "update proof: the link proof fails (D and the commitment do not open to the same vector)"}


def test_commitment_not_on_the_curve_is_refused(keys: zp.Keys, honest: dict) -> None:
    x, y = decode(honest["commitment"])  # type: ignore[misc]
    bad = encode((x, (y + 1) % P))
    with pytest.raises(ZkError, match="commitment is not a point of BN254 G1"):
        up.verify(keys.vk, honest["proof"], bad, honest["hash"], BOUND2)


def test_malformed_proofs_are_refused(keys: zp.Keys, honest: dict) -> None:
    proof = honest["proof"]
    with pytest.raises(ZkError, match="an update proof is 384 bytes"):
        up.verify(keys.vk, proof[:-1], honest["commitment"], honest["hash"], BOUND2)
    off_twist = proof[:64] + proof[64:191] + bytes([proof[191] ^ 1]) + proof[192:]
    for name in ("mcl", "reference"):
        with pytest.raises(ZkError, match="proof point B is not a point of BN254 G2"):
            up.verify(keys.vk, off_twist, honest["commitment"], honest["hash"], BOUND2, backend_name=name)
    bad_d = proof[:256] + proof[256:319] + bytes([proof[319] ^ 1]) + proof[320:]
    with pytest.raises(ZkError, match="proof point D is not a point of BN254 G1"):
        up.verify(keys.vk, bad_d, honest["commitment"], honest["hash"], BOUND2)


def test_over_the_norm_bound_the_prover_refuses_and_the_circuit_rejects(keys: zp.Keys, tools: zp.Tools) -> None:
    values, commit_hash = [600, 800], secrets.token_bytes(32)  # squared norm 10^6
    with pytest.raises(FednodeError, match="squared L2 norm 1000000 exceeds the bound 999999: refusing to prove"):
        zp.prove(keys, values, 0, commit_hash, 999_999, tools=tools)
    with pytest.raises(FednodeError, match="outside the signed 16-bit range"):
        zp.prove(keys, [1 << 15], 0, commit_hash, 1 << 33, tools=tools)
    # without the prover's own checks the circuit itself refuses: an honest witness (zeros) with these
    # values written into its value wires (4 + i) breaks constraints, and no proof of it comes out
    hi, lo = up.hash_limbs(commit_hash)
    pk = groth16.ProvingKey.load(keys.path / "update.zkey")
    for vals, bound2 in ((values, 999_999), ([1 << 15], 1 << 33)):
        wit = r1cs.update_witness(keys.vk.n, keys.vk.k, keys.vk.sb, hi, lo, bound2, [0] * N, 0)
        wit[4:4 + len(vals), 0] = vals
        with pytest.raises(ZkError, match="does not satisfy the circuit's constraints"):
            groth16.prove(pk, wit)


def test_forged_over_norm_proof_is_rejected(keys: zp.Keys, honest: dict) -> None:
    # a cheater with an honest proof for a small vector and an honest link for a big one
    big = [20000] * N  # squared norm 3.2 * 10^9 > 3 * 2^30
    cm = ped.commit(big, 7)
    d, link = up.link_prove(keys.link, big, 7)
    pf = up.Proof.decode(honest["proof"])
    forged = up.Proof(pf.a, pf.b, pf.c, d, link).encode()
    assert _reasons(keys, forged, cm, honest["hash"], BOUND2) == {
        "update proof: the Groth16 proof fails for this commit hash, norm bound and committed vector"}


def test_verifying_key_round_trips_and_rejects_garbage(keys: zp.Keys) -> None:
    data = keys.vk.encode()
    assert up.VerifyingKey.decode(data) == keys.vk and len(keys.vk.key_id()) == 32
    assert len(data) == len(up.VK_MAGIC) + 8 + len(keys.vk.seed) + 64 + 3 * 128 + 4 * 64 + 3 * 128
    with pytest.raises(ZkError, match="bad magic"):
        up.VerifyingKey.decode(b"x" + data[1:])
    with pytest.raises(ZkError, match="wrong length"):
        up.VerifyingKey.decode(data[:-1])


def test_g2_encoding_round_trips_and_checks_the_subgroup() -> None:
    from py_ecc import optimized_bn128 as bn

    x, y = bn.normalize(bn.multiply(bn.G2, 12345))
    q = ((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1])))
    data = pr.encode_g2(q)
    assert data[:32] == q[0][1].to_bytes(32, "big")  # EIP-197: imaginary part first
    for name in ("mcl", "reference"):
        assert pr.decode_g2(data, backend_name=name) == q
    assert pr.decode_g2(pr.G2_INFINITY) is None
    with pytest.raises(ZkError, match="not below the BN254 field prime"):
        pr.decode_g2(P.to_bytes(32, "big") + data[32:])


def test_g2_point_on_the_twist_but_outside_the_subgroup_is_refused() -> None:
    from py_ecc import optimized_bn128 as bn
    from py_ecc.fields import optimized_bn128_FQ2 as FQ2

    p = bn.field_modulus
    x = FQ2([2, 1])
    rhs = x ** 3 + bn.b2
    a1 = rhs ** ((p - 3) // 4)  # square root in Fp2 for p = 3 mod 4 (Adj and Rodriguez-Henriquez)
    alpha = a1 * a1 * rhs
    y = (FQ2([0, 1]) if alpha == FQ2([p - 1, 0]) else (FQ2.one() + alpha) ** ((p - 1) // 2)) * a1 * rhs
    assert y * y == rhs  # on the twist; the cofactor is ~2^254, so almost no such point is in G2
    q = ((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1])))
    for name in ("mcl", "reference"):
        with pytest.raises(ZkError, match="outside the prime-order subgroup"):
            pr.decode_g2(pr.encode_g2(q), "proof point B", backend_name=name)


def test_prover_refuses_keys_that_do_not_belong_together(keys: zp.Keys, tools: zp.Tools, tmp_path: Path) -> None:
    with pytest.raises(FednodeError, match="no update-proof keys in .*fednode zk setup"):
        zp.load_keys(tmp_path)
    # the verifying key of another link set-up: snarkjs still proves, our own check refuses to hand it out
    other_link, (a2, k1a2, k2a2) = up.link_setup(keys.link.ic, keys.vk.seed)
    del other_link
    mixed = zp.Keys(keys.path, dataclasses.replace(keys.vk, k1a2=k1a2, k2a2=k2a2, a2=a2), keys.link)
    with pytest.raises(FednodeError, match="made a proof that does not verify .*link proof fails"):
        zp.prove(mixed, [1, 2], 5, bytes(32), 10, tools=tools)


def _ptau_file(path: Path, power: int, sections: tuple[int, ...]) -> Path:
    import struct

    body = b"".join(struct.pack("<IQ", kind, 44) + struct.pack("<I", 32) + bytes(32) + struct.pack("<II", power, 0)
                    if kind == 1 else struct.pack("<IQ", kind, 3) + b"abc" for kind in sections)
    path.write_bytes(b"ptau" + struct.pack("<II", 1, len(sections)) + body)
    return path


def test_a_ceremony_file_too_small_or_unprepared_is_refused_before_any_work(tmp_path: Path) -> None:
    no_tools = zp.Tools("node", "/nonexistent/circom2", "/nonexistent/snarkjs")  # never run
    small = _ptau_file(tmp_path / "small.ptau", 10, (1, 2, 12))
    assert zp.ptau_info(small) == (10, True)
    with pytest.raises(FednodeError, match=r"holds 2\^10 powers; n=64, k=16 needs 2\^11, prepared"):
        zp.setup(tmp_path / "keys", 64, ptau=small, tools=no_tools)
    raw = _ptau_file(tmp_path / "raw.ptau", 12, (1, 2, 3))
    with pytest.raises(FednodeError, match=r"holds 2\^12 powers, not prepared for phase 2"):
        zp.setup(tmp_path / "keys", 64, ptau=raw, tools=no_tools)
    (tmp_path / "junk.ptau").write_bytes(b"zkey" + bytes(8))
    with pytest.raises(FednodeError, match="is not a powers-of-tau file"):
        zp.setup(tmp_path / "keys", 64, ptau=tmp_path / "junk.ptau", tools=no_tools)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.ptau", "raw.ptau", "small.ptau"]  # nothing made
