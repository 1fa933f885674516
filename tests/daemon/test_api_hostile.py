"""The local API against hostile or clumsy local clients, in process: a real Daemon (libp2p host on
127.0.0.1) and a real Api on a loopback port, spoken to over raw sockets. Every bad request gets a
4xx with one JSON line (or, for a client that resets, nothing), and the API never stops serving."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from helpers import model_arrays

from fednode import logs
from fednode.daemon import api as apimod
from fednode.daemon.api import Api
from fednode.daemon.routes import ROUTES
from fednode.daemon.service import Daemon
from fednode.node import Node, open_node
from fednode.storage.diskspace import DiskFull
from fednode.tensors.modelio import ArraySource

TOKEN = "t0ken"


@asynccontextmanager
async def served(home: Path, **limits: Any) -> AsyncIterator[tuple[Api, int, Node]]:
    node = open_node(home)
    try:
        daemon = Daemon(node, ["/ip4/127.0.0.1/tcp/0"], [])
        api = Api(daemon, TOKEN, **limits)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            port = await nursery.start(api.serve, 0)
            yield api, port, node
            nursery.cancel_scope.cancel()
    finally:
        node.close()


def request(method: str, path: str, body: bytes = b"", token: str | None = TOKEN, length: str | None = None,
            extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    length = str(len(body)) if length is None else length
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n{extra}\r\n".encode() + body


async def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[int, dict[str, Any] | str]:
    """Send ``data``, read the whole answer (the server closes): (status, JSON or text body)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            reply = bytearray()
            while chunk := await stream.receive_some(65536):
                reply += chunk
    head, _, body = bytes(reply).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if b"application/json" in head else body.decode()


