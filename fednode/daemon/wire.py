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
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise FrameError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


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


async def write_frame(stream: INetStream, data: bytes, timeout: float = IO_TIMEOUT) -> None:
    try:
        with trio.fail_after(timeout):
            await stream.write(encode_varint(len(data)) + data)
    except trio.TooSlowError:
        raise FrameError("timed out writing a frame") from None
    except Exception as exc:
        raise FrameError(f"stream error: {type(exc).__name__}: {exc}") from None
