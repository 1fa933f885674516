"""A read-only IPFS Trustless Gateway (``GET``/``HEAD /ipfs/{cid}``) on a port of its own.

Off unless ``[gateway] listen`` names an address ("127.0.0.1:8080", or a bare port: loopback).
Answers ``application/vnd.ipld.raw`` (one block) and ``application/vnd.ipld.car`` (a CARv1 of the
DAG under the CID, depth-first, no duplicates, ``dag-scope=block|entity|all``), chosen by
``?format=raw|car`` (which wins) or the ``Accept`` header; anything else is 406. No paths below
the CID, no deserialized responses. A block is served only when ``access.Reader`` would serve it
to an anonymous peer (a public repository's, or ``PUBLIC`` content): a private repository's block is
a 404, exactly like a block we do not hold. Delta-stored tensor states come from ``StateBlocks``
as on bitswap. Each client IP gets ``rate`` requests a second (burst ``burst``), then 429; a CAR's
walk costs one more request per WALK_STEP blocks, paid as it goes (the walk waits when the client
is out of requests): a HEAD or GET of a large DAG's CAR costs us the walk whether or not the
client reads the body.

Bounds: headers <= 8 KiB, no request body, 10 s to send the request, 8 connections of one client
at a time (an IPv6 client is its /64), the request read before one of the 64 answering slots is
taken (a client sending its headers slowly holds only its own), more waiting up to 30 s for a slot
and then answered 503 (beyond MAX_HELD held, or 256 of one client, a connection is closed at once),
a CAR at most ``max_car_bytes`` and MAX_CAR_BLOCKS blocks (checked by walking the DAG before the 200
is sent, so an oversized or incomplete DAG is a clear error, not a cut stream), sent in 256 KiB
pieces at MIN_SEND_RATE on average or faster (after a 30 s grace): a client reading slower is cut
off. A closed connection is drained for up to a second first, so that an error answer is not lost
to a reset. Responses carry ``Access-Control-Allow-Origin: *``: browser clients (Helia) may use it.
"""

from __future__ import annotations

import ipaddress
import json
import resource
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import trio

from fednode.daemon.access import Reader
from fednode.daemon.ratelimit import TokenBuckets
from fednode.errors import FednodeError, NotFound
from fednode.logs import log
from fednode.storage.store import Store
from protocol import dag
from protocol.car import encode_header, encode_section
from protocol.multiformats import CID, DAG_PB, RAW, FormatError, encode_varint
from protocol.unixfs import HAMT_SHARD, NOT_FILES, NotAFile, decode_hamt, decode_node, decode_pb

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio-stubs shadow trio for mypy: see service.py

MAX_HEAD = 8 * 1024
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
MAX_CONNECTIONS = 64
MAX_PER_CLIENT = 8  # connections of one IP answered at a time: one client cannot hold every slot
# connections waiting for a slot (a client opening many at once, as Helia does, is queued, not refused)
MAX_HELD, MAX_HELD_PER_CLIENT, QUEUE_TIMEOUT = 1024, 256, 30.0  # MAX_HELD: at most a quarter of our descriptors
PIECE = 256 * 1024
MIN_SEND_RATE = 128 * 1024  # bytes a second a CAR's reader must take on average (after SEND_TIMEOUT's grace)
MAX_CAR_BLOCKS = 1 << 21  # blocks a CAR may hold (as on import): its plan holds each CID
DRAIN_BYTES = 64 * 1024  # read from a closing connection so that the kernel sends no reset
WALK_STEP = 256  # blocks of a CAR's walk that cost its client one request
# requests per second per client IP: a block-by-block client makes one per block (a 256 MiB file: 1031)
DEFAULT_RATE, DEFAULT_BURST = 100.0, 1000.0
DEFAULT_MAX_CAR_BYTES = 4 << 30
RAW_TYPE, CAR_TYPE = "application/vnd.ipld.raw", "application/vnd.ipld.car"
CAR_CONTENT_TYPE = CAR_TYPE + "; version=1; order=dfs; dups=n"
SCOPES = ("block", "entity", "all")
IMMUTABLE = "public, max-age=29030400, immutable"
REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           406: "Not Acceptable", 408: "Request Timeout", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}
CORS = {"Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": "Content-Length, Content-Type, Etag, X-Ipfs-Path, Retry-After"}
# a wanted block the store lacks: (CID, the asker's rule) -> a generated block (StateBlocks.get) or None
ExtraBlocks = Callable[[CID, Callable[[list[bytes]], bool], str], Awaitable[bytes | None]]


