"""What an anchor carries from a commit's zk info, and which proofs the chain still wants (issue 15).

Pure helpers of ``fednode.chain.anchoring``: the commitments an anchor sends (``zk_commitments``), a
merge's weights in the program's input order, and the rules for the proof instructions: which of the
genesis policy's keys the chain lacks (``keys_to_seal``: write_vk/seal_vk, write_rvk/seal_rvk), which
anchored records are to be proven (``to_prove``: prove_commit for updates, prove_merge for FedAvg merges
anchored with C(d)), and whether a commit's own proof passes here (``valid_proof``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fednode.history import RepoInfo
from fednode.lazy import lazy_import
from fednode.zk.curve import ZkError, decode
from protocol import chain as layout
from protocol.chain import Kind
from protocol.objects import Commit

if TYPE_CHECKING:
    from fednode.zk import policy as zpol
else:
    zpol = lazy_import("fednode.zk.policy")  # numpy and the curve code: only for repositories with a policy


ZkPair = tuple[bytes | None, bytes | None]  # (commitment, remainder) an anchor carries
NO_ZK: ZkPair = (None, None)


def zk_commitments(commit: Commit) -> tuple[ZkPair, str | None]:
    """What ``commit``'s anchor carries from its ``info["zk"]`` (issue 15): ``((commitment, remainder),
    why not)``. An update's commitment is sent with it; a merge's C(d) with C(r). Malformed zk info
    (``why`` says what) sends nothing: the program would refuse it and hold the outbox for ever."""
    zk = commit.info.get("zk")
    if zk is None:
        return NO_ZK, None
    if not isinstance(zk, dict) or zk.get("v") != 1:
        return NO_ZK, "info.zk is not a version-1 map"
    if "none" in zk:  # the commit says why it carries no commitment
        return NO_ZK, None
    points: dict[str, bytes] = {}
    for key in ("commitment", "remainder"):
        value = zk.get(key)
        if value is None:
            continue
        if not isinstance(value, bytes):
            return NO_ZK, f"info.zk.{key} is not bytes"
        try:
            decode(value, f"info.zk.{key}")  # 64 bytes, on the curve (the program's check), or infinity
        except ZkError as exc:
            return NO_ZK, str(exc)
        points[key] = value
    c, r = points.get("commitment"), points.get("remainder")
    if c is None:
        return NO_ZK, "info.zk has no commitment"
    if commit.kind != "merge":
        return ((c, None), None) if r is None else (NO_ZK, "info.zk.remainder on a commit that is not a merge")
    # A merge anchors C(d) with C(r): the program checks sum_k w_k C_k == W C(d) + C(r). C(d) alone
    # (median, trimmed mean, Krum: not linear) is sent as nothing: without a remainder the program's
    # rule is C == sum_k w_k C_k, a commitment to the weighted sum S, which C(d) is not.
    return ((c, r), None) if r is not None else (NO_ZK, None)


def merge_weights(commit: Commit) -> tuple[int, ...]:
    """The program's inputs are the merge commit's parents (so every parent is anchored first);
    a parent that was only the merge base carries weight 0."""
    record = commit.info.get("merge") or {}
    by_input = dict(zip([str(c) for c in record.get("inputs", [])],
                        [int(w) for w in record.get("weights", [])], strict=False))  # fmt: skip
    return tuple(by_input.get(str(p), 0) for p in commit.parents)


def valid_proof(repo: RepoInfo, commit: Commit) -> bool:
    """Whether ``commit``'s proof passes the genesis policy here: only then is an anchored, unproven
    update (or FedAvg merge) queued again (a proof the program refused once would hold the queue again
    and again)."""
    try:
        policy = zpol.policy_of(repo.settings)
    except ZkError:
        return False
    if policy is None or zpol.proof_of(commit) is None:
        return False
    if commit.kind == "merge":
        return zpol.needs_remainder_proof(policy, commit) and zpol.check_merge(policy, commit) is None
    return zpol.check_update(policy, commit) is None


def provable_merge(record: layout.CommitAccount, chain_repo: layout.RepoAccount | None) -> bool:
    """A merge record prove_merge can take: the repository has a remainder key and the merge was anchored
    with C(d) (the anchor carried C(d), C(r); a merge too large for them carries no commitment)."""
    return (chain_repo is not None and chain_repo.has_remainder_key and record.kind == Kind.MERGE
            and record.commitment is not None)  # fmt: skip


def keys_to_seal(policy: zpol.ZkPolicy, chain_repo: layout.RepoAccount) -> list[tuple[bytes, int, bool]]:
    """The policy's keys the chain lacks, as (key, bound2, remainder): the update key when proofs are
    required, the remainder key (no bound) when the policy names one."""
    keys = []
    if policy.require_proof and not chain_repo.requires_proofs:
        keys.append((policy.vk_bytes, policy.bound2, False))
    if policy.remainder_vk_bytes is not None and not chain_repo.has_remainder_key:
        keys.append((policy.remainder_vk_bytes, 0, True))
    return keys


def to_prove(record: layout.CommitAccount, chain_repo: layout.RepoAccount | None) -> bool:
    """An anchored record the chain wants proven and is not: an update or revert in a repository that
    requires proofs, a merge prove_merge can take."""
    if record.proven or chain_repo is None:
        return False
    if record.kind == Kind.MERGE:
        return provable_merge(record, chain_repo)
    return chain_repo.requires_proofs and record.kind != Kind.INIT
