"""``fsck --repair``: restore damaged blocks (missing, or bytes that fail their hash) from model files
and from peers.

A model file gives back the blocks of every tensor stored as a snapshot (the UnixFS DAG of its bytes,
leaves and inner nodes alike): the file is re-hashed into blocks and exactly the damaged ones are
replaced. What no file gives (commits, manifests, delta payloads) is fetched again from peers by a
running daemon: the bad bytes are deleted first (a provider serving them would be penalised by every
peer that asks), then the daemon fetches each damaged block's ref target, which brings what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fednode.errors import Corrupt, FednodeError
from fednode.storage.store import PUBLIC, Store
from fednode.tensors.modelio import open_model
from protocol.multiformats import CID
from protocol.unixfs import UnixFSBuilder

# (repository id, root commit) -> whether the daemon fetched the root's whole closure
Refetch = Callable[[bytes, CID], bool]


@dataclass
class RepairResult:
    from_files: list[CID] = field(default_factory=list)
    refetched: list[CID] = field(default_factory=list)  # roots fetched again by the daemon
    failed: list[str] = field(default_factory=list)  # why a root could not be fetched


def replace_blocks(store: Store, blocks: dict[CID, bytes]) -> list[CID]:
    """Store the right bytes for CIDs whose stored bytes are wrong or missing (``fsck --repair``).

    ``put_block`` deduplicates by CID, so it keeps bad bytes; this replaces them, in one transaction.
    Each new block is hash-checked; a stored block that already matches is left alone. Only the
    CIDs given are read and hashed: the commit hot path is unchanged. Returns the CIDs replaced.
    """
    replaced = []
    with store.write(size_hint=sum(len(b) for b in blocks.values())) as txn:
        for cid, block in blocks.items():
            if not cid.verify(block):
                raise Corrupt(f"block {cid}: the repair source does not match its hash")
            holders: list[bytes] = []
            if txn.has_block(cid):
                if cid.verify(txn.get_block(cid)):
                    continue
                holders = txn.block_repos(cid)  # the block index survives the replacement
                txn.delete_block(cid)
            txn.put_block(cid, block, trusted=True)  # checked just above
            for repo_id in holders:
                txn.tag_block(cid, repo_id)
            replaced.append(cid)
    return replaced


def blocks_from_files(paths: list[Path], wanted: set[CID]) -> dict[CID, bytes]:
    """The ``wanted`` blocks that the files' tensors, stored as snapshots, consist of."""
    found: dict[CID, bytes] = {}

    def put(cid: CID, block: bytes | memoryview) -> None:
        if cid in wanted:
            found[cid] = bytes(block)  # a copy: the builder reuses its buffers

    for path in paths:
        source = open_model(path)
        try:
            for name in source.tensors:
                builder = UnixFSBuilder(put)
                for chunk in source.chunks(name):
                    builder.write(chunk)
                builder.finish()
                if len(found) == len(wanted):
                    return found
        finally:
            source.close()
    return found


def repair(store: Store, find: Callable[[], dict[CID, tuple[bytes, CID]]], files: list[Path],
           connect: Callable[[], Refetch | None]) -> RepairResult:
    """Restore the damaged blocks ``find`` reports (see ``fsck.Marked``) from ``files``, then, for
    what is left, through the daemon that ``connect`` returns (None: no daemon; that damage stays).

    In rounds: the mark does not descend below a damaged block, so damage under it shows only once it
    is repaired. Each round must find a block not tried before, so this ends.
    """
    result = RepairResult()
    refetch: Refetch | None = None
    connected = False
    tried: set[CID] = set()
    damaged = find()
    while set(damaged) - tried:
        new = {cid: origin for cid, origin in damaged.items() if cid not in tried}  # each block is tried once
        tried |= set(new)
        if files:
            replaced = replace_blocks(store, blocks_from_files(files, set(new)))
            result.from_files += replaced
            with store.write() as txn:  # a block that was missing is its origin's again (a pin's: public)
                for cid in replaced:
                    txn.tag_block(cid, new[cid][0] if len(new[cid][0]) == 32 else PUBLIC)
        left = {cid: origin for cid, origin in new.items() if cid not in result.from_files}
        if left and not connected:
            refetch, connected = connect(), True
        if left and refetch is not None:
            with store.write() as txn:  # bad bytes are worse than none: peers penalise whoever serves them
                for cid in left:
                    txn.delete_block(cid)
            for repo_id, root in dict.fromkeys(left.values()):
                try:
                    ok = refetch(repo_id, root)
                except FednodeError as exc:
                    result.failed.append(f"{root}: {exc}")
                    continue
                if ok:
                    result.refetched.append(root)
                else:
                    result.failed.append(f"{root}: the daemon could not fetch it from any peer in time")
        damaged = find()
    return result