class GatewayError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class GatewayConfig:
    host: str
    port: int
    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST
    max_car_bytes: int = DEFAULT_MAX_CAR_BYTES


def parse_listen(text: str) -> tuple[str, int] | None:
    """``"HOST:PORT"`` or ``"PORT"`` (loopback) -> (host, port); "" -> None (off). ValueError if malformed."""
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not host or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT or PORT")
    return host, int(port)


def gateway_config(config: dict[str, Any]) -> GatewayConfig | None:
    """``[gateway]`` of a node config (type-checked at load, node.py); None when it is off."""
    table = config.get("gateway", {})
    try:
        where = parse_listen(table.get("listen", ""))
    except ValueError as exc:
        raise FednodeError(f"invalid [gateway] listen: {exc}") from None
    if where is None:
        return None
    return GatewayConfig(where[0], where[1], float(table.get("rate", DEFAULT_RATE)),
                         float(table.get("burst", DEFAULT_BURST)),
                         int(table.get("max_car_bytes", DEFAULT_MAX_CAR_BYTES)))


@dataclass
class Request:
    method: str
    cid: CID
    kind: str  # RAW_TYPE or CAR_TYPE
    scope: str
    if_none_match: str


def _accepts(header: str) -> list[str]:
    """The media types ``Accept`` names with a q above 0, the most wanted first (equal q: in the
    header's order); a CAR only if it asks for version 1."""
    found: list[tuple[float, int, str]] = []
    for i, item in enumerate(header.split(",")):
        kind, *params = (p.strip() for p in item.split(";"))
        values = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in params)}
        try:
            q = float(values.get("q", "1"))
        except ValueError:
            q = 0.0  # an unreadable weight: as if not offered
        if not 0 < q <= 1:
            continue
        if kind.lower() == CAR_TYPE and values.get("version", "1") != "1":
            continue  # CARv2 is not offered
        found.append((-q, i, kind.lower()))
    return [kind for _, _, kind in sorted(found)]


def parse_target(method: str, target: str, headers: dict[str, str]) -> Request:
    """The request line's target and headers checked: a GatewayError with one line if unusable."""
    if method not in ("GET", "HEAD"):
        raise GatewayError(405, "only GET and HEAD are served", {"Allow": "GET, HEAD"})
    path, _, query = target.partition("?")
    if not path.startswith("/ipfs/"):
        raise GatewayError(404, "only /ipfs/{cid} is served")
    text = path[len("/ipfs/"):].rstrip("/")
    if "/" in text:
        raise GatewayError(400, "paths below a CID are not served: ask for the CID itself")
    try:
        cid = CID.parse(text)
    except (FormatError, ValueError) as exc:
        raise GatewayError(400, f"bad CID {text[:100]!r}: {exc}") from None
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, max_num_fields=16))  # lenient: "format=raw&" is fine
    except ValueError:
        raise GatewayError(400, "more than 16 query parameters") from None
    fmt = params.get("format")
    if fmt is not None:
        kind = {"raw": RAW_TYPE, "car": CAR_TYPE}.get(fmt)
        if kind is None:
            raise GatewayError(400, f"unsupported format {fmt[:40]!r}: this trustless gateway serves raw and car")
    else:
        accepted = _accepts(headers.get("accept", ""))
        kind = next((k for k in accepted if k in (RAW_TYPE, CAR_TYPE)), "")
        if not kind:
            raise GatewayError(406, f"send Accept: {RAW_TYPE} or {CAR_TYPE} (or ?format=raw|car): "
                               "only verifiable responses are served")
    scope = params.get("dag-scope", "all")
    if scope not in SCOPES:
        raise GatewayError(400, f"unsupported dag-scope {scope[:40]!r}: block, entity or all")
    if "entity-bytes" in params:
        raise GatewayError(400, "entity-bytes is not supported")
    return Request(method, cid, kind, scope, headers.get("if-none-match", ""))


