"""The JSON-RPC backend (fednode/chain/rpc.py) against an endpoint that is slow, garbled or lying:
a real solana-py client over real HTTP on 127.0.0.1, to a small server answering what each test
says. A real endpoint (the dev chain over LiteSVM) is exercised in test_devchain and the NFT tests.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from solders.pubkey import Pubkey

from fednode.chain import rpc
from fednode.chain.aio import ChainUnavailable
from fednode.chain.backend import ChainError
from fednode.chain.rpc import RpcBackend
from fednode.logs import shown_url

# a request -> the body (None: trickle forever; (headers, chunks): those headers, then the chunks until closed)
Answer = Callable[[dict[str, Any]], "bytes | None | tuple[dict[str, str], Iterator[bytes]]"]


@pytest.fixture
def endpoint() -> Iterator[tuple[str, dict[str, Answer]]]:
    """An HTTP server; ``answers[method]`` makes each answer. The URL carries a secret in its query."""
    answers: dict[str, Answer] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = answers[request["method"]](request)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if isinstance(body, tuple):
                for name, value in body[0].items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    for chunk in body[1]:
                        self.wfile.write(chunk)
                except OSError:
                    pass
                return
            if body is None:  # a byte every 0.2 s, for at most 20 s
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    for _ in range(100):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rpc?api-key=SECRET", answers
    finally:
        server.shutdown()
        server.server_close()


def _result(value: Any, with_context: bool = True) -> Answer:
    def answer(request: dict[str, Any]) -> bytes:
        result = {"context": {"slot": 5}, "value": value} if with_context else value
        return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
    return answer


async def test_a_trickling_endpoint_is_cut_off(endpoint) -> None:  # type: ignore[no-untyped-def]
    url, answers = endpoint
    answers["getSlot"] = lambda request: None
    backend = RpcBackend(url, Pubkey.default(), timeout=1.0)
    start = time.monotonic()
    with pytest.raises(ChainUnavailable, match="no whole answer within 3 s") as err:
        await backend.slot()  # before: a read timeout per byte, so never
    assert time.monotonic() - start < 6 and "SECRET" not in str(err.value)
    await backend.aclose()


async def test_garbled_and_short_answers_are_unavailable_not_crashes(endpoint) -> None:  # type: ignore[no-untyped-def]
    url, answers = endpoint
    backend = RpcBackend(url, Pubkey.default(), timeout=5.0)
    answers["getSlot"] = lambda request: b"not json"
    with pytest.raises(ChainUnavailable, match="answered something unreadable") as err:
        await backend.slot()  # before: solders' SerdeJSONError, "unexpected ... (a bug)" in the CLI
    assert "SECRET" not in str(err.value)
    answers["getSlot"] = lambda request: b"[" * 5000
    with pytest.raises(ChainUnavailable, match="answered something unreadable"):
        await backend.slot()
    answers["getSlot"] = _result(7, with_context=False)
    assert await backend.slot() == 7
    answers["getMultipleAccounts"] = _result([None])  # one account for two asked
    with pytest.raises(ChainUnavailable, match="answered 1 accounts for 2"):
        await backend.accounts_data([Pubkey.new_unique(), Pubkey.new_unique()])  # before: [] or shifted data
    await backend.aclose()


async def test_a_huge_or_compressed_answer_is_refused_before_it_is_held(  # type: ignore[no-untyped-def]
        endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """solana-py reads a whole answer into memory: past MAX_ANSWER_BYTES (lowered here to 1 MiB) the
    read stops, whether the length is declared or not; a gzip answer (unasked) is refused."""
    url, answers = endpoint
    monkeypatch.setattr(rpc, "MAX_ANSWER_BYTES", 1 << 20)
    backend = RpcBackend(url, Pubkey.default(), timeout=5.0)
    sent: list[int] = []

    def endless(request: dict[str, Any]) -> tuple[dict[str, str], Iterator[bytes]]:
        def chunks() -> Iterator[bytes]:
            yield b'{"jsonrpc": "2.0", "id": %d, "result": "' % request["id"]
            for _ in range(64):  # 4 MiB, no Content-Length: read until the server closes
                sent.append(1)
                yield b"A" * 65536
        return {"Connection": "close"}, chunks()

    answers["getSlot"] = endless
    with pytest.raises(ChainUnavailable, match="answered too much .getSlot.: an answer of more than 1048576") as err:
        await backend.slot()
    assert "SECRET" not in str(err.value)
    answers["getSlot"] = lambda request: ({"Content-Length": str(100 << 20)}, iter([b"{"]))
    with pytest.raises(ChainUnavailable, match=f"an answer of {100 << 20} bytes"):
        await backend.slot()
    gz = gzip.compress(_result(7, with_context=False)({"id": 0}))
    answers["getSlot"] = lambda request: ({"Content-Encoding": "gzip", "Content-Length": str(len(gz))}, iter([gz]))
    with pytest.raises(ChainUnavailable, match="gzip-encoded answer"):
        await backend.slot()
    answers["getSlot"] = _result(7, with_context=False)
    assert await backend.slot() == 7  # an ordinary answer still goes through
    await backend.aclose()


async def test_an_implausible_rent_figure_is_refused(endpoint) -> None:  # type: ignore[no-untyped-def]
    url, answers = endpoint
    backend = RpcBackend(url, Pubkey.default(), timeout=5.0)
    answers["getMinimumBalanceForRentExemption"] = _result(10**15, with_context=False)
    with pytest.raises(ChainError, match="rent-exempt"):  # it would move that much out of the wallet
        await backend.minimum_balance(82)
    answers["getMinimumBalanceForRentExemption"] = _result((82 + 128) * 6960, with_context=False)
    assert await backend.minimum_balance(82) == (82 + 128) * 6960
    await backend.aclose()


def test_urls_in_logs_and_errors_keep_no_secret() -> None:
    assert shown_url("https://mainnet.example-rpc.com/?api-key=SECRET") == "https://mainnet.example-rpc.com/..."
    assert shown_url("https://user:pw@rpc.example.com:8899/v2/SECRET") == "https://rpc.example.com:8899/..."
    assert shown_url("http://127.0.0.1:8899") == "http://127.0.0.1:8899"
    assert shown_url("http://[::1]:5001/") == "http://[::1]:5001"
    assert shown_url("http://x:abc") == "(an unreadable URL)"
