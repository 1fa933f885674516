"""Handlers of the local API (JSON in, JSON out) and its OpenAPI 3 document."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from fednode.daemon.discovery import cid_key
from fednode.errors import FednodeError
from fednode.history import parse_repo_id, refs, repo_id_text
from fednode.sealing import SealError, new_key, wrap
from protocol import messages as m
from protocol.multiformats import CID, FormatError, b58decode
from protocol.unixfs import MAX_FILE_BYTES

if TYPE_CHECKING:
    from fednode.daemon.ipfsget import GetProgress
    from fednode.daemon.service import Daemon

Handler = Callable[["Daemon", dict[str, Any]], Awaitable[Any]]
Schema = dict[str, Any]  # a JSON schema of the OpenAPI document


MAX_TEXT = 256  # bytes of UTF-8: names, ids, addresses (an LMDB key holds at most 511)
MAX_ITEMS = 256  # peers or members in one request
MAX_TIMEOUT = 3600.0


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- parameter checks: every client mistake is a 400 with one line ---------------------------------

def _only(body: dict[str, Any], *keys: str) -> None:
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise HTTPError(400, f"unknown parameter {unknown[0][:40]!r} (expected: {', '.join(keys) or 'none'})")


def _check_text(key: str, value: Any, max_bytes: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise HTTPError(400, f"'{key}' must be a string")
    try:
        size = len(value.encode("utf-8"))  # a lone surrogate ("\ud800") is valid JSON, not valid UTF-8
    except UnicodeEncodeError:
        raise HTTPError(400, f"'{key}' is not valid UTF-8") from None
    if size > max_bytes:
        raise HTTPError(400, f"'{key}' is longer than {max_bytes} bytes")
    return value


def _text(body: dict[str, Any], key: str, default: str | None = None, max_bytes: int = MAX_TEXT) -> str:
    if key not in body:
        if default is None:
            raise HTTPError(400, f"missing '{key}'")
        return default
    value = _check_text(key, body[key], max_bytes)
    if not value and default is None:
        raise HTTPError(400, f"missing '{key}'")
    return value


def _texts(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise HTTPError(400, f"'{key}' must be a list of strings")
    if len(value) > MAX_ITEMS:
        raise HTTPError(400, f"'{key}' has more than {MAX_ITEMS} items")
    return [_check_text(f"{key}[]", v) for v in value]


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise HTTPError(400, f"'{key}' must be true or false")
    return value


def _timeout(body: dict[str, Any], default: float = 60.0) -> float:
    value = body.get("timeout", default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HTTPError(400, "'timeout' must be a number of seconds")
    seconds = float(value)
    if not 0 < seconds <= MAX_TIMEOUT:  # also false for NaN
        raise HTTPError(400, f"'timeout' must be in (0, {MAX_TIMEOUT:g}] seconds")
    return seconds


def _peer_addr(key: str, addr: str) -> str:
    """A dialable multiaddr with /p2p/ID: malformed ones are the client's mistake (400), not a failed dial."""
    try:
        info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception:  # multiaddr and py-libp2p raise several unrelated types
        raise HTTPError(400, f"'{key}' is not a multiaddr with /p2p/ID: {addr[:100]!r}") from None
    return addr


def _repo_arg(d: Daemon, body: dict[str, Any], local: bool) -> bytes:
    text = _text(body, "repo")
    if local:
        try:
            return d.node.history.repo(text).repo_id
        except FednodeError as exc:
            raise HTTPError(404, str(exc)) from None
    repo_id = parse_repo_id(text)
    if repo_id is None:
        try:
            return d.node.history.repo(text).repo_id
        except FednodeError:
            raise HTTPError(400, f"not a repository id: {text!r}") from None
    return repo_id


async def h_status(d: Daemon, body: dict[str, Any]) -> Any:
    _only(body)
    return d.status()


async def h_peers(d: Daemon, body: dict[str, Any]) -> Any:
    _only(body)
    return d.peers.listing()