def _children(cid: CID, block: bytes, scope: str) -> list[CID]:
    """The links a CAR of ``scope`` follows below ``block``."""
    if scope == "block":
        return []
    if cid.codec == DAG_PB:
        if scope == "entity":
            try:
                decode_node(block)  # a UnixFS file: its entity is all its blocks
            except NotAFile as exc:  # a HAMT's entity is the shards that enumerate it (the spec's)
                return decode_hamt(block)[1] if exc.kind == NOT_FILES[HAMT_SHARD] else []
            except FormatError:
                return []  # a directory (or other node): the entity is the node itself
        return [link.cid for link in decode_pb(block)[0]]
    return dag.links(cid, block) if scope == "all" else []


class Blocks:
    """What an anonymous client may read: the store's blocks and generated states, both checked
    against ``access.Reader`` for a peer with no key (public repositories and PUBLIC content)."""

    def __init__(self, store: Store, extra: ExtraBlocks | None) -> None:
        self.store = store
        self.extra = extra

    async def get(self, cid: CID, reader: Reader) -> bytes | None:
        block: bytes | None = None
        holders: list[bytes] = []
        with self.store.read() as txn:
            # a DAG-PB block is the same bytes under CIDv0 and CIDv1 (Kubo's files are v0, ours v1)
            for key in (cid, CID(1 - cid.version, DAG_PB, cid.digest)) if cid.codec == DAG_PB else (cid,):
                try:
                    block = txn.get_block(key)
                except NotFound:
                    continue
                holders = txn.block_repos(key)
                break
        if block is not None:
            return block if reader.allows(holders) else None
        return await self.extra(cid, reader.allows, reader.asker) if self.extra is not None else None

    async def size(self, cid: CID, reader: Reader) -> int | None:
        """A raw leaf's length without copying it out of the map; other blocks are read."""
        if cid.codec == RAW:
            with self.store.read(buffers=True) as txn:
                if txn.has_block(cid):
                    return txn.block_size(cid) if reader.allows(txn.block_repos(cid)) else None
        block = await self.get(cid, reader)
        return None if block is None else len(block)

    async def plan(self, root: CID, scope: str, reader: Reader, limit: int,
                   charge: Callable[[], Awaitable[None]] | None = None) -> tuple[list[CID], int]:
        """The CAR's blocks in order (depth-first, link order, each once) and its length; every block
        present and readable and the total within ``limit``, else a GatewayError. ``charge`` is
        awaited after each WALK_STEP blocks (the client pays for the walk as it goes)."""
        order: list[CID] = []
        seen: set[CID] = set()
        total = len(encode_header([root]))
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            if cid.codec == RAW:
                size = await self.size(cid, reader)
                kids: list[CID] = []
            else:
                block = await self.get(cid, reader)
                size = None if block is None else len(block)
                kids = [] if block is None else _children(cid, block, scope)
            if size is None:
                raise GatewayError(404, f"block {cid} is not held here" if cid == root else
                                   f"block {cid} under {root} is not held here: the DAG is incomplete")
            order.append(cid)
            if len(order) > MAX_CAR_BLOCKS:
                raise GatewayError(413, f"the CAR of {root} (dag-scope={scope}) holds more than {MAX_CAR_BLOCKS} "
                                   "blocks, this gateway's limit: ask for its blocks or a smaller scope")
            total += len(encode_varint(len(bytes(cid)) + size)) + len(bytes(cid)) + size
            if total > limit:
                raise GatewayError(413, f"the CAR of {root} (dag-scope={scope}) is larger than this gateway's "
                                   f"limit of {limit} bytes: ask for its blocks or a smaller scope")
            stack.extend(reversed(kids))
            if len(order) % WALK_STEP == 0:
                await trio.sleep(0)  # a large DAG's walk lets other requests in
                if charge is not None:
                    await charge()
        return order, total


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in {**headers, **CORS, "Connection": "close"}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Gone(Exception):
    """The client closed or reset the connection."""


