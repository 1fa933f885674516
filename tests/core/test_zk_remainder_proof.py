"""Remainder proofs on FedAvg merges (issue 15 item 2): ``remainder_bound.circom`` proves
``|2 r_i| <= W`` for the committed remainder ``C(r)``, checked by the update proofs' own verifier with
``X = W``; the policy's ``rvk`` and ``check_merge``. Real keys (the session's ``zk_policy_keys``:
n = 8, K = 13), real snarkjs proofs; both our verifiers and snarkjs's own."""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import fixed_identity

from fednode.errors import FednodeError
from fednode.workflows import zkprove as zp
from fednode.zk import groth16, r1cs
from fednode.zk import merge_check as mc
from fednode.zk import pedersen as ped
from fednode.zk import policy as zpol
from fednode.zk import update_proof as up
from fednode.zk.curve import R, ZkError
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit

N = 8
WEIGHTS = (3, 5, 2)  # W = 10: |r_i| <= 5
GROTH16 = "update proof: the Groth16 proof fails for this commit hash, norm bound and committed vector"


@pytest.fixture(scope="module")
def rkeys(zk_policy_keys: Path) -> zp.Keys:
    keys = zp.remainder_keys(zk_policy_keys)
    assert keys is not None and keys.circuit == "remainder" and keys.vk.n == N and keys.vk.sb == keys.vk.k - 1
    return keys


@pytest.fixture(scope="module")
def merge() -> dict:
    rng = np.random.default_rng(7)
    qs = [rng.integers(-3000, 3000, N) for _ in WEIGHTS]
    blindings = [secrets.randbelow(R) for _ in WEIGHTS]
    d, r = mc.fedavg_delta(qs, WEIGHTS)
    b_d, b_r = mc.split_blinding(blindings, WEIGHTS)
    return {"inputs": [ped.commit([int(v) for v in q], b) for q, b in zip(qs, blindings, strict=True)],
            "d": [int(v) for v in d], "r": [int(v) for v in r], "b_d": b_d, "b_r": b_r, "total": sum(WEIGHTS)}


@pytest.fixture(scope="module")
def honest(rkeys: zp.Keys, merge: dict) -> dict:
    h = secrets.token_bytes(32)
    proof = zp.prove_remainder(rkeys, merge["r"], merge["b_r"], h, merge["total"])
    return {"hash": h, "proof": proof, "c_r": ped.commit(merge["r"], merge["b_r"])}


def _reason(vk: up.VerifyingKey, proof: bytes, c_r: bytes, h: bytes, total: int) -> str:
    reasons = set()
    for name in ("mcl", "reference"):
        with pytest.raises(ZkError) as err:
            up.verify(vk, proof, c_r, h, total, backend_name=name)
        reasons.add(str(err.value))
    assert len(reasons) == 1, reasons
    return reasons.pop()


