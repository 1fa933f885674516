"""What one client can make the trustless gateway hold, and HTTP details, in process: a real store,
a real ``Gateway`` on 127.0.0.1 and real sockets (other 127.0.0.x source addresses stand for other
clients). The daemon's own gateway, asked by real clients (Helia, @ipld/car): test_gateway.py."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from fednode.daemon import gateway as gw
from fednode.daemon.gateway import Gateway, GatewayConfig, client_key, parse_target
from fednode.storage.store import PUBLIC, Store
from protocol.multiformats import CID, DAG_PB, RAW
from protocol.unixfs import CHUNK_SIZE, Link, encode_node

LEAVES = 64  # 16 MiB: more than loopback's socket buffers hold


@pytest.fixture
def stored(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A public UnixFS file of LEAVES random 256 KiB leaves under one root; (store, root, a leaf)."""
    leaves = [secrets.token_bytes(CHUNK_SIZE) for _ in range(LEAVES)]
    links = [Link(CID.hash(RAW, leaf), len(leaf), len(leaf)) for leaf in leaves]
    node = encode_node(links, b"\x08\x02")
    root = CID.hash(DAG_PB, node)
    store = Store(tmp_path / "s", sync=False)
    with store.write(size_hint=LEAVES * CHUNK_SIZE * 2) as txn:
        for cid, block in [*((link.cid, leaf) for link, leaf in zip(links, leaves, strict=True)), (root, node)]:
            txn.put_block(cid, block)
            txn.tag_block(cid, PUBLIC)
    yield store, root, links[0].cid
    store.close()


@asynccontextmanager
async def running(store: Store, max_connections: int = gw.MAX_CONNECTIONS) -> AsyncIterator[tuple[Gateway, int]]:
    gateway = Gateway(store, GatewayConfig("127.0.0.1", 0), max_connections=max_connections)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(gateway.serve)
        yield gateway, port
        nursery.cancel_scope.cancel()


def ask(port: int, request: bytes, source: str = "127.0.0.1", timeout: float = 10) -> bytes:
    """Send ``request`` from ``source`` and read until the gateway closes (in a thread: blocking)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def line(cid: CID, query: str = "format=raw", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} /ipfs/{cid}?{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def test_clients_sending_their_request_slowly_hold_no_answering_slot(stored) -> None:  # type: ignore[no-untyped-def]
    store, _, leaf = stored
    async with running(store, max_connections=2) as (gateway, port):
        idle = [socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{2 + i // 2}", 0))
                for i in range(4)]  # two clients, two silent connections each: more than the 2 slots
        try:
            await trio.sleep(0.3)
            with trio.fail_after(5):  # before: a slot each until their 10 s ran out, so this one waited
                got = await trio.to_thread.run_sync(ask, port, line(leaf), "127.0.0.4")
            assert got.startswith(b"HTTP/1.1 200 OK")
        finally:
            for sock in idle:
                sock.close()


async def test_a_busy_gateway_answers_503(stored, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, _, leaf = stored
    monkeypatch.setattr(gw, "QUEUE_TIMEOUT", 0.3)
    async with running(store, max_connections=1) as (gateway, port):
        await gateway.slots.acquire()  # the one slot taken, as by a long answer
        got = await trio.to_thread.run_sync(ask, port, line(leaf))
        gateway.slots.release()
    head = got.partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 503 Service Unavailable") and "Retry-After: 5" in head
    assert b"the gateway is busy" in got  # before: closed without a word


async def test_a_slow_reader_of_a_car_is_cut_off_and_frees_its_slot(stored, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, root, _ = stored
    monkeypatch.setattr(gw, "SEND_TIMEOUT", 0.5)
    monkeypatch.setattr(gw, "MIN_SEND_RATE", 32 << 20)  # 16 MiB due within 1 s
    async with running(store, max_connections=1) as (gateway, port):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            sock.sendall(line(root, "format=car"))
            with trio.fail_after(5):
                while gateway.slots.value:  # the answer under way, holding the one slot
                    await trio.sleep(0.01)
            with trio.fail_after(10):  # before: 30 s a 256 KiB piece, i.e. ~9 KB/s held the slot
                while gateway.slots.value == 0 or gateway.held:
                    await trio.sleep(0.05)

            def read_all() -> bytes:
                sock.settimeout(5)
                data = b""
                try:
                    while chunk := sock.recv(1 << 20):
                        data += chunk
                except ConnectionResetError:
                    pass
                return data

            data = await trio.to_thread.run_sync(read_all)
        finally:
            sock.close()
    assert len(data) < LEAVES * CHUNK_SIZE  # cut short, not the whole CAR


async def test_http_details(stored, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, root, leaf = stored
    async with running(store) as (_, port):
        post = line(leaf, method="POST", extra="Content-Length: 3\r\n") + b"abc"
        got = await trio.to_thread.run_sync(ask, port, post)
        assert got.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in got  # was 400 (the body first)
        got = await trio.to_thread.run_sync(ask, port, line(leaf, ""))  # no format: Accept decides, by q
        assert got.startswith(b"HTTP/1.1 406")
        accept = f"Accept: {gw.RAW_TYPE};q=0.1, {gw.CAR_TYPE};q=1\r\n"
        got = await trio.to_thread.run_sync(ask, port, line(leaf, "", extra=accept))
        assert got.startswith(b"HTTP/1.1 200") and f"Content-Type: {gw.CAR_CONTENT_TYPE}".encode() in got
        assert b"Access-Control-Allow-Origin: *" in got  # a browser (Helia) may read it
        # headers over the limit, sent at once: the 431 arrives, not a reset (the rest is drained)
        got = await trio.to_thread.run_sync(ask, port, line(leaf, extra="X: " + "y" * 20_000 + "\r\n"))
        assert got.startswith(b"HTTP/1.1 431")
        monkeypatch.setattr(gw, "MAX_CAR_BLOCKS", LEAVES)  # the root and LEAVES leaves: one too many
        got = await trio.to_thread.run_sync(ask, port, line(root, "format=car"))
        assert got.startswith(b"HTTP/1.1 413") and f"more than {LEAVES} blocks".encode() in got


def test_accept_by_quality_and_client_keys() -> None:
    cid = CID.hash(RAW, b"x")
    for accept, kind in ((f"{gw.RAW_TYPE};q=0.1, {gw.CAR_TYPE}", gw.CAR_TYPE),
                         (f"{gw.CAR_TYPE};q=0.5, {gw.RAW_TYPE};q=0.5", gw.CAR_TYPE),  # a tie: the header's order
                         (f"{gw.CAR_TYPE};q=bad, {gw.RAW_TYPE};q=0.2", gw.RAW_TYPE)):
        assert parse_target("GET", f"/ipfs/{cid}", {"accept": accept}).kind == kind
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
