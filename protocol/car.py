"""CAR files (Content Addressable aRchives): a CARv1 writer and a strict CARv1 / CARv2 reader.

Specs: https://ipld.io/specs/transport/car/carv1/ and .../carv2/. A CARv1 is
``varint(len(header)) || header`` (DAG-CBOR ``{roots: [CID, ...], version: 1}``), then sections
``varint(len(cid) + len(block)) || cid || block`` to the end. A CARv2 is an 11-byte pragma
(a CARv1-style header ``{version: 2}``), a 40-byte header (16 bytes of characteristics, then data
offset, data size and index offset, little-endian u64), an inner CARv1 at the data offset and an
optional index, which this reader skips (bounded by the caller's size limit) and never trusts.

Rules this reader enforces, every failure a ``CarError`` with a one-line message:
- headers are canonical DAG-CBOR with exactly the spec's fields, at most ``MAX_HEADER`` bytes;
- every CID parses (``CID.from_bytes``: CIDv1 raw/dag-pb/dag-cbor or CIDv0, sha2-256), every
  block is at most ``max_block`` bytes and hashes to its CID;
- duplicates: the spec allows a CID twice; as each block is checked against its CID, two sections
  with one CID hold the same bytes, and the reader hands each CID out once;
- no truncation, no trailing bytes, nothing past the caller's ``max_bytes``; a CARv2's data size
  must end exactly on a section boundary.
Pure: it reads and writes only the binary file objects it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from protocol import dagcbor
from protocol.multiformats import CID, FormatError, encode_varint

MAX_HEADER = 64 * 1024  # a header of 1,800 roots; fednode writes one
MAX_BLOCK = 4 * 1024 * 1024  # as the block exchange (messages.MAX_BLOCK_BYTES): chunks are 256 KiB
MAX_CID = 64  # a CIDv1 with a sha2-256 digest is 36 bytes
CARV2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")  # varint(10) || {"version": 2}
CARV2_HEADER = 40
_VARINT_MAX = 9


class CarError(FormatError):
    """A CAR that is malformed, truncated, too large or whose blocks lie about their CIDs."""


@dataclass(frozen=True)
class Section:
    """One block of a CAR: its CID, its bytes and where the bytes start in the file."""

    cid: CID
    block: bytes
    offset: int


def encode_header(roots: list[CID]) -> bytes:
    header = dagcbor.encode({"version": 1, "roots": list(roots)})
    return encode_varint(len(header)) + header


def encode_section(cid: CID, block: bytes) -> bytes:
    raw = bytes(cid)
    return encode_varint(len(raw) + len(block)) + raw + block


def write_car(out: BinaryIO, roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> int:
    """Write a CARv1 of ``blocks`` (in the order given) under ``roots``; returns the bytes written."""
    written = out.write(encode_header(roots))
    for cid, block in blocks:
        written += out.write(encode_section(cid, block))
    return written


class _Input:
    """Exact reads from a stream, with the position, the caller's size limit and an end bound."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._peeked = b""  # one byte ``at_end`` read ahead
        self.pos = 0
        self.max_bytes = max_bytes
        self.end: int | None = None  # a CARv2 data payload ends here

    def _over(self) -> CarError:
        return CarError(f"the CAR is larger than the limit of {self.max_bytes} bytes")

    def read(self, n: int, what: str) -> bytes:
        if self.end is not None and self.pos + n > self.end:
            raise CarError(f"{what} crosses the end of the CARv2 data payload at byte {self.end}")
        allowed = min(n, max(self.max_bytes - self.pos, 0))  # never read past the limit
        data, self._peeked = self._peeked[:allowed], self._peeked[allowed:]
        if allowed > len(data):
            data += self._stream.read(allowed - len(data))
        if len(data) != allowed:
            raise CarError(f"truncated CAR: {what} at byte {self.pos + len(data)} is cut short")
        if allowed < n:  # the stream goes on past the limit, or ends: say which
            if self._peeked or self._stream.read(1):
                raise self._over()
            raise CarError(f"truncated CAR: {what} at byte {self.max_bytes} is cut short")
        self.pos += n
        return data

    def at_end(self) -> bool:
        """True at the end of the payload (a CARv2's data size, or the stream's end)."""
        if self.end is not None:
            return self.pos >= self.end
        if not self._peeked:
            self._peeked = self._stream.read(1)
        if self._peeked and self.pos >= self.max_bytes:
            raise self._over()
        return not self._peeked

    def varint(self, what: str) -> int:
        value = shift = 0
        for i in range(_VARINT_MAX):
            byte = self.read(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise CarError(f"non-minimal varint in {what} at byte {self.pos - 1}")
                return value
            shift += 7
        raise CarError(f"varint too long in {what} at byte {self.pos}")

    def skip(self, n: int, what: str) -> None:
        """``read`` of ``n`` bytes that are dropped, a chunk at a time (padding may be large)."""
        while n > 0:
            chunk = min(n, 1 << 20)
            self.read(chunk, what)
            n -= chunk

    def skip_to_end(self) -> None:
        """Read (and drop) the rest of the stream, within the size limit."""
        self.pos += len(self._peeked)
        self._peeked = b""
        while chunk := self._stream.read(1 << 20):
            self.pos += len(chunk)
            if self.pos > self.max_bytes:
                raise self._over()


def _cid_length(data: bytes) -> int:
    """Length of the CID that starts ``data`` (a section's bytes: CID then block)."""
    if data[:2] == b"\x12\x20":
        return 34  # CIDv0: a bare sha2-256 multihash
    pos = 0
    for _ in range(3):  # version, codec, multihash code
        pos = _skip_varint(data, pos)
    digest_length_at = pos
    pos = _skip_varint(data, pos)
    length = int.from_bytes(data[digest_length_at:pos], "little") if pos - digest_length_at == 1 else -1
    if length < 0 or pos + length > min(len(data), MAX_CID):
        raise CarError("a section's CID is malformed or cut short")
    return pos + length


def _skip_varint(data: bytes, pos: int) -> int:
    for i in range(_VARINT_MAX):
        if pos + i >= len(data):
            raise CarError("a section's CID is cut short")
        if not data[pos + i] & 0x80:
            return pos + i + 1
    raise CarError("a section's CID has a varint that is too long")


def _header(source: _Input) -> dict[str, object]:
    size = source.varint("the header length")
    if size == 0 or size > MAX_HEADER:
        raise CarError(f"a CAR header of {size} bytes (at most {MAX_HEADER})")
    try:
        value = dagcbor.decode(source.read(size, "the header"))
    except CarError:
        raise
    except FormatError as exc:
        raise CarError(f"the CAR header is not canonical DAG-CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise CarError("the CAR header is not a map")
    return value


class CarReader:
    """A strict CAR reader: ``roots`` and ``version`` after construction, then iterate for the
    sections, each hash-checked, each CID once (see the module's rules)."""

    def __init__(self, stream: BinaryIO, max_bytes: int, max_block: int = MAX_BLOCK) -> None:
        self._in = _Input(stream, max_bytes)
        self._max_block = max_block
        self._v2_tail: tuple[int, int] | None = None  # CARv2: (data end, index offset)
        header = _header(self._in)
        if set(header) == {"version"} and type(header["version"]) is int and header["version"] == 2:
            self.version = 2
            header = self._enter_v2()
        else:
            self.version = 1
        if set(header) != {"version", "roots"} or header["version"] != 1 or type(header["version"]) is not int:
            raise CarError("the CAR header must be exactly {version: 1, roots: [CID...]}")
        roots = header["roots"]
        if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
            raise CarError("the CAR header's roots must be a list of CIDs")
        self.roots: list[CID] = roots

    def _enter_v2(self) -> dict[str, object]:
        """Read the CARv2 header, skip to the data payload, bound reads by its size; the inner header."""
        fixed = self._in.read(CARV2_HEADER, "the CARv2 header")
        data_offset, data_size, index_offset = (int.from_bytes(fixed[i:i + 8], "little") for i in (16, 24, 32))
        start = len(CARV2_PRAGMA) + CARV2_HEADER
        if data_offset < start or data_size == 0:
            raise CarError(f"a CARv2 data payload at byte {data_offset} of {data_size} bytes")
        data_end = data_offset + data_size
        if index_offset and index_offset < data_end:
            raise CarError(f"the CARv2 index at byte {index_offset} overlaps the data payload")
        self._in.skip(data_offset - start, "the CARv2 padding")
        self._in.end = data_end
        self._v2_tail = (data_end, index_offset)
        inner = _header(self._in)
        if type(inner.get("version")) is not int or inner.get("version") != 1:
            raise CarError("a CARv2 must hold a CARv1 payload")
        return inner

    def __iter__(self) -> Iterator[Section]:
        seen: set[CID] = set()
        while not self._in.at_end():
            section = self._section()
            if section.cid not in seen:  # a duplicate holds the same bytes: its CID was checked
                seen.add(section.cid)
                yield section
        self._finish_v2()

    def _section(self) -> Section:
        size = self._in.varint("a section length")
        if size == 0 or size > self._max_block + MAX_CID:
            raise CarError(f"a CAR section of {size} bytes at byte {self._in.pos} (blocks are at most "
                           f"{self._max_block} bytes)")
        start = self._in.pos
        data = self._in.read(size, "a section")
        n = _cid_length(data)
        try:
            cid = CID.from_bytes(data[:n])
        except FormatError as exc:
            raise CarError(f"a section's CID at byte {start} does not parse: {exc}") from None
        block = data[n:]
        if len(block) > self._max_block:
            raise CarError(f"block {cid} is {len(block)} bytes (at most {self._max_block})")
        if not cid.verify(block):
            raise CarError(f"block {cid} does not match its hash")
        return Section(cid, block, start + n)

    def _finish_v2(self) -> None:
        """After a CARv2's payload: nothing (no index) or padding then the index, which is skipped."""
        if self._v2_tail is None:
            return
        data_end, index_offset = self._v2_tail
        self._in.end = None
        if index_offset == 0:
            if not self._in.at_end():
                raise CarError(f"trailing bytes after the CARv2 data payload at byte {data_end}")
            return
        self._in.skip(index_offset - data_end, "the padding before the CARv2 index")
        self._in.skip_to_end()


def read_car(data: bytes, max_bytes: int | None = None) -> tuple[list[CID], list[Section]]:
    """A whole CAR held in memory: its roots and its sections (for tests and the fuzzer)."""
    import io

    reader = CarReader(io.BytesIO(data), len(data) if max_bytes is None else max_bytes)
    return reader.roots, list(reader)
