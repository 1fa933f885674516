"""Local control API: HTTP/1.1 + JSON on 127.0.0.1, bearer token from ``<home>/api.token``.

A deliberately small server on trio streams: one request per connection, headers <= 16 KiB,
bodies <= 64 KiB, 10 s to send a request, at most 64 connections at a time (a new one evicts the
oldest that has not sent its request yet); everything but /openapi.json needs the token.
Every request gets an answer or its connection is dropped; no input stops the server.
Handlers, parameter checks and the OpenAPI document are in ``routes.py``.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import secrets
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fednode import safejson
from fednode.daemon.pidfile import TOKEN_FILE
from fednode.daemon.routes import ROUTES, HTTPError, openapi
from fednode.errors import FednodeError, NotFound
from fednode.logs import log
from fednode.storage.diskspace import DiskFull

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio-stubs shadow trio for mypy: see service.py

    from fednode.daemon.service import Daemon

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_JSON_DEPTH = 16  # our bodies are flat objects of strings and lists of strings
MAX_INT_DIGITS = 20
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
_FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _ClientGone(Exception):
    """The client reset or closed the connection: nobody to answer."""


def ensure_token(home: Path) -> str:
    """The API token: the token file's, created (mode 0600 from the first byte, written whole and
    fsynced under a temporary name, then renamed) when missing or empty (a crash while an older
    version wrote it left it empty, and an empty token can match no request). A token file that
    others may read is refused in one line, like the keypair."""
    path = home / TOKEN_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise FednodeError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        token = path.read_text(errors="replace").strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    temp = home / (TOKEN_FILE + ".tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, token.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    return token


async def _receive(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    try:
        chunk = await stream.receive_some(n)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise _ClientGone(str(exc)) from None
    if not chunk:
        raise _ClientGone("closed")
    return chunk


def _content_length(headers: dict[str, str]) -> int:
    text = headers.get("content-length", "0")
    if not text.isascii() or not text.isdigit() or len(text) > 9:  # int() would take "+1", " 1", "1_0", "١"
        raise HTTPError(400, "bad Content-Length")
    length = int(text)
    if length > MAX_BODY:
        raise HTTPError(413, "request body too large")
    return length


async def _read_request(stream: trio.abc.ReceiveStream) -> tuple[str, str, dict[str, str], bytes]:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise HTTPError(431, "request headers too large")
        buf += await _receive(stream, 4096)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise HTTPError(431, "request headers too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, "bad request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        key = k.strip().lower()
        if not sep or not key:
            raise HTTPError(400, "bad header line")
        if key in headers and key in ("content-length", "authorization", "transfer-encoding"):
            raise HTTPError(400, f"repeated {key} header")
        headers[key] = v.strip()
    if "transfer-encoding" in headers:
        raise HTTPError(400, "Transfer-Encoding is not supported: send Content-Length")
    length = _content_length(headers)
    body = bytearray(rest)
    while len(body) < length:
        body += await _receive(stream, length - len(body))
    return method, target.split("?", 1)[0], headers, bytes(body[:length])


def _no_constant(name: str) -> Any:
    raise HTTPError(400, f"body is not JSON: {name} is not a JSON value")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise HTTPError(400, f"body has an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object, or HTTPError(400) with one line saying why."""
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "body is not UTF-8") from None
    if safejson.depth(raw) > MAX_JSON_DEPTH:
        raise HTTPError(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text, parse_int=_int, parse_constant=_no_constant)
    except ValueError:
        raise HTTPError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "body must be a JSON object")
    return body