async def h_connect(d: Daemon, body: dict[str, Any]) -> Any:
    _only(body, "addr")
    addr = _peer_addr("addr", _text(body, "addr"))
    try:
        return {"peer_id": await d.peers.connect(addr)}
    except Exception as exc:
        raise HTTPError(502, f"cannot connect to {addr}: {type(exc).__name__}: {exc}") from None


async def h_providers(d: Daemon, body: dict[str, Any]) -> Any:
    """Who the DHT says provides a commit CID (looked up, not dialled)."""
    _only(body, "cid")
    text = _text(body, "cid")
    try:
        cid = CID.parse(text)
    except Exception:
        raise HTTPError(400, f"not a CID: {text!r}") from None
    infos = await d.discovery.lookup(cid_key(cid))
    return [{"peer_id": str(i.peer_id), "addrs": [str(a) for a in i.addrs]} for i in infos]


async def h_fetch(d: Daemon, body: dict[str, Any]) -> Any:
    """Fetch a commit's missing blocks (again) from peers (fsck --repair); waits up to 'timeout'."""
    _only(body, "repo", "root", "timeout")
    timeout = _timeout(body)
    repo_id = _repo_arg(d, body, local=False)  # also a clone not finished yet
    text = _text(body, "root")
    try:
        root = CID.parse(text)
    except Exception:
        raise HTTPError(400, f"not a CID: {text!r}") from None
    job = d.jobs.schedule(repo_id, root, [], None)
    with trio.move_on_after(timeout):
        await job.done.wait()
    return {"root": str(root), "ok": job.ok, "done": job.done.is_set()}


async def h_unban(d: Daemon, body: dict[str, Any]) -> Any:
    """Lift a ban before it expires (the peer may connect again)."""
    _only(body, "peer")
    peer = _text(body, "peer")
    try:
        return {"peer_id": peer, "was_banned": d.bans.unban(peer)}
    except ValueError:
        raise HTTPError(400, f"not a peer id: {peer!r}") from None


async def h_follow(d: Daemon, body: dict[str, Any]) -> Any:
    _only(body, "repo", "public")
    repo_id = _repo_arg(d, body, local=False)
    d.state.follow(repo_id, public=_flag(body, "public") if "public" in body else False)
    await d.gossip.subscribe(repo_id)
    return {"repo": repo_id_text(repo_id), "topic": d.gossip.topic_of(repo_id)}


async def h_push(d: Daemon, body: dict[str, Any]) -> Any:
    """Announce the local branch heads; says how many of the topic's peers accepted them (unless
    ``confirm`` is false: then it returns once published, ``accepted_by`` null; benches use it)."""
    _only(body, "repo", "confirm")
    repo_id = _repo_arg(d, body, local=True)
    confirm = _flag(body, "confirm") if "confirm" in body else True
    try:
        return await d.heads.push(repo_id, confirm)
    except FednodeError as exc:  # not a member: nothing published
        raise HTTPError(403, str(exc)) from None


async def _sync(d: Daemon, body: dict[str, Any], create: bool) -> Any:
    _only(body, "repo", "peers", "timeout")
    timeout = _timeout(body)
    peers = [_peer_addr("peers[]", a) for a in _texts(body, "peers")]
    repo_id = _repo_arg(d, body, local=not create)
    for addr in peers:
        try:
            await d.peers.connect(addr)
        except Exception as exc:
            raise HTTPError(502, f"cannot connect to {addr}: {type(exc).__name__}: {exc}") from None
    d.state.follow(repo_id)
    try:
        return await d.heads.sync_repo(repo_id, d.peers.usable(), create=create, timeout=timeout)
    except FednodeError as exc:
        raise HTTPError(404, str(exc)) from None


async def h_pull(d: Daemon, body: dict[str, Any]) -> Any:
    return await _sync(d, body, create=False)


async def h_clone(d: Daemon, body: dict[str, Any]) -> Any:
    result = await _sync(d, body, create=True)
    result["name"] = d.node.history.repo_by_id(parse_repo_id(result["repo"]) or b"").name
    return result


