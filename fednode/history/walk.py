"""Walks over the commit graph: ancestry newest first, ancestor tests, merge bases."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fednode.history import objstore
from fednode.storage.store import Txn
from protocol.multiformats import CID
from protocol.objects import Commit


def ancestry(txn: Txn, heads: list[CID], stop: Callable[[CID], bool] | None = None) -> dict[CID, Commit]:
    """Every commit reachable from ``heads``; those for which ``stop`` is true are left out and not
    descended into."""
    commits: dict[CID, Commit] = {}
    stack = list(heads)
    while stack:
        cid = stack.pop()
        if cid in commits or (stop is not None and stop(cid)):
            continue
        commits[cid] = objstore.load_commit(txn, cid)
        stack.extend(commits[cid].parents)
    return commits


def children_first(commits: dict[CID, Commit]) -> Iterator[tuple[CID, Commit]]:
    """``commits`` children before parents, newest first among those ready (ties by CID)."""
    children: dict[CID, int] = dict.fromkeys(commits, 0)
    for commit in commits.values():
        for p in commit.parents:
            if p in children:
                children[p] += 1

    def newest(c: CID) -> tuple[int, str]:
        return commits[c].time_ms, str(c)

    ready = sorted((c for c, n in children.items() if n == 0), key=newest)
    while ready:
        cid = ready.pop()
        yield cid, commits[cid]
        for p in commits[cid].parents:
            if p not in children:
                continue
            children[p] -= 1
            if children[p] == 0:
                ready.append(p)
                ready.sort(key=newest)


def is_ancestor(txn: Txn, old: CID, new: CID) -> bool:
    """Whether ``old`` is ``new`` or one of its ancestors. Depth-first from ``new``: for a
    fast-forward it stops at ``old``, after reading only the commits in between."""
    seen: set[CID] = set()
    stack = [new]
    while stack:
        cid = stack.pop()
        if cid == old:
            return True
        if cid not in seen:
            seen.add(cid)
            stack.extend(objstore.load_commit(txn, cid).parents)
    return False


def merge_base(txn: Txn, cids: list[CID]) -> CID | None:
    """The newest commit that is an ancestor of all ``cids`` (None if unrelated)."""
    common = set.intersection(*(set(ancestry(txn, [cid])) for cid in cids))
    for cid, _ in children_first(ancestry(txn, cids)):
        if cid in common:
            return cid
    return None
