"""A repository's proof policy (``fednode.zk.policy``, issue 15 item 4): the genesis settings entry, the
proof hash a proof is bound to, and ``check_update``'s reason for every way an update can fail it, with
a real proof (the session's n = 8 keys, snarkjs) and no weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import fixed_identity

from fednode.workflows import zkprove
from fednode.zk import pedersen
from fednode.zk import policy as zpol
from fednode.zk.curve import ZkError
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit

GRID = 14
BOUND2 = 40_000**2
VALUES = [300, -300, 0, 5, -1200, 12, 7, -1]


@pytest.fixture(scope="module")
def keys(zk_policy_keys: Path) -> zkprove.Keys:
    return zkprove.load_keys(zk_policy_keys)


@pytest.fixture(scope="module")
def policy(keys: zkprove.Keys) -> zpol.ZkPolicy:
    found = zpol.policy_of({"zk": zpol.settings_entry(keys.vk.encode(), BOUND2, GRID)})
    assert found is not None
    return found


def _update(zk: dict | None = None, message: str = "an update", kind: str = "update") -> Commit:
    parent = CID.hash(DAG_CBOR, b"parent")
    info = {} if zk is None else {"zk": zk}
    return Commit(repo=bytes(32), parents=(parent,), kind=kind, weights=CID.hash(DAG_CBOR, b"manifest"),
                  author=fixed_identity().public_key, time_ms=1, message=message, info=info,
                  parent_hashes=(bytes(32),))


def _zk() -> dict:
    return {"v": 1, "base": CID.hash(DAG_CBOR, b"base"), "grid": {"a": GRID, "b": GRID},
            "commitment": pedersen.commit(VALUES)}


@pytest.fixture(scope="module")
def proven(keys: zkprove.Keys) -> Commit:
    bare = _update(_zk())
    proof = zkprove.prove(keys, VALUES, 0, zpol.proof_hash(bare), BOUND2)
    return dataclasses.replace(bare, info={"zk": {**bare.info["zk"], "proof": proof}})


def test_settings_entry_round_trips_through_a_genesis(keys: zkprove.Keys, policy: zpol.ZkPolicy) -> None:
    entry = zpol.settings_entry(keys.vk.encode(), BOUND2, GRID)
    settings = {"name": "r", "scale_bits": 24, "snapshot_interval": 8, "visibility": "public", "zk": entry}
    genesis = Commit(repo=None, parents=(), kind="init", weights=CID.hash(DAG_CBOR, b"m"),
                     author=fixed_identity().public_key, time_ms=1, message="m", info={"settings": settings})
    signed = dataclasses.replace(genesis, sig=fixed_identity().sign(genesis.commit_hash()))
    again = zpol.policy_of(Commit.decode(signed.encode()).settings)
    assert again == policy and again.bound2 == BOUND2 and again.grid_bits == GRID
    assert again.key_id == keys.vk.key_id() and again.vk.n == 8
    assert again.norm_bound() == 40_000 / 2**GRID and again.coordinate_bound() == 2.0 ** (15 - GRID)
    assert zpol.policy_of({"name": "r"}) is None


@pytest.mark.parametrize(("change", "reason"), [
    (lambda e: 7, "not a version-1 proof policy"),
    (lambda e: {**e, "v": 2}, "not a version-1 proof policy"),
    (lambda e: {k: v for k, v in e.items() if k != "vk"}, "needs 'vk' and 'bound2' as bytes"),
    (lambda e: {**e, "bound2": 5}, "needs 'vk' and 'bound2' as bytes"),
    (lambda e: {**e, "grid_bits": True}, "grid_bits must be an integer"),
    (lambda e: {**e, "grid_bits": 5000}, "grid_bits must be an integer in"),
    (lambda e: {**e, "require_proof": "yes"}, "require_proof must be true or false"),
    (lambda e: {**e, "bound2": (1 << 34).to_bytes(5, "big")}, r"bound2 must be below 2\^34"),  # sb for n = 8
    (lambda e: {**e, "vk": b"x" + e["vk"][1:]}, "bad magic"),
    (lambda e: {**e, "vk": e["vk"][:-1]}, "wrong length"),
])
def test_malformed_policies_are_refused(keys: zkprove.Keys, change, reason: str) -> None:
    entry = zpol.settings_entry(keys.vk.encode(), BOUND2, GRID)
    with pytest.raises(ZkError, match=reason):
        zpol.policy_of({"zk": change(entry)})
    with pytest.raises(ZkError):
        zpol.settings_entry(keys.vk.encode(), 1 << keys.vk.sb, GRID)  # the entry is checked as it is made


def test_proof_hash_ignores_the_proof_and_nothing_else(proven: Commit) -> None:
    bare = _update(_zk())
    assert zpol.proof_hash(proven) == zpol.proof_hash(bare) == bare.commit_hash() != proven.commit_hash()
    assert zpol.proof_hash(_update(_zk(), message="another")) != zpol.proof_hash(bare)
    moved = {**_zk(), "commitment": pedersen.commit([1, *VALUES[1:]])}
    assert zpol.proof_hash(_update(moved)) != zpol.proof_hash(bare)
    assert zpol.proof_of(proven) is not None and zpol.proof_of(bare) is None


def test_check_update_passes_a_proven_update_and_exempts_merges(policy: zpol.ZkPolicy, proven: Commit) -> None:
    assert zpol.check_update(policy, proven) is None
    assert zpol.check_update(policy, proven, backend_name="reference") is None  # py_ecc agrees
    for kind in ("merge", "init"):
        assert zpol.check_update(policy, _update(None, kind=kind)) is None
    assert zpol.check_update(dataclasses.replace(policy, require_proof=False), _update(None)) is None


def test_check_update_names_each_failure(policy: zpol.ZkPolicy, proven: Commit) -> None:
    zk = proven.info["zk"]

    def reason(info_zk: dict | None, pol: zpol.ZkPolicy = policy, message: str = "an update") -> str | None:
        return zpol.check_update(pol, _update(info_zk, message))

    assert reason(None) == "the repository requires update proofs: the commit carries no zk info"
    assert reason({"v": 1, "none": "lossy encoding"}) == \
        "the repository requires update proofs: the commit carries no commitment (lossy encoding)"
    assert reason({**zk, "grid": {"a": GRID, "b": GRID + 1}}) == \
        f"the commitment is not on the policy's grid 2**-{GRID}"
    assert "commitment" in (reason({**zk, "commitment": b"\x01" * 64}) or "")  # a point off the curve
    assert reason({k: v for k, v in zk.items() if k != "commitment"}) == \
        "the repository requires update proofs: the commit carries no commitment"
    assert reason({k: v for k, v in zk.items() if k != "proof"}) == \
        "the repository requires update proofs: the commit carries none"
    groth16 = "update proof: the Groth16 proof fails for this commit hash, norm bound and committed vector"
    assert reason(zk, message="the proof moved to another commit") == groth16
    assert reason(zk, pol=dataclasses.replace(policy, bound2=BOUND2 - 1)) == groth16  # a tampered bound
    other = {**zk, "commitment": pedersen.commit([301, *VALUES[1:]])}
    assert "the link proof fails" in (reason(other) or "")  # a proof for another vector
    assert "384 bytes" in (reason({**zk, "proof": zk["proof"][:-1]}) or "")
