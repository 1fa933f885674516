"""A faithful local fake of the Kubo RPC endpoints fednode uses (Kubo 0.2x shapes), on 127.0.0.1.

Every command is a POST to /api/v0/<command> with ``arg`` query parameters (GET: 405, as Kubo);
success is HTTP 200 and a JSON object; an error is HTTP 500 with
``{"Message": ..., "Code": 0, "Type": "error"}``; an unknown command is a 404 with Kubo's plain
text body. Implemented: version, swarm/connect, pin/add (``{"Pins": [cid]}``), pin/ls with arg
(``{"Keys": {cid: {"Type": ...}}}``, or "path '...' is not pinned"). Knobs: ``fail`` (the next N
calls of a command answer an error, ``message`` its text), ``lie`` (pin/add answers another CID),
``drip`` (every answer trickles out a byte at a time, for at most 20 s), ``huge`` (every answer is a
2 MiB JSON object), ``down()`` (closed).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

OTHER_CID = "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"  # `hello\n`


class FakeKubo:
    def __init__(self, port: int = 0) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []
        self.pins: dict[str, str] = {}  # CID text -> "recursive" | "direct"
        self.fail: dict[str, int] = {}  # command -> how many next calls answer an error
        self.lie = False
        self.message = "context deadline exceeded"
        self.drip = self.huge = False
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(405, b"405 - Method Not Allowed", "text/plain")

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body = fake.answer(url.path, parse_qsl(url.query))
                if fake.drip:
                    self._drip()
                elif fake.huge:
                    self._send(200, json.dumps({"Version": "x" * (2 << 20)}).encode(), "application/json")
                elif isinstance(body, bytes):
                    self._send(status, body, "text/plain")
                else:
                    self._send(status, json.dumps(body).encode(), "application/json")

            def _drip(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                deadline = time.monotonic() + 20
                try:
                    while time.monotonic() < deadline:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:  # the client gave up
                    pass

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)  # reuses a port (restarts)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def error(message: str) -> tuple[int, dict[str, Any]]:
        return 500, {"Message": message, "Code": 0, "Type": "error"}

    def answer(self, path: str, query: list[tuple[str, str]]) -> tuple[int, dict[str, Any] | bytes]:
        command = path.removeprefix("/api/v0/")
        args = [v for k, v in query if k == "arg"]
        opts = dict(query)
        with self.lock:
            self.calls.append((command, query))
            if self.fail.get(command, 0) > 0:
                self.fail[command] -= 1
                return self.error(self.message)
            if command == "version":
                return 200, {"Version": "0.29.0", "Commit": "", "Repo": "15", "System": "amd64/linux",
                             "Golang": "go1.22"}
            if command == "swarm/connect":
                if not args or "/p2p/" not in args[0]:
                    return self.error("invalid peer address: no /p2p/ part")
                return 200, {"Strings": [f"connect {args[0].rsplit('/', 1)[1]} success"]}
            if command == "pin/add":
                if not args:
                    return self.error("argument \"ipfs-path\" is required")
                cid = args[0]
                if not cid.startswith(("bafy", "bafk", "Qm")):
                    return self.error(f"invalid path \"{cid}\": invalid cid")
                recursive = opts.get("recursive", "true") == "true"
                self.pins[cid] = "recursive" if recursive else "direct"
                return 200, {"Pins": [OTHER_CID if self.lie else cid]}
            if command == "pin/ls":
                if args and args[0] not in self.pins:
                    return self.error(f"path '{args[0]}' is not pinned")
                keys = args or list(self.pins)
                return 200, {"Keys": {k: {"Type": self.pins[k]} for k in keys}}
        return 404, b"404 page not found"

    def commands(self, name: str) -> list[list[tuple[str, str]]]:
        with self.lock:
            return [q for c, q in self.calls if c == name]

    def down(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class FakePinningService:
    """The IPFS Pinning Service API (POST /pins, GET /pins/{requestid}, GET /pins?cid=&name=&status=
    listing) as the spec shapes it: a
    PinStatus answer, 401 {"error": {"reason": "UNAUTHORIZED", ...}} without the right bearer token.
    Each GET moves a pin one step (queued -> pinning -> pinned; ``fail``: -> failed; ``stuck``: it
    stays queued)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.pins: dict[str, dict[str, Any]] = {}  # requestid -> PinStatus
        self.posts: list[dict[str, Any]] = []
        self.lie = False
        self.fail = self.stuck = False
        self.listing: Any = None  # when set: the answer to every GET /pins listing, whatever it is
        self.lock = threading.Lock()
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.headers.get("Authorization") != f"Bearer {svc.token}":
                    status, body = 401, {"error": {"reason": "UNAUTHORIZED", "details": "bad access token"}}
                else:
                    url = urlsplit(self.path)
                    status, body = svc.answer(method, url.path, raw, dict(parse_qsl(url.query)))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, method: str, path: str, raw: bytes,
               query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if method == "GET" and path == "/pins":  # the listing, filtered by cid, name and status
                if self.listing is not None:
                    return 200, self.listing
                q = query or {}
                found = [st for st in self.pins.values()
                         if ("cid" not in q or st["pin"]["cid"] in q["cid"].split(","))
                         and ("name" not in q or st["pin"].get("name") == q["name"])
                         and ("status" not in q or st["status"] in q["status"].split(","))]
                limit = int(q.get("limit", "10"))
                return 200, {"count": len(found), "results": found[:limit]}
            if method == "POST" and path == "/pins":
                pin = json.loads(raw)
                self.posts.append(pin)
                rid = f"req-{len(self.pins) + 1}"
                shown = {**pin, "cid": OTHER_CID if self.lie else pin["cid"]}
                self.pins[rid] = {"requestid": rid, "status": "queued", "created": "2026-12-03T19:00:00Z",
                                  "pin": shown, "delegates": ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWsvc"]}
                return 202, self.pins[rid]
            rid = path.removeprefix("/pins/")
            if method == "GET" and rid in self.pins:
                st = self.pins[rid]
                if self.stuck:
                    return 200, st
                st["status"] = {"queued": "pinning", "pinning": "failed" if self.fail else "pinned"}.get(
                    st["status"], st["status"])
                return 200, st
            return 404, {"error": {"reason": "NOT_FOUND", "details": "no such pin request"}}

    def down(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
