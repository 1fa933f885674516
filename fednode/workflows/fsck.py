"""The whole store: ``mark`` what refs, recent reflog entries, pins and unfinished fetches reach;
``fsck`` checks it, ``gc`` deletes the rest, ``damaged_blocks`` tells repair what to fetch again."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from fednode.errors import FednodeError, NotFound
from fednode.history import History, refs, repo_id_text
from fednode.storage.pins import pins
from fednode.storage.store import Txn
from fednode.workflows.verify import VerifyReport, verify
from protocol.dag import all_links
from protocol.multiformats import CID, DAG_CBOR, RAW, FormatError
from protocol.objects import Commit


@dataclass
class Marked:
    """What a mark from every root found: blocks reached (CID bytes), real problems, and the
    damaged blocks (missing or not matching their hash) reachable from refs, each with the
    (repository id, ref target) that reaches it, so a repair knows what to fetch again."""

    reachable: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    damaged: dict[CID, tuple[bytes, CID]] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


REFLOG_ROOT_SECONDS = 90 * 86400  # gc keeps what a branch pointed at in the last 90 days (git's default)


def mark(txn: Txn, rehash: bool = True, fetch_expiry: float | None = None,
         now: float | None = None, running: Iterable[CID] = ()) -> Marked:
    """Mark every block reachable from a ref, then from the reflogs of existing branches (their
    moves of the last REFLOG_ROOT_SECONDS), then from pinned files, then from the daemon's
    unfinished fetches, then from ``running`` (fetch roots the caller has under way, not recorded).

    A ref only ever points at a complete, verified closure (a branch moves after its fetch and
    ``verify``), so a block missing below a ref is a real problem. An unfinished fetch's root is
    walked through what is present only: its missing blocks are the fetch's remaining work, not
    damage, and are summed in ``unfinished``. A present block that fails its hash is a problem
    wherever it is (the fetcher checks each block before storing it). ``rehash=False`` checks
    structure only (raw leaves are not even read). Fetches first recorded more than
    ``fetch_expiry`` seconds ago are not roots: their data is garbage (the daemon drops them).
    """
    out = Marked()
    now = time.time() if now is None else now
    all_refs = list(txn.all_refs())
    for repo_id, name, value in all_refs:
        if name != refs.HEAD:  # HEAD names a branch, not a commit
            root = CID.from_bytes(value)
            _walk(txn, root, out, rehash, (repo_id, root), fetch=False)
    for repo_id, name, _ in all_refs:
        branch = refs.branch_name(name)
        if branch is not None:
            _mark_reflog(txn, repo_id, branch, out, rehash, now)
    _mark_pins(txn, out, rehash)
    _mark_fetches(txn, out, rehash, now, fetch_expiry)
    for root in running:  # the caller's fetches under way (``ipfs get``s): walked through what is present
        _walk(txn, root, out, rehash, (b"", root), fetch=True)
    return out


def _mark_pins(txn: Txn, out: Marked, rehash: bool) -> None:
    """Pinned files (``fednode ipfs add/get``): complete when pinned, so a missing block is damage.
    It is a problem but not in ``damaged``: no repository to fetch it again from (``ipfs get`` does)."""
    for entry in pins(txn):
        if bytes(entry.root) in out.reachable:
            continue
        found = Marked(reachable=out.reachable)
        _walk(txn, entry.root, found, rehash, (b"", entry.root), fetch=False)
        out.problems += [f"pinned file {entry.root}: {p}" for p in found.problems]


def _mark_reflog(txn: Txn, repo_id: bytes, branch: str, out: Marked, rehash: bool, now: float) -> None:
    """A branch's reflog keeps its recent old heads (a reset can be undone) like git's gc.reflogExpire;
    walked as a fetch is: an entry whose commit is gone already is no damage."""
    for entry in txn.reflog(repo_id, branch):
        if entry["time_ms"] < (now - REFLOG_ROOT_SECONDS) * 1000:
            break  # newest first
        for text in (entry["old"], entry["new"]):
            root: CID | None
            try:
                root = CID.parse(text) if text else None
            except FormatError:
                root = None
            if root is not None and bytes(root) not in out.reachable:
                _walk(txn, root, out, rehash, (repo_id, root), fetch=True)


def _mark_fetches(txn: Txn, out: Marked, rehash: bool, now: float, fetch_expiry: float | None) -> None:
    """The daemon's unfinished fetches: what they stored is kept until they expire."""
    from fednode.storage.netstate import fetch_records  # the daemon's records: loaded only for gc/fsck (fast start)

    names = {rid: name for name, rid in txn.list_repos().items()}
    for rec in fetch_records(txn):
        age = None if rec.since is None else now - rec.since
        if fetch_expiry is not None and age is not None and age > fetch_expiry:
            out.expired.append(f"fetch of {rec.root} expired ({_age(age)} old): its blocks are garbage for gc")
            continue
        present, missing = _walk(txn, rec.root, out, rehash, (rec.repo, rec.root), fetch=True)
        if missing:
            repo = names.get(rec.repo, repo_id_text(rec.repo))
            out.unfinished.append(f"fetch of {rec.root} in {repo} unfinished: {present} blocks stored, {missing} "
                                  f"missing so far" + ("" if age is None else f", recorded {_age(age)} ago"))


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{max(seconds, 0):.0f} s"


