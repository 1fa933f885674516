"""Strict DAG-CBOR: round trips, canonical (deterministic) encoding, rejection of non-canonical forms."""

from __future__ import annotations

import math
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import dagcbor
from protocol.multiformats import CID, DAG_CBOR, DAG_PB, RAW, FormatError

INT64 = st.integers(min_value=-(2**64), max_value=2**64 - 1)
cids = st.builds(lambda c, d: CID.hash(c, d), st.sampled_from([RAW, DAG_PB, DAG_CBOR]), st.binary(max_size=8))
scalars = (
    st.none()
    | st.booleans()
    | INT64
    | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -24, -25, -(2**64)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | cids
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def _same(a: object, b: object) -> bool:
    """Equality that tells floats from ints and -0.0 from 0.0."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, float) and isinstance(b, float) and struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(values)
def test_round_trip(value: object) -> None:
    raw = dagcbor.encode(value)
    back = dagcbor.decode(raw)
    assert _same(back, value)
    assert dagcbor.encode(back) == raw


@given(st.dictionaries(st.text(max_size=6), INT64, min_size=2, max_size=12), st.randoms())
def test_encoding_ignores_insertion_order(d: dict, rnd: random.Random) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert dagcbor.encode(dict(items)) == dagcbor.encode(d)


@given(st.dictionaries(st.text(max_size=6), st.none(), min_size=2, max_size=12))
def test_keys_sorted_length_first(d: dict) -> None:
    keys = list(dagcbor.decode(dagcbor.encode(d)))
    encoded = [k.encode() for k in keys]
    assert encoded == sorted(encoded, key=lambda k: (len(k), k))


def test_known_encodings() -> None:
    assert dagcbor.encode(0) == b"\x00"
    assert dagcbor.encode(24) == b"\x18\x18"
    assert dagcbor.encode(-1) == b"\x20"
    assert dagcbor.encode(2**64 - 1) == b"\x1b" + b"\xff" * 8
    assert dagcbor.encode(-(2**64)) == b"\x3b" + b"\xff" * 8
    assert dagcbor.encode(1.5) == b"\xfb" + struct.pack(">d", 1.5)  # always 64-bit floats
    assert dagcbor.encode({"b": 1, "aa": 2, "a": 3}) == b"\xa3\x61a\x03\x61b\x01\x62aa\x02"
    assert dagcbor.encode([True, False, None]) == b"\x83\xf5\xf4\xf6"
    cid = CID.hash(RAW, b"")
    assert dagcbor.encode(cid) == b"\xd8\x2a\x58\x25\x00" + bytes(cid)


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, math.nan, math.inf, -math.inf, {1: 2}, {b"k": 1},
                                   {1.5}, object()])
def test_encode_rejects_unrepresentable(value: object) -> None:
    with pytest.raises(ValueError):
        dagcbor.encode(value)


def test_encode_rejects_too_deep() -> None:
    value: list = []
    for _ in range(dagcbor.MAX_DEPTH + 2):
        value = [value]
    with pytest.raises(ValueError):
        dagcbor.encode(value)


NON_CANONICAL = {
    "unsorted keys": b"\xa2\x61b\x01\x61a\x02",
    "length-first order violated": b"\xa2\x62aa\x01\x61b\x02",
    "duplicate keys": b"\xa2\x61a\x01\x61a\x02",
    "non-string key": b"\xa1\x01\x02",
    "non-minimal int 1 byte": b"\x18\x05",
    "non-minimal int 2 bytes": b"\x19\x00\xff",
    "non-minimal int 8 bytes": b"\x1b\x00\x00\x00\x00\x00\x00\x00\x01",
    "non-minimal negative": b"\x38\x00",
    "non-minimal bytes length": b"\x58\x01a",
    "non-minimal string length": b"\x79\x00\x01a",
    "non-minimal array length": b"\x98\x00",
    "non-minimal map length": b"\xb8\x00",
    "indefinite array": b"\x9f\x01\xff",
    "indefinite map": b"\xbf\x61a\x01\xff",
    "indefinite bytes": b"\x5f\x41a\xff",
    "indefinite string": b"\x7f\x61a\xff",
    "trailing bytes": b"\x01\x00",
    "trailing break": b"\x80\xff",
    "NaN": b"\xfb" + struct.pack(">d", math.nan),
    "infinity": b"\xfb" + struct.pack(">d", math.inf),
    "half float": b"\xf9\x3c\x00",
    "single float": b"\xfa\x3f\x80\x00\x00",
    "undefined": b"\xf7",
    "simple value": b"\xf0",
    "other tag": b"\xc1\x01",
    "tag 42 without 0x00 prefix": b"\xd8\x2a\x58\x24" + bytes(CID.hash(RAW, b"")),
    "tag 42 over a string": b"\xd8\x2a\x61a",
    "tag 42 non-minimal tag": b"\xd9\x00\x2a\x58\x25\x00" + bytes(CID.hash(RAW, b"")),
    "invalid utf-8": b"\x62\xff\xfe",
    "truncated": b"\x62a",
    "truncated head": b"\x19\x01",
    "empty": b"",
    "reserved info": b"\x1c",
}


@pytest.mark.parametrize("raw", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_decode_rejects_non_canonical(raw: bytes) -> None:
    with pytest.raises(FormatError):
        dagcbor.decode(raw)


def test_decode_rejects_too_deep() -> None:
    with pytest.raises(FormatError):
        dagcbor.decode(b"\x81" * (dagcbor.MAX_DEPTH + 2) + b"\x00")


@given(st.binary(max_size=64))
def test_decode_arbitrary_bytes_is_canonical_or_rejected(raw: bytes) -> None:
    try:
        value = dagcbor.decode(raw)
    except FormatError:
        return
    assert dagcbor.encode(value) == raw


@given(values)
def test_one_value_one_encoding_after_mutation(value: object) -> None:
    """Flipping any single byte of an encoding never yields another encoding of the same value."""
    raw = dagcbor.encode(value)
    for i in range(0, len(raw), max(1, len(raw) // 8)):
        mutated = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        try:
            other = dagcbor.decode(mutated)
        except FormatError:
            continue
        assert dagcbor.encode(other) == mutated
        assert dagcbor.encode(other) != raw


def test_bool_int_and_float_stay_three_values() -> None:
    """Decoders above rely on the decoded type: true, 1 and 1.0 are three encodings and three values."""
    raws = [dagcbor.encode(v) for v in (True, 1, 1.0)]
    assert len(set(raws)) == 3
    assert [type(dagcbor.decode(r)) for r in raws] == [bool, int, float]


@pytest.mark.parametrize("raw", [
    bytes.fromhex("d82a4b00") + b"\x81" + b"\x80" * 8 + b"\x01",  # a CID version varint of 10 bytes
    bytes.fromhex("d82a43000102"),  # a truncated CID inside tag 42
    bytes.fromhex("d82a0100"),  # tag 42 over an integer
])
def test_malformed_links_are_format_errors(raw: bytes) -> None:
    with pytest.raises(FormatError):
        dagcbor.decode(raw)
