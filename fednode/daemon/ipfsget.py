"""``POST /ipfs/get``: fetch any UnixFS file by CID over bitswap, bounded, everything or nothing.

Bounds, checked as blocks arrive: codecs raw and dag-pb only; the root's declared size at most
the caller's ``max_bytes``; no deeper than ``unixfs.max_depth`` of that size (a loop cannot be
built from hashes, and a deep chain stops there); at most ``MAX_LINKS`` links per node (Helia's
default layout has 1024, Kubo's 174) and ``MAX_BLOCKS`` blocks per file, counted as links are read;
each block holds the content size its parent declares for it, checked on arrival before it is
stored (a raw leaf of 4 MiB named as 10 bytes is refused with a strike); blocks stored at most the
declared size plus node overhead.
Blocks are asked of the connected peers (the root of all of them, the rest of whoever sent the level
above); when they do not answer within ``bitswap.FIND_AFTER``, the DHT's providers of the root are
looked up once per fetch (``find``), dialled and asked too, as Kubo looks up providers after its
first second. Every block is hash-checked as it is stored (``LMDBBlockStore.put_block``) and the whole file
again at the end (``unixfs.file_size(verify=True)``). On any failure, the blocks this fetch stored
are deleted again (all but what a commit, a pin or another fetch came to hold meanwhile): nothing
stays, and the caller gets one line.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from libp2p.peer.id import ID

from fednode.daemon.bitswap import BitswapHandle, want_blocks
from fednode.errors import FednodeError
from fednode.storage import pins
from fednode.storage.diskspace import DiskFull
from fednode.storage.store import Store
from fednode.workflows.fsck import mark
from protocol.multiformats import CID, DAG_PB, RAW, FormatError
from protocol.unixfs import NotAFile, declared_size, decode_file_node, decode_node, file_size, max_depth

MAX_LINKS = 4096  # per node
MAX_BLOCK = 4 << 20  # the most a block may hold (every bitswap implementation's message limit)
MAX_BLOCKS = 1 << 19  # per file (of Kubo's 256 KiB chunks: 128 GiB); each costs memory while asked for
NODE_OVERHEAD = 64 * 1024  # bytes a dag-pb node may add over its content (links, sizes)


class TooLarge(FednodeError):
    """The file declares more bytes than the caller allows."""


@dataclass
class GetProgress:
    """What a running fetch has stored so far (for a progress report)."""

    blocks: int = 0
    bytes: int = 0
    size: int | None = None  # the root's declared size, once the root arrived


def _children(cid: CID, block: bytes) -> dict[CID, int]:
    """The block's children and the content size it declares for each."""
    if cid.codec == RAW:
        return {}
    if cid.codec != DAG_PB:
        raise FormatError(f"block {cid} has codec 0x{cid.codec:x}: not a UnixFS file (raw or dag-pb only)")
    links = decode_node(block)[0]
    if len(links) > MAX_LINKS:
        raise FormatError(f"block {cid} has {len(links)} links, over the limit of {MAX_LINKS}")
    node = decode_file_node(block)
    return dict(zip(node.links, node.blocksizes, strict=True))


Finder = Callable[[CID], Awaitable[list[ID]]]  # dial the DHT's providers of a CID; who is connected now


async def _want(handle: BitswapHandle, cids: list[CID], providers: list[ID], sizes: dict[CID, int],
                find: Callable[[], Awaitable[list[ID]]] | None) -> None:
    """Fetch ``cids`` from ``providers`` (those who sent the level above), or from every connected
    peer for the root; ``providers`` becomes who delivered these. A block that does not hold the
    size its parent declares (``sizes``) is refused on arrival."""
    got = await want_blocks(handle, cids, providers or None, sizes, find)
    if got:
        providers[:] = got


