"""Local control API: HTTP/1.1 + JSON on 127.0.0.1, bearer token from ``<home>/api.token``.

A deliberately small server on trio streams: one request per connection, headers <= 16 KiB,
bodies <= 64 KiB, 10 s to send a request; everything but /openapi.json needs the token.
Handlers and the OpenAPI document are in ``routes.py``.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from fednode.daemon.logs import log
from fednode.daemon.routes import ROUTES, HTTPError, openapi

if TYPE_CHECKING:
    from fednode.daemon.service import Daemon

TOKEN_FILE = "api.token"
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
REQUEST_TIMEOUT = 10.0


def ensure_token(home: Path) -> str:
    """Create the token file (mode 0600 from the first byte) unless it exists."""
    path = home / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    return token


async def _read_request(stream: trio.SocketStream) -> tuple[str, str, dict[str, str], bytes]:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise HTTPError(431, "request headers too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise HTTPError(400, "connection closed")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise HTTPError(400, "bad request line") from None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY or length < 0:
        raise HTTPError(413, "request body too large")
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive_some(length - len(body))
        if not chunk:
            raise HTTPError(400, "truncated body")
        body += chunk
    return method, target.split("?", 1)[0], headers, bytes(body[:length])


def _response(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
              413: "Payload Too Large", 500: "Internal Server Error"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class Api:
    def __init__(self, daemon: Daemon, token: str) -> None:
        self.daemon = daemon
        self.token = token

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                method, path, headers, raw = await _read_request(stream)
            status, body, ctype = await self._dispatch(method, path, headers, raw)
        except HTTPError as exc:
            status, body, ctype = exc.status, json.dumps({"error": str(exc)}).encode(), "application/json"
        except trio.TooSlowError:
            status, body, ctype = 408, b'{"error": "request timeout"}', "application/json"
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await stream.send_all(_response(status, body, ctype))
                await stream.aclose()
        except trio.BrokenResourceError:
            pass

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, str]:
        if path == "/openapi.json":
            return 200, json.dumps(openapi()).encode(), "application/json"
        auth = headers.get("authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
            raise HTTPError(401, "missing or wrong bearer token")
        if method == "GET" and path == "/metrics":
            text = self.daemon.metrics.prometheus(len(self.daemon.host.get_connected_peers()))
            return 200, text.encode(), "text/plain; version=0.0.4"
        handler = ROUTES.get((method, path))
        if handler is None:
            raise HTTPError(404, f"no route {method} {path}")
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise HTTPError(400, "body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object")
        try:
            result = await handler(self.daemon, body)
        except HTTPError:
            raise
        except Exception as exc:
            log("api_error", "error", path=path, error=f"{type(exc).__name__}: {exc}")
            raise HTTPError(500, f"{type(exc).__name__}: {exc}") from None
        return 200, json.dumps(result, default=str).encode(), "application/json"

    async def serve(self, port: int, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        bound = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        await trio.serve_listeners(self.handle, listeners)
