"""A repository's proof policy (issue 15 item 4): which update proofs its commits must carry.

The policy is fixed at genesis, inside the signed settings (so the repository id covers it):
``settings["zk"] = {"v": 1, "require_proof": True, "vk": <VerifyingKey.encode()>, "bound2": <B^2,
big-endian bytes>, "grid_bits": G}``. Under it every commit other than the genesis and merges carries,
in ``info["zk"]``, its Pedersen commitment on the policy's grid (every float tensor on ``2**-G``,
integer tensors in units of 1) and ``"proof"``: an update proof (``fednode.zk.update_proof``, 384
bytes) that the committed vector's coordinates are signed ``k``-bit integers and that its squared
L2 norm is at most ``B^2``, for the verifying key ``vk``.

Merges: with the optional ``"rvk"`` (the remainder circuit's encoded verifying key,
``remainder_bound.circom``), every merge that carries a remainder commitment ``C(r)`` (FedAvg) carries
in ``info["zk"]["proof"]`` a remainder proof: ``|2 r_i| <= W`` for the committed ``r``, ``W`` the sum of
the weights in its signed ``info["merge"]`` record, bound to ``proof_hash(merge)`` like an update's.
With the relation ``sum_k w_k C_k = W C(d) + C(r)`` (checked where the inputs' commitments are known)
it shows ``d`` is ``S / W`` rounded to nearest. Median, trimmed mean and Krum carry no ``C(r)``: no proof.

Binding: the proof cannot be inside the body that the commit hash covers, so it is bound to
``proof_hash(commit)``: the commit hash of the same commit without ``info["zk"]["proof"]``. The
proof travels inside the commit (gossip, sync, CAR files carry it unchanged) and the commit's
signature covers it; moved to any other commit it fails, since that commit's proof-less hash differs.

Pure: no I/O, no weights. ``check`` (``check_update`` for updates, ``check_merge`` for merges) is
what every verifier runs (gossip validators, merge, verify): one line saying what fails, or None.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from fednode.zk import update_proof as up
from fednode.zk.curve import ZkError, decode
from protocol.objects import Commit

VERSION = 1
EXEMPT_KINDS = ("init", "merge")  # the genesis sets the policy; merges are checked by their relation


@dataclass(frozen=True)
class ZkPolicy:
    vk: up.VerifyingKey
    vk_bytes: bytes
    bound2: int  # B^2 in grid units squared
    grid_bits: int  # every float tensor's delta is committed on 2**-grid_bits
    require_proof: bool = True
    remainder_vk: up.VerifyingKey | None = None  # "rvk": merges carrying C(r) must prove |2 r_i| <= W
    remainder_vk_bytes: bytes | None = None

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(self.vk_bytes).digest()

    @property
    def remainder_key_id(self) -> bytes | None:
        return None if self.remainder_vk_bytes is None else hashlib.sha256(self.remainder_vk_bytes).digest()

    def coordinate_bound(self) -> float:
        """The largest change of one float value a proof admits, in weight units: 2^(k-1) grid steps."""
        return float(2 ** (self.vk.k - 1 - self.grid_bits))

    def norm_bound(self) -> float:
        """B in weight units (float tensors): sqrt(B^2) grid steps."""
        return float(self.bound2) ** 0.5 / float(2**self.grid_bits)


def settings_entry(vk_bytes: bytes, bound2: int, grid_bits: int, rvk_bytes: bytes | None = None) -> dict[str, Any]:
    """What genesis settings hold under ``"zk"`` (``rvk``: the remainder key, optional); checked by
    ``policy_of`` (raises ZkError)."""
    entry: dict[str, Any] = {"v": VERSION, "require_proof": True, "vk": bytes(vk_bytes),
                             "bound2": bound2.to_bytes(max(1, (bound2.bit_length() + 7) // 8), "big"),
                             "grid_bits": grid_bits}
    if rvk_bytes is not None:
        entry["rvk"] = bytes(rvk_bytes)
    policy_of({"zk": entry})
    return entry


def policy_of(settings: dict[str, Any]) -> ZkPolicy | None:
    """The policy in a repository's genesis settings, None without one; ZkError if malformed."""
    entry = settings.get("zk")
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("v") != VERSION:
        raise ZkError("settings.zk is not a version-1 proof policy")
    vk_bytes, raw, grid = entry.get("vk"), entry.get("bound2"), entry.get("grid_bits")
    if not isinstance(vk_bytes, bytes) or not isinstance(raw, bytes) or not raw:
        raise ZkError("settings.zk needs 'vk' and 'bound2' as bytes")
    if isinstance(grid, bool) or not isinstance(grid, int) or not -1000 <= grid <= 1000:
        raise ZkError("settings.zk.grid_bits must be an integer in [-1000, 1000]")
    require = entry.get("require_proof", True)
    if not isinstance(require, bool):
        raise ZkError("settings.zk.require_proof must be true or false")
    vk = up.VerifyingKey.decode(vk_bytes)
    bound2 = int.from_bytes(raw, "big")
    if bound2 >= 1 << vk.sb:
        raise ZkError(f"settings.zk.bound2 must be below 2^{vk.sb} for this verifying key")
    rvk_bytes = entry.get("rvk")
    if rvk_bytes is None:
        return ZkPolicy(vk, vk_bytes, bound2, grid, require)
    if not isinstance(rvk_bytes, bytes):
        raise ZkError("settings.zk.rvk must be bytes")
    rvk = up.VerifyingKey.decode(rvk_bytes)
    if not is_remainder_vk(rvk):
        raise ZkError("settings.zk.rvk is not a remainder-proof verifying key")
    if rvk.seed != vk.seed or rvk.n < vk.n:
        raise ZkError("settings.zk.rvk is for another generator seed or fewer values than the update key")
    return ZkPolicy(vk, vk_bytes, bound2, grid, require, rvk, rvk_bytes)


