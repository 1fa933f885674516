"""Length-prefixed frames on libp2p streams, every read and write bounded in time.

A killed sender looks like a clean EOF on yamux, and a write to a stalled reader blocks
forever: hence explicit lengths, size limits and ``trio.fail_after`` everywhere.
"""

from __future__ import annotations

import trio
from libp2p.abc import INetStream

from protocol.multiformats import encode_varint

IO_TIMEOUT = 10.0


class FrameError(Exception):
    """The peer closed early, sent too much, or stalled."""


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
    try:
        with trio.fail_after(timeout):
            length = shift = 0
            while True:
                byte = (await _read_exact(stream, 1))[0]
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 35:
                    raise FrameError("frame length varint too long")
            if length > max_bytes:
                raise FrameError(f"frame of {length} bytes exceeds {max_bytes}")
            return await _read_exact(stream, length)
    except trio.TooSlowError:
        raise FrameError("timed out reading a frame") from None
    except FrameError:
        raise
    except Exception as exc:  # StreamEOF/StreamReset/IOException from the muxer
        raise FrameError(f"stream error: {type(exc).__name__}: {exc}") from None


async def write_frame(stream: INetStream, data: bytes, timeout: float = IO_TIMEOUT, prefix: bytes = b"") -> None:
    """One frame holding ``prefix + data`` (built with a single copy of ``data``)."""
    try:
        with trio.fail_after(timeout):
            await stream.write(b"".join((encode_varint(len(prefix) + len(data)), prefix, data)))
    except trio.TooSlowError:
        raise FrameError("timed out writing a frame") from None
    except Exception as exc:
        raise FrameError(f"stream error: {type(exc).__name__}: {exc}") from None
