"""Unsigned varints, multihash, CIDv1 and the multibase/base58 text forms.

Only what fednode needs: sha2-256 multihashes, CIDv1 with the raw (0x55),
dag-pb (0x70) and dag-cbor (0x71) codecs, base32 text (prefix ``b``) and the
legacy CIDv0 (base58btc ``Qm...``) for reading Kubo output.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71
SHA2_256 = 0x12
CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


class FormatError(ValueError):
    """Bytes or text that do not decode to a valid object."""


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Return (value, next position); minimal encodings of at most 9 bytes (63 bits) only, as the
    multiformats unsigned-varint spec requires."""
    value = shift = 0
    start = pos
    while True:
        if pos >= len(data):
            raise FormatError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                raise FormatError("non-minimal varint")
            return value, pos
        shift += 7
        if shift >= 63:
            raise FormatError("varint too long")


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise FormatError(f"invalid base58 character {c!r}")
        n = n * 58 + _B58_INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


@dataclass(frozen=True, order=True)
class CID:
    """A CIDv1 (or v0, read-only) with a sha2-256 multihash."""

    version: int
    codec: int
    digest: bytes

    @classmethod
    def hash(cls, codec: int, data: bytes | bytearray | memoryview) -> CID:
        return cls(1, codec, hashlib.sha256(data).digest())

    @property
    def multihash(self) -> bytes:
        return bytes([SHA2_256, 32]) + self.digest

    def __bytes__(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + base64.b32encode(bytes(self)).decode().lower().rstrip("=")

    def __repr__(self) -> str:
        return f"CID({self})"

    def verify(self, data: bytes) -> bool:
        return hashlib.sha256(data).digest() == self.digest

    @classmethod
    def from_bytes(cls, raw: bytes) -> CID:
        raw = bytes(raw)  # a memoryview digest would make the CID unhashable
        if len(raw) == 34 and raw[:2] == b"\x12\x20":
            return cls(0, DAG_PB, raw[2:])
        version, pos = decode_varint(raw)
        if version != 1:
            raise FormatError(f"unsupported CID version {version}")
        codec, pos = decode_varint(raw, pos)
        if codec not in CODEC_NAMES:
            raise FormatError(f"unsupported CID codec 0x{codec:x}")
        code, pos = decode_varint(raw, pos)
        length, pos = decode_varint(raw, pos)
        if code != SHA2_256 or length != 32 or len(raw) - pos != 32:
            raise FormatError("CID multihash must be sha2-256 (32 bytes)")
        return cls(1, codec, raw[pos:])

    @classmethod
    def parse(cls, text: str) -> CID:
        if type(text) is not str:
            raise FormatError("a CID is text")
        text = text.strip()
        shown = repr(text[:80])
        if text.startswith("Qm") and len(text) == 46:
            cid = cls.from_bytes(b58decode(text))
        elif text.startswith("b") and len(text) >= 10:
            body = text[1:].upper()
            try:
                raw = base64.b32decode(body + "=" * (-len(body) % 8))
            except ValueError as exc:
                raise FormatError(f"not a CID: {shown}") from exc
            cid = cls.from_bytes(raw)
            if cid.version == 0:  # CIDv0 has one text form, base58btc "Qm..." (CID spec, "Decoding Algorithm")
                raise FormatError(f"a CIDv0 in base32 is not a CID: {shown}")
        else:
            raise FormatError(f"not a CID: {shown}")
        # one CID, one text (case aside): no other trailing bits, no base58 look-alike of another CID
        if str(cid).lower() != text.lower():
            raise FormatError(f"not a canonical CID: {shown}")
        return cid