def is_remainder_vk(vk: up.VerifyingKey) -> bool:
    """The remainder circuit's key bounds X = W by 2^(k-1) (sb = k - 1); an update key's sb is wider."""
    return vk.sb == vk.k - 1


def proof_of(commit: Commit) -> bytes | None:
    zk = commit.info.get("zk")
    proof = zk.get("proof") if isinstance(zk, dict) else None
    return proof if isinstance(proof, bytes) else None


def proof_hash(commit: Commit) -> bytes:
    """The commit hash of ``commit`` without ``info.zk.proof``: what its proof is bound to."""
    zk = commit.info.get("zk")
    if not isinstance(zk, dict) or "proof" not in zk:
        return commit.commit_hash()
    bare = {k: v for k, v in zk.items() if k != "proof"}
    return replace(commit, info={**commit.info, "zk": bare}).commit_hash()


def needs_proof(policy: ZkPolicy | None, commit: Commit) -> bool:
    return policy is not None and policy.require_proof and commit.kind not in EXEMPT_KINDS


def check_update(policy: ZkPolicy, commit: Commit, *, backend_name: str | None = None) -> str | None:
    """Why ``commit`` does not meet ``policy`` (one line), or None. Needs no weights: the grid, the
    commitment's encoding and the proof against the policy's key, bound and ``proof_hash``."""
    if not needs_proof(policy, commit):
        return None
    zk = commit.info.get("zk")
    if not isinstance(zk, dict) or zk.get("v") != 1:
        return "the repository requires update proofs: the commit carries no zk info"
    if "none" in zk:
        return f"the repository requires update proofs: the commit carries no commitment ({zk['none']})"
    grid = zk.get("grid")
    if not isinstance(grid, dict) or any(bits != policy.grid_bits for bits in grid.values()):
        return f"the commitment is not on the policy's grid 2**-{policy.grid_bits}"
    commitment = zk.get("commitment")
    if not isinstance(commitment, bytes):
        return "the repository requires update proofs: the commit carries no commitment"
    try:
        decode(commitment, "commitment")
    except ZkError as exc:
        return str(exc)
    proof = proof_of(commit)
    if proof is None:
        return "the repository requires update proofs: the commit carries none"
    try:
        up.verify(policy.vk, proof, commitment, proof_hash(commit), policy.bound2, backend_name=backend_name)
    except ZkError as exc:
        return str(exc)
    return None


def merge_total(commit: Commit) -> int | None:
    """W: the sum of the weights in a merge's signed record (None when malformed)."""
    record = commit.info.get("merge")
    weights = record.get("weights") if isinstance(record, dict) else None
    if not isinstance(weights, list) or not weights \
            or not all(type(w) is int and 0 <= w < 1 << 64 for w in weights):
        return None
    return sum(weights)


def needs_remainder_proof(policy: ZkPolicy | None, commit: Commit) -> bool:
    """A merge carrying ``C(r)`` (FedAvg) in a repository whose policy names a remainder key."""
    if policy is None or policy.remainder_vk is None or commit.kind != "merge":
        return False
    zk = commit.info.get("zk")
    return isinstance(zk, dict) and "remainder" in zk


def check_merge(policy: ZkPolicy, commit: Commit, *, backend_name: str | None = None) -> str | None:
    """Why a merge does not meet ``policy``'s remainder rule (one line), or None. Needs no weights and
    no inputs: the remainder proof against ``C(r)``, ``W`` from the merge record and ``proof_hash``."""
    if not needs_remainder_proof(policy, commit):
        return None
    assert policy.remainder_vk is not None
    zk = commit.info["zk"]
    remainder = zk.get("remainder")
    if not isinstance(remainder, bytes):
        return "the merge's remainder commitment is malformed"
    total = merge_total(commit)
    if total is None:
        return "the merge record's weights are malformed (no total weight W)"
    proof = proof_of(commit)
    if proof is None:
        return "the repository requires remainder proofs on FedAvg merges: the merge carries none"
    if total >= 1 << policy.remainder_vk.sb:
        return f"the merge's total weight {total} is over the remainder key's 2^{policy.remainder_vk.sb}"
    try:
        up.verify(policy.remainder_vk, proof, remainder, proof_hash(commit), total, backend_name=backend_name)
    except ZkError as exc:
        text = str(exc)
        if "link proof fails" in text:
            return "remainder proof: the link proof fails (D and C(r) do not open to the same vector)"
        if "Groth16 proof fails" in text:
            return "remainder proof: the Groth16 proof fails for this commit hash, total weight W and remainder"
        return f"remainder proof: {text}"
    return None


def check(policy: ZkPolicy, commit: Commit, *, backend_name: str | None = None) -> str | None:
    """``check_merge`` for merges, ``check_update`` for everything else (exempt kinds pass)."""
    if commit.kind == "merge":
        return check_merge(policy, commit, backend_name=backend_name)
    return check_update(policy, commit, backend_name=backend_name)
