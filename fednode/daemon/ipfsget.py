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
from fednode.storage.store import Store, Txn
from fednode.workflows.fsck import mark
from protocol.multiformats import CID, DAG_PB, RAW, FormatError
from protocol.symlinks import SYMLINK, decode_symlink, inside
from protocol.unixfs import (
    DIRECTORY,
    HAMT_SHARD,
    NotAFile,
    declared_size,
    decode_directory,
    decode_file_node,
    decode_hamt,
    decode_node,
    directory_entries,
    file_size,
    is_directory_node,
    max_depth,
    unixfs_type,
)

MAX_LINKS = 8192  # per node: a plain directory under Kubo's 256 KiB sharding threshold has at most 7,489
MAX_BLOCK = 4 << 20  # the most a block may hold (every bitswap implementation's message limit)
MAX_BLOCKS = 1 << 19  # per file (of Kubo's 256 KiB chunks: 128 GiB); each costs memory while asked for
NODE_OVERHEAD = 64 * 1024  # bytes a dag-pb node may add over its content (links, sizes)
MAX_DIR_DEPTH = 64  # directories within directories
MAX_ENTRIES = 1 << 16  # entries of a directory tree in all
DIR_SLICE = 64  # a directory's entries asked for at once (each block up to MAX_BLOCK: 256 MiB)


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


