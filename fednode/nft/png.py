"""A palette PNG encoder by hand, with its own deflate, so the bytes never depend on the zlib build.

``zlib.compress`` output differs between zlib versions and forks (zlib-ng, Chromium's zlib), and
the image's CID goes into the NFT's metadata: the same picture must give the same bytes on every
node. So the IDAT stream is our own deflate: one block with the fixed Huffman codes of RFC 1951,
every run of a repeated byte as one literal and back-references at distance 1 (run-length
coding). Rows use the PNG "Up" filter, so a row equal to the one above is all zeros and costs a
few bits. Checksums come from zlib (crc32, adler32: defined functions, the same everywhere).
"""

from __future__ import annotations

import re
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RUNS = re.compile(rb"(.)\1*", re.DOTALL)
# RFC 1951 3.2.5: length codes 257..285, their base lengths and extra bits
_LENGTH_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
                131, 163, 195, 227, 258)
_LENGTH_EXTRA = (0,) * 8 + (1,) * 4 + (2,) * 4 + (3,) * 4 + (4,) * 4 + (5,) * 4 + (0,)
MAX_MATCH = 258


class _Bits:
    """Bits packed least significant first, as deflate stores them."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, count: int) -> None:
        self.acc |= value << self.n
        self.n += count
        while self.n >= 8:
            self.out.append(self.acc & 0xFF)
            self.acc >>= 8
            self.n -= 8

    def code(self, code: int, length: int) -> None:
        """A Huffman code: sent most significant bit first."""
        self.put(int(f"{code:0{length}b}"[::-1], 2), length)

    def finish(self) -> bytes:
        if self.n:
            self.out.append(self.acc & 0xFF)
        return bytes(self.out)


def _symbol(bits: _Bits, sym: int) -> None:
    """A literal/length symbol in the fixed code (RFC 1951 3.2.6)."""
    if sym < 144:
        bits.code(0x30 + sym, 8)
    elif sym < 256:
        bits.code(0x190 + sym - 144, 9)
    elif sym < 280:
        bits.code(sym - 256, 7)
    else:
        bits.code(0xC0 + sym - 280, 8)


def _match(bits: _Bits, length: int) -> None:
    """A back-reference of ``length`` (3..258) at distance 1."""
    index = next(i for i in range(len(_LENGTH_BASE) - 1, -1, -1) if _LENGTH_BASE[i] <= length)
    _symbol(bits, 257 + index)
    if _LENGTH_EXTRA[index]:
        bits.put(length - _LENGTH_BASE[index], _LENGTH_EXTRA[index])
    bits.code(0, 5)  # distance code 0: distance 1, no extra bits


def deflate(data: bytes) -> bytes:
    """A zlib stream of ``data`` (RFC 1950 around one fixed-Huffman RFC 1951 block)."""
    bits = _Bits()
    bits.put(1, 1)  # BFINAL
    bits.put(1, 2)  # BTYPE 01: fixed Huffman codes
    for run in _RUNS.finditer(data):
        value, left = run.group()[0], len(run.group())
        _symbol(bits, value)
        left -= 1
        while left >= 3:
            step = min(left, MAX_MATCH)
            if 0 < left - step < 3:  # keep a tail of at least 3 for the next match
                step = left - 3
            _match(bits, step)
            left -= step
        for _ in range(left):
            _symbol(bits, value)
    _symbol(bits, 256)  # end of block
    return b"\x78\x01" + bits.finish() + struct.pack(">I", zlib.adler32(data))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png(width: int, height: int, pixels: bytes, palette: list[tuple[int, int, int]]) -> bytes:
    """An 8-bit palette PNG: ``pixels`` holds one palette index per pixel, row by row."""
    if len(pixels) != width * height or not 0 < len(palette) <= 256 or max(pixels, default=0) >= len(palette):
        raise ValueError("pixels must be width*height palette indices")
    rows = bytearray()
    previous = bytes(width)
    for y in range(height):
        row = pixels[y * width:(y + 1) * width]
        rows.append(2)  # filter Up: the difference from the row above (zero above the first row)
        rows += bytes((a - b) & 0xFF for a, b in zip(row, previous, strict=True))
        previous = row
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"PLTE", b"".join(bytes(c) for c in palette))
            + _chunk(b"IDAT", deflate(bytes(rows))) + _chunk(b"IEND", b""))
