"""UnixFS files exactly as ``ipfs add --cid-version=1 --raw-leaves`` builds them.

Fixed 256 KiB chunks become raw blocks (codec 0x55); they are joined by
DAG-PB/UnixFS ``File`` nodes in Kubo's *balanced* layout with at most 174
links per node, so a tensor's CID here is byte-identical to the one any IPFS
node computes, and any IPFS node can serve or fetch it. ``raw_leaves=False``
gives the CIDv0 layout of a plain ``ipfs add`` (used to cross-check the tree
shape against a real Kubo).

The builder streams: it holds at most one group of chunks (HASH_GROUP, hashed
on two threads) plus one pending link list per tree level, whatever the file size.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from protocol.multiformats import CID, DAG_PB, RAW, FormatError, decode_varint, encode_varint

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174
_FILE = 2  # UnixFS Data.DataType.File

# A put callback may receive a read-only memoryview; it stays valid as long as it is referenced.
PutBlock = Callable[[CID, "bytes | memoryview"], None]
GetBlock = Callable[[CID], bytes]


# hashlib releases the GIL on large buffers: a helper thread hashes half of each group of whole chunks.
HASH_THREADS = min(2, os.cpu_count() or 1)
HASH_GROUP = 32  # chunks (8 MiB) per hand-off to the helper; bounds the copies of writable input too
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _reset_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # a forked child has no helper thread: start anew


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


def _sha256_all(chunks: Sequence[memoryview]) -> list[bytes]:
    return [hashlib.sha256(chunk).digest() for chunk in chunks]


def _helper() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=HASH_THREADS - 1, thread_name_prefix="fednode-hash")
        return _pool


def sha256_many(chunks: Sequence[memoryview]) -> list[bytes]:
    """The sha256 digest of each chunk, in order; the second half is hashed on a helper thread."""
    if HASH_THREADS < 2 or len(chunks) < 2:
        return _sha256_all(chunks)
    half = len(chunks) // 2
    rest = _helper().submit(_sha256_all, chunks[half:])
    return _sha256_all(chunks[:half]) + rest.result()


def _field(num: int, wire: int) -> bytes:
    return encode_varint(num << 3 | wire)


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2) + encode_varint(len(data)) + data


def _unixfs_data(filesize: int, blocksizes: list[int], data: bytes | None = None) -> bytes:
    out = _field(1, 0) + encode_varint(_FILE)
    if data is not None:
        out += _bytes_field(2, data)
    out += _field(3, 0) + encode_varint(filesize)
    for size in blocksizes:
        out += _field(4, 0) + encode_varint(size)
    return out


@dataclass(frozen=True)
class Link:
    cid: CID
    tsize: int  # bytes of the whole sub-DAG (blocks), as Kubo counts it
    filesize: int  # bytes of file content under the link


def encode_node(links: list[Link], data: bytes) -> bytes:
    """DAG-PB PBNode: links first, then data (the canonical DAG-PB order)."""
    out = bytearray()
    for link in links:
        body = _bytes_field(1, bytes(link.cid)) + _bytes_field(2, b"") + _field(3, 0)
        body += encode_varint(link.tsize)
        out += _bytes_field(2, body)
    out += _bytes_field(1, data)
    return bytes(out)


class UnixFSBuilder:
    """Feed bytes with ``write``; ``finish`` returns the root link. ``put=None``: hash only."""

    def __init__(
        self,
        put: PutBlock | None,
        raw_leaves: bool = True,
        chunk_size: int = CHUNK_SIZE,
        max_links: int = MAX_LINKS,
    ) -> None:
        self._put = put
        self._raw_leaves = raw_leaves
        self._chunk_size = chunk_size
        self._max_links = max_links
        self._buffer = bytearray()
        self._levels: list[list[Link]] = [[]]
        self._leaves = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        size = self._chunk_size
        if not self._buffer:
            # Fast path: whole chunks straight from the caller's buffer, no copy.
            whole = len(view) - len(view) % size
            step = size * HASH_GROUP
            for first in range(0, whole, step):
                self._whole_chunks([view[i : i + size] for i in range(first, min(first + step, whole), size)])
            view = view[whole:]
        while view:
            take = min(size - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == size:
                self._leaf(self._buffer)
                self._buffer = bytearray()

    def _whole_chunks(self, chunks: list[memoryview]) -> None:
        """Leaves for full-size chunks, hashed two at a time (same CIDs, same order)."""
        if not self._raw_leaves:
            for chunk in chunks:
                self._leaf(chunk)
            return
        blocks = [self._keepable(chunk) for chunk in chunks]
        for block, digest in zip(blocks, sha256_many(blocks), strict=True):
            self._leaf(block, CID(1, RAW, digest))

    def _keepable(self, chunk: memoryview) -> memoryview:
        """A view ``put`` may keep: read-only views (of bytes objects) are immutable, others
        (a caller's array) are copied. Hashing only keeps nothing, so it never copies."""
        return chunk if chunk.readonly or self._put is None else memoryview(bytes(chunk))

    def _leaf(self, chunk: bytes | memoryview | bytearray, cid: CID | None = None) -> None:
        """Store one leaf; ``cid``, when given, is the raw leaf's already computed CID."""
        if self._raw_leaves:
            block = self._keepable(chunk) if isinstance(chunk, memoryview) else bytes(chunk)
            cid = cid or CID.hash(RAW, block)
        else:
            block = encode_node([], _unixfs_data(len(chunk), [], bytes(chunk) if chunk else None))
            cid = CID(0, DAG_PB, CID.hash(DAG_PB, block).digest)
        if self._put is not None:
            self._put(cid, block)
        self._leaves += 1
        self._push(0, Link(cid, len(block), len(chunk)))

    def _push(self, level: int, link: Link) -> None:
        if level == len(self._levels):
            self._levels.append([])
        self._levels[level].append(link)
        if len(self._levels[level]) == self._max_links:
            self._push(level + 1, self._node(self._levels[level]))
            self._levels[level] = []

    def _node(self, links: list[Link]) -> Link:
        filesize = sum(link.filesize for link in links)
        block = encode_node(links, _unixfs_data(filesize, [link.filesize for link in links]))
        digest = CID.hash(DAG_PB, block).digest
        cid = CID(1 if self._raw_leaves else 0, DAG_PB, digest)
        if self._put is not None:
            self._put(cid, block)
        return Link(cid, len(block) + sum(link.tsize for link in links), filesize)

    def finish(self) -> Link:
        if self._buffer or self._leaves == 0:
            self._leaf(self._buffer)
            self._buffer = bytearray()
        levels = self._levels
        level = 0
        while True:
            top = max(i for i, links in enumerate(levels) if links)
            if level == top and len(levels[level]) == 1:
                return levels[level][0]
            if levels[level]:
                node = self._node(levels[level])
                levels[level] = []
                if level + 1 == len(levels):
                    levels.append([])
                levels[level + 1].append(node)
            level += 1


def add_bytes(data: bytes, put: PutBlock | None = None, raw_leaves: bool = True) -> CID:
    """CID of ``data`` as a UnixFS file (blocks go to ``put`` when given)."""
    builder = UnixFSBuilder(put, raw_leaves=raw_leaves)
    builder.write(data)
    return builder.finish().cid


def _parse_proto(data: bytes) -> list[tuple[int, int | bytes]]:
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)  # at most 9 bytes: no field number or value past 2**63
        num, wire = key >> 3, key & 7
        if num == 0:
            raise FormatError("protobuf field number 0")
        if wire == 0:
            value, pos = decode_varint(data, pos)
            fields.append((num, value))
        elif wire == 2:
            length, pos = decode_varint(data, pos)
            if pos + length > len(data):
                raise FormatError("truncated protobuf field")
            fields.append((num, data[pos : pos + length]))
            pos += length
        else:
            raise FormatError(f"unsupported protobuf wire type {wire}")
    return fields


