"""Length-prefixed frames on libp2p streams, every read and write bounded in time.

A killed sender looks like a clean EOF on yamux, and a write to a stalled reader blocks
forever: hence explicit lengths, size limits and ``trio.fail_after`` everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio
from libp2p.abc import INetStream
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE

from fednode.daemon import bulkwrite
from protocol.multiformats import encode_varint

IO_TIMEOUT = 10.0
FIRST_FRAME_TIMEOUT = 2.0  # a served stream must send its request within this; idle ones are closed
READ_CHUNK = 1 << 20  # most a FrameReader takes per read of what the muxer has buffered
# py-libp2p's yamux cuts a write into frames of up to 65524 payload bytes + a 12-byte header, and
# Noise splits any write over 65519 plaintext bytes into two messages: a full yamux frame costs two
# encryptions, two socket writes and two decryptions. A write of WRITE_PIECE bytes is one yamux
# frame in one Noise message (measured, both hosts in one process: 64 MiB of 256 KiB blocks in
# ~20% less time than with 1 MiB writes).
WRITE_PIECE = MAX_PLAINTEXT_LENGTH - HEADER_SIZE


class FrameError(Exception):
    """The peer closed early, sent too much, or stalled."""


class FrameTimeout(FrameError):
    """The peer sent nothing (or not enough) in time."""


class FrameTooLarge(FrameError):
    """A frame's declared length is over the limit (nothing of it is read or buffered)."""


async def _read_exact(stream: INetStream, n: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = await stream.read(n - got)
        if not chunk:
            raise FrameError(f"stream ended after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # one copy at most


async def read_frame(stream: INetStream, max_bytes: int, timeout: float = IO_TIMEOUT) -> bytes:
    with _io_errors(timeout, "reading"):
        length = shift = 0
        while True:
            byte = (await _read_exact(stream, 1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 35:
                raise FrameTooLarge("frame length varint too long")
        if length > max_bytes:
            raise FrameTooLarge(f"frame of {length} bytes exceeds {max_bytes}")
        return await _read_exact(stream, length)


class FrameReader:
    """Consecutive frames from one stream, read in chunks of up to READ_CHUNK bytes.

    ``read_frame`` below makes one muxer read per varint byte plus the body's, and every muxer
    read costs a yamux window update (a Noise message back to the sender); here each read takes
    whatever the muxer has buffered. It may read up to READ_CHUNK bytes past the current frame,
    so use it only on a stream whose every incoming byte is a frame meant for this reader.
    """

    def __init__(self, stream: INetStream, chunk: int = READ_CHUNK) -> None:
        self._stream = stream
        self._chunk = chunk
        self._buf = b""
        self._pos = 0
        self.bytes_read = 0  # 0 after an error: the peer sent nothing at all (e.g. it refused the stream)

    async def _more(self, want: int) -> bytes:
        data = await self._stream.read(max(self._chunk, want))
        if not data:
            raise FrameError("stream ended inside a frame")
        self.bytes_read += len(data)
        return data

    async def _varint(self) -> int:
        length = shift = 0
        while True:
            if self._pos == len(self._buf):
                self._buf, self._pos = await self._more(1), 0
            byte = self._buf[self._pos]
            self._pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return length
            shift += 7
            if shift > 35:
                raise FrameTooLarge("frame length varint too long")

    async def _body(self, n: int) -> memoryview:
        """``n`` bytes: a view of the buffer when it holds them (no copy), else one join."""
        start = self._pos
        if len(self._buf) - start >= n:
            self._pos += n
            return memoryview(self._buf)[start:start + n]
        parts = [memoryview(self._buf)[start:]]
        got = len(parts[0])
        while got < n:
            data = await self._more(n - got)
            take = min(len(data), n - got)
            parts.append(memoryview(data)[:take])
            got += take
            self._buf, self._pos = data, take
        return memoryview(b"".join(parts))

    async def read_frame(self, max_bytes: int, timeout: float = IO_TIMEOUT) -> memoryview:
        """The next frame's body (at most ``max_bytes``), as a read-only view."""
        with _io_errors(timeout, "reading"):
            length = await self._varint()
            if length > max_bytes:
                raise FrameTooLarge(f"frame of {length} bytes exceeds {max_bytes}")
            return await self._body(length)


class FrameWriter:
    """Consecutive frames to one stream, sent in whole WRITE_PIECEs (see WRITE_PIECE) through
    ``bulkwrite`` (paced by the peer's yamux window, many yamux frames a socket send).

    Less than one piece waits in a buffer until the next frame fills it or ``flush``; big
    frames go out as views of the caller's bytes (no join copy)."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self._pending = bytearray()

    async def write_frame(self, data: bytes, prefix: bytes = b"", timeout: float = IO_TIMEOUT) -> None:
        """Queue ``prefix + data`` as one frame; full pieces are written now, within ``timeout``."""
        self._pending += encode_varint(len(prefix) + len(data))
        self._pending += prefix
        view = memoryview(data)
        room = WRITE_PIECE - len(self._pending)
        if len(view) < room:
            self._pending += view
            return
        self._pending += view[:room]
        view = view[room:]
        full = len(view) - len(view) % WRITE_PIECE
        with _io_errors(timeout):
            await bulkwrite.write(self._stream, self._pending)
            await bulkwrite.write(self._stream, view[:full])
        self._pending = bytearray(view[full:])

    async def flush(self, timeout: float = IO_TIMEOUT) -> None:
        if self._pending:
            with _io_errors(timeout):
                await bulkwrite.write(self._stream, self._pending)
            self._pending = bytearray()


@contextmanager
def _io_errors(timeout: float, doing: str = "writing") -> Iterator[None]:
    """Bounds stream I/O in time; timeouts and muxer errors (StreamEOF, StreamReset,
    IOException) become FrameError."""
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        raise FrameTimeout(f"timed out {doing} a frame") from None
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"stream error: {type(exc).__name__}: {exc}") from None


async def write_frame(stream: INetStream, data: bytes, timeout: float = IO_TIMEOUT, prefix: bytes = b"") -> None:
    """One frame holding ``prefix + data`` (built with a single copy of ``data``)."""
    with _io_errors(timeout):
        await stream.write(b"".join((encode_varint(len(prefix) + len(data)), prefix, data)))
