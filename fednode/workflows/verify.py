"""``verify``: hashes, signatures, membership and reconstructions of a head's whole ancestry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fednode.errors import Corrupt, NotFound
from fednode.history import History, RepoInfo, refs
from fednode.history.states import state_cid
from fednode.lazy import lazy_import
from fednode.storage.netstate import controller_in
from fednode.storage.store import Txn
from protocol.multiformats import CID
from protocol.objects import Commit

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")


@dataclass
class VerifyReport:
    commits: int
    problems: list[str]
    checked: list[CID] = field(default_factory=list)  # the commits verify checked
    publishes: list[CID] = field(default_factory=list)  # checked commits that make the repository public
    # FedAvg merges whose remainder proof passed: with the relation (zkcheck), d is S / W rounded to nearest
    rounding_proven: int = 0


def verify(
    history: History,
    repo: RepoInfo,
    head: CID,
    check_tensors: bool = True,
    verified: Callable[[CID], bool] | None = None,
    rehash: bool = True,
) -> VerifyReport:
    """Hashes, signatures and repository membership of the whole ancestry of ``head``.

    ``verified``: commits already fully verified in ``repo``. They are neither checked nor walked
    (their ancestry was verified with them), so each new head costs O(new commits); their data is
    still read where a new commit's checks need it (a delta base, a merge's inputs).
    ``rehash=False``: tensor DAGs and sizes are checked but their blocks are not re-hashed; only
    for stores whose blocks were hash-checked on arrival (see ``History.check_commit``).
    """
    problems: list[str] = []
    checked: list[CID] = []
    publishes: list[CID] = []
    check_proof, policy = _proof_check(repo, problems)
    remainder_proven = 0
    with history.store.read(buffers=not rehash) as txn:  # rehash=False: leaf sizes are read in place
        seen: set[CID] = set()
        stack = [head]
        while stack:
            cid = stack.pop()
            if cid in seen or (verified is not None and verified(cid)):
                continue
            seen.add(cid)
            checked.append(cid)
            found = history.check_commit(cid, txn, check_tensors, rehash)
            problems += found
            try:
                commit = history.load_commit(cid, txn)
            except (Corrupt, NotFound):
                continue
            problems += _check_links(history, txn, repo, cid, commit)
            if check_proof is not None:
                why = check_proof(commit)
                if why is not None:
                    problems.append(f"commit {cid}: {why}")
                elif _needs_remainder_proof(policy, commit):
                    remainder_proven += 1
            if "visibility" in commit.info:
                problems += _check_publish(history, txn, repo, cid, commit)
                publishes.append(cid)
            if commit.kind == "revert":
                target = commit.info.get("revert", {}).get("target")
                if not isinstance(target, CID):
                    problems.append(f"commit {cid}: revert without a target")
            stack.extend(commit.parents)
    if check_tensors and not problems:
        problems += _check_states(history, head, verified)
    if check_tensors and not problems:
        problems += _check_reverts(history, head, repo, verified)
    return VerifyReport(len(checked), problems, checked, publishes, remainder_proven if not problems else 0)


def _check_links(history: History, txn: Txn, repo: RepoInfo, cid: CID, commit: Commit) -> list[str]:
    """The commit belongs to ``repo`` and its parents have the commit hashes it recorded."""
    problems = []
    if commit.kind == "init":
        if commit.commit_hash() != repo.repo_id:
            problems.append(f"commit {cid}: a foreign genesis commit")
    elif commit.repo != repo.repo_id:
        problems.append(f"commit {cid}: belongs to another repository")
    for parent, recorded in zip(commit.parents, commit.parent_hashes, strict=True):
        try:
            if history.load_commit(parent, txn).commit_hash() != recorded:
                problems.append(f"commit {cid}: parent {parent} does not have the recorded commit hash")
        except (Corrupt, NotFound):
            pass  # reported when the parent itself is checked
    return problems


def _proof_check(repo: RepoInfo, problems: list[str]) -> tuple[Callable[[Commit], str | None] | None, Any]:
    """The repository's proof check (``policy.check``: an update's proof, and a FedAvg merge's remainder
    proof under a policy naming a remainder key) and its policy; (None, None) when it requires no proofs.
    A malformed policy is a problem of its own and fails every update."""
    if "zk" not in repo.settings:
        return None, None
    from fednode.workflows import zkpolicy
    from fednode.zk import policy as zpol
    from fednode.zk.curve import ZkError

    try:
        policy = zkpolicy.repo_policy(repo)
    except ZkError as exc:
        problems.append(f"repository {repo.name}: malformed proof policy ({exc})")
        return (lambda commit: None if commit.kind in zpol.EXEMPT_KINDS else "fails the malformed proof policy"), None
    if policy is None:
        return None, None
    return (lambda commit: zpol.check(policy, commit)), policy


def _needs_remainder_proof(policy: Any, commit: Commit) -> bool:
    from fednode.zk import policy as zpol

    return zpol.needs_remainder_proof(policy, commit)


def _check_publish(history: History, txn: Txn, repo: RepoInfo, cid: CID, commit: Commit) -> list[str]:
    """A commit that makes the repository public is valid only from its owner and only when it changes
    no tensor (the same names, dtypes, shapes and states as its first parent). The owner is the genesis
    author until the repository is bound to an NFT, then the holder the chain recorded; a decision this
    node already recorded (the ``published`` ref, from whoever controlled the repository then) stays valid.
    So a former owner cannot make a sold private repository public."""
    try:
        ctl = controller_in(txn, repo.repo_id)
        owner = ctl.holder if ctl is not None else history.load_commit(repo.genesis, txn).author
        recorded = txn.get_ref(repo.repo_id, refs.PUBLISHED)
        mine = history.load_manifest(commit.weights, txn).tensors
        before = history.load_manifest(history.load_commit(commit.parents[0], txn).weights, txn).tensors
    except (Corrupt, NotFound, IndexError):
        return []  # reported by the checks of the commit itself or of its parent
    if commit.author != owner and recorded != bytes(cid):
        return [f"commit {cid}: only the repository owner can make it public"]
    if set(mine) != set(before) or any((e.dtype, e.shape, e.state) != (before[n].dtype, before[n].shape,
                                                                          before[n].state) for n, e in mine.items()):
        return [f"commit {cid}: a decision to make the repository public changes its weights"]
    return []


def _check_states(history: History, head: CID, verified: Callable[[CID], bool] | None = None) -> list[str]:
    """Every tensor's reconstruction hashes to the state CID its manifest records."""
    problems: list[str] = []
    with history.store.read() as txn:
        for cid, commit in history.walk([head], verified):
            manifest = history.load_manifest(commit.weights, txn)
            parent = None
            if commit.parents:
                try:  # a parent already verified is not re-checked, but must still be readable
                    parent = history.load_manifest(history.load_commit(commit.parents[0], txn).weights, txn)
                except (Corrupt, NotFound) as exc:
                    problems.append(f"commit {cid}: parent {commit.parents[0]}: {exc}")
                    continue
            for name, entry in manifest.tensors.items():
                if entry.encoding == "raw":
                    continue  # state == cid, and its blocks were hash-checked
                if entry.encoding == "same":
                    before = parent.tensors.get(name) if parent else None
                    if before is None or before.state != entry.state:
                        problems.append(f"commit {cid} tensor {name!r}: marked unchanged, state differs from parent")
                    continue
                try:
                    arr = history.tensor_array(cid, name, txn)
                except (Corrupt, NotFound) as exc:
                    problems.append(f"commit {cid} tensor {name!r}: {exc}")
                    continue
                if state_cid(arr) != entry.state:
                    problems.append(f"commit {cid} tensor {name!r}: reconstruction does not match its state CID")
    return problems


def _check_reverts(
    history: History, head: CID, repo: RepoInfo | None = None, verified: Callable[[CID], bool] | None = None
) -> list[str]:
    """Each revert equals its target; each merge equals its recomputation from its record; each
    commitment (``info["zk"]``) matches the stored states (``workflows.zkcheck.check``)."""
    from fednode.workflows import zkcheck
    from fednode.workflows.merging import check_merge

    problems = []
    for cid, commit in history.walk([head], verified):
        if "zk" in commit.info and repo is not None:
            problems += zkcheck.check(history, repo, cid, commit)
        if commit.kind == "merge" and repo is not None:
            problems += check_merge(history, repo, cid)
            continue
        if commit.kind != "revert":
            continue
        target = commit.info["revert"]["target"]
        try:
            a, b = history.state(cid), history.state(target)
        except (Corrupt, NotFound) as exc:
            problems.append(f"revert {cid}: {exc}")
            continue
        if set(a) != set(b) or any(not np.array_equal(a[n][1], b[n][1]) for n in a):
            problems.append(f"revert {cid}: state differs from its target {target}")
    return problems