def _walk(txn: Txn, root: CID, out: Marked, rehash: bool, origin: tuple[bytes, CID], fetch: bool) -> tuple[int, int]:
    """Mark what ``root`` (of repository ``origin[0]``) reaches; ``fetch``: an unfinished fetch's root,
    whose missing blocks are expected. Returns (blocks newly marked and present, newly found missing)."""
    present = missing = 0
    stack = [root]
    while stack:
        cid = stack.pop()
        key = bytes(cid)
        if key in out.reachable:
            continue
        out.reachable.add(key)
        if cid.codec == RAW and not rehash:
            present += 1  # a leaf has no links: presence is all gc needs (checked by the first mark)
            continue
        try:
            block = txn.get_block(cid)
        except NotFound as exc:
            missing += 1
            if not fetch:
                out.problems.append(str(exc))
                out.damaged[cid] = origin
            continue
        present += 1
        if rehash and not cid.verify(block):
            out.problems.append(f"block {cid} does not match its hash")
            out.damaged[cid] = origin
            continue
        try:
            stack.extend(all_links(cid, block))
        except FormatError as exc:
            out.problems.append(f"block {cid}: {exc}")
    return present, missing


def reachable_blocks(history: History, fetch_expiry: float | None = None) -> tuple[set[bytes], list[str]]:
    """Every block reachable from every ref of every repository and every unfinished fetch (as CID
    bytes), and the problems found on the way (see ``mark``)."""
    with history.store.read() as txn:
        marked = mark(txn, fetch_expiry=fetch_expiry)
    return marked.reachable, marked.problems


def damaged_blocks(history: History, fetch_expiry: float | None = None) -> dict[CID, tuple[bytes, CID]]:
    """Blocks missing below a ref or failing their hash, each with the (repository id, root) reaching it."""
    with history.store.read() as txn:
        return mark(txn, fetch_expiry=fetch_expiry).damaged


@dataclass
class FsckReport(VerifyReport):
    unfinished: list[str] = field(default_factory=list)  # notes on unfinished fetches: not problems
    expired: list[str] = field(default_factory=list)  # fetches past [network] fetch_expiry_seconds
    damaged: dict[CID, tuple[bytes, CID]] = field(default_factory=dict)  # see Marked


def fsck(history: History, fetch_expiry: float | None = None) -> FsckReport:
    """Every reachable block present and hash-verified, every commit signature valid; unfinished
    fetches are reported apart (``unfinished``), as they are no damage."""
    with history.store.read() as txn:
        marked = mark(txn, fetch_expiry=fetch_expiry)
    problems = marked.problems
    commits = 0
    for repo in history.repos():
        heads = list(history.branches(repo).values()) + list(history.tags(repo).values())
        seen: set[CID] = set()
        for head in heads:
            report = verify(history, repo, head, check_tensors=False)
            problems += [p for p in report.problems if p not in problems]
            seen |= {c for c, _ in history.walk([head])} if not report.problems else set()
        commits += len(seen)
    return FsckReport(commits, sorted(set(problems)), unfinished=marked.unfinished, expired=marked.expired,
                      damaged=marked.damaged)


def gc(history: History, fetch_expiry: float | None = None) -> tuple[int, int]:
    """Delete unreachable blocks; returns (blocks, bytes) removed. Refuses on a broken store.

    Unfinished fetches (not expired) keep what they stored. The mark that decides is redone inside
    the sweep's write transaction (structure only, no hashing: the first mark checked the hashes),
    so a commit or a fetch that stores blocks while gc runs never loses them.
    """
    _, problems = reachable_blocks(history, fetch_expiry)
    if problems:
        raise FednodeError(f"fsck found problems; not collecting: {problems[0]}")
    removed = freed = 0
    with history.store.write() as txn:
        marked = mark(txn, rehash=False, fetch_expiry=fetch_expiry)
        if marked.problems:
            raise FednodeError(f"the store changed while collecting; not collecting: {marked.problems[0]}")
        garbage = [cid for cid in txn.iter_block_cids() if bytes(cid) not in marked.reachable]
        for cid in garbage:
            if cid.codec == DAG_CBOR and txn.commit_repo(cid) is not None:
                try:  # a collected commit leaves the revision indexes too
                    txn.unindex_commit(cid, Commit.decode(txn.get_block(cid)).commit_hash())
                except FormatError:
                    pass
            freed += txn.delete_block(cid)
            removed += 1
    return removed, freed
