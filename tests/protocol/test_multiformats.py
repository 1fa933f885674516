"""Varints, base58, multihash CIDs: round trips and rejection of malformed input."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.multiformats import (
    CID,
    DAG_CBOR,
    DAG_PB,
    RAW,
    FormatError,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_varint_round_trip(n: int) -> None:
    raw = encode_varint(n)
    assert decode_varint(raw) == (n, len(raw))
    assert decode_varint(b"\xff" + raw, 1) == (n, len(raw) + 1)
    assert all(b & 0x80 for b in raw[:-1]) and not raw[-1] & 0x80


@pytest.mark.parametrize(("n", "raw"), [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                        (300, b"\xac\x02"), (16384, b"\x80\x80\x01")])
def test_varint_known_encodings(n: int, raw: bytes) -> None:
    assert encode_varint(n) == raw


@pytest.mark.parametrize("raw", [b"", b"\x80", b"\xff\xff", b"\x80\x00", b"\x81\x00", b"\xff" * 10 + b"\x01"])
def test_varint_rejects_truncated_non_minimal_and_long(raw: bytes) -> None:
    with pytest.raises(FormatError):
        decode_varint(raw)


def test_varint_rejects_negative() -> None:
    with pytest.raises(ValueError):
        encode_varint(-1)


@given(st.binary(max_size=80))
def test_base58_round_trip(data: bytes) -> None:
    text = b58encode(data)
    assert b58decode(text) == data
    assert set(text) <= set("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def test_base58_known_values() -> None:
    assert b58encode(b"") == ""
    assert b58encode(b"\x00\x00\x01") == "112"
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    for bad in ("0", "O", "I", "l", "abc+"):
        with pytest.raises(FormatError):
            b58decode(bad)


cids = st.builds(
    lambda codec, data: CID.hash(codec, data), st.sampled_from([RAW, DAG_PB, DAG_CBOR]), st.binary(max_size=64)
)


@given(cids)
def test_cid_text_and_bytes_round_trip(cid: CID) -> None:
    text = str(cid)
    assert text.startswith("b") and text == text.lower()
    assert CID.parse(text) == cid
    assert CID.parse(f"  {text}\n") == cid
    assert CID.from_bytes(bytes(cid)) == cid
    assert len(bytes(cid)) == 36


@given(st.binary(max_size=64))
def test_cidv0_round_trip(data: bytes) -> None:
    cid = CID(0, DAG_PB, hashlib.sha256(data).digest())
    text = str(cid)
    assert text.startswith("Qm") and len(text) == 46
    assert CID.parse(text) == cid
    assert bytes(cid) == b"\x12\x20" + cid.digest


def test_known_cid_text() -> None:
    cid = CID.hash(RAW, b"hello\n")
    assert str(cid) == "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"
    assert cid.verify(b"hello\n") and not cid.verify(b"hello")
    assert str(CID.hash(DAG_CBOR, b"x")).startswith("bafyrei")


def _b32(raw: bytes) -> str:
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


GOOD = bytes(CID.hash(DAG_CBOR, b"x"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "bafy",
        "hello world",
        "Bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  # wrong multibase prefix case
        "zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA",  # base58 multibase: unsupported
        "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXE0",  # '0' is not base58
        "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzd!",
        _b32(GOOD[:-1]),  # truncated digest
        _b32(GOOD + b"\x00"),  # trailing byte
        _b32(b"\x02" + GOOD[1:]),  # CID version 2
        _b32(b"\x01\x72" + GOOD[2:]),  # unknown codec (libp2p-key)
        _b32(GOOD[:2] + b"\x13\x20" + GOOD[4:]),  # sha2-512 code with 32 bytes
        _b32(GOOD[:2] + b"\x12\x1f" + GOOD[4:-1]),  # 31-byte digest
        _b32(b"\x81\x00" + GOOD[1:]),  # non-minimal version varint
    ],
)
def test_malformed_cids_rejected(text: str) -> None:
    with pytest.raises(FormatError):
        CID.parse(text)


@given(st.binary(max_size=40))
def test_from_bytes_never_crashes_unexpectedly(raw: bytes) -> None:
    try:
        cid = CID.from_bytes(raw)
    except FormatError:
        return
    assert bytes(cid) == raw


@given(st.text(max_size=70))
def test_parse_never_crashes_unexpectedly(text: str) -> None:
    try:
        cid = CID.parse(text)
    except FormatError:
        return
    assert CID.parse(str(cid)) == cid


def test_varints_are_at_most_nine_bytes() -> None:
    """The unsigned-varint spec caps varints at 9 bytes (63 bits): a 10-byte one is refused even when minimal."""
    assert decode_varint(encode_varint(2**63 - 1)) == (2**63 - 1, 9)
    with pytest.raises(FormatError, match="too long"):
        decode_varint(b"\x80" * 9 + b"\x01")  # 2**63, minimal, 10 bytes
    with pytest.raises(FormatError, match="too long"):
        CID.from_bytes(b"\x81" + b"\x80" * 8 + b"\x01" + bytes(36))


def test_cid_text_has_one_spelling() -> None:
    cid = CID.hash(DAG_CBOR, b"x")
    text = str(cid)
    assert CID.parse(text.upper()[0].lower() + text[1:].upper()) == cid  # case is not a second spelling
    twin = text[:-1] + chr(ord(text[-1]) ^ 1)  # the last character's spare bits: same bytes, other text
    with pytest.raises(FormatError, match="canonical"):
        CID.parse(twin)
    for bad in (b"bafy", 42, None, "b" + "\udcff" * 12):
        with pytest.raises(FormatError):
            CID.parse(bad)  # type: ignore[arg-type]


def test_base32_of_a_cidv0_is_refused() -> None:
    """CID spec, "Decoding Algorithm": a multibase string whose first byte is 0x12 is an error; CIDv0 is
    written only as base58btc "Qm..."."""
    v0 = CID(0, 0x70, hashlib.sha256(b"x").digest())
    assert CID.parse(str(v0)) == v0
    with pytest.raises(FormatError, match="CIDv0 in base32"):
        CID.parse(_b32(bytes(v0)))