# Wire type each known field must have (0 varint, 2 bytes): a mistyped field is refused, not skipped.
_PB_NODE = {1: bytes, 2: bytes}  # Data, Links
_PB_LINK = {1: bytes, 2: bytes, 3: int}  # Hash, Name, Tsize
_UNIXFS = {1: int, 2: bytes, 3: int, 4: int, 5: int, 6: int, 7: int, 8: bytes}


def _typed(fields: list[tuple[int, int | bytes]], schema: Mapping[int, type], what: str) -> None:
    for num, value in fields:
        if num in schema and type(value) is not schema[num]:
            raise FormatError(f"{what} field {num} has the wrong wire type")


@dataclass(frozen=True)
class PBLink:
    cid: CID
    name: bytes | None
    tsize: int | None


def decode_pb(block: bytes) -> tuple[list[PBLink], bytes | None]:
    """A DAG-PB block as (links, Data), strict per the IPLD DAG-PB spec's "Protobuf Strictness" and
    "Constraints": no unknown fields or wire types, no duplicates, PBLink fields in field-number order,
    every link has a Hash that is a CID. PBNode may hold Data before or after the Links (the spec: "the
    decoder should accept either order, as IPFS data exists in both forms") but never between them."""
    node = _parse_proto(block)
    _typed(node, _PB_NODE, "PBNode")
    links: list[PBLink] = []
    data: bytes | None = None
    data_after_links = False
    for num, value in node:
        if num not in _PB_NODE or not isinstance(value, bytes):
            raise FormatError(f"PBNode has an unknown field {num}")
        if num == 1:
            if data is not None:
                raise FormatError("PBNode has two Data fields")
            data, data_after_links = value, bool(links)
        elif data_after_links:
            raise FormatError("PBNode has Data between its Links")
        else:
            links.append(_decode_link(value))
    return links, data


