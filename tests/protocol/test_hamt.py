"""Writing HAMT-sharded directories (protocol.hamt): the hash, the decision to shard, and shards that
read back through the decoder every directory fednode fetches goes through. Byte-for-byte parity
with Kubo and Helia is tested with the real ones in tests/daemon/test_ipfs_tree_interop.py."""

from __future__ import annotations

import random

import pytest

from protocol import hamt
from protocol.hamt import FANOUT, SHARD_THRESHOLD, build_hamt, link_bytes, murmur3_x64_128, needs_sharding
from protocol.multiformats import CID, DAG_PB, RAW, FormatError
from protocol.unixfs import HAMT_SHARD, DirEntry, decode_hamt, decode_pb, directory_entries, unixfs_type

# h1 of MurmurHash3_x64_128 (seed 0): the first 8 bytes of what the npm package @multiformats/murmur3
# (which Helia's HAMTs use) returns, read big-endian
VECTORS = [(b"", 0), (b"a", 0x85555565F6597889), (b"hello", 0xCBD8A7B341BD9B02),
           (b"The quick brown fox jumps over the lazy dog", 0xE34BBC7BBC071B6C),
           (b"0123456789abcdef", 0x4BE06D94CF4AD1A7), (b"0123456789abcdefg", 0x8E32612DAA45F9DE),
           ("ünïcode".encode(), 0xDD59D9D958DAC980)]


@pytest.mark.parametrize("data, h1", VECTORS)
def test_murmur3_is_the_reference_function(data: bytes, h1: int) -> None:
    assert murmur3_x64_128(data)[0] == h1


def _entries(n: int, prefix: str = "file") -> list[DirEntry]:
    return [DirEntry(f"{prefix}-{i:05d}.bin", CID.hash(RAW, b"%d" % i), 3) for i in range(n)]


def test_a_directory_is_sharded_from_256_kib_of_names_and_cids_as_kubo_decides() -> None:
    entries = _entries(10)
    per = link_bytes(entries[:1])
    assert per == len("file-00000.bin") + 36
    at = _entries(SHARD_THRESHOLD // per)
    padding = SHARD_THRESHOLD - link_bytes(at)  # make the total exactly the threshold with one longer name
    at[0] = DirEntry(at[0].name + "y" * padding, at[0].cid, 3)
    assert link_bytes(at) == SHARD_THRESHOLD and needs_sharding(at)
    at[0] = DirEntry(at[0].name[:-1], at[0].cid, 3)
    assert not needs_sharding(at)


def _read(nodes: list[hamt.Node]) -> dict[CID, bytes]:
    blocks = {}
    for cid, block, _ in nodes:
        assert CID.hash(DAG_PB, block).digest == cid.digest
        blocks[cid] = block
    return blocks


def test_shards_hold_every_entry_once_and_depend_on_the_names_alone() -> None:
    entries = _entries(3000)
    nodes = build_hamt(entries)
    blocks = _read(nodes)
    root, _, tsize = nodes[-1]
    assert unixfs_type(blocks[root]) == HAMT_SHARD and root.version == 1
    got = directory_entries(blocks.__getitem__, root)
    assert sorted(got, key=lambda e: e.name) == entries
    assert tsize == sum(len(b) for b in blocks.values()) + 3 * len(entries)  # Tsize: blocks and files below
    for block in blocks.values():
        links, _ = decode_pb(block)
        assert len(links) <= FANOUT and [link.name for link in links] == sorted(link.name for link in links)
        found, shards = decode_hamt(block)
        assert len(shards) + len(found) == len(links)
    shuffled = entries[:]
    random.Random(5).shuffle(shuffled)
    assert build_hamt(shuffled)[-1][0] == root
    assert build_hamt(entries, cid_version=0)[-1][0].version == 0


def test_each_entry_sits_in_the_bucket_its_hash_names() -> None:
    entries = _entries(600, "x")
    nodes = build_hamt(entries)
    blocks = _read(nodes)
    stack = [(nodes[-1][0], 0)]
    while stack:
        cid, depth = stack.pop()
        links, _ = decode_pb(blocks[cid])
        for link in links:
            bucket, name = int(link.name[:2], 16), link.name[2:]
            if name:
                assert hamt.name_hash(name)[depth] == bucket
            else:
                stack.append((link.cid, depth + 1))


def test_names_a_hamt_cannot_hold_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FormatError, match="names an entry twice"):
        build_hamt(_entries(2) + _entries(1))
    monkeypatch.setattr(hamt, "name_hash", lambda name: b"\x07" * 8)
    with pytest.raises(FormatError, match="have the same 64-bit hash"):
        build_hamt(_entries(2))