def test_honest_remainder_proof_verifies_in_both_verifiers_and_snarkjs(rkeys: zp.Keys, merge: dict, honest: dict,
                                                                        tmp_path: Path) -> None:
    assert mc.check_linear_merge(merge["inputs"], WEIGHTS, ped.commit(merge["d"], merge["b_d"]), honest["c_r"])
    assert any(merge["r"]) and max(abs(v) for v in merge["r"]) * 2 <= merge["total"]
    for name in ("mcl", "reference"):
        up.verify(rkeys.vk, honest["proof"], honest["c_r"], honest["hash"], merge["total"], backend_name=name)
    pf = up.Proof.decode(honest["proof"])
    assert pf.a and pf.b and pf.c
    tools = zp.find_tools()
    hi, lo = up.hash_limbs(honest["hash"])
    public = [hi, lo, merge["total"], *(v % R for v in merge["r"]), merge["b_r"]]
    (tmp_path / "proof.json").write_text(json.dumps({
        "pi_a": [str(pf.a[0]), str(pf.a[1]), "1"], "protocol": "groth16", "curve": "bn128",
        "pi_b": [[str(c) for c in pf.b[0]], [str(c) for c in pf.b[1]], ["1", "0"]],
        "pi_c": [str(pf.c[0]), str(pf.c[1]), "1"]}))
    (tmp_path / "public.json").write_text(json.dumps([str(x) for x in public]))
    done = subprocess.run([tools.node, tools.snarkjs, "groth16", "verify", str(rkeys.path / "vk.json"),
                           str(tmp_path / "public.json"), str(tmp_path / "proof.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr


def test_ties_and_the_edges_of_the_range_are_provable(rkeys: zp.Keys) -> None:
    h = bytes(range(32))
    for r, total in (([5, -5, 0, 2], 10), ([2047, -2047, 0, 1], 4095)):  # ties; odd W = 2^12 - 1, the largest
        proof = zp.prove_remainder(rkeys, r, 0, h, total)
        up.verify(rkeys.vk, proof, ped.commit(r), h, total)


def test_the_rounding_forgery_passes_the_relation_but_cannot_be_proven(rkeys: zp.Keys, merge: dict,
                                                                       honest: dict) -> None:
    """d + 1 with r - W (in one coordinate) satisfies sum w_k C_k = W C(d) + C(r); its r is out of range."""
    total, d2, r2 = merge["total"], list(merge["d"]), list(merge["r"])
    d2[0] += 1
    r2[0] -= total
    c_d2, c_r2 = ped.commit(d2, merge["b_d"]), ped.commit(r2, merge["b_r"])
    assert mc.check_linear_merge(merge["inputs"], WEIGHTS, c_d2, c_r2)
    h = honest["hash"]
    with pytest.raises(FednodeError, match=f"remainder value 0 is {r2[0]}: over half the total weight 10"):
        zp.prove_remainder(rkeys, r2, merge["b_r"], h, total)
    # without the prover's own checks the circuit refuses: a witness (of zeros) with the forged r written
    # into its value wires (4 + i) breaks constraints, and no proof of it comes out
    hi, lo = up.hash_limbs(h)
    wit = r1cs.remainder_witness(rkeys.vk.n, rkeys.vk.k, hi, lo, total, [0] * rkeys.vk.n, merge["b_r"])
    wit[4:4 + len(r2)] = [[v % R >> (64 * j) & (2**64 - 1) for j in range(4)] for v in r2]
    with pytest.raises(ZkError, match="does not satisfy the circuit's constraints"):
        groth16.prove(groth16.ProvingKey.load(rkeys.path / "update.zkey"), wit)
    # nor does the honest proof carry over to the forged C(r)
    assert _reason(rkeys.vk, honest["proof"], c_r2, h, total) == \
        "update proof: the link proof fails (D and the commitment do not open to the same vector)"


def test_a_proof_for_another_total_or_another_hash_fails(rkeys: zp.Keys, merge: dict, honest: dict) -> None:
    total = merge["total"]
    assert _reason(rkeys.vk, honest["proof"], honest["c_r"], honest["hash"], total + 2) == GROTH16
    with pytest.raises(ZkError, match="Groth16 proof fails"):  # (mcl alone: py_ecc takes seconds a check)
        up.verify(rkeys.vk, honest["proof"], honest["c_r"], secrets.token_bytes(32), total)
    with pytest.raises(ZkError, match=r"must be an integer in \[0, 2\^12\)"):  # W over the key's 2^(K-1)
        up.verify(rkeys.vk, honest["proof"], honest["c_r"], honest["hash"], 1 << 12)


def test_prover_refusals_and_key_kinds(rkeys: zp.Keys, zk_policy_keys: Path) -> None:
    h = bytes(32)
    with pytest.raises(FednodeError, match=r"total weight 4096 is outside these remainder keys' \[0, 2\^12\)"):
        zp.prove_remainder(rkeys, [1], 0, h, 4096)
    with pytest.raises(FednodeError, match="9 values: these remainder keys prove at most 8"):
        zp.prove_remainder(rkeys, [0] * 9, 0, h, 10)
    with pytest.raises(FednodeError, match="are update-proof keys, not remainder-proof keys"):
        zp.load_keys(zk_policy_keys, "remainder")
    with pytest.raises(FednodeError, match="are remainder-proof keys, not update-proof keys"):
        zp.load_keys(rkeys.path)
    with pytest.raises(FednodeError, match="not remainder-proof keys"):
        zp.prove_remainder(zp.load_keys(zk_policy_keys), [1], 0, h, 10)
    meta = json.loads((rkeys.path / "setup.json").read_text())
    assert meta["circuit"] == "remainder_bound" and meta["r1cs"] == "fednode.zk.r1cs"
    assert json.loads((zk_policy_keys / "setup.json").read_text())["circuit"] == "update_bound"


# ---- the policy: rvk and check_merge ----------------------------------------------------------------


def _policy(zk_policy_keys: Path, rkeys: zp.Keys) -> zpol.ZkPolicy:
    entry = zpol.settings_entry(zp.load_keys(zk_policy_keys).vk.encode(), 1000, 14, rkeys.vk.encode())
    policy = zpol.policy_of({"zk": entry})
    assert policy is not None and policy.remainder_vk == rkeys.vk
    return policy


def _merge_commit(merge: dict, weights: list[int], c_r: bytes | None, strategy: str = "fedavg") -> Commit:
    zk: dict = {"v": 1, "base": CID.hash(DAG_CBOR, b"base"), "grid": {"w": 14},
                "commitment": ped.commit(merge["d"], merge["b_d"])}
    if c_r is not None:
        zk["remainder"] = c_r
    parent = CID.hash(DAG_CBOR, b"parent")
    return Commit(repo=bytes(32), parents=(parent,), kind="merge", weights=CID.hash(DAG_CBOR, b"manifest"),
                  author=fixed_identity().public_key, time_ms=1, message="m", parent_hashes=(bytes(32),),
                  info={"merge": {"strategy": {"name": strategy}, "weights": weights}, "zk": zk})


def test_policy_rvk_round_trips_and_malformed_ones_are_refused(zk_policy_keys: Path, rkeys: zp.Keys) -> None:
    vk = zp.load_keys(zk_policy_keys).vk
    policy = _policy(zk_policy_keys, rkeys)
    assert policy.remainder_key_id == rkeys.vk.key_id()
    without = zpol.policy_of({"zk": zpol.settings_entry(vk.encode(), 1000, 14)})
    assert without is not None and without.remainder_vk is None and without.remainder_key_id is None
    with pytest.raises(ZkError, match="settings.zk.rvk is not a remainder-proof verifying key"):
        zpol.settings_entry(vk.encode(), 1000, 14, vk.encode())
    entry = zpol.settings_entry(vk.encode(), 1000, 14)
    with pytest.raises(ZkError, match="settings.zk.rvk must be bytes"):
        zpol.policy_of({"zk": {**entry, "rvk": "x"}})
    other = dataclasses.replace(rkeys.vk, seed=b"another seed")
    with pytest.raises(ZkError, match="another generator seed"):
        zpol.policy_of({"zk": {**entry, "rvk": other.encode()}})


def test_check_merge_reasons(zk_policy_keys: Path, rkeys: zp.Keys, merge: dict) -> None:
    policy = _policy(zk_policy_keys, rkeys)
    c_r = ped.commit(merge["r"], merge["b_r"])
    bare = _merge_commit(merge, list(WEIGHTS), c_r)
    proof = zp.prove_remainder(rkeys, merge["r"], merge["b_r"], zpol.proof_hash(bare), merge["total"])

    def with_proof(commit: Commit, p: bytes) -> Commit:
        return dataclasses.replace(commit, info={**commit.info, "zk": {**commit.info["zk"], "proof": p}})

    proven = with_proof(bare, proof)
    assert zpol.check_merge(policy, proven) is None and zpol.check(policy, proven) is None
    assert zpol.check_merge(policy, proven, backend_name="reference") is None
    assert zpol.check_merge(policy, bare) == \
        "the repository requires remainder proofs on FedAvg merges: the merge carries none"
    moved = with_proof(dataclasses.replace(bare, message="another merge"), proof)  # another commit hash
    assert zpol.check_merge(policy, moved) == \
        "remainder proof: the Groth16 proof fails for this commit hash, total weight W and remainder"
    other_w = with_proof(_merge_commit(merge, [3, 5, 4], c_r), proof)  # another W (and so another hash)
    assert "Groth16 proof fails" in (zpol.check_merge(policy, other_w) or "")
    shifted = ped.commit([merge["r"][0] - 10, *merge["r"][1:]], merge["b_r"])
    assert zpol.check_merge(policy, with_proof(_merge_commit(merge, list(WEIGHTS), shifted), proof)) == \
        "remainder proof: the link proof fails (D and C(r) do not open to the same vector)"
    assert zpol.check_merge(policy, with_proof(_merge_commit(merge, [4000, 4000], c_r), proof)) == \
        "the merge's total weight 8000 is over the remainder key's 2^12"
    assert zpol.check_merge(policy, with_proof(_merge_commit(merge, [-1], c_r), proof)) == \
        "the merge record's weights are malformed (no total weight W)"
    assert zpol.check_merge(policy, with_proof(bare, proof[:-1])) == "remainder proof: an update proof is 384 bytes"
    # no C(r) (median, trimmed mean, Krum) or no rvk: nothing to prove
    assert zpol.check_merge(policy, _merge_commit(merge, list(WEIGHTS), None, "median")) is None
    no_rvk = dataclasses.replace(policy, remainder_vk=None, remainder_vk_bytes=None)
    assert zpol.check_merge(no_rvk, bare) is None and zpol.check(no_rvk, bare) is None
