"""UnixFS directories: plain nodes as Kubo writes them, HAMT shards as Kubo and Helia write them,
and the names a directory may give its entries (each one safe path component)."""

from __future__ import annotations

import pytest

from protocol.multiformats import CID, DAG_PB, RAW, FormatError, encode_varint
from protocol.unixfs import (
    DirEntry,
    NotAFile,
    _bytes_field,
    _field,
    decode_directory,
    decode_hamt,
    directory_entries,
    encode_directory,
    is_directory_node,
)


def _node(links: list[tuple[bytes, CID]], data: bytes) -> bytes:
    out = bytearray()
    for name, cid in links:
        out += _bytes_field(2, _bytes_field(1, bytes(cid)) + _bytes_field(2, name) + _field(3, 0) + encode_varint(1))
    return bytes(out + _bytes_field(1, data))


def _hamt_data(fanout: int = 256, hash_type: int = 0x22) -> bytes:
    return b"\x08\x05" + _field(5, 0) + encode_varint(hash_type) + _field(6, 0) + encode_varint(fanout)


LEAF = CID.hash(RAW, b"x")


def test_a_plain_directory_is_kubos_and_round_trips() -> None:
    empty = encode_directory([])
    assert str(CID(0, DAG_PB, CID.hash(DAG_PB, empty).digest)) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    block = encode_directory([DirEntry("b.txt", LEAF, 9), DirEntry("a", LEAF, 9), DirEntry("ünï", LEAF, 9)])
    assert [e.name for e in decode_directory(block)] == ["a", "b.txt", "ünï"]  # sorted by name bytes
    assert is_directory_node(block) and not is_directory_node(_node([], b"\x08\x02\x18\x00"))


@pytest.mark.parametrize("name, needle", [(b"..", "cannot be a file name"), (b".", "cannot be a file name"),
                                          (b"a/b", "cannot be a file name"), (b"a\\b", "cannot be a file name"),
                                          (b"a\0", "cannot be a file name"), (b"", "cannot be a file name"),
                                          (b"x" * 256, "cannot be a file name"), (b"\xff", "not UTF-8")])
def test_entry_names_that_cannot_be_written_back_are_refused(name: bytes, needle: str) -> None:
    with pytest.raises(FormatError, match=needle):
        decode_directory(_node([(name, LEAF)], b"\x08\x01"))
    if name:  # (in a HAMT, the bucket alone names a sub-shard)
        with pytest.raises(FormatError, match=needle):
            decode_hamt(_node([(b"0A" + name, LEAF)], _hamt_data()))


def test_hamt_shards_are_read_across_levels_and_checked() -> None:
    inner = _node([(b"03dup", LEAF), (b"FFlast", LEAF)], _hamt_data())
    inner_cid = CID(1, DAG_PB, CID.hash(DAG_PB, inner).digest)
    root = _node([(b"00first", LEAF), (b"7C", inner_cid)], _hamt_data())
    root_cid = CID(1, DAG_PB, CID.hash(DAG_PB, root).digest)
    blocks = {root_cid: root, inner_cid: inner}
    assert decode_hamt(root) == ([DirEntry("first", LEAF, 1)], [inner_cid])
    assert [e.name for e in directory_entries(blocks.__getitem__, root_cid)] == ["first", "dup", "last"]
    with pytest.raises(NotAFile, match="HAMT-sharded directory"):
        decode_directory(root)  # a plain-directory reader names what it met
    twice = _node([(b"00dup", LEAF), (b"7C", inner_cid)], _hamt_data())
    twice_cid = CID(1, DAG_PB, CID.hash(DAG_PB, twice).digest)
    with pytest.raises(FormatError, match="names 'dup' twice"):  # the same name in two shards
        directory_entries({twice_cid: twice, inner_cid: inner}.__getitem__, twice_cid)
    for links, data, needle in [([(b"0g", LEAF)], _hamt_data(), "no bucket"),  # not hex
                                ([(b"0a", LEAF)], _hamt_data(), "no bucket"),  # lower case
                                ([(b"1", LEAF)], _hamt_data(), "no bucket"),  # shorter than the width
                                ([(b"00x", LEAF)], _hamt_data(fanout=100), "fanout 100"),
                                ([(b"00x", LEAF)], _hamt_data(hash_type=0x12), "hash 0x12")]:
        with pytest.raises(FormatError, match=needle):
            decode_hamt(_node(links, data))
