"""UnixFS CIDs against the JS ipfs-unixfs-importer vectors and Kubo-compatible CIDv0 (PyPI aleph-cid)."""

from __future__ import annotations

import json
from pathlib import Path

import aleph_cid
import numpy as np
import pytest
from helpers import dag_bomb
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.multiformats import CID, DAG_PB, RAW, FormatError, encode_varint
from protocol.unixfs import (
    CHUNK_SIZE,
    MAX_LINKS,
    Link,
    PBLink,
    UnixFSBuilder,
    _bytes_field,
    _field,
    _unixfs_data,
    add_bytes,
    decode_node,
    decode_pb,
    encode_node,
    file_size,
    iter_file,
)

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "protocol/vectors/unixfs_v1.json").read_text())


def pattern(size: int) -> bytes:
    """The vectors' content: byte i = (i * 31 + 7) % 251."""
    i = np.arange(size, dtype=np.int64)
    return ((i * 31 + 7) % 251).astype(np.uint8).tobytes()


def content(vector: dict) -> bytes:
    if vector["content"] == "pattern":
        return pattern(vector["size"])
    data = vector["content"].encode()
    assert len(data) == vector["size"]
    return data


def build(data: bytes, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS, raw_leaves: bool = True,
          splits: list[int] | None = None) -> tuple[CID, dict[CID, bytes]]:
    blocks: dict[CID, bytes] = {}
    builder = UnixFSBuilder(blocks.__setitem__, raw_leaves=raw_leaves, chunk_size=chunk_size, max_links=max_links)
    pos = 0
    for n in splits or []:
        builder.write(data[pos : pos + n])
        pos += n
    builder.write(data[pos:])
    return builder.finish().cid, blocks


def test_vector_file_covers_the_edges() -> None:
    sizes = {v["size"] for v in VECTORS["vectors"]}
    assert {0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 174 * CHUNK_SIZE, 175 * CHUNK_SIZE + 1} <= sizes
    assert len(VECTORS["small_chunk_vectors"]) >= 8


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['size']}")
def test_js_importer_vectors(vector: dict) -> None:
    data = content(vector)
    assert str(add_bytes(data)) == vector["cid"]


@pytest.mark.parametrize("vector", VECTORS["small_chunk_vectors"], ids=lambda v: f"{v['size']}")
def test_js_importer_small_chunk_vectors(vector: dict) -> None:
    """16-byte chunks reach depth-3 trees (174**2 leaves and beyond) with little data."""
    data = content(vector)
    cid, blocks = build(data, chunk_size=vector["chunk_size"], max_links=vector["max_links"])
    assert str(cid) == vector["cid"]
    assert b"".join(iter_file(blocks.__getitem__, cid)) == data


def test_single_chunk_is_a_raw_leaf_and_more_is_dag_pb() -> None:
    assert add_bytes(b"x" * CHUNK_SIZE).codec == RAW
    assert add_bytes(b"x" * (CHUNK_SIZE + 1)).codec == DAG_PB
    assert add_bytes(b"").codec == RAW


def ref_root(data: bytes, chunk_size: int, max_links: int) -> CID:
    """Independent balanced layout: group leaves max_links at a time, level by level."""
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    level = [Link(CID.hash(RAW, c), len(c), len(c)) for c in chunks]
    while len(level) > 1:
        parents = []
        for i in range(0, len(level), max_links):
            group = level[i : i + max_links]
            size = sum(link.filesize for link in group)
            block = encode_node(group, _unixfs_data(size, [link.filesize for link in group]))
            parents.append(Link(CID.hash(DAG_PB, block), len(block) + sum(x.tsize for x in group), size))
        level = parents
    return level[0].cid


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.sampled_from([2, 3, 4, 174]), st.data())
def test_balanced_layout_matches_reference(chunk_size: int, max_links: int, data: st.DataObject) -> None:
    # sizes around full trees (max_links**k chunks) are where layouts go wrong
    full = [chunk_size * max_links**k for k in range(1, 5) if chunk_size * max_links**k < 4000]
    size = data.draw(st.sampled_from(full).flatmap(lambda n: st.integers(max(0, n - 2), n + 2))
                     | st.integers(0, 400) if full else st.integers(0, 400))
    payload = pattern(size)
    cid, blocks = build(payload, chunk_size, max_links)
    assert cid == ref_root(payload, chunk_size, max_links)
    assert b"".join(iter_file(blocks.__getitem__, cid)) == payload


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 70), max_size=12), st.sampled_from([1, 7, 16]),
       st.sampled_from([2, 3, 174]), st.booleans())
