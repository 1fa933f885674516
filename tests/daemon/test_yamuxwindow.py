"""Yamux credit without an update per small read (fednode/daemon/yamuxwindow.py), between two real
py-libp2p hosts (Noise, yamux) in this process: small request/response messages cost no
WINDOW_UPDATE (with py-libp2p's own method every read sent one), and a bulk transfer still gets its
credit as py-libp2p grants it and arrives whole."""

from __future__ import annotations

import secrets

import multiaddr
import pytest
import trio
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from fednode.daemon import yamuxwindow
from fednode.daemon.host import build_host

PROTO = TProtocol("/fednode-test/echo/1.0.0")
ROUNDS = 200
BULK = 8 << 20


async def _exchange(monkeypatch: pytest.MonkeyPatch, method: object) -> tuple[int, int, bytes]:
    """Host A asks host B ROUNDS 60-byte questions (each answered with one byte), then sends BULK
    bytes on a second stream. (WINDOW_UPDATEs B sent on the first stream, on the second, what B read.)"""
    a, b = (build_host(create_new_key_pair(secrets.token_bytes(32))) for _ in range(2))  # (installs ours)
    monkeypatch.setattr(YamuxStream, "_auto_tune_and_send_window_update", method)
    updates: dict[int, int] = {}
    sent = YamuxStream.send_window_update

    async def counted(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        updates[id(self)] = updates.get(id(self), 0) + 1
        await sent(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)
    streams: list[INetStream] = []
    received = bytearray()
    done = trio.Event()

    async def handler(stream: INetStream) -> None:
        streams.append(stream)
        first = len(streams) == 1
        try:
            while chunk := await stream.read(65536 if first else 1 << 20):
                if first:
                    await stream.write(b"k")
                else:
                    received.extend(chunk)
        except StreamEOF:  # how py-libp2p ends a stream the writer closed
            pass
        if not first:
            done.set()

    b.set_stream_handler(PROTO, handler)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with a.run(listen), b.run(listen):
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        with trio.fail_after(30):
            questions = await a.new_stream(b.get_id(), [PROTO])
            for i in range(ROUNDS):
                await questions.write(bytes([i % 256]) * 60)
                assert await questions.read(1) == b"k"
            bulk = await a.new_stream(b.get_id(), [PROTO])
            data = bytes(range(256)) * (BULK // 256)
            for at in range(0, BULK, 1 << 20):
                await bulk.write(data[at:at + (1 << 20)])
            await bulk.close()
            await done.wait()
    muxed = [s.muxed_stream for s in streams]  # the yamux streams under B's two net streams
    return updates.get(id(muxed[0]), 0), updates.get(id(muxed[1]), 0), bytes(received)


async def test_small_messages_cost_no_window_update_and_bulk_still_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    small, bulk, got = await _exchange(monkeypatch, yamuxwindow.window_update)
    assert small == 0  # 12,000 bytes read: under half of the 256 KiB window
    assert got == bytes(range(256)) * (BULK // 256)
    assert 0 < bulk <= BULK // yamuxwindow.SMALL_READ  # large reads: py-libp2p's own credit


async def test_py_libp2p_alone_sends_one_per_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """What install() changes: py-libp2p's own method answers each small read with an update."""
    small, _, got = await _exchange(monkeypatch, yamuxwindow.PY_LIBP2P)
    assert small >= ROUNDS and len(got) == BULK


def test_install_puts_it_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(YamuxStream, "_auto_tune_and_send_window_update", yamuxwindow.PY_LIBP2P)
    build_host(create_new_key_pair(secrets.token_bytes(32)))  # every host the daemon builds installs it
    assert YamuxStream._auto_tune_and_send_window_update is yamuxwindow.window_update