async def reset_after(port: int, data: bytes) -> None:
    """Send ``data`` then reset the connection (RST, not FIN)."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    if data:
        await sock.send(data)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def assert_serving(port: int) -> None:
    t0 = time.monotonic()
    status, body = await exchange(port, request("GET", "/status"), timeout=1)
    assert status == 200 and "peer_id" in body, body
    assert time.monotonic() - t0 < 1


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


NO_TOKEN = [  # what anyone on the machine can send: the server answers 400 before looking at the token
    ("Content-Length abc", request("POST", "/follow", b"{}", token=None, length="abc")),
    ("Content-Length +1", request("POST", "/follow", b"{}", token=None, length="+1")),
    ("Content-Length 1_0", request("POST", "/follow", b"{}", token=None, length="1_0")),
    ("Content-Length huge", request("POST", "/follow", b"{}", token=None, length="9" * 50)),
    ("chunked", request("POST", "/follow", b"{}", token=None, extra="Transfer-Encoding: chunked\r\n")),
    ("two lengths", request("POST", "/follow", b"{}", token=None, extra="Content-Length: 7\r\n")),
    ("bad request line", b"HELLO\r\n\r\n"),
    ("header without colon", b"GET /status HTTP/1.1\r\nnonsense\r\n\r\n"),
]

HELLO_CID = "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"  # a valid CID ("hello\n")
WITH_TOKEN = [  # (what, path, body): each is the client's mistake, a 400
    ("invalid UTF-8", "/follow", b'{"repo": "\xff\xfe"}'),
    ("JSON nested 60k deep", "/follow", b"[" * 60_000),
    ("JSON nested 60k deep in an object", "/follow", b'{"repo": ' + b"[" * 60_000),
    ("4,400-digit number", "/follow", b'{"repo": 1' + b"1" * 4400 + b"}"),
    ("NaN", "/pull", b'{"repo": "m", "timeout": NaN}'),
    ("not an object", "/follow", b"[1, 2]"),
    ("lone surrogate", "/follow", b'{"repo": "\\ud800"}'),
    ("600-byte repo", "/follow", js({"repo": "x" * 600})),
    ("repo is a number", "/push", js({"repo": 5})),
    ("unknown parameter", "/push", js({"repo": "m", "force": True})),
    ("confirm a string", "/push", js({"repo": "m", "confirm": "no"})),
    ("members [1,2]", "/members", js({"repo": "m", "members": [1, 2]})),
    ("members a string", "/members", js({"repo": "m", "members": "abc"})),
    ("members not base58", "/members", js({"repo": "m", "members": ["0OIl"]})),
    ("public a string", "/members", js({"repo": "m", "members": [], "public": "yes"})),
    ("follow public a string", "/follow", js({"repo": "m", "public": "yes"})),
    ("follow public a number", "/follow", js({"repo": "m", "public": 1})),
    ("follow public a list", "/follow", js({"repo": "m", "public": [True]})),
    ("timeout abc", "/pull", js({"repo": "m", "timeout": "abc"})),
    ("timeout -1", "/pull", js({"repo": "m", "timeout": -1})),
    ("timeout 0", "/pull", js({"repo": "m", "timeout": 0})),
    ("timeout 1e9", "/pull", js({"repo": "m", "timeout": 1e9})),
    ("timeout 1e400 (inf)", "/pull", b'{"repo": "m", "timeout": 1e400}'),
    ("timeout true", "/clone", js({"repo": "m", "timeout": True})),
    ("peers a string", "/clone", js({"repo": "m", "peers": "/ip4/127.0.0.1/tcp/1"})),
    ("peers [5]", "/clone", js({"repo": "m", "peers": [5]})),
    ("peer not a multiaddr", "/clone", js({"repo": "m", "peers": ["nope"]})),
    ("connect without /p2p", "/connect", js({"addr": "/ip4/127.0.0.1/tcp/1"})),
    ("connect addr null", "/connect", js({"addr": None})),
    ("branch a list", "/propose", js({"repo": "m", "branch": []})),
    ("message a number", "/propose", js({"repo": "m", "message": 5})),
    ("unban garbage", "/unban", js({"peer": "0OIl"})),
    ("providers not a CID", "/providers", js({"cid": "x"})),
    ("fetch root not a CID", "/fetch", js({"repo": "m", "root": "x"})),
    ("fetch root a number", "/fetch", js({"repo": "m", "root": 5})),
    ("fetch without a root", "/fetch", js({"repo": "m"})),
    ("fetch timeout -1", "/fetch", js({"repo": "m", "root": HELLO_CID, "timeout": -1})),
    ("fetch repo not an id", "/fetch", js({"repo": "not a repo id", "root": HELLO_CID})),
    ("status with a body", "/status", js({"x": 1})),
    ("ipfs get cid not a CID", "/ipfs/get", js({"cid": "x"})),
    ("ipfs get cid a number", "/ipfs/get", js({"cid": 5})),
    ("ipfs get without a cid", "/ipfs/get", js({})),
    ("ipfs get unknown key", "/ipfs/get", js({"cid": HELLO_CID, "evil": 1})),
    ("ipfs get max_bytes -1", "/ipfs/get", js({"cid": HELLO_CID, "max_bytes": -1})),
    ("ipfs get max_bytes huge", "/ipfs/get", js({"cid": HELLO_CID, "max_bytes": 10**400})),
    ("ipfs get max_bytes a string", "/ipfs/get", js({"cid": HELLO_CID, "max_bytes": "1"})),
    ("ipfs get timeout -1", "/ipfs/get", js({"cid": HELLO_CID, "timeout": -1})),
    ("ipfs get pin a string", "/ipfs/get", js({"cid": HELLO_CID, "pin": "yes"})),
    ("ipfs get directories a number", "/ipfs/get", js({"cid": HELLO_CID, "directories": 1})),
    ("ipfs get directories nested", "/ipfs/get", js({"cid": HELLO_CID, "directories": [[[True]]]})),
    ("ipfs get peers a string", "/ipfs/get", js({"cid": HELLO_CID, "peers": "/ip4/127.0.0.1/tcp/1"})),
    ("ipfs get peer not a multiaddr", "/ipfs/get", js({"cid": HELLO_CID, "peers": ["nope"]})),
    ("ipfs get cid deeply nested", "/ipfs/get", b'{"cid": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("ipfs progress job a number", "/ipfs/progress", js({"job": 5})),
    ("ipfs progress without a job", "/ipfs/progress", js({})),
]


@pytest.fixture
def repo_home(home: Path) -> Path:
    with open_node(home) as node:
        node.history.create_repo("m", ArraySource(model_arrays(0)))
    return home


async def test_bad_requests_are_400_one_line_and_the_api_keeps_serving(repo_home: Path) -> None:
    async with served(repo_home) as (_api, port, node):
        with node.store.read() as txn:
            before = (txn.list_repos(), list(txn.all_refs()), txn.kv_items("net"))
        for what, data in NO_TOKEN:
            status, body = await exchange(port, data)
            assert status == 400, (what, status, body)
            assert isinstance(body, dict) and "\n" not in body["error"], what
        for what, path, raw in WITH_TOKEN:
            method = "GET" if path == "/status" else "POST"
            status, body = await exchange(port, request(method, path, raw))
            assert status == 400, (what, status, body)
            assert isinstance(body, dict) and body["error"] and "\n" not in body["error"], what
        assert (await exchange(port, request("POST", "/push", js({"repo": "nope"}))))[0] == 404
        assert (await exchange(port, request("POST", "/ipfs/progress", js({"job": "no such job"}))))[0] == 404
        for data in (b"", b"GET /sta", request("POST", "/follow", b'{"repo": "a'), request("POST", "/follow", b"")):
            await reset_after(port, data)  # resets: before a byte, mid-headers, mid-body, after the request
        await trio.sleep(0.1)
        await assert_serving(port)
        with node.store.read() as txn:
            assert (txn.list_repos(), list(txn.all_refs()), txn.kv_items("net")) == before  # nothing stored


async def test_a_bug_of_ours_is_a_logged_500_and_serving_goes_on(repo_home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(d: Daemon, body: dict[str, Any]) -> Any:
        return {}["missing"]

    async def refused(d: Daemon, body: dict[str, Any]) -> Any:
        raise DiskFull("not enough disk space for the store")

    monkeypatch.setitem(ROUTES, ("POST", "/broken"), broken)
    monkeypatch.setitem(ROUTES, ("POST", "/refused"), refused)
    logged = io.StringIO()
    monkeypatch.setattr(logs, "_out", logged)
    async with served(repo_home) as (_api, port, _node):
        status, body = await exchange(port, request("POST", "/broken", b"{}"))
        assert status == 500 and "KeyError" in body["error"] and "\n" not in body["error"]
        status, body = await exchange(port, request("POST", "/refused", b"{}"))
        assert status == 507 and body["error"] == "not enough disk space for the store"  # a refusal, not a bug
        await assert_serving(port)
    events = [json.loads(line) for line in logged.getvalue().splitlines()]
    assert [e["path"] for e in events if e["event"] == "api_error"] == ["/broken"]


def _server_side(port: int) -> int:
    """Connections this process accepted on the API port (file descriptors it holds for clients)."""
    return sum(1 for c in psutil.Process().net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN)


async def test_idle_connections_are_capped_and_cannot_lock_clients_out(repo_home: Path) -> None:
    cap, timeout, idle = 4, 2.0, 24
    async with served(repo_home, max_connections=cap, request_timeout=timeout) as (api, port, _node):
        socks = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(idle)]  # never send a byte
        try:
            await trio.sleep(0.2)
            assert _server_side(port) <= cap  # each newcomer evicted the oldest idle one: bounded fds
            await assert_serving(port)  # and an honest client gets in at once (evicting one more)
            replies = []
            with trio.fail_after(timeout + 3):
                for s in socks:
                    reply = bytearray()
                    with contextlib.suppress(trio.BrokenResourceError):
                        while chunk := await s.receive_some(4096):
                            reply += chunk
                    replies.append(bytes(reply))
            assert replies.count(b"") == idle - cap + 1 == api.evicted  # dropped without an answer
            assert all(r.startswith(b"HTTP/1.1 408 ") for r in replies[-(cap - 1):])  # the rest: cut at 2 s
        finally:
            for s in socks:
                await s.aclose()
        # a client trickling one header byte every 0.1 s is cut at the request timeout, not later
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            t1 = time.monotonic()
            with trio.move_on_after(timeout + 5) as waited:
                try:
                    for byte in b"GET /status HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.1)
                except trio.BrokenResourceError:  # the server answered 408 and closed
                    pass
            assert not waited.cancelled_caught and time.monotonic() - t1 < timeout + 0.5
        await assert_serving(port)
        assert api.open_connections == 0 and not api.reading


def test_parse_body_limits() -> None:
    assert apimod.parse_body(b'{"a": [["x"]], "n": 12}') == {"a": [["x"]], "n": 12}
    assert apimod.parse_body(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == {"s": "[" * 34}  # not nesting
    for raw in (b"[" * 17 + b"]" * 17, b'{"n": ' + b"9" * 21 + b"}", b"\xc3\x28", b"Infinity", b"1"):
        with pytest.raises(apimod.HTTPError) as err:
            apimod.parse_body(raw)
        assert err.value.status == 400
