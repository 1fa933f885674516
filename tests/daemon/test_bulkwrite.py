"""bulkwrite: large payloads framed, encrypted and sent many yamux frames at a time.

Two real py-libp2p hosts (Noise, yamux) on 127.0.0.1. The payloads arrive intact and in order while
another stream of the same connection writes through py-libp2p's own path at the same time (both
paths share the connection's Noise nonces and write lock), through a reader slow enough that the
256 KiB yamux window runs empty many times, and on a stream closed for writing the call fails as
py-libp2p's does. Kubo, Helia and fednode peers reading what it writes: test_bitswap_kubo.py,
test_bitswap_helia.py, test_daemon_blocks.py and the clone tests.
"""

from __future__ import annotations

import hashlib
import os

import multiaddr
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamClosed
from libp2p.peer.peerinfo import PeerInfo

from fednode.daemon import bulkwrite
from fednode.daemon.host import build_host

BULK = TProtocol("/fednode-test/bulk/1")
PLAIN = TProtocol("/fednode-test/plain/1")


async def _drain(stream, size: int, slow: bool) -> bytes:  # type: ignore[no-untyped-def]
    got = bytearray()
    while len(got) < size:
        if slow:
            await trio.sleep(0.002)
        chunk = await stream.read(64 * 1024 if slow else 1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("slow_reader", [False, True])
async def test_payloads_arrive_whole_beside_a_plain_writer(slow_reader: bool) -> None:
    bulk_data = os.urandom(3 * 1024 * 1024 + 12345)  # > the 256 KiB window and > one BURST
    plain_data = os.urandom(700 * 1024)
    received: dict[str, bytes] = {}
    done = {name: trio.Event() for name in ("bulk", "plain")}

    def handler(name: str, size: int):  # type: ignore[no-untyped-def]
        async def handle(stream) -> None:  # type: ignore[no-untyped-def]
            received[name] = await _drain(stream, size, slow_reader and name == "bulk")
            done[name].set()
        return handle

    a, b = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    b.set_stream_handler(BULK, handler("bulk", len(bulk_data)))
    b.set_stream_handler(PLAIN, handler("plain", len(plain_data)))
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with a.run(listen), b.run(listen), trio.open_nursery() as nursery:
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        bulk = await a.new_stream(b.get_id(), [BULK])
        plain = await a.new_stream(b.get_id(), [PLAIN])
        path = bulkwrite._fast_path(bulk)
        assert path is not None  # the daemon's stack: the fast path is taken
        assert bulkwrite._cipher_state(path.noise) is not None  # ... sealing in place, sharing the nonces

        async def plain_writer() -> None:
            for off in range(0, len(plain_data), 50_000):
                await plain.write(plain_data[off:off + 50_000])
                await trio.sleep(0)

        nursery.start_soon(plain_writer)
        with trio.fail_after(60):
            half = len(bulk_data) // 2
            await bulkwrite.write(bulk, bulk_data[:half])
            # watched from its first write on: the peer's window updates wake the writer
            assert type(bulk.muxed_stream) is bulkwrite._WatchedStream and bulkwrite._fast_path(bulk) is not None
            await bulkwrite.write(bulk, bulk_data[half:])
            await done["bulk"].wait()
            await done["plain"].wait()
        await bulk.close()
        with pytest.raises(StreamClosed):  # closed for writing: refused as py-libp2p refuses it
            await bulkwrite.write(bulk, b"more")
        nursery.cancel_scope.cancel()
    assert hashlib.sha256(received["bulk"]).digest() == hashlib.sha256(bulk_data).digest()
    assert received["plain"] == plain_data


class _OtherStack:
    """A stream on a muxer other than yamux (e.g. mplex): only ``write`` is there to use."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.muxed_stream = object()

    async def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


async def test_other_stacks_get_ordinary_writes_of_at_most_one_piece() -> None:
    stream = _OtherStack()
    assert bulkwrite._fast_path(stream) is None  # type: ignore[arg-type]
    data = os.urandom(3 * bulkwrite.PIECE + 5)
    await bulkwrite.write(stream, data)  # type: ignore[arg-type]
    assert b"".join(stream.writes) == data
    assert max(len(w) for w in stream.writes) == bulkwrite.PIECE


async def test_one_frame_per_window_grant_spanning_noise_messages(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What the window allows goes as one yamux frame over several Noise messages (a js-libp2p
    receiver sends a window update per frame): the plaintexts the writer seals parse back, frame
    by frame, into the payload, with frames far longer than one Noise message."""
    import struct

    from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
    from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, TYPE_DATA

    sealed: list[bytes] = []
    original = bulkwrite._seal

    def recording(noise: NoiseTransportReadWriter, pieces: list) -> bytearray:  # type: ignore[type-arg]
        sealed.extend(bytes(p) for p in pieces)
        return original(noise, pieces)

    payload = os.urandom(900 * 1024)
    got: list[bytes] = []
    done = trio.Event()

    async def handle(stream) -> None:  # type: ignore[no-untyped-def]
        got.append(await _drain(stream, len(payload), False))
        done.set()

    a, b = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    b.set_stream_handler(BULK, handle)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with a.run(listen), b.run(listen), trio.open_nursery() as nursery:
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        bulk = await a.new_stream(b.get_id(), [BULK])
        sid = bulk.muxed_stream.stream_id
        monkeypatch.setattr(bulkwrite, "_seal", recording)
        with trio.fail_after(30):
            await bulkwrite.write(bulk, payload)
            await done.wait()
        monkeypatch.setattr(bulkwrite, "_seal", original)
        nursery.cancel_scope.cancel()
    assert got == [payload]
    assert all(len(p) <= MAX_PLAINTEXT_LENGTH for p in sealed)
    # the stream's frames, read back from the plaintexts it sealed
    body, frames, need = bytearray(), [], 0
    for plain in sealed:
        if need:
            take = plain[:need]
            body += take
            need -= len(take)
            continue
        _, kind, _, stream_id, length = struct.unpack(">BBHII", plain[:HEADER_SIZE])
        if kind != TYPE_DATA or stream_id != sid:
            continue
        frames.append(length)
        body += plain[HEADER_SIZE:]
        need = length - (len(plain) - HEADER_SIZE)
    assert need == 0 and bytes(body) == payload
    assert max(frames) > 3 * MAX_PLAINTEXT_LENGTH, frames  # a 256 KiB window: one frame, four Noise messages
    assert max(frames) <= bulkwrite.MAX_FRAME


@pytest.mark.parametrize("cipher_name", ["ChaCha20Cipher", "AESGCMCipher"])
def test_sealing_in_place_equals_noise_sealing_message_by_message(cipher_name: str) -> None:
    """``_seal`` gives the bytes noiseprotocol's own ``CipherState`` gives, nonce after nonce, with
    ChaCha20-Poly1305 sealed in place and any other cipher through ``encrypt``; a nonce that would
    run out raises before anything is sealed or advanced."""
    from types import SimpleNamespace

    from noise.backends.default import ciphers
    from noise.exceptions import NoiseMaxNonceError
    from noise.state import CipherState

    cls = getattr(ciphers, cipher_name)
    key = os.urandom(32)

    def state() -> CipherState:
        cs = CipherState(SimpleNamespace(cipher_class=cls))
        cs.initialize_key(key)
        cs.n = 7
        return cs

    ours, reference = state(), state()
    noise = SimpleNamespace(noise_state=SimpleNamespace(noise_protocol=SimpleNamespace(cipher_state_encrypt=ours)),
                            encrypt=lambda data: ours.encrypt_with_ad(None, data))
    assert (bulkwrite._cipher_state(noise) is not None) == (cipher_name == "ChaCha20Cipher")  # type: ignore[arg-type]
    payload = memoryview(os.urandom(130_000))  # pieces within a Noise message (65,535 bytes)
    pieces = [b"head" + bytes(payload[:100]), payload[100:65_000], payload[65_000:]]
    expected = bytearray()
    for piece in pieces:
        sealed = reference.encrypt_with_ad(None, bytes(piece))
        expected += len(sealed).to_bytes(2, "big") + sealed
    assert bulkwrite._seal(noise, pieces) == expected  # type: ignore[arg-type]
    assert ours.n == reference.n == 10
    if cipher_name == "ChaCha20Cipher":
        ours.n = bulkwrite.MAX_NONCE - 2
        with pytest.raises(NoiseMaxNonceError):
            bulkwrite._seal(noise, pieces)  # type: ignore[arg-type]
        assert ours.n == bulkwrite.MAX_NONCE - 2