PRIVATE_TAKES_MEMBERS = ("a private repository takes proposals from members only; publish it first "
                         "(fednode repo publish)")


def _repo_keys(d: Daemon, repo_id: bytes, members: tuple[bytes, ...]) -> tuple[m.RepoKeys, int, bytes]:
    """The unsigned key message for a private repository's new membership, with its epoch and key
    (not stored yet): the same epoch while members are only added, a new one when any is removed
    (so a former member cannot open what is sealed after) and when this node takes over from a
    former NFT holder (the last key message is someone else's, or it holds no key and did not author
    the genesis): the former holder holds the current key. A takeover's epoch is at least the time
    in seconds, so it lands above the former holder's epochs even when this node never saw its
    last key message (members refuse a second key for an epoch they hold). 400 for a key that
    cannot be wrapped."""
    old = d.state.membership(repo_id)
    held = d.keyring.latest(repo_id)
    last = d.state.keys_message(repo_id)
    me = d.node.identity.public_key
    removed = old is not None and bool(set(old.members) - set(members))
    taken_over = last.announcer != me if last is not None else \
        held is None and d.state.genesis_author(repo_id) != me  # fmt: skip
    if held is None or removed or taken_over:
        top = max(held[0] if held else -1, last.epoch if last else -1)
        epoch, key = max(top + 1, int(time.time()) if taken_over else 0), new_key()
    else:
        epoch, key = held
    owner = d.node.identity.public_key
    try:
        wrapped = tuple((k, wrap(key, k)) for k in sorted({owner, *members}))
    except SealError:
        raise HTTPError(400, "a member address is not an Ed25519 public key") from None
    seq = d.state.next_own_seq(repo_id, time.time_ns() // 1000)
    return m.RepoKeys(repo_id, epoch, wrapped, seq, time.time_ns() // 1_000_000, owner), epoch, key


async def h_members(d: Daemon, body: dict[str, Any]) -> Any:
    """Owner only: sign and publish the repository's membership (replaces the previous one); for a
    private repository, then the key message that gives each member the repository key."""
    _only(body, "repo", "members", "public")
    addrs, public = _texts(body, "members"), _flag(body, "public")
    repo_id = _repo_arg(d, body, local=True)
    try:
        members = tuple(sorted({b58decode(a) for a in addrs}))
    except ValueError:
        raise HTTPError(400, "members are base58 wallet addresses") from None
    if any(len(k) != 32 for k in members):
        raise HTTPError(400, "members are base58 wallet addresses")
    if d.validator.owner(repo_id) != d.node.identity.public_key:  # the NFT holder once the repository is bound
        raise HTTPError(403, "only the repository owner (the holder of its NFT, if it has one) signs its membership")
    private = d.node.history.is_private(repo_id)
    if private and public:
        raise HTTPError(400, PRIVATE_TAKES_MEMBERS)
    keys = _repo_keys(d, repo_id, members) if private else None  # before anything is published
    if keys is not None:
        # kept before the membership goes out: a crash in between must leave us sealing under the new
        # epoch (members catch up from the key message), never under one a removed member holds
        d.keyring.put(repo_id, keys[1], keys[2])
    seq = d.state.next_own_seq(repo_id, time.time_ns() // 1000)
    msg = m.Membership(repo_id, members, public, seq, time.time_ns() // 1_000_000,
                       d.node.identity.public_key)
    await d.heads.publish_signed(repo_id, msg)
    out: dict[str, Any] = {"repo": repo_id_text(repo_id), "members": len(members), "public": msg.public, "seq": seq}
    if keys is not None:
        keys_msg, epoch, _ = keys
        await d.heads.publish_signed(repo_id, keys_msg)
        out["epoch"] = epoch
    return out


async def h_propose(d: Daemon, body: dict[str, Any]) -> Any:
    """Sign and publish a merge proposal for a local branch head (members, or anyone if public)."""
    _only(body, "repo", "branch", "message")
    branch = _text(body, "branch", "main") or "main"
    message = _text(body, "message", "", max_bytes=64 * 1024)[: m.MAX_PROPOSAL_MESSAGE]
    repo_id = _repo_arg(d, body, local=True)
    with d.node.store.read() as txn:
        raw = txn.get_ref(repo_id, refs.branch(branch))
    if raw is None:
        raise HTTPError(404, f"no local branch {branch!r}")
    head = CID.from_bytes(raw)
    seq = d.state.next_own_seq(repo_id, time.time_ns() // 1000)
    msg = m.MergeProposal(repo_id, branch, head, message, seq,
                          time.time_ns() // 1_000_000, d.node.identity.public_key)
    with d.node.store.read() as txn:
        block = txn.get_block(head)
    try:
        await d.heads.publish_signed(repo_id, msg)
    except FednodeError as exc:
        raise HTTPError(403, str(exc)) from None
    if d.validator.validate(m.CommitEnvelope(block).encode(), repo_id, from_self=True).ok:
        await d.gossip.publish(repo_id, m.CommitEnvelope(block).encode())  # members' commits travel as well
    return {"repo": repo_id_text(repo_id), "branch": branch, "head": str(head), "seq": seq}


DEFAULT_GET_BYTES = 64 << 30  # `ipfs get` without max_bytes: 64 GiB, as `fednode import`


def _max_bytes(body: dict[str, Any]) -> int:
    value = body.get("max_bytes", DEFAULT_GET_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_FILE_BYTES:
        raise HTTPError(400, f"'max_bytes' must be an integer in (0, {MAX_FILE_BYTES}]")
    return value


async def h_ipfs_get(d: Daemon, body: dict[str, Any]) -> Any:
    """Fetch a UnixFS file (with 'directories': or a plain UnixFS directory and all under it) by CID
    over bitswap, verified and bounded (dials 'peers' first; pins it)."""
    from fednode.daemon.ipfsget import GetProgress

    _only(body, "cid", "peers", "max_bytes", "timeout", "pin", "wait", "directories")
    timeout, max_bytes = _timeout(body), _max_bytes(body)
    pin = _flag(body, "pin") if "pin" in body else True
    directories = _flag(body, "directories") if "directories" in body else False
    wait = _flag(body, "wait") if "wait" in body else True
    peers = [_peer_addr("peers[]", a) for a in _texts(body, "peers")]
    text = _text(body, "cid")
    try:
        root = CID.parse(text)
    except Exception:
        raise HTTPError(400, f"not a CID: {text[:100]!r}") from None
    for addr in peers:
        try:
            await d.peers.connect(addr)
        except Exception as exc:
            raise HTTPError(502, f"cannot connect to {addr}: {type(exc).__name__}: {exc}") from None
    if wait:
        return await _ipfs_get(d, root, max_bytes, timeout, pin, GetProgress(), directories)
    try:
        job_id, job = d.ipfs_jobs.new()
    except FednodeError as exc:
        raise HTTPError(503, str(exc)) from None

    async def run() -> None:
        try:
            job.result = await _ipfs_get(d, root, max_bytes, timeout, pin, job.progress, directories)
        except HTTPError as exc:
            job.error = str(exc)
        finally:
            if job.result is None and job.error is None:
                job.error = "failed (see the daemon's log)"  # guard.task logs what was raised
            job.done = True

    d.spawn("ipfs_get", run)
    return {"job": job_id}


async def _ipfs_get(d: Daemon, root: CID, max_bytes: int, timeout: float, pin: bool,
                    progress: GetProgress, directories: bool) -> dict[str, int | str]:
    from fednode.daemon.ipfsget import TooLarge, get_file
    from fednode.storage.diskspace import DiskFull

    async def finder(cid: CID) -> list[ID]:  # the DHT's providers, dialled (Discovery.find_providers)
        return [ID.from_base58(p) for p in await d.discovery.find_providers(cid_key(cid), f"file {cid}")]

    try:
        return await get_file(d.bitswap, root, max_bytes, timeout, pin, progress, d.fetcher.min_free_bytes,
                              finder, directories)
    except TooLarge as exc:
        raise HTTPError(413, str(exc)) from None
    except trio.TooSlowError:
        raise HTTPError(504, f"{root}: not found on the connected peers or the DHT's providers within "
                             f"{timeout:g} s; nothing stored") from None
    except DiskFull as exc:
        raise HTTPError(507, f"{exc}; nothing stored") from None
    except (FormatError, FednodeError) as exc:
        raise HTTPError(502, f"{exc}; nothing stored") from None


async def h_ipfs_progress(d: Daemon, body: dict[str, Any]) -> Any:
    """Progress of an 'ipfs get' started with wait=false: blocks and bytes so far, then its result or error."""
    _only(body, "job")
    job = d.ipfs_jobs.get(_text(body, "job"))
    if job is None:
        raise HTTPError(404, "no such ipfs get job")
    return job.report()


ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/ipfs/get"): h_ipfs_get,
    ("POST", "/ipfs/progress"): h_ipfs_progress,
    ("POST", "/propose"): h_propose,
    ("GET", "/status"): h_status,
    ("GET", "/peers"): h_peers,
    ("POST", "/connect"): h_connect,
    ("POST", "/follow"): h_follow,
    ("POST", "/push"): h_push,
    ("POST", "/pull"): h_pull,
    ("POST", "/clone"): h_clone,
    ("POST", "/members"): h_members,
    ("POST", "/unban"): h_unban,
    ("POST", "/providers"): h_providers,
    ("POST", "/fetch"): h_fetch,
}


def openapi() -> dict[str, Any]:
    repo: Schema = {"type": "object", "properties": {"repo": {"type": "string"}}, "required": ["repo"]}
    timeout = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT}
    peers = {"type": "array", "items": {"type": "string"}}
    sync_schema: Schema = {**repo, "properties": {**repo["properties"], "peers": peers, "timeout": timeout}}
    schemas: dict[str, Schema] = {
        "/connect": {"type": "object", "properties": {"addr": {"type": "string"}}, "required": ["addr"]},
        "/unban": {"type": "object", "properties": {"peer": {"type": "string"}}, "required": ["peer"]},
        "/providers": {"type": "object", "properties": {"cid": {"type": "string"}}, "required": ["cid"]},
        "/fetch": {**repo, "required": ["repo", "root"],
                   "properties": {**repo["properties"], "root": {"type": "string"},
                                  "timeout": sync_schema["properties"]["timeout"]}},
        "/ipfs/get": {"type": "object", "required": ["cid"],
                      "properties": {"cid": {"type": "string"}, "peers": peers, "timeout": timeout,
                                     "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_FILE_BYTES},
                                     "pin": {"type": "boolean", "default": True},
                                     "wait": {"type": "boolean", "default": True},
                                     "directories": {"type": "boolean", "default": False}}},
        "/ipfs/progress": {"type": "object", "properties": {"job": {"type": "string"}}, "required": ["job"]},
        "/follow": {**repo, "properties": {**repo["properties"], "public": {"type": "boolean", "default": False}}},
        "/push": {**repo, "properties": {**repo["properties"], "confirm": {"type": "boolean", "default": True}}},
        "/pull": sync_schema, "/clone": sync_schema,
        "/propose": {**repo, "properties": {**repo["properties"], "branch": {"type": "string"},
                                            "message": {"type": "string"}}},
        "/members": {**repo, "properties": {**repo["properties"], "public": {"type": "boolean"},
                                            "members": {"type": "array", "items": {"type": "string"}}}},
    }
    paths: dict[str, Any] = {"/metrics": {"get": {"summary": "Prometheus metrics",
                                                  "responses": {"200": {"description": "text/plain"}}}}}
    for (method, path), fn in ROUTES.items():
        op: dict[str, Any] = {"summary": (fn.__doc__ or path).strip().splitlines()[0],
                              "responses": {"200": {"description": "JSON"}, "401": {"description": "no token"}}}
        if method == "POST":
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas[path]}}}
        paths[path] = {method.lower(): op}
    return {"openapi": "3.0.3", "info": {"title": "fednode daemon", "version": "1"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}], "paths": paths}


