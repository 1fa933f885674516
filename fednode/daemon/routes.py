"""Handlers of the local API (JSON in, JSON out) and its OpenAPI 3 document."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fednode.daemon import discovery, sync
from fednode.errors import FednodeError
from fednode.history import parse_repo_id, repo_id_text
from protocol import messages as m
from protocol.multiformats import CID, b58decode

if TYPE_CHECKING:
    from fednode.daemon.service import Daemon

Handler = Callable[["Daemon", dict[str, Any]], Awaitable[Any]]


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _repo_arg(d: Daemon, body: dict[str, Any], local: bool) -> bytes:
    text = body.get("repo")
    if not isinstance(text, str) or not text:
        raise HTTPError(400, "missing 'repo'")
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
    return d.status()


async def h_peers(d: Daemon, body: dict[str, Any]) -> Any:
    return d.peers()


async def h_connect(d: Daemon, body: dict[str, Any]) -> Any:
    addr = body.get("addr")
    if not isinstance(addr, str):
        raise HTTPError(400, "missing 'addr'")
    try:
        return {"peer_id": await d.connect(addr)}
    except Exception as exc:
        raise HTTPError(502, f"cannot connect to {addr}: {type(exc).__name__}: {exc}") from None


async def h_providers(d: Daemon, body: dict[str, Any]) -> Any:
    """Who the DHT says provides a commit CID (looked up, not dialled)."""
    text = body.get("cid")
    if not isinstance(text, str):
        raise HTTPError(400, "missing 'cid'")
    try:
        cid = CID.parse(text)
    except Exception:
        raise HTTPError(400, f"not a CID: {text!r}") from None
    infos = await discovery.lookup(d, discovery.cid_key(cid))
    return [{"peer_id": str(i.peer_id), "addrs": [str(a) for a in i.addrs]} for i in infos]


async def h_unban(d: Daemon, body: dict[str, Any]) -> Any:
    """Lift a ban before it expires (the peer may connect again)."""
    peer = body.get("peer")
    if not isinstance(peer, str):
        raise HTTPError(400, "missing 'peer'")
    try:
        return {"peer_id": peer, "was_banned": d.unban(peer)}
    except ValueError:
        raise HTTPError(400, f"not a peer id: {peer!r}") from None


async def h_follow(d: Daemon, body: dict[str, Any]) -> Any:
    repo_id = _repo_arg(d, body, local=False)
    d.state.follow(repo_id)
    await d.subscribe(repo_id)
    return {"repo": repo_id_text(repo_id), "topic": m.topic_for(repo_id)}


async def h_push(d: Daemon, body: dict[str, Any]) -> Any:
    return await sync.push(d, _repo_arg(d, body, local=True))


async def _sync(d: Daemon, body: dict[str, Any], create: bool) -> Any:
    repo_id = _repo_arg(d, body, local=not create)
    for addr in body.get("peers") or []:
        try:
            await d.connect(str(addr))
        except Exception as exc:
            raise HTTPError(502, f"cannot connect to {addr}: {exc}") from None
    timeout = float(body.get("timeout", 60))
    d.state.follow(repo_id)
    try:
        return await sync.sync_repo(d, repo_id, sync.peer_list(d), create=create, timeout=timeout)
    except FednodeError as exc:
        raise HTTPError(404, str(exc)) from None


async def h_pull(d: Daemon, body: dict[str, Any]) -> Any:
    return await _sync(d, body, create=False)


async def h_clone(d: Daemon, body: dict[str, Any]) -> Any:
    result = await _sync(d, body, create=True)
    result["name"] = d.node.history.repo_by_id(parse_repo_id(result["repo"]) or b"").name
    return result


async def h_members(d: Daemon, body: dict[str, Any]) -> Any:
    """Owner only: sign and publish the repository's membership (replaces the previous one)."""
    repo_id = _repo_arg(d, body, local=True)
    if d.validator.owner(repo_id) != d.node.identity.public_key:
        raise HTTPError(403, "only the repository owner signs its membership")
    try:
        members = tuple(sorted({b58decode(a) for a in body.get("members", [])}))
    except ValueError:
        raise HTTPError(400, "members are base58 wallet addresses") from None
    if any(len(k) != 32 for k in members):
        raise HTTPError(400, "members are base58 wallet addresses")
    seq = d.state.next_own_seq(repo_id, time.time_ns() // 1000)
    msg = m.Membership(repo_id, members, bool(body.get("public", False)), seq, time.time_ns() // 1_000_000,
                       d.node.identity.public_key)
    await sync.publish_signed(d, repo_id, msg)
    return {"repo": repo_id_text(repo_id), "members": len(members), "public": msg.public, "seq": seq}


async def h_propose(d: Daemon, body: dict[str, Any]) -> Any:
    """Sign and publish a merge proposal for a local branch head (members, or anyone if public)."""
    repo_id = _repo_arg(d, body, local=True)
    branch = str(body.get("branch") or "main")
    with d.node.store.read() as txn:
        raw = txn.get_ref(repo_id, "heads/" + branch)
    if raw is None:
        raise HTTPError(404, f"no local branch {branch!r}")
    head = CID.from_bytes(raw)
    seq = d.state.next_own_seq(repo_id, time.time_ns() // 1000)
    msg = m.MergeProposal(repo_id, branch, head, str(body.get("message", ""))[: m.MAX_PROPOSAL_MESSAGE], seq,
                          time.time_ns() // 1_000_000, d.node.identity.public_key)
    with d.node.store.read() as txn:
        block = txn.get_block(head)
    try:
        await sync.publish_signed(d, repo_id, msg)
    except FednodeError as exc:
        raise HTTPError(403, str(exc)) from None
    if d.validator.check(m.CommitEnvelope(block).encode(), repo_id, from_self=True).ok:
        await d.publish(repo_id, m.CommitEnvelope(block).encode())  # members' commits travel as well
    return {"repo": repo_id_text(repo_id), "branch": branch, "head": str(head), "seq": seq}


ROUTES: dict[tuple[str, str], Handler] = {
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
}


def openapi() -> dict[str, Any]:
    repo = {"type": "object", "properties": {"repo": {"type": "string"}}, "required": ["repo"]}
    schemas = {
        "/connect": {"type": "object", "properties": {"addr": {"type": "string"}}, "required": ["addr"]},
        "/unban": {"type": "object", "properties": {"peer": {"type": "string"}}, "required": ["peer"]},
        "/providers": {"type": "object", "properties": {"cid": {"type": "string"}}, "required": ["cid"]},
        "/follow": repo, "/push": repo,
        "/pull": {**repo, "properties": {**repo["properties"], "timeout": {"type": "number"}}},
        "/clone": {**repo, "properties": {**repo["properties"], "peers": {"type": "array",
                                                                          "items": {"type": "string"}}}},
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


