"""readahead: our hosts' TCP connections read up to READ_AHEAD bytes a socket read and hand out
exactly what each read asks for, in order.

A real loopback socket pair carries bytes written in random pieces, read back with random sizes;
two real hosts (``build_host``) use read-ahead streams on both ends of their connection and move a
payload through Noise and yamux intact.
"""

from __future__ import annotations

import os
import random

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from fednode.daemon import readahead
from fednode.daemon.host import build_host

ECHO = TProtocol("/fednode-test/readahead/1")


class _Counted:
    """A trio socket stream that counts its socket reads."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.socket_reads = 0

    async def receive_some(self, n: int | None = None) -> bytes:
        self.socket_reads += 1
        return await self.inner.receive_some(n)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_reads_return_what_was_asked_in_order_then_eof() -> None:
    data = os.urandom(3 * readahead.READ_AHEAD + 777)
    rng = random.Random(5)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got = bytearray()
    sizes: list[tuple[int | None, int]] = []
    async with trio.open_nursery() as nursery:
        async def serve() -> None:
            server = await listeners[0].accept()
            async with server:
                off = 0
                while off < len(data):
                    step = rng.choice([1, 2, 100, 65_535, 300_000])
                    await server.send_all(data[off:off + step])
                    off += step
                    await trio.sleep(0)

        nursery.start_soon(serve)
        counted = _Counted(await trio.open_tcp_stream("127.0.0.1", port))
        client = readahead.ReadAheadTCPStream(counted)
        while True:
            n = rng.choice([None, 1, 2, 2, 1000, 65_535, 65_535, readahead.READ_AHEAD * 2])
            chunk = await client.read(n)
            if not chunk:
                break
            sizes.append((n, len(chunk)))
            got += chunk
        assert await client.read(10) == b""  # EOF stays EOF
        assert await client.read(0) == b""
        await client.close()
        for listener in listeners:
            await listener.aclose()
    assert bytes(got) == data
    assert all(n is None or size <= n for n, size in sizes)
    # (how many socket reads that took depends on how the writer's pieces met the reader: below)


async def test_small_reads_are_served_from_one_socket_read() -> None:
    data = os.urandom(100_000)  # within the loopback socket buffers: there before the first read
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    sent = trio.Event()
    got = bytearray()
    async with trio.open_nursery() as nursery:
        async def serve() -> None:
            server = await listeners[0].accept()
            async with server:
                await server.send_all(data)
                sent.set()
                await trio.sleep(5)

        nursery.start_soon(serve)
        counted = _Counted(await trio.open_tcp_stream("127.0.0.1", port))
        client = readahead.ReadAheadTCPStream(counted)
        with trio.fail_after(10):
            await sent.wait()
            await trio.sleep(0.05)
            while len(got) < len(data):
                got += await client.read(2000)
        nursery.cancel_scope.cancel()
    await client.close()
    for listener in listeners:
        await listener.aclose()
    assert bytes(got) == data
    assert counted.socket_reads <= 4, counted.socket_reads  # 50 reads of 2000 bytes; without read-ahead 50


def _tcp_of(host) -> list[type]:  # type: ignore[no-untyped-def]
    """The TCP stream class under each of ``host``'s connections."""
    out = []
    for conns in host.get_network().get_connections_map().values():
        for conn in conns:
            rw = conn.muxed_conn.secured_conn.conn.read_writer.read_write_closer
            out.append(type(rw.stream))
    return out


async def test_both_ends_of_a_connection_read_ahead_and_move_bytes_intact() -> None:
    payload = os.urandom(2 * 1024 * 1024 + 3)
    received = bytearray()
    done = trio.Event()

    async def handle(stream) -> None:  # type: ignore[no-untyped-def]
        while len(received) < len(payload):
            chunk = await stream.read(1 << 20)
            if not chunk:
                break
            received.extend(chunk)
        done.set()

    a, b = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    b.set_stream_handler(ECHO, handle)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with a.run(listen), b.run(listen):
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        stream = await a.new_stream(b.get_id(), [ECHO])
        for off in range(0, len(payload), 100_000):
            await stream.write(payload[off:off + 100_000])
        with trio.fail_after(30):
            await done.wait()
        assert _tcp_of(a) == [readahead.ReadAheadTCPStream]  # the dialer's end
        assert _tcp_of(b) == [readahead.ReadAheadTCPStream]  # the listener's end
        await stream.close()
    assert bytes(received) == payload