async def _fetch(handle: BitswapHandle, root: CID, max_bytes: int, stored: list[CID], progress: GetProgress,
                 asked: list[CID], min_free: int, finder: Finder | None) -> int:
    """Fetch level by level into the store, listing in ``stored`` what was new and in ``asked`` all
    that was missing when asked for (what a failure must delete: part of a level may have arrived);
    returns the size."""
    store = handle.store
    providers: list[ID] = []
    found: list[ID] | None = None  # the DHT's providers of the root, once looked up

    async def find() -> list[ID]:
        nonlocal found
        if found is None:
            assert finder is not None
            found = await finder(root)
        return found

    level, depth, size, budget = [root], 0, 0, 0
    sizes: dict[CID, int] = {}  # what the level's parents declare for each block
    count = 1  # blocks this file has named so far
    while level:
        with store.read() as txn:
            missing = [c for c in dict.fromkeys(level) if not txn.has_block(c)]
        asked += missing
        need = sum(sizes.get(c, MAX_BLOCK) for c in missing)  # what the parents declare (the root: the most)
        if shutil.disk_usage(store.path).free - need < min_free:
            raise DiskFull(f"fetching {root} would leave less than {min_free} bytes free on the disk "
                           "([network] min_free_bytes)")
        await _want(handle, missing, providers, {c: sizes[c] for c in missing if c in sizes},
                    find if finder is not None else None)
        new = set(missing)
        children: list[CID] = []
        sizes = {}
        with store.read() as txn:
            for cid in dict.fromkeys(level):
                if not txn.has_block(cid):
                    raise FednodeError(f"block {cid} did not arrive from any peer")
                if cid in new:
                    stored.append(cid)
                    progress.blocks += 1
                    progress.bytes += txn.block_size(cid)
                block = txn.get_block(cid)
                if cid == root:
                    try:
                        size = declared_size(txn.get_block, root)
                    except NotAFile as exc:
                        raise FormatError(f"{root} is a UnixFS {exc.kind}, not a file: ipfs get fetches files "
                                          "(fetch each file in it by its own CID)") from None
                    if size > max_bytes:
                        raise TooLarge(f"file {root} declares {size} bytes, over the limit of {max_bytes}")
                    budget, progress.size = size + NODE_OVERHEAD + size // 16, size
                kids = _children(cid, block)
                count += len(kids)
                if count > MAX_BLOCKS:  # counted as links are read: a wide level is refused before it is asked
                    raise FormatError(f"file {root} has more than {MAX_BLOCKS} blocks")
                children += kids
                sizes.update(kids)
        if progress.bytes > budget:
            raise FormatError(f"file {root} holds more blocks than its {size} bytes need")
        depth += 1
        if children and depth > max_depth(size):
            raise FormatError(f"file {root} is deeper than {max_depth(size)} levels")
        level = children
    with store.read() as txn:
        return file_size(txn.get_block, root, verify=True)


async def get_file(handle: BitswapHandle, root: CID, max_bytes: int, timeout: float, pin: bool,
                   progress: GetProgress | None = None, min_free: int = 0,
                   finder: Finder | None = None) -> dict[str, int | str]:
    """Fetch the file ``root`` from the connected peers (and, with ``finder``, the DHT's providers of
    it); {cid, size, blocks} (blocks newly stored). A level whose declared bytes would leave less
    than ``min_free`` free on the disk is not asked for.

    Raises ``TooLarge``, ``FormatError``, ``FednodeError`` or ``trio.TooSlowError``; then the blocks
    it stored are gone again."""
    if root.codec not in (RAW, DAG_PB):
        raise FormatError(f"{root} has codec 0x{root.codec:x}: not a UnixFS file (raw or dag-pb only)")
    stored: list[CID] = []
    asked: list[CID] = []
    progress = progress or GetProgress()
    RUNNING[root] += 1
    try:
        with trio.fail_after(timeout):
            size = await _fetch(handle, root, max_bytes, stored, progress, asked, min_free, finder)
    except BaseException:
        _done(root)  # first: our own root must not keep what we stored
        forget(handle.store, asked)
        raise
    _done(root)
    if pin:
        with handle.store.write() as txn:
            pins.pin(txn, root, size, "get")
    return {"cid": str(root), "size": size, "blocks": len(stored)}


# roots of the ``ipfs get``s running in this process: a failed one keeps what they already hold
RUNNING: Counter[CID] = Counter()


def _done(root: CID) -> None:
    RUNNING[root] -= 1
    if RUNNING[root] <= 0:
        del RUNNING[root]


def forget(store: Store, stored: list[CID]) -> None:
    """Delete what a failed fetch stored, except what something else came to need meanwhile (a
    commit, a pin, or another fetch running that reaches the same block: ``put_block`` dedups, so
    that block is the one they hold). The mark runs inside the deleting transaction, as gc's does;
    the running gets' roots are walked through what is present."""
    if not stored:
        return
    with store.write() as txn:
        needed = mark(txn, rehash=False, running=list(RUNNING)).reachable
        for cid in stored:
            if bytes(cid) not in needed:
                txn.delete_block(cid)


MAX_JOBS = 64  # kept for progress polls; the oldest finished one goes first


@dataclass
class GetJob:
    """One ``POST /ipfs/get {"wait": false}``: its progress, then its result or its one-line error."""

    progress: GetProgress
    result: dict[str, int | str] | None = None
    error: str | None = None
    done: bool = False

    def report(self) -> dict[str, object]:
        p = self.progress
        return {"done": self.done, "blocks": p.blocks, "bytes": p.bytes, "size": p.size,
                "result": self.result, "error": self.error}


class GetJobs:
    """The daemon's background ``ipfs get`` jobs, by id (for ``POST /ipfs/progress``)."""

    def __init__(self) -> None:
        self._jobs: dict[str, GetJob] = {}
        self._next = 0

    def new(self) -> tuple[str, GetJob]:
        if len(self._jobs) >= MAX_JOBS:
            finished = [k for k, j in self._jobs.items() if j.done]
            if not finished:
                raise FednodeError(f"{MAX_JOBS} ipfs get jobs are running already")
            del self._jobs[finished[0]]
        self._next += 1
        job_id = str(self._next)
        self._jobs[job_id] = job = GetJob(GetProgress())
        return job_id, job

    def get(self, job_id: str) -> GetJob | None:
        return self._jobs.get(job_id)
