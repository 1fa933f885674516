"""Writing HAMT-sharded UnixFS directories as Kubo (boxo's ``ipld/unixfs/hamt``) and Helia
(``ipfs-unixfs-importer``'s ``dir-sharded``) write them, byte for byte; reading them is
``unixfs.decode_hamt`` / ``unixfs.directory_entries``.

Kubo shards a directory once its links' names and CIDs add up to ``SHARD_THRESHOLD`` bytes (boxo's
``HAMTShardingSize``, Kubo's ``Internal.UnixFSShardingSizeThreshold``: 256 KiB). A shard has 256
buckets; a name's bucket at depth d is byte d of its hash: the first 64 bits of MurmurHash3 x64 128
(seed 0), big-endian, as Go's ``murmur3.New64().Sum`` gives them. A bucket holding one entry links
to it by the bucket's two upper-case hex digits followed by the name; a bucket holding more links
(by the digits alone) to a shard one level down holding them. Only inserts build it, so the
structure depends on the set of names alone.
Each node: its links in bucket order, then UnixFS Data {Type: HAMTShard, Data: the bitfield of used
buckets (big-endian, no leading zero bytes), HashType: murmur3 (0x22), Fanout: 256}.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.multiformats import CID, DAG_PB, FormatError, encode_varint
from protocol.unixfs import HAMT_SHARD, DirEntry, encode_link

SHARD_THRESHOLD = 256 * 1024  # bytes of link names and CIDs at which Kubo shards a directory
FANOUT = 256
MURMUR3 = 0x22  # UnixFS Data.hashType: murmur3-x64-64
_HASH_BYTES = 8  # 64 bits of hash: 8 levels of 8-bit buckets
_MASK = (1 << 64) - 1
_C1, _C2 = 0x87C37B91114253D5, 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK
    return k ^ (k >> 33)


def murmur3_x64_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64 128 (Austin Appleby's reference ``MurmurHash3_x64_128``): (h1, h2)."""
    h1 = h2 = seed & _MASK
    end = len(data) - len(data) % 16
    for at in range(0, end, 16):
        k1 = int.from_bytes(data[at:at + 8], "little")
        k2 = int.from_bytes(data[at + 8:at + 16], "little")
        h1 ^= (_rotl((k1 * _C1) & _MASK, 31) * _C2) & _MASK
        h1 = (_rotl(h1, 27) + h2) & _MASK
        h1 = (h1 * 5 + 0x52DCE729) & _MASK
        h2 ^= (_rotl((k2 * _C2) & _MASK, 33) * _C1) & _MASK
        h2 = (_rotl(h2, 31) + h1) & _MASK
        h2 = (h2 * 5 + 0x38495AB5) & _MASK
    tail = data[end:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _MASK, 33) * _C1) & _MASK
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _MASK, 31) * _C2) & _MASK
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _MASK
    h2 = (h2 + h1) & _MASK
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _MASK
    h2 = (h2 + h1) & _MASK
    return h1, h2


def name_hash(name: bytes) -> bytes:
    """The 8 bytes whose byte d picks a name's bucket at depth d."""
    return murmur3_x64_128(name)[0].to_bytes(_HASH_BYTES, "big")


def link_bytes(entries: Iterable[DirEntry]) -> int:
    """What Kubo weighs a directory by when it decides to shard it: its links' names and CIDs."""
    return sum(len(e.name.encode()) + len(bytes(e.cid)) for e in entries)


def needs_sharding(entries: list[DirEntry]) -> bool:
    """Whether Kubo would write ``entries`` as a HAMT rather than one plain directory node."""
    return link_bytes(entries) >= SHARD_THRESHOLD


def _shard_data(buckets: Iterable[int]) -> bytes:
    bits = sum(1 << b for b in set(buckets))
    field = bits.to_bytes((bits.bit_length() + 7) // 8, "big")
    return (b"\x08" + encode_varint(HAMT_SHARD) + b"\x12" + encode_varint(len(field)) + field
            + b"\x28" + encode_varint(MURMUR3) + b"\x30" + encode_varint(FANOUT))


Node = tuple[CID, bytes, int]  # a shard: its CID, block and Tsize (its block and everything below)


def build_hamt(entries: list[DirEntry], cid_version: int = 1) -> list[Node]:
    """The shards of a HAMT holding ``entries`` (distinct names), deepest first, the root last;
    CIDv0 or v1 as the rest of the tree. Two names whose 64-bit hashes are equal cannot be placed
    (Kubo refuses them too: "sharded directory too deep")."""
    if len({e.name for e in entries}) != len(entries):
        raise FormatError("a directory names an entry twice")
    hashed = [(name_hash(e.name.encode()), e) for e in entries]
    out: list[Node] = []
    _shard(hashed, 0, cid_version, out)
    return out


def _shard(items: list[tuple[bytes, DirEntry]], depth: int, cid_version: int, out: list[Node]) -> Node:
    if depth >= _HASH_BYTES:
        names = ", ".join(repr(e.name[:40]) for _, e in items[:2])
        raise FormatError(f"the names {names} have the same 64-bit hash: no HAMT can hold both")
    buckets: dict[int, list[tuple[bytes, DirEntry]]] = {}
    for h, e in items:
        buckets.setdefault(h[depth], []).append((h, e))
    block, tsizes = bytearray(), 0
    for bucket in sorted(buckets):
        inside, label = buckets[bucket], b"%02X" % bucket
        if len(inside) == 1:
            entry = inside[0][1]
            block += encode_link(label + entry.name.encode(), entry.cid, entry.tsize or 0)
            tsizes += entry.tsize or 0
        else:
            cid, _, tsize = _shard(inside, depth + 1, cid_version, out)
            block += encode_link(label, cid, tsize)
            tsizes += tsize
    data = _shard_data(buckets)
    block += b"\x0a" + encode_varint(len(data)) + data
    node = (CID(cid_version, DAG_PB, CID.hash(DAG_PB, bytes(block)).digest), bytes(block), len(block) + tsizes)
    out.append(node)
    return node