def _decode_link(body: bytes) -> PBLink:
    fields = _parse_proto(body)
    _typed(fields, _PB_LINK, "PBLink")
    nums = [num for num, _ in fields]
    if any(num not in _PB_LINK for num in nums):
        raise FormatError(f"PBLink has an unknown field {max(nums)}")
    if nums != sorted(set(nums)):  # Hash, Name, Tsize: in this order, each at most once
        raise FormatError("PBLink fields out of order or repeated")
    values = dict(fields)
    if 1 not in values:
        raise FormatError("a DAG-PB link has no Hash")
    hash_, name, tsize = values[1], values.get(2), values.get(3)
    assert isinstance(hash_, bytes) and not isinstance(name, int) and not isinstance(tsize, bytes)  # _typed
    return PBLink(CID.from_bytes(hash_), name, tsize)


# UnixFS ``Data.Type`` values of other things than file content (0 raw and 2 file are)
NOT_FILES = {1: "directory", 3: "metadata node", 4: "symbolic link", 5: "HAMT-sharded directory"}


class NotAFile(FormatError):
    """A UnixFS node of another type than file or raw (``kind``: what it is)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"DAG-PB node is a UnixFS {kind}, not a file")
        self.kind = kind


def decode_node(block: bytes) -> tuple[list[CID], bytes]:
    """Return (child CIDs, inline file data) of a DAG-PB UnixFS file node; ``NotAFile`` for a
    directory, symbolic link or other node of a known type that is no file."""
    pb_links, unixfs = decode_pb(block)
    links = [link.cid for link in pb_links]
    data = b""
    kind = None
    fields = _parse_proto(unixfs or b"")
    _typed(fields, _UNIXFS, "UnixFS Data")
    for num, value in fields:
        if num == 1:
            kind = value
        elif num == 2 and isinstance(value, bytes):
            data = value
    if kind not in (_FILE, 0):  # 0 = Raw, what some importers use for leaves
        if isinstance(kind, int) and kind in NOT_FILES:
            raise NotAFile(NOT_FILES[kind])
        raise FormatError("DAG-PB node is not a UnixFS file")
    return links, data


@dataclass(frozen=True)
class DirEntry:
    name: str
    cid: CID
    tsize: int | None  # bytes of the entry's whole DAG, as its directory declares (a hint, unchecked)


DIRECTORY = 1
MAX_NAME_BYTES = 255  # one path component, as most file systems allow


def unixfs_type(block: bytes) -> int | None:
    """The UnixFS ``Data.Type`` of a DAG-PB block (None: no UnixFS Data)."""
    data = decode_pb(block)[1]
    fields = _parse_proto(data or b"")
    _typed(fields, _UNIXFS, "UnixFS Data")
    return next((v for n, v in fields if n == 1 and isinstance(v, int)), None)


def encode_directory(entries: list[DirEntry]) -> bytes:
    """A plain UnixFS directory node as Kubo writes one: links sorted by name bytes (go-merkledag's
    canonical order), each with Hash, Name and Tsize, then Data = UnixFS {Type: Directory}."""
    out = bytearray()
    for e in sorted(entries, key=lambda e: e.name.encode()):
        out += encode_link(e.name.encode(), e.cid, e.tsize or 0)
    out += _bytes_field(1, _field(1, 0) + encode_varint(DIRECTORY))
    return bytes(out)


def encode_link(name: bytes, cid: CID, tsize: int) -> bytes:
    """One named PBLink (Hash, Name, Tsize) as a PBNode field, as directories and HAMT shards hold them."""
    body = _bytes_field(1, bytes(cid)) + _bytes_field(2, name) + _field(3, 0) + encode_varint(tsize)
    return _bytes_field(2, body)


def entry_name(raw: bytes) -> str:
    """A directory entry's name, refused unless it is safe as one path component on any system we
    write to: UTF-8, 1..255 bytes, not ``.`` or ``..``, no ``/``, backslash or NUL."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"a directory entry's name is not UTF-8: {raw[:40]!r}") from None
    if not 0 < len(raw) <= MAX_NAME_BYTES or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise FormatError(f"a directory entry's name cannot be a file name: {name[:60]!r}")
    return name


