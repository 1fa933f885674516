"""Bulk writes of large payloads (bitswap messages, block frames) on a libp2p stream.

py-libp2p sends each yamux frame (at most 64 KiB) through five layers, each with its own lock and
checkpoints: the stream's read-write and window locks, the connection's write lock, Noise's
``write_msg``, msgio's length prefix and the TCP stream's lock, then one socket send. Traced on
this machine (2026-12-04), Kubo asking a daemon for 10 blocks of 256 KiB at a time, those 2.6 MB
took our sender 15-30 ms, a third to a half of each round trip, and Kubo's DAG reader asks for
the next 10 only once all 10 have arrived. Here, for a stream that is yamux over Noise over TCP
(what the daemon's hosts speak), the whole part of a payload that the peer's window allows is
framed, encrypted and sent at once, holding the same locks in the same order: the stream's
window is reserved under its own locks (as ``YamuxStream.write`` does), then, under the
connection's write lock (which orders every frame and every Noise nonce of the connection),
each frame is encrypted with the session's cipher state and all of them go out in one send. The
Noise messages are sealed in place into that one buffer (``_seal``: ChaCha20-Poly1305's
``encrypt_into``, the session's nonces advanced as its own ``encrypt`` advances them), not one new
bytes object each.
Any other stack, or a py-libp2p whose internals differ, takes the ordinary ``stream.write``.

Frames: what the window allows goes as ONE yamux frame (up to MAX_FRAME), sealed as consecutive
Noise messages (a frame may span several; yamux runs over Noise's byte stream). The receivers
count: js-libp2p's yamux (Helia) sends a window update back for every data frame it takes in, and
py-libp2p's for every read; with a frame per 64 KiB Noise message, Helia sent 1,024 updates per
64 MiB and spent 10% of its CPU on them (its CPU profile, 2026-12-05). Measured, four rounds each,
Helia fetching 64 MiB from two daemons in turn: 0.755-0.823 s with window-sized frames against
0.892-0.934 s with 64 KiB frames, the serving daemon's CPU 0.21-0.24 s against 0.31-0.34 s; Kubo
(go-yamux updates at half a window) and fednode clones: unchanged within the machine's noise.

Windows: py-libp2p's yamux, finding the send window empty, sleeps 10 ms before it looks again,
which held one stream to Kubo (256 KiB window) to about 26 MB/s. Kubo's window for a stream of
ours stays near 256 KiB on loopback (go-yamux grows it only when updates come faster than its
RTT estimate), so a 1 MiB message waits for it about four times. Here the stream is watched:
its class becomes ``_WatchedStream``, whose ``send_window`` wakes the writer as soon as the
peer's update raises it (py-libp2p's reader applies updates with ``send_window += n``). The writer
also looks again after WINDOW_POLL at the latest; after FAST_POLLS looks in a row the interval
doubles up to MAX_WINDOW_POLL, so a stalled reader is not polled 2000 times a second.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p.abc import INetStream
from libp2p.network.stream.net_stream import StreamState
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, TYPE_DATA, YAMUX_HEADER_FORMAT, Yamux, YamuxStream
from noise.backends.default.ciphers import ChaCha20Cipher
from noise.constants import MAX_NONCE
from noise.exceptions import NoiseMaxNonceError

PIECE = MAX_PLAINTEXT_LENGTH - HEADER_SIZE  # what the first Noise message of a frame carries after its header
BURST = 1 << 20  # most bytes framed and sent under one hold of the connection's write lock
# Most payload bytes a yamux frame carries (module docstring). py-libp2p's reader gathers a frame's
# body in at most 100 reads of the connection (``read_exactly``): under 6.5 MB of Noise messages.
MAX_FRAME = BURST
WINDOW_POLL = 0.0005  # seconds before the first look again at an empty yamux send window
FAST_POLLS = 20  # ... for this many looks in a row (~10 ms), then doubling
MAX_WINDOW_POLL = 0.01  # ... up to py-libp2p's own interval
_CLOSED = (StreamState.ERROR, StreamState.RESET, StreamState.CLOSE_WRITE, StreamState.CLOSE_BOTH)
_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
_TAG = 16  # bytes of Poly1305 tag after each Noise message's ciphertext


class _WatchedStream(YamuxStream):
    """A yamux stream whose send window, when the peer raises it, wakes the writer waiting on it."""

    @property
    def send_window(self) -> int:
        return self._fednode_window

    @send_window.setter
    def send_window(self, value: int) -> None:
        raised = value > self.__dict__.get("_fednode_window", value)
        self._fednode_window = value
        waiter = self.__dict__.get("_fednode_waiter")
        if raised and waiter is not None:
            waiter.set()


def _watch(muxed: YamuxStream) -> None:
    """Make ``muxed`` a ``_WatchedStream`` (same object, same state)."""
    if type(muxed) is YamuxStream:
        window = muxed.__dict__.pop("send_window")
        muxed.__class__ = _WatchedStream
        muxed._fednode_window = window  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Path:
    muxed: YamuxStream
    conn: Yamux
    noise: NoiseTransportReadWriter
    raw: Any  # the IRawConnection under Noise (its ``write`` maps socket errors)


def _fast_path(stream: INetStream) -> _Path | None:
    """The layers under ``stream`` when they are yamux over Noise transport over a raw connection."""
    muxed = getattr(stream, "muxed_stream", None)
    if not isinstance(muxed, YamuxStream) or type(muxed) not in (YamuxStream, _WatchedStream):
        return None
    conn = muxed.conn
    noise = getattr(getattr(conn, "secured_conn", None), "conn", None)
    if type(noise) is not NoiseTransportReadWriter or getattr(noise.read_writer, "size_len_bytes", None) != 2:
        return None
    raw = getattr(noise.read_writer, "read_write_closer", None)
    if raw is None or not hasattr(conn, "_write_lock"):
        return None
    return _Path(muxed, conn, noise, raw)


async def _reserve(path: _Path, want: int) -> int:
    """Take up to ``want`` bytes of the stream's send window (0 when it is empty), as
    ``YamuxStream.write`` does, with the same checks."""
    muxed = path.muxed
    async with muxed.rw_lock.write_lock():
        if muxed.send_closed:
            raise MuxedStreamError("Stream is closed for sending")
        async with muxed.window_lock:
            if muxed.closed:
                raise MuxedStreamError("Stream is closed")
            n = min(muxed.send_window, want)
            if n > 0:
                muxed.send_window -= n
            return max(n, 0)


def _cipher_state(noise: NoiseTransportReadWriter) -> Any:
    """The Noise session's sending ``CipherState`` when it seals with ChaCha20-Poly1305 through
    ``cryptography`` (what py-libp2p's Noise negotiates) and can seal into a buffer; else None."""
    state = getattr(getattr(getattr(noise, "noise_state", None), "noise_protocol", None), "cipher_state_encrypt", None)
    cipher: Any = getattr(state, "cipher", None)
    if type(cipher) is not ChaCha20Cipher or not isinstance(cipher.cipher, ChaCha20Poly1305) \
            or not hasattr(cipher.cipher, "encrypt_into") or not isinstance(getattr(state, "n", None), int):
        return None
    return state


def _seal(noise: NoiseTransportReadWriter, pieces: list[bytes | memoryview]) -> bytearray:
    """``pieces`` as consecutive Noise transport messages (2-byte length, ciphertext and tag), as
    ``noise.encrypt`` seals them, nonce after nonce. Sealed in place into one buffer where the
    cipher allows (``_cipher_state``): ``encrypt`` allocates a new bytes object per message, which
    cost 0.044-0.051 s per 64 MiB against 0.036 s in place (measured 2026-12-05)."""
    state = _cipher_state(noise)
    if state is None:
        out = bytearray()
        for piece in pieces:
            sealed = noise.encrypt(bytes(piece))  # Noise takes bytes only
            out += len(sealed).to_bytes(2, "big")
            out += sealed
        return out
    if state.n + len(pieces) > MAX_NONCE:
        raise NoiseMaxNonceError("Nonce has depleted!")
    cipher = state.cipher.cipher
    out = bytearray(sum(len(p) + _TAG + 2 for p in pieces))
    view = memoryview(out)
    n, at = state.n, 0
    for piece in pieces:
        size = len(piece) + _TAG
        view[at:at + 2] = size.to_bytes(2, "big")
        # the nonce ChaCha20Cipher.format_nonce makes: four zero bytes, then n as 8 bytes little-endian
        cipher.encrypt_into(b"\0\0\0\0" + n.to_bytes(8, "little"), piece, None, view[at + 2:at + 2 + size])
        n += 1
        at += 2 + size
        state.n = n  # as encrypt_with_ad advances it: sealed messages always match the nonce count
    return out


async def _send(path: _Path, data: memoryview) -> None:
    """``data`` as yamux data frames of up to MAX_FRAME bytes, each sealed as consecutive Noise
    messages (the header and PIECE bytes fill the first), all in one send."""
    head = _HEADER.pack
    sid = path.muxed.stream_id
    pieces: list[bytes | memoryview] = []
    for off in range(0, len(data), MAX_FRAME):
        frame = data[off:off + MAX_FRAME]
        pieces.append(b"".join((head(0, TYPE_DATA, 0, sid, len(frame)), frame[:PIECE])))
        pieces += [frame[k:k + MAX_PLAINTEXT_LENGTH] for k in range(PIECE, len(frame), MAX_PLAINTEXT_LENGTH)]
    async with path.conn._write_lock:  # orders every frame and every nonce of the connection
        out = _seal(path.noise, pieces)
        await path.raw.write(out)


async def write(stream: INetStream, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``stream``, paced by the peer's yamux window."""
    view = memoryview(data).cast("B")
    path = _fast_path(stream)
    if path is not None and getattr(stream, "_state", None) in _CLOSED:
        await stream.write(b"")  # raises what NetStream raises for a closed stream
    if path is not None:
        _watch(path.muxed)
    off = 0
    empty = 0  # looks in a row at an empty window
    while off < len(view):
        waiter = trio.Event()
        if path is not None:
            path.muxed._fednode_waiter = waiter  # type: ignore[attr-defined]  # set before looking: no lost wake-up
            n = await _reserve(path, min(len(view) - off, BURST))
        else:
            window = getattr(getattr(stream, "muxed_stream", None), "send_window", None)
            n = min(len(view) - off, PIECE, window if isinstance(window, int) else PIECE)
        if n <= 0:
            empty += 1
            with trio.move_on_after(WINDOW_POLL if empty <= FAST_POLLS else
                                    min(MAX_WINDOW_POLL, WINDOW_POLL * 2 ** min(empty - FAST_POLLS, 5))):
                await waiter.wait()
            continue
        empty = 0
        if path is not None:
            await _send(path, view[off:off + n])
        else:
            await stream.write(view[off:off + n])  # type: ignore[arg-type]
        off += n