class _Get:
    """One ``ipfs get``: what it asked for and stored (a failure deletes it), who delivered last."""

    def __init__(self, handle: BitswapHandle, root: CID, progress: GetProgress, min_free: int,
                 finder: Finder | None) -> None:
        self.handle, self.root, self.progress, self.min_free, self.finder = handle, root, progress, min_free, finder
        self.stored: list[CID] = []  # new blocks
        self.asked: list[CID] = []  # every block missing when asked for (part of a level may have arrived)
        self.providers: list[ID] = []  # who sent the last level (empty: every connected peer is asked)
        self.found: list[ID] | None = None  # the DHT's providers of the root, once looked up

    async def find(self) -> list[ID]:
        if self.found is None:
            assert self.finder is not None
            self.found = await self.finder(self.root)
        return self.found

    async def level(self, cids: list[CID], sizes: dict[CID, int]) -> int:
        """Fetch what of ``cids`` is missing (a block that does not hold the content size its parent
        declares in ``sizes`` is refused on arrival); the bytes newly stored. The disk must keep
        ``min_free`` after the blocks' declared sizes (or the most a block may be)."""
        store = self.handle.store
        with store.read() as txn:
            missing = [c for c in dict.fromkeys(cids) if not txn.has_block(c)]
        self.asked += missing
        need = sum(sizes.get(c, MAX_BLOCK) for c in missing)  # what the parents declare (a root: the most)
        if shutil.disk_usage(store.path).free - need < self.min_free:
            raise DiskFull(f"fetching {self.root} would leave less than {self.min_free} bytes free on the disk "
                           "([network] min_free_bytes)")
        got = await want_blocks(self.handle, missing, self.providers or None,
                                {c: sizes[c] for c in missing if c in sizes},
                                self.find if self.finder is not None else None)
        if got:
            self.providers[:] = got
        added = 0
        with store.read() as txn:
            for cid in missing:
                if not txn.has_block(cid):
                    raise FednodeError(f"block {cid} did not arrive from any peer")
                self.stored.append(cid)
                added += txn.block_size(cid)
        self.progress.blocks += len(missing)
        self.progress.bytes += added
        return added

    async def file(self, root: CID, max_bytes: int, whole: bool) -> int:
        """Fetch the file ``root`` (its root block already here) level by level; its size. ``whole``:
        the file is all this get fetches (its size is the progress's)."""
        store = self.handle.store
        level, depth, size, budget, got = [root], 0, 0, 0, 0
        sizes: dict[CID, int] = {}  # what the level's parents declare for each block
        count = 1  # blocks this file has named so far
        while level:
            got += await self.level(level, sizes)
            children: list[CID] = []
            sizes = {}
            with store.read() as txn:
                for cid in dict.fromkeys(level):
                    block = txn.get_block(cid)
                    if cid == root:
                        got += len(block)  # fetched before (the get's first level, or with its directory)
                        size = _declared(txn, root)
                        if size > max_bytes:
                            raise TooLarge(f"file {root} declares {size} bytes, over the limit of {max_bytes}")
                        budget = size + NODE_OVERHEAD + size // 16
                        if whole:
                            self.progress.size = size
                    kids = _children(cid, block)
                    count += len(kids)
                    if count > MAX_BLOCKS:  # counted as links are read: a wide level is refused before it is asked
                        raise FormatError(f"file {root} has more than {MAX_BLOCKS} blocks")
                    children += kids
                    sizes.update(kids)
            if got > budget:
                raise FormatError(f"file {root} holds more blocks than its {size} bytes need")
            depth += 1
            if children and depth > max_depth(size):
                raise FormatError(f"file {root} is deeper than {max_depth(size)} levels")
            level = children
        with store.read() as txn:
            return file_size(txn.get_block, root, verify=True)

    async def tree(self, max_bytes: int) -> tuple[int, int]:
        """Fetch the directory ``self.root`` (present) and all under it: its directory nodes (plain or
        HAMT shards) level by level, then each distinct file; (bytes of its files, file entries), as
        written. Bounded: MAX_DIR_DEPTH levels, MAX_LINKS links a node, MAX_ENTRIES in all (as
        fetched, and as written: ``_expanded``), the files' declared sizes within ``max_bytes``."""
        store = self.handle.store
        level, depth, entries, shard_links, fetched = [self.root], 0, 0, 0, 0
        while level:
            depth += 1
            if depth > MAX_DIR_DEPTH:
                raise FormatError(f"directory {self.root} nests deeper than {MAX_DIR_DEPTH} levels")
            children: list[CID] = []  # entries and HAMT sub-shards: both fetched, directories expanded next
            with store.read() as txn:
                for cid in level:
                    block = txn.get_block(cid)
                    found, shards = decode_hamt(block) if unixfs_type(block) == HAMT_SHARD \
                        else (decode_directory(block), [])
                    entries, shard_links = entries + len(found), shard_links + len(shards)
                    if len(found) + len(shards) > MAX_LINKS:
                        raise FormatError(f"directory {self.root} has a node of more than {MAX_LINKS} links")
                    if entries > MAX_ENTRIES or shard_links > MAX_ENTRIES:  # (a HAMT has fewer shards than entries)
                        raise FormatError(f"directory {self.root} holds more than {MAX_ENTRIES} "
                                          f"{'entries' if entries > MAX_ENTRIES else 'HAMT shards'}")
                    children += [e.cid for e in found] + shards
            # an entry's first block has no declared size (a raw leaf may be a whole 4 MiB file): asked
            # DIR_SLICE at a time, the bytes so far held to --max-bytes (with room for the directory nodes)
            for at in range(0, len(children), DIR_SLICE):
                fetched += await self.level(children[at:at + DIR_SLICE], {})
                if fetched > max_bytes + max_bytes // 16 + 1024 * (entries + shard_links) + MAX_BLOCK:
                    raise TooLarge(f"directory {self.root} holds more than {max_bytes} bytes, the limit")
            level = []
            with store.read() as txn:
                for cid in dict.fromkeys(children):
                    if cid.codec == DAG_PB and is_directory_node(txn.get_block(cid)):
                        level.append(cid)
                    elif cid.codec not in (RAW, DAG_PB):
                        raise FormatError(f"directory {self.root} holds {cid}, of codec 0x{cid.codec:x}: "
                                          "not a UnixFS file or directory")
        with store.read() as txn:  # the tree as write_tree will write it: each path, however shared
            total, written, distinct = _expanded(txn, self.root, max_bytes)
        self.progress.size = total
        for f in distinct:  # each distinct file fetched once
            await self.file(f, max_bytes, whole=False)
        return total, written