def decode_directory(block: bytes) -> list[DirEntry]:
    """The entries of a plain UnixFS directory node, each name safe as one path component
    (``entry_name``), no two alike. A HAMT shard raises ``NotAFile`` (see ``decode_hamt``),
    anything else FormatError."""
    kind = unixfs_type(block)
    if kind != DIRECTORY:
        if isinstance(kind, int) and kind in NOT_FILES:
            raise NotAFile(NOT_FILES[kind])
        raise FormatError("DAG-PB node is not a UnixFS directory")
    entries: list[DirEntry] = []
    seen: set[str] = set()
    for link in decode_pb(block)[0]:
        name = entry_name(link.name or b"")
        if name in seen:
            raise FormatError(f"a directory names {name[:60]!r} twice")
        seen.add(name)
        entries.append(DirEntry(name, link.cid, link.tsize))
    return entries


HAMT_SHARD = 5  # UnixFS Data.Type of a HAMT-sharded directory's nodes
_MURMUR3 = 0x22  # the only hash function UnixFS HAMTs use (murmur3-x64-64)


def decode_hamt(block: bytes) -> tuple[list[DirEntry], list[CID]]:
    """One node of a HAMT-sharded directory (what Kubo makes of a directory whose links pass 256 KiB):
    (its entries, its sub-shards). A link's name is the bucket as upper-case hex of the fanout's
    width, followed by the entry's name; a name of the bucket alone is a sub-shard. Reading needs no
    hashing: every entry is under some link; which bucket holds it only matters for a lookup."""
    links, data = decode_pb(block)
    fields = _parse_proto(data or b"")
    _typed(fields, _UNIXFS, "UnixFS Data")
    values = {n: v for n, v in fields if isinstance(v, int)}
    if values.get(1) != HAMT_SHARD:
        raise FormatError("DAG-PB node is not a UnixFS HAMT shard")
    fanout, hash_type = values.get(6), values.get(5)
    if hash_type != _MURMUR3 or fanout is None or not 2 <= fanout <= 4096 or fanout & (fanout - 1):
        raise FormatError(f"a HAMT shard with hash 0x{hash_type or 0:x} and fanout {fanout}: not a UnixFS HAMT")
    width = len(f"{fanout - 1:X}")
    entries: list[DirEntry] = []
    shards: list[CID] = []
    for link in links:
        raw = link.name or b""
        bucket = raw[:width].decode("ascii", "replace")
        if len(bucket) != width or bucket != bucket.upper() or any(c not in "0123456789ABCDEF" for c in bucket) \
                or int(bucket, 16) >= fanout:
            raise FormatError(f"a HAMT link named {raw[:40]!r}: no bucket of fanout {fanout}")
        if len(raw) == width:
            shards.append(link.cid)
        else:
            entries.append(DirEntry(entry_name(raw[width:]), link.cid, link.tsize))
    return entries, shards


def is_directory_node(block: bytes) -> bool:
    """Whether a DAG-PB block is a UnixFS directory, plain or a HAMT shard."""
    return unixfs_type(block) in (DIRECTORY, HAMT_SHARD)