def _response(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
              408: "Request Timeout", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
              500: "Internal Server Error", 502: "Bad Gateway", 507: "Insufficient Storage"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


def _error(status: int, message: str) -> tuple[int, bytes, str]:
    return status, json.dumps({"error": " ".join(message.split())}).encode(), "application/json"


class Api:
    def __init__(self, daemon: Daemon, token: str, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.daemon = daemon
        self.token = token
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.open_connections = 0  # being served now (<= max_connections)
        self.reading: dict[trio.CancelScope, None] = {}  # connections still sending their request, oldest first
        self.evicted = 0

    async def handle(self, stream: trio.abc.Stream, reading: trio.CancelScope) -> None:
        """One connection, whatever the client sends or does: never raises (but Cancelled).
        The caller has counted it in ``open_connections`` and registered ``reading`` (evictable)."""
        try:
            reply = await self._answer(stream, reading)
            if reply is not None:
                with trio.move_on_after(self.request_timeout):
                    await stream.send_all(_response(*reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away while we answered
        except Exception as exc:  # last resort: a bug of ours must not stop the API
            log("api_internal_error", "error", error=f"{type(exc).__name__}: {exc}",
                where=traceback.format_exc(limit=-3).splitlines()[-3:])
        finally:
            self.open_connections -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _answer(self, stream: trio.abc.Stream, reading: trio.CancelScope) -> tuple[int, bytes, str] | None:
        """The response, or None when there is nobody to answer."""
        with reading:  # cancelled when evicted, until the whole request is in
            try:
                with trio.fail_after(self.request_timeout):
                    method, path, headers, raw = await _read_request(stream)
            except _ClientGone:
                return None
            except trio.TooSlowError:
                return _error(408, "request timeout")
            except HTTPError as exc:
                return _error(exc.status, str(exc))
            finally:
                self.reading.pop(reading, None)
        if reading.cancelled_caught:
            return None  # evicted for a newer connection: dropped
        try:
            return await self._dispatch(method, path, headers, raw)
        except HTTPError as exc:
            return _error(exc.status, str(exc))
        except FednodeError as exc:  # a refusal with its one-line reason (a full disk, an unknown name), no bug
            status = 507 if isinstance(exc, DiskFull) else 404 if isinstance(exc, NotFound) else 400
            log("api_refused", "warning", path=path, status=status, error=str(exc))
            return _error(status, str(exc))
        except Exception as exc:  # our bug (the client's mistakes are HTTPError 4xx): log it, answer 500
            log("api_error", "error", path=path, error=f"{type(exc).__name__}: {exc}",
                where=traceback.format_exc(limit=-3).splitlines()[-3:])
            return _error(500, f"internal error ({type(exc).__name__}); see the daemon log")

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, str]:
        if path == "/openapi.json":
            return 200, json.dumps(openapi()).encode(), "application/json"
        auth = headers.get("authorization", "")
        if not hmac.compare_digest(auth.encode("latin-1"), f"Bearer {self.token}".encode()):
            raise HTTPError(401, "missing or wrong bearer token")
        if method == "GET" and path == "/metrics":
            text = self.daemon.metrics.prometheus(len(self.daemon.host.get_connected_peers()))
            return 200, text.encode(), "text/plain; version=0.0.4"
        handler = ROUTES.get((method, path))
        if handler is None:
            raise HTTPError(404, f"no route {method} {path}"[:200])
        result = await handler(self.daemon, parse_body(raw))
        return 200, json.dumps(result, default=str).encode(), "application/json"

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """At most ``max_connections`` at a time. When all are taken, the oldest one that has not
        sent its whole request yet makes room (idle connections cannot lock clients out);
        when all are busy answering, the newcomer is dropped."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _FD_ERRORS:
                    raise
                log("api_accept_error", "warning", error=os.strerror(exc.errno))
                await trio.sleep(0.1)  # out of descriptors: let open connections finish first
                continue
            if self.open_connections >= self.max_connections:
                if not self.reading:
                    await stream.aclose()
                    continue
                oldest = next(iter(self.reading))
                del self.reading[oldest]
                oldest.cancel()
                self.evicted += 1
            self.open_connections += 1  # counted here, so a burst of accepts sees it at once
            reading = trio.CancelScope()
            self.reading[reading] = None
            nursery.start_soon(self.handle, stream, reading)

    async def serve(self, port: int, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(bound)