def _expanded(txn: Txn, root: CID, max_bytes: int) -> tuple[int, int, list[CID]]:
    """Walk the fetched tree path by path, as ``write_tree`` writes it (a directory named twice is
    written twice: counted twice, so a DAG of shared directories cannot expand without bound):
    each directory's entries across its HAMT shards, no name twice, at most MAX_ENTRIES entries and
    ``max_bytes`` of files. (bytes of its files, file entries, the distinct files)."""
    stack: list[tuple[CID, list[str]]] = [(root, [])]  # a directory, and its names below the top
    entries, total, written = 0, 0, 0
    sizes: dict[CID, int] = {}
    while stack:
        cid, parts = stack.pop()
        for entry in directory_entries(txn.get_block, cid):
            entries += 1
            if entries > MAX_ENTRIES:
                raise FormatError(f"directory {root} holds more than {MAX_ENTRIES} entries")
            node = txn.get_block(entry.cid) if entry.cid.codec == DAG_PB else None
            kind = unixfs_type(node) if node is not None else None
            if kind in (DIRECTORY, HAMT_SHARD):
                stack.append((entry.cid, [*parts, entry.name]))
                continue
            if node is not None and kind == SYMLINK:  # written as a link only if it stays inside the tree
                target = decode_symlink(node)
                if not inside(parts, target):
                    raise FormatError(f"directory {root}: the symbolic link {'/'.join([*parts, entry.name])[:80]!r} "
                                      f"leads out of the tree ({target[:60]!r})")
                continue
            if entry.cid not in sizes:
                if entry.cid.codec not in (RAW, DAG_PB):
                    raise FormatError(f"directory {root} holds {entry.cid}, of codec 0x{entry.cid.codec:x}: "
                                      "not a UnixFS file or directory")
                sizes[entry.cid] = _declared(txn, entry.cid)
            total += sizes[entry.cid]
            written += 1
            if total > max_bytes:
                raise TooLarge(f"directory {root} declares more than {max_bytes} bytes of files, the limit")
    return total, written, list(sizes)


def _declared(txn: Txn, root: CID) -> int:
    """A file root's declared size; a symbolic link, sharded directory or other non-file says what it is."""
    try:
        return declared_size(txn.get_block, root)
    except NotAFile as exc:
        raise FormatError(f"{root} is a UnixFS {exc.kind}: ipfs get fetches files and directories") from None


async def get_file(handle: BitswapHandle, root: CID, max_bytes: int, timeout: float, pin: bool,
                   progress: GetProgress | None = None, min_free: int = 0,
                   finder: Finder | None = None, directories: bool = False) -> dict[str, int | str]:
    """Fetch the file (or, with ``directories``, the UnixFS directory and all under it) ``root`` from
    the connected peers (and, with ``finder``, the DHT's providers of it); {cid, size, blocks, kind,
    files} (blocks newly stored; size: of the file, or of a directory's files). A level whose
    declared bytes would leave less than ``min_free`` free on the disk is not asked for.

    Raises ``TooLarge``, ``FormatError``, ``FednodeError`` or ``trio.TooSlowError``; then the blocks
    it stored are gone again."""
    if root.codec not in (RAW, DAG_PB):
        raise FormatError(f"{root} has codec 0x{root.codec:x}: not a UnixFS file (raw or dag-pb only)")
    get = _Get(handle, root, progress or GetProgress(), min_free, finder)
    RUNNING[root] += 1
    try:
        with trio.fail_after(timeout):
            await get.level([root], {})
            with handle.store.read() as txn:
                is_dir = root.codec == DAG_PB and is_directory_node(txn.get_block(root))
            if is_dir and not directories:
                raise FormatError(f"{root} is a UnixFS directory: give --out with a new directory's path "
                                  "to write it there")
            kind = "directory" if is_dir else "file"
            size, files = await get.tree(max_bytes) if is_dir else (await get.file(root, max_bytes, whole=True), 1)
    except BaseException:
        _done(root)  # first: our own root must not keep what we stored
        forget(handle.store, get.asked)
        raise
    _done(root)
    if pin:
        with handle.store.write() as txn:
            pins.pin(txn, root, size, "get")
    return {"cid": str(root), "size": size, "blocks": len(get.stored), "kind": kind, "files": files}


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