def directory_entries(get: GetBlock, cid: CID) -> list[DirEntry]:
    """Every entry of the directory ``cid``, plain or HAMT-sharded (its shards read through ``get``,
    at most MAX_HAMT_DEPTH deep), no two alike."""
    block = get(cid)
    if unixfs_type(block) != HAMT_SHARD:
        return decode_directory(block)
    entries: list[DirEntry] = []
    level, depth = [block], 0
    while level:
        depth += 1
        if depth > MAX_HAMT_DEPTH:
            raise FormatError(f"the HAMT of directory {cid} is deeper than {MAX_HAMT_DEPTH} levels")
        below: list[bytes] = []
        for node in level:
            found, shards = decode_hamt(node)
            entries += found
            below += [get(s) for s in shards]
        level = below
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise FormatError(f"directory {cid} names {e.name[:60]!r} twice")
        seen.add(e.name)
    return entries


MAX_HAMT_DEPTH = 16  # a 64-bit hash in 8-bit buckets needs 8 levels


# Bounds on walks over DAGs that may come from strangers. A file's size is declared in its root
# (UnixFS ``filesize``) and split over its links (``blocksizes``): every node must agree with what
# its parent declared for it, so the root's one block bounds the whole walk before it starts.
MAX_FILE_BYTES = 1 << 40  # no tensor file is larger (1 TiB): a bigger declared size is refused unread
MAX_WALK_NODES = 1 << 22  # distinct blocks one walk may decode (1 TiB of 256 KiB leaves)


@dataclass(frozen=True)
class FileNode:
    links: list[CID]
    data: bytes
    filesize: int  # bytes of content under this node: its own data plus sum(blocksizes)
    blocksizes: list[int]  # declared content bytes under each link


def decode_file_node(block: bytes) -> FileNode:
    """A DAG-PB UnixFS file node with its declared sizes, which must add up: ``filesize`` is its
    data plus ``blocksizes`` (one per link, none zero: a link to nothing only serves a bomb)."""
    links, data = decode_node(block)
    unixfs = next((v for n, v in _parse_proto(block) if n == 1 and isinstance(v, bytes)), b"")
    filesize: int | None = None
    blocksizes: list[int] = []
    for num, value in _parse_proto(unixfs):
        if num == 3 and isinstance(value, int):
            filesize = value
        elif num == 4 and isinstance(value, int):
            blocksizes.append(value)
    if filesize is None and not links:
        filesize = len(data)  # a leaf written without filesize: its data is all there is
    if filesize is None or len(blocksizes) != len(links):
        raise FormatError("UnixFS node without a size for each link")
    if 0 in blocksizes or filesize != len(data) + sum(blocksizes):
        raise FormatError(f"UnixFS node declares {filesize} bytes but holds {len(data)} + {sum(blocksizes)}")
    return FileNode(links, data, filesize, blocksizes)


def max_depth(size: int) -> int:
    """Deepest tree a file of ``size`` bytes can have: balanced layouts with 2 or more links per node
    (Kubo: 174, tests: 4) never go deeper than log2 of the leaf count, plus one 1-link node."""
    return max(1, size - 1).bit_length() + 1


def declared_size(get: GetBlock, root: CID, verify: bool = False) -> int:
    """The content size a file's root block declares (one block read; ``verify``: hash-checked)."""
    if root.codec not in (RAW, DAG_PB):
        raise FormatError(f"block {root} is not part of a UnixFS file")
    block = get(root)
    if verify and not root.verify(block):
        raise FormatError(f"block {root} does not match its hash")
    return len(block) if root.codec == RAW else decode_file_node(block).filesize


def _root_size(get: GetBlock, root: CID, expected: int | None, verify: bool) -> int:
    """The size the walk is held to: ``expected`` (checked against the root's declaration before
    any other block is read), else what the root declares; never over MAX_FILE_BYTES."""
    size = declared_size(get, root, verify)
    if expected is not None and size != expected:
        raise FormatError(f"file {root} declares {size} bytes, expected {expected}")
    if size > MAX_FILE_BYTES:
        raise FormatError(f"file {root} declares {size} bytes, over the limit of {MAX_FILE_BYTES}")
    return size