def test_write_splits_do_not_change_the_cid(data: bytes, splits: list[int], chunk_size: int, max_links: int,
                                            raw_leaves: bool) -> None:
    whole, blocks = build(data, chunk_size, max_links, raw_leaves)
    split, split_blocks = build(data, chunk_size, max_links, raw_leaves, splits)
    assert split == whole
    assert split_blocks == blocks
    assert b"".join(iter_file(blocks.__getitem__, whole)) == data


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(1, 200_000), min_size=1, max_size=8))
def test_write_splits_real_chunk_size(splits: list[int]) -> None:
    data = pattern(2 * CHUNK_SIZE + 1234)
    assert build(data, splits=splits)[0] == add_bytes(data)


# CIDv0 (plain `ipfs add`): 256 KiB chunks only, so a few sizes around chunk boundaries plus one 175-chunk file.
_BOUNDARIES = [0, 1, 2, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 1]


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(_BOUNDARIES) | st.integers(0, 2 * CHUNK_SIZE + 100), st.integers(0, 2**32 - 1))
def test_cidv0_matches_aleph(size: int, seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    cid = add_bytes(data, raw_leaves=False)
    assert cid.version == 0
    assert str(cid) == aleph_cid.compute_cid(data)


def test_cidv0_deep_tree_matches_aleph() -> None:
    data = np.random.default_rng(7).integers(0, 256, MAX_LINKS * CHUNK_SIZE + 1, dtype=np.uint8).tobytes()
    assert str(add_bytes(data, raw_leaves=False)) == aleph_cid.compute_cid(data)


@pytest.mark.parametrize("raw_leaves", [True, False])
def test_iter_file_round_trip_and_tamper(raw_leaves: bool) -> None:
    data = pattern(5000)
    cid, blocks = build(data, chunk_size=64, max_links=4, raw_leaves=raw_leaves)
    assert b"".join(iter_file(blocks.__getitem__, cid)) == data
    for victim in [cid, *list(blocks)[:3]]:
        tampered = dict(blocks)
        block = bytearray(tampered[victim])
        block[len(block) // 2] ^= 0x40
        tampered[victim] = bytes(block)
        with pytest.raises(FormatError, match="hash"):
            b"".join(iter_file(tampered.__getitem__, cid))


@pytest.mark.parametrize("raw_leaves", [True, False])
def test_file_size_walks_the_dag_without_hashing(raw_leaves: bool) -> None:
    data = pattern(5000)
    cid, blocks = build(data, chunk_size=64, max_links=4, raw_leaves=raw_leaves)
    measured: list[CID] = []

    def raw_size(c: CID) -> int:
        measured.append(c)
        return len(blocks[c])

    assert file_size(blocks.__getitem__, cid) == file_size(blocks.__getitem__, cid, raw_size) == len(data)
    assert bool(measured) == raw_leaves  # raw leaves are measured, never read
    tampered = dict(blocks)
    if raw_leaves:  # a raw leaf of the same length but other bytes: nothing is hashed, so it passes
        leaf = next(c for c in blocks if c.codec == RAW)
        tampered[leaf] = bytes(len(blocks[leaf]))
        assert file_size(tampered.__getitem__, cid) == len(data)
    del tampered[next(c for c in blocks if c != cid)]
    with pytest.raises(KeyError):  # a missing block is the getter's error
        file_size(tampered.__getitem__, cid)


def test_iter_file_rejects_non_unixfs_codec() -> None:
    block = b"\xa0"
    cid = CID.hash(0x71, block)
    with pytest.raises(FormatError):
        list(iter_file({cid: block}.__getitem__, cid))


def test_builder_reports_sizes() -> None:
    blocks: dict[CID, bytes] = {}
    builder = UnixFSBuilder(blocks.__setitem__, chunk_size=10, max_links=3)
    builder.write(pattern(95))
    root = builder.finish()
    assert root.filesize == 95
    assert root.tsize == sum(len(b) for b in blocks.values())


def test_hashing_on_two_threads_gives_the_same_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole chunks are hashed half on a helper thread: CIDs, blocks and their order stay the same."""
    from protocol import unixfs

    data = pattern(unixfs.HASH_GROUP * CHUNK_SIZE * 2 + 3 * CHUNK_SIZE + 5)  # several groups, a partial tail
    runs = []
    for threads in (1, 2):
        monkeypatch.setattr(unixfs, "HASH_THREADS", threads)
        blocks: dict[CID, bytes | memoryview] = {}  # insertion order = put order
        builder = UnixFSBuilder(blocks.__setitem__)
        builder.write(memoryview(data))
        runs.append((builder.finish().cid, list(blocks)))
    assert runs[0] == runs[1]
    assert runs[0][0] == add_bytes(data)
    assert unixfs.sha256_many([]) == []


def test_blocks_from_a_writable_buffer_are_copied_before_put() -> None:
    """``put`` may keep a block after ``write`` returns; the caller may then reuse its array."""
    arr = np.frombuffer(pattern(3 * CHUNK_SIZE), dtype=np.uint8).copy()
    kept: dict[CID, bytes | memoryview] = {}
    builder = UnixFSBuilder(kept.__setitem__)
    builder.write(memoryview(arr))
    arr[:] = 0
    builder.finish()
    assert all(cid.verify(bytes(block)) for cid, block in kept.items())
    assert add_bytes(memoryview(arr)) == add_bytes(bytes(arr))  # hashing only: no copy, same CID


# --- bounded walks over untrusted DAGs (issue 10, item 4) ---------------------------------------


class Counting(dict):
    """A block getter that counts reads."""

    reads = 0

    def get_block(self, cid: CID) -> bytes:
        self.reads += 1
        return self[cid]


def test_dag_bomb_is_refused_from_its_root_alone() -> None:
    import time

    from protocol.unixfs import declared_size

    root, blocks = dag_bomb()
    assert len(blocks) == 5 and sum(map(len, blocks.values())) < 40_000
    store = Counting(blocks)
    start = time.monotonic()
    assert declared_size(store.get_block, root) == 1024 * MAX_LINKS**4  # known from one block
    for expected in (1024, 4096, 10**6):  # what a manifest entry would say
        with pytest.raises(FormatError, match="declares"):
            file_size(store.get_block, root, expected_size=expected)
        with pytest.raises(FormatError, match="declares"):
            list(iter_file(store.get_block, root, expected))
    assert time.monotonic() - start < 0.5
    assert store.reads <= 1 + 3 * 2  # the root block, once per call (iter_file: root checked, then read)


def test_a_consistent_bomb_costs_one_visit_per_distinct_block() -> None:
    """Sizes that agree all the way down: counted with repeats, walked once per distinct block; the
    layout bound (every link but the last at least one chunk) then refuses its 1 KiB leaves."""
    root, blocks = dag_bomb()
    store = Counting(blocks)
    size = 1024 * MAX_LINKS**4
    assert file_size(store.get_block, root, expected_size=size, verify=True) == size
    assert store.reads == 5 + 1  # each distinct block once, the root also for its declared size
    with pytest.raises(FormatError, match="under 262144 bytes"):
        file_size(store.get_block, root, expected_size=size, min_chunk=CHUNK_SIZE)
    big_root, big = dag_bomb(leaf=bytes(CHUNK_SIZE))  # 2.4e14 declared bytes: over any tensor
    with pytest.raises(FormatError, match="over the limit"):
        file_size(big.__getitem__, big_root)
    with pytest.raises(FormatError, match="over the limit"):
        next(iter_file(big.__getitem__, big_root))


def test_lying_sizes_are_refused() -> None:
    """A root that declares what the manifest expects but whose children declare more."""
    root, blocks = dag_bomb(lie_at_root=4096)
    with pytest.raises(FormatError, match="its parent"):
        file_size(blocks.__getitem__, root, expected_size=4096)
    with pytest.raises(FormatError, match="its parent"):
        b"".join(iter_file(blocks.__getitem__, root, 4096))
    # a node whose blocksizes do not add up to its filesize
    leaf = CID.hash(RAW, b"abc")
    bad = encode_node([Link(leaf, 3, 3)], _unixfs_data(5, [3]))
    bad_cid = CID(1, DAG_PB, CID.hash(DAG_PB, bad).digest)
    store = {bad_cid: bad, leaf: b"abc"}
    with pytest.raises(FormatError, match="holds"):
        file_size(store.__getitem__, bad_cid)
    # a link without a size, and a zero-size link
    for sizes in ([], [3, 0]):
        links = [Link(leaf, 3, 3)] * max(1, len(sizes))
        node = encode_node(links, _unixfs_data(sum(sizes), sizes))
        cid = CID(1, DAG_PB, CID.hash(DAG_PB, node).digest)
        with pytest.raises(FormatError):
            file_size({cid: node, leaf: b"abc"}.__getitem__, cid)


def test_a_deep_chain_is_refused() -> None:
    leaf = b"x"
    child = CID.hash(RAW, leaf)
    blocks = {child: leaf}
    for _ in range(10):
        node = encode_node([Link(child, 1, 1)], _unixfs_data(1, [1]))
        child = CID(1, DAG_PB, CID.hash(DAG_PB, node).digest)
        blocks[child] = node
    with pytest.raises(FormatError, match="deeper"):
        file_size(blocks.__getitem__, child)
    with pytest.raises(FormatError, match="deeper"):
        list(iter_file(blocks.__getitem__, child))


@pytest.mark.parametrize("raw_leaves", [True, False])
def test_a_file_of_zeros_repeats_its_leaf_and_is_accepted(raw_leaves: bool) -> None:
    """Identical chunks give the same leaf CID under many links: repeats count for the size and are
    yielded, but each distinct block is read (and hashed) once by the size check."""
    data = bytes(3 * CHUNK_SIZE + 5)
    cid, blocks = build(data, raw_leaves=raw_leaves)
    assert len(blocks) == 3  # the zero chunk, the 5-byte tail, the root
    store = Counting(blocks)
    assert file_size(store.get_block, cid, expected_size=len(data), verify=True, min_chunk=CHUNK_SIZE) == len(data)
    assert store.reads == 3 + 1  # each distinct block once, the root also for its declared size
    assert b"".join(iter_file(blocks.__getitem__, cid, len(data))) == data
    with pytest.raises(FormatError, match="expected"):
        file_size(blocks.__getitem__, cid, expected_size=len(data) - 1)


def test_too_many_distinct_blocks_are_refused() -> None:
    data = pattern(5000)
    cid, blocks = build(data, chunk_size=64, max_links=4)
    assert file_size(blocks.__getitem__, cid, max_nodes=len(blocks)) == len(data)
    with pytest.raises(FormatError, match="distinct blocks"):
        file_size(blocks.__getitem__, cid, max_nodes=len(blocks) - 1)


def test_a_repeated_block_must_hold_what_each_parent_declares() -> None:
    """The second path to a block is not walked again, but its declared size is still checked."""
    leaf = CID.hash(RAW, b"abc")
    for sizes in ([4, 3], [3, 4]):
        node = encode_node([Link(leaf, 3, s) for s in sizes], _unixfs_data(7, sizes))
        cid = CID(1, DAG_PB, CID.hash(DAG_PB, node).digest)
        with pytest.raises(FormatError, match="declares 4"):
            file_size({cid: node, leaf: b"abc"}.__getitem__, cid)


def _pb_node(links: list[bytes], data: bytes) -> bytes:
    """A PBNode from raw PBLink bodies (fields as given, even malformed ones) and a UnixFS Data."""
    return b"".join(_bytes_field(2, body) for body in links) + _bytes_field(1, data)


_LEAF = bytes(CID.hash(RAW, b"leaf"))
_DATA = _unixfs_data(4, [4])


def test_decode_node_reads_what_the_builder_writes() -> None:
    link = _bytes_field(1, _LEAF) + _bytes_field(2, b"") + _field(3, 0) + encode_varint(4)
    assert decode_node(_pb_node([link], _DATA)) == ([CID.from_bytes(_LEAF)], b"")


@pytest.mark.parametrize("block", [
    _pb_node([_bytes_field(2, b"") + _field(3, 0) + encode_varint(4)], _DATA),  # a link without a hash
    _pb_node([_bytes_field(1, _LEAF) + _bytes_field(1, _LEAF)], _DATA),  # a link with two hashes
    _pb_node([_bytes_field(1, _LEAF) + _bytes_field(3, b"\x04")], _DATA),  # Tsize as bytes
    _pb_node([_field(1, 0) + encode_varint(7)], _DATA),  # Hash as a varint
    _field(2, 0) + encode_varint(1) + _bytes_field(1, _DATA),  # Links as a varint
    _pb_node([], _field(1, 2) + b"\x02"),  # UnixFS Type as bytes
    _pb_node([], _field(1, 0) + b"\x80" * 9 + b"\x01"),  # a 10-byte varint
    b"\x00\x00" + _pb_node([], _DATA),  # field number 0
], ids=["no-hash", "two-hashes", "tsize-bytes", "hash-varint", "links-varint", "type-bytes", "varint-10", "field-0"])
def test_malformed_dag_pb_is_refused_not_half_read(block: bytes) -> None:
    """A mistyped or missing field is refused: skipping it silently would read another file than declared."""
    with pytest.raises(FormatError):
        decode_node(block)


# --- DAG-PB strictness (issue 11, item 15) -------------------------------------------------------
# Vectors written from the IPLD DAG-PB spec (https://ipld.io/specs/codecs/dag-pb/spec/); each names its
# section. The negative ones follow the cases of ipld/codec-fixtures negative-fixtures/dag-pb/decode, and
# carry valid UnixFS Data so that only the DAG-PB rule is broken.

_HASH = _bytes_field(1, _LEAF)
_NAME = _bytes_field(2, b"a")
_TSIZE = _field(3, 0) + encode_varint(4)
_PBDATA = _bytes_field(1, _DATA)
_LEAF_CID = CID.from_bytes(_LEAF)


def _link(*fields: bytes) -> bytes:
    return _bytes_field(2, b"".join(fields))


_PB_VALID = [
    # "Zero-length blocks": no Data, no Links
    ("zero-length", b"", [], None),
    # "Protobuf Strictness" 2: the canonical order, Links before Data
    ("links-then-data", _link(_HASH, _NAME, _TSIZE) + _PBDATA, [PBLink(_LEAF_CID, b"a", 4)], _DATA),
    # "Protobuf Strictness" 2: "the decoder should accept either order" (codec-fixtures noncanonical field-order)
    ("data-then-links", _PBDATA + _link(_HASH) + _link(_HASH, _TSIZE),
     [PBLink(_LEAF_CID, None, None), PBLink(_LEAF_CID, None, 4)], _DATA),
    # "Constraints": Data may be a byte array of length zero; Name and Tsize are optional
    ("empty-data", _link(_HASH) + _bytes_field(1, b""), [PBLink(_LEAF_CID, None, None)], b""),
]


@pytest.mark.parametrize("block,links,data", [v[1:] for v in _PB_VALID], ids=[v[0] for v in _PB_VALID])
def test_dag_pb_spec_valid_blocks(block: bytes, links: list[PBLink], data: bytes | None) -> None:
    assert decode_pb(block) == (links, data)


def test_zero_length_dag_pb_block_has_the_spec_cids() -> None:
    """"Zero-length blocks": the spec gives this block's CIDv1 and CIDv0."""
    cid = CID.hash(DAG_PB, b"")
    assert str(cid) == "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert str(CID(0, DAG_PB, cid.digest)) == "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"


_PB_INVALID = [
    # "Protobuf Strictness" 1: PBLink fields in field-number order
    ("name-before-hash", _link(_NAME, _HASH) + _PBDATA),
    ("tsize-before-hash", _link(_TSIZE, _HASH) + _PBDATA),
    ("tsize-before-name", _link(_HASH, _TSIZE, _NAME) + _PBDATA),
    # "Protobuf Strictness" 2: Data before or after the Links, never between them ("data between links")
    ("data-between-links", _link(_HASH) + _PBDATA + _link(_HASH)),
    # "Protobuf Strictness" 3: no duplicate fields
    ("two-data", _link(_HASH) + _PBDATA + _PBDATA),
    ("data-links-data", _PBDATA + _link(_HASH) + _PBDATA),
    ("two-names", _link(_HASH, _NAME, _NAME) + _PBDATA),
    ("two-tsizes", _link(_HASH, _TSIZE, _TSIZE) + _PBDATA),
    ("two-hashes", _link(_HASH, _HASH) + _PBDATA),
    # "Protobuf Strictness" 4: no other fields or wire types
    ("node-field-3", _link(_HASH) + _PBDATA + _bytes_field(3, b"x")),
    ("link-field-4", _link(_HASH, _bytes_field(4, b"x")) + _PBDATA),
    ("link-field-4-varint", _link(_HASH, _field(4, 0) + b"\x01") + _PBDATA),
    ("data-fixed32", _link(_HASH) + _field(1, 5) + b"\x08\x02\x18\x04"),
    ("name-varint", _link(_HASH, _field(2, 0) + b"\x01") + _PBDATA),
    # "Constraints", Hash: an omitted Hash or one that is not a CID is a bad block
    ("empty-link", _link() + _PBDATA),
    ("link-only-name", _link(_NAME) + _PBDATA),
    ("link-only-tsize", _link(_TSIZE) + _PBDATA),
    ("empty-hash", _link(_bytes_field(1, b"")) + _PBDATA),
    ("hash-not-a-cid", _link(_bytes_field(1, b"\x01\x55\x00\x05\x00\x01\x02\x03\x04")) + _PBDATA),
    # multiformats unsigned-varint: at most 9 bytes, even for a Tsize (uint64)
    ("tsize-10-bytes", _link(_HASH, _field(3, 0) + b"\x80" * 9 + b"\x01") + _PBDATA),
]


@pytest.mark.parametrize("block", [v[1] for v in _PB_INVALID], ids=[v[0] for v in _PB_INVALID])
def test_dag_pb_spec_invalid_blocks_are_refused(block: bytes) -> None:
    with pytest.raises(FormatError):
        decode_pb(block)
    with pytest.raises(FormatError):
        decode_node(block)  # UnixFS reads go through the same strict decoder


def test_builder_output_is_canonical_dag_pb() -> None:
    """Every node the builder writes decodes strictly, Links before Data, with an empty Name and a Tsize."""
    _, blocks = build(pattern(5000), chunk_size=16, max_links=4)
    nodes = [block for cid, block in blocks.items() if cid.codec == DAG_PB]
    assert len(nodes) > 5
    for block in nodes:
        links, data = decode_pb(block)
        assert data is not None and links and all(link.name == b"" and link.tsize for link in links)
        assert block.endswith(_bytes_field(1, data))
