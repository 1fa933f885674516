"""Which repositories hold each block (the store's ``blockrepos`` index), as read access control needs.

A private repository's blocks are served only to its members, so the daemon must know, per block,
whose it is. The index is written where blocks become part of a repository: a local commit
(``tag_commit``, from ``objstore.put_objects``), the daemon's fetches, a CAR import; content of no
repository (``ipfs add``/``get``) is tagged ``PUBLIC``. ``migrate`` tags what a store written before
the index holds, once. An untagged block is served to nobody.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from fednode.storage.pins import pins
from fednode.storage.store import PUBLIC, Store, Txn
from protocol.dag import links
from protocol.multiformats import CID, DAG_PB, RAW, FormatError
from protocol.objects import Manifest

INDEX_META = "block_index"  # meta key: b"1" once the store's blocks are indexed
__all__ = ["INDEX_META", "PUBLIC", "migrate", "tag_closure", "tag_commit", "tag_file"]


def tag_file(txn: Txn, root: CID, repo_id: bytes) -> int:
    """Tag every present block of the UnixFS file ``root`` (raw leaves are not read); returns how many."""
    tagged = 0
    stack = [root]
    seen: set[CID] = set()
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        if cid.codec == RAW:
            if txn.has_block(cid):
                txn.tag_block(cid, repo_id)
                tagged += 1
            continue
        if not txn.has_block(cid):
            continue
        txn.tag_block(cid, repo_id)
        tagged += 1
        if cid.codec == DAG_PB:
            try:
                stack.extend(links(cid, txn.get_block(cid)))
            except FormatError:
                continue
    return tagged


def tag_commit(txn: Txn, repo_id: bytes, commit: CID, manifest_cid: CID, manifest: Manifest) -> int:
    """Tag one commit's own blocks: the commit, its manifest and every block of its tensor files
    (not its parents': they were tagged when they were recorded)."""
    txn.tag_block(commit, repo_id)
    txn.tag_block(manifest_cid, repo_id)
    return 2 + sum(tag_file(txn, e.cid, repo_id) for e in manifest.tensors.values() if e.cid is not None)


def tag_closure(txn: Txn, roots: Iterable[CID], repo_id: bytes, seen: set[bytes]) -> int:
    """Tag every present block ``roots`` reach (commits' ancestry included) with ``repo_id``;
    ``seen`` (CID bytes) spares blocks already walked for this repository. Returns how many."""
    tagged = 0
    stack = list(roots)
    while stack:
        cid = stack.pop()
        key = bytes(cid)
        if key in seen:
            continue
        seen.add(key)
        if not txn.has_block(cid):
            continue  # gone (gc) or never fetched: nothing to serve
        txn.tag_block(cid, repo_id)
        tagged += 1
        if cid.codec != RAW:
            try:
                stack.extend(links(cid, txn.get_block(cid)))
            except FormatError:
                continue
    return tagged


def _reflog_roots(txn: Txn) -> Iterable[tuple[bytes, CID]]:
    """(repository, commit) of every reflog entry, of existing branches or deleted ones."""
    for key, value in txn.kv_items("reflog"):
        try:
            entry = json.loads(value)
            texts = [entry.get("old"), entry.get("new")]
        except (ValueError, AttributeError):
            continue
        for text in texts:
            if isinstance(text, str):
                try:
                    yield key[:32], CID.parse(text)
                except FormatError:
                    continue


def migrate(store: Store) -> int | None:
    """Index a store written before the index, once: every block a repository's refs (branches,
    tags, remotes, proposals, genesis, published), reflogs and unfinished fetches reach is tagged
    with that repository, pinned files ``PUBLIC``; a block nothing reaches stays untagged.
    Returns the number of tags written, or None when the store was indexed already."""
    with store.read() as txn:
        if txn.get_meta(INDEX_META) is not None:
            return None
    from fednode.storage.netstate import fetch_records  # the daemon's records: loaded only here (fast start)

    with store.write() as txn:
        if txn.get_meta(INDEX_META) is not None:  # another process did it meanwhile
            return None
        roots: dict[bytes, list[CID]] = {}
        for repo_id, _name, value in txn.all_refs():
            try:
                roots.setdefault(repo_id, []).append(CID.from_bytes(value))
            except FormatError:
                continue  # HEAD names a branch, not a commit
        for repo_id, cid in _reflog_roots(txn):
            roots.setdefault(repo_id, []).append(cid)
        for rec in fetch_records(txn):
            roots.setdefault(rec.repo, []).append(rec.root)
        tagged = sum(tag_closure(txn, cids, repo_id, set()) for repo_id, cids in roots.items())
        tagged += tag_closure(txn, [p.root for p in pins(txn)], PUBLIC, set())
        txn.set_meta(INDEX_META, b"1")
    return tagged