def iter_file(get: GetBlock, root: CID, expected_size: int | None = None) -> Iterator[bytes]:
    """Yield a file's content in order; every block's hash is checked first (each distinct block once).

    Each node must hold what its parent declared for it, so the content yielded is exactly the
    root's declared size (``expected_size`` when given, checked first): a repeated child (a file of
    zeros) is yielded each time, but a DAG cannot make us yield more than it declared up front."""
    size = _root_size(get, root, expected_size, True)
    depth_limit = max_depth(size)
    checked: set[CID] = set()
    stack: list[tuple[CID, int, int]] = [(root, size, 0)]  # (cid, declared bytes, depth)
    while stack:
        cid, declared, depth = stack.pop()
        if depth > depth_limit:
            raise FormatError(f"file {root} is deeper than {depth_limit} levels")
        block = get(cid)
        if cid not in checked:
            if not cid.verify(block):
                raise FormatError(f"block {cid} does not match its hash")
            if len(checked) < MAX_WALK_NODES:
                checked.add(cid)
        if cid.codec == RAW:
            if len(block) != declared:
                raise FormatError(f"block {cid} has {len(block)} bytes, its parent declares {declared}")
            yield block
            continue
        if cid.codec != DAG_PB:
            raise FormatError(f"block {cid} is not part of a UnixFS file")
        node = decode_file_node(block)
        if node.filesize != declared:
            raise FormatError(f"block {cid} declares {node.filesize} bytes, its parent {declared}")
        if node.data:
            yield node.data
        stack.extend((c, s, depth + 1) for c, s in zip(reversed(node.links), reversed(node.blocksizes), strict=True))


def file_size(get: GetBlock, root: CID, raw_size: Callable[[CID], int] | None = None,
              expected_size: int | None = None, verify: bool = False, max_nodes: int = MAX_WALK_NODES,
              min_chunk: int = 1) -> int:
    """Bytes of a file's content from its DAG structure alone, each distinct block read once.

    The root's declared size is checked against ``expected_size`` before anything else is read;
    then every node must hold what its parent declared for it, so a block repeated under many links
    (a file of zeros, or a DAG bomb) costs one visit, not one per path to it. At most ``max_nodes``
    distinct blocks, ``max_depth(size)`` levels. ``min_chunk``: every link of a node but its last
    declares at least this many bytes, as in balanced layouts with chunks of that size (all
    subtrees full but the last), so a reader visits about size / min_chunk leaves.
    ``verify``: hash-check each distinct block; without it, only for blocks hash-checked when
    stored. ``raw_size`` gives a raw leaf's length without reading it (``get`` otherwise); either
    raises for a missing block.
    """
    size = _root_size(get, root, expected_size, verify)
    depth_limit = max_depth(size)
    sizes: dict[CID, int] = {}  # distinct blocks seen -> the size each was found to hold
    stack: list[tuple[CID, int, int]] = [(root, size, 0)]
    while stack:
        cid, declared, depth = stack.pop()
        found = sizes.get(cid)
        if found is not None:  # this block's whole sub-DAG is (being) checked: only the size must agree
            if found != declared:
                raise FormatError(f"block {cid} holds {found} bytes, a parent declares {declared}")
            continue
        if depth > depth_limit:
            raise FormatError(f"file {root} is deeper than {depth_limit} levels")
        if len(sizes) >= max_nodes:
            raise FormatError(f"file {root} has more than {max_nodes} distinct blocks")
        if cid.codec == RAW:
            if verify:
                block = get(cid)
                if not cid.verify(block):
                    raise FormatError(f"block {cid} does not match its hash")
                held = len(block)
            else:
                held = raw_size(cid) if raw_size is not None else len(get(cid))
            if held != declared:
                raise FormatError(f"block {cid} has {held} bytes, its parent declares {declared}")
            sizes[cid] = held
            continue
        if cid.codec != DAG_PB:
            raise FormatError(f"block {cid} is not part of a UnixFS file")
        block = get(cid)
        if verify and not cid.verify(block):
            raise FormatError(f"block {cid} does not match its hash")
        node = decode_file_node(block)
        if node.filesize != declared:
            raise FormatError(f"block {cid} declares {node.filesize} bytes, its parent {declared}")
        if any(s < min_chunk for s in node.blocksizes[:-1]):
            raise FormatError(f"block {cid} links a sub-DAG of under {min_chunk} bytes before its last link")
        sizes[cid] = declared
        stack.extend((c, s, depth + 1) for c, s in zip(node.links, node.blocksizes, strict=True))
    return size