async def _read_head(stream: trio.abc.ReceiveStream) -> tuple[str, str, dict[str, str]]:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise GatewayError(431, "request headers too large")
        try:
            chunk = await stream.receive_some(4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _Gone() from None
        if not chunk:
            raise _Gone()
        buf += chunk
    head = bytes(buf).partition(b"\r\n\r\n")[0]
    if len(head) > MAX_HEAD:
        raise GatewayError(431, "request headers too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise GatewayError(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise GatewayError(400, "bad header line")
        headers[key.strip().lower()] = value.strip()
    if parts[0] not in ("GET", "HEAD"):  # before the body check: a POST is a 405 whatever it carries
        raise GatewayError(405, "only GET and HEAD are served", {"Allow": "GET, HEAD"})
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise GatewayError(400, "a request body is not accepted")
    return parts[0], parts[1], headers


class Gateway:
    def __init__(self, store: Store, config: GatewayConfig, extra: ExtraBlocks | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.config = config
        self.blocks = Blocks(store, extra)
        self.limit = TokenBuckets(config.rate, config.burst)
        self.slots = trio.Semaphore(max_connections)
        self.held = 0  # accepted and not closed yet: answered or waiting
        self.max_held = min(MAX_HELD, descriptor_limit() // 4)  # libp2p, LMDB and the API need the rest
        self.per_client: dict[str, int] = {}  # held, per client IP
        self.client_slots: dict[str, trio.Semaphore] = {}
        self.served = {"raw": 0, "car": 0, "refused": 0, "limited": 0}

    async def serve(self, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the configured address until cancelled; ``started`` with the bound port."""
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        except OSError as exc:
            raise FednodeError(f"cannot serve the gateway on {self.config.host}:{self.config.port}: "
                               f"{exc.strerror}; change [gateway] listen") from None
        port = listeners[0].socket.getsockname()[1]
        log("gateway_listening", host=self.config.host, port=port)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(port)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of descriptors: let open connections finish first
                log("gateway_accept_error", "warning", error=str(exc))
                await trio.sleep(0.1)
                continue
            try:
                client = client_key(str(stream.socket.getpeername()[0]))
            except (OSError, ValueError):  # reset before we looked
                client = ""
            if not client or self.held >= self.max_held or self.per_client.get(client, 0) >= MAX_HELD_PER_CLIENT:
                await stream.aclose()
                continue
            self.held += 1
            self.per_client[client] = self.per_client.get(client, 0) + 1
            self.client_slots.setdefault(client, trio.Semaphore(MAX_PER_CLIENT))
            nursery.start_soon(self._handle, stream, client)

    async def _handle(self, stream: trio.SocketStream, client: str) -> None:
        """One connection: a slot of its client's, the request read, then one of the gateway's
        answering slots (so a client sending its request slowly holds only its own slots)."""
        mine, everyone = self.client_slots[client], self.slots
        got_mine = got_slot = head_only = False
        try:
            try:
                with trio.move_on_after(QUEUE_TIMEOUT):
                    await mine.acquire()
                    got_mine = True
                if not got_mine:
                    raise GatewayError(503, f"more than {MAX_PER_CLIENT} connections at once from {client}",
                                       {"Retry-After": "5"})
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        method, target, headers = await _read_head(stream)
                except trio.TooSlowError:
                    raise GatewayError(408, "request timeout") from None
                head_only = method == "HEAD"
                if not self.limit.take(client):
                    self.served["limited"] += 1
                    raise GatewayError(429, f"more than {self.config.rate:g} requests a second from {client}",
                                       {"Retry-After": "1"})
                request = parse_target(method, target, headers)
                with trio.move_on_after(QUEUE_TIMEOUT):
                    await everyone.acquire()
                    got_slot = True
                if not got_slot:
                    raise GatewayError(503, "the gateway is busy", {"Retry-After": "5"})
                await self._respond(stream, request, client)
            except GatewayError as exc:
                self.served["refused"] += 1
                body = (json.dumps({"error": " ".join(str(exc).split())}) + "\n").encode()
                fields = {"Content-Type": "application/json", "Content-Length": str(len(body)), **exc.headers}
                with trio.fail_after(SEND_TIMEOUT):
                    await stream.send_all(_head(exc.status, fields) + (b"" if head_only else body))
        except (_Gone, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass  # the client went away, or stopped reading
        except Exception as exc:  # our bug: logged; it never stops the gateway
            log("gateway_error", "error", error=f"{type(exc).__name__}: {exc}",
                where=traceback.format_exc(limit=-3).splitlines()[-3:])
        finally:
            if got_slot:
                everyone.release()
            if got_mine:
                mine.release()
            with trio.CancelScope(shield=True):
                await _close(stream)
            self.held -= 1
            left = self.per_client.pop(client) - 1
            if left:
                self.per_client[client] = left
            else:
                del self.client_slots[client]

    async def _respond(self, stream: trio.SocketStream, request: Request, client: str) -> None:
        reader = Reader(self.blocks.store, b"", f"ip:{client}")  # anonymous: no key, no membership

        async def charge() -> None:  # WALK_STEP blocks walked cost the client one more request
            wait = self.limit.pace(client, 1)
            if wait:
                await trio.sleep(wait)

        cid = request.cid
        raw = request.kind == RAW_TYPE
        etag = f'"{cid}.raw"' if raw else f'"{cid}.car.{request.scope}.dfs.n"'
        fields = {"Content-Type": RAW_TYPE if raw else CAR_CONTENT_TYPE, "X-Content-Type-Options": "nosniff",
                  "Cache-Control": IMMUTABLE, "Etag": etag, "Vary": "Accept", "X-Ipfs-Path": f"/ipfs/{cid}",
                  "Content-Disposition": f'attachment; filename="{cid}.{"bin" if raw else "car"}"'}
        body = b""
        if raw:
            block = await self.blocks.get(cid, reader)
            if block is None:
                raise GatewayError(404, f"block {cid} is not held here")
            body, order, total = block, [cid], len(block)
        else:
            order, total = await self.blocks.plan(cid, request.scope, reader, self.config.max_car_bytes, charge)
        if etag in (t.strip() for t in request.if_none_match.split(",")):
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(_head(304, {k: v for k, v in fields.items() if k != "Content-Type"}))
            return
        fields["Content-Length"] = str(total)
        self.served["raw" if raw else "car"] += 1
        with trio.fail_after(SEND_TIMEOUT):
            await stream.send_all(_head(200, fields))
        if request.method == "HEAD":
            return
        if raw:
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(body)
            return
        await self._send_car(stream, cid, order, reader)

    async def _send_car(self, stream: trio.SocketStream, root: CID, order: list[CID], reader: Reader) -> None:
        """The planned blocks, read again one by one (memory holds one piece); a block gone since the
        plan (gc) cuts the stream short, which a CAR reader sees as a truncated section. A client
        that takes the body slower than MIN_SEND_RATE on average (after SEND_TIMEOUT) is cut off."""
        start, sent = trio.current_time(), 0
        piece = bytearray(encode_header([root]))
        for cid in order:
            block = await self.blocks.get(cid, reader)
            if block is None:
                log("gateway_block_vanished", "warning", cid=str(cid))
                return
            piece += encode_section(cid, block)
            if len(piece) >= PIECE:
                sent += len(piece)
                with trio.fail_at(start + SEND_TIMEOUT + sent / MIN_SEND_RATE):
                    await stream.send_all(bytes(piece))
                piece.clear()
        sent += len(piece)
        with trio.fail_at(start + SEND_TIMEOUT + sent / MIN_SEND_RATE):
            await stream.send_all(bytes(piece))


def client_key(ip: str) -> str:
    """Whom the per-client limits count: an IPv4 address, or an IPv6 address's /64 (one host gets
    a whole /64; an IPv4-mapped address counts as the IPv4 one)."""
    address = ipaddress.ip_address(ip.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


async def _close(stream: trio.SocketStream) -> None:
    """Close after reading what the client still sends (up to DRAIN_BYTES, a second): closing with
    unread bytes makes the kernel send a reset, which can destroy the answer before it is read."""
    with trio.move_on_after(1):
        try:
            await stream.send_eof()
            drained = 0
            while drained < DRAIN_BYTES and (chunk := await stream.receive_some(16384)):
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass
    with trio.move_on_after(1):
        await stream.aclose()


def descriptor_limit() -> int:
    """This process's soft limit of open files, raised to its hard limit (at most 65536) first."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    except (OSError, ValueError):
        return 1024
    return 65536 if soft == resource.RLIM_INFINITY else int(soft)
