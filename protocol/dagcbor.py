"""Strict, deterministic DAG-CBOR (https://ipld.io/specs/codecs/dag-cbor/spec/).

Encoding is canonical: shortest integer and length forms, map keys are strings
sorted by encoded length then bytewise, floats are always 64-bit and finite,
CIDs are tag 42 over a 0x00-prefixed binary CID. ``decode`` accepts only the
canonical form (it re-encodes and compares), so one value has one byte string
and therefore one CID: a peer cannot make two blocks that mean the same thing.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from protocol.multiformats import CID, FormatError

_CID_TAG = 42
MAX_DEPTH = 64


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 1 << 8:
        return bytes([major << 5 | 24, n])
    if n < 1 << 16:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    if n < 1 << 32:
        return bytes([major << 5 | 26]) + n.to_bytes(4, "big")
    if n < 1 << 64:
        return bytes([major << 5 | 27]) + n.to_bytes(8, "big")
    raise ValueError("integer out of the 64-bit CBOR range")


def _encode(value: Any, out: bytearray, depth: int) -> None:
    """Append ``value``'s canonical encoding: one case per CBOR major type, in the spec's order."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        out += _head(0, value) if value >= 0 else _head(1, -1 - value)
    elif isinstance(value, float):
        _encode_float(value, out)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out += _head(2, len(data)) + data
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out += _head(3, len(data)) + data
    elif isinstance(value, (list, tuple)):
        out += _head(4, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        _encode_map(value, out, depth)
    elif isinstance(value, CID):
        data = b"\x00" + bytes(value)
        out += _head(6, _CID_TAG) + _head(2, len(data)) + data
    else:
        raise ValueError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def _encode_float(value: float, out: bytearray) -> None:
    """Always the 64-bit form, and only finite values."""
    if not math.isfinite(value):
        raise ValueError("DAG-CBOR forbids NaN and infinities")
    out.append(0xFB)
    out += struct.pack(">d", value)


def _encode_map(value: dict[Any, Any], out: bytearray, depth: int) -> None:
    """String keys only, sorted by encoded length, then bytewise."""
    items = []
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError("DAG-CBOR map keys must be strings")
        kb = key.encode("utf-8")
        items.append((len(kb), kb, item))
    items.sort(key=lambda t: (t[0], t[1]))
    out += _head(5, len(items))
    for _, kb, item in items:
        out += _head(3, len(kb)) + kb
        _encode(item, out, depth + 1)


def encode(value: Any) -> bytes:
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError("truncated DAG-CBOR")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int, int]:
        byte = self.take(1)[0]
        major, info = byte >> 5, byte & 31
        if info < 24:
            return major, info, info
        if info > 27:
            return major, info, -1
        return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")

    def value(self, depth: int) -> Any:
        """The next value: one case per CBOR major type, in the spec's order."""
        if depth > MAX_DEPTH:
            raise FormatError("DAG-CBOR nested too deeply")
        major, info, n = self.head()
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major in (2, 3, 4, 5) and n < 0:
            raise FormatError("indefinite lengths are not DAG-CBOR")
        if major == 2:
            return self.take(n)
        if major == 3:
            return self._text(n)
        if major == 4:
            return [self.value(depth + 1) for _ in range(n)]
        if major == 5:
            return self._map(n, depth)
        if major == 6:
            return self._cid_link(n, depth)
        return self._simple(info)

    def _text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError("invalid UTF-8 in DAG-CBOR string") from exc

    def _map(self, n: int, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for _ in range(n):
            key = self.value(depth + 1)
            if not isinstance(key, str) or key in result:
                raise FormatError("DAG-CBOR map keys must be unique strings")
            result[key] = self.value(depth + 1)
        return result

    def _cid_link(self, tag: int, depth: int) -> CID:
        """The one tag DAG-CBOR allows: 42, over a 0x00-prefixed binary CID."""
        if tag != _CID_TAG:
            raise FormatError(f"unsupported CBOR tag {tag}")
        raw = self.value(depth + 1)
        if not isinstance(raw, bytes) or raw[:1] != b"\x00":
            raise FormatError("malformed CID link")
        return CID.from_bytes(raw[1:])

    def _simple(self, info: int) -> Any:
        """Major type 7: false, true, null or a 64-bit float (whose 8 bytes ``head`` just read)."""
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 27:
            return struct.unpack(">d", self.data[self.pos - 8 : self.pos])[0]
        raise FormatError("unsupported CBOR simple value")


def decode(data: bytes) -> Any:
    """Decode canonical DAG-CBOR; anything else raises FormatError."""
    reader = _Reader(bytes(data))
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise FormatError("trailing bytes after DAG-CBOR value")
    try:
        canonical = encode(value)
    except ValueError as exc:
        raise FormatError(str(exc)) from exc
    if canonical != reader.data:
        raise FormatError("DAG-CBOR is not in canonical form")
    return value
