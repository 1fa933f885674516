"""Discovery: Kademlia provider records for repositories and for the commits at branch heads.

Keys are sha2-256 multihashes in hex: a repository id (itself a sha2-256 digest) for "who holds
this repository", and a CID's digest for "who can serve this commit and what it reaches" (the
way IPFS keys provider records). A clone looks up the repository; a fetch that no connected
peer can finish looks up its root commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from libp2p.peer.peerinfo import PeerInfo

from fednode.daemon import guard
from fednode.history import repo_id_text
from fednode.logs import log
from protocol.multiformats import CID

if TYPE_CHECKING:
    from fednode.daemon.service import Daemon


def dht_key(digest: bytes) -> str:
    """The provider-record key of a sha2-256 digest (a repository id, or a CID's digest)."""
    return "1220" + digest.hex()


def cid_key(cid: CID) -> str:
    return dht_key(cid.digest)


def _keys(d: Daemon) -> list[tuple[str, str]]:
    """(key, what) for every local repository and the distinct commits at its branch heads."""
    out = []
    for repo_id in d.state.local_repos().values():
        out.append((dht_key(repo_id), f"repo {repo_id_text(repo_id)}"))
        with d.node.store.read() as txn:
            heads = {CID.from_bytes(raw) for raw in txn.list_refs(repo_id, "heads/").values()}
        out += [(cid_key(c), f"head {c}") for c in sorted(heads, key=str)]
    return out


async def _provide(d: Daemon, key: str, what: str) -> bool:
    try:
        with trio.move_on_after(10):
            ok = bool(await d.dht.provide(key))
            log("dht_provided", what=what, ok=ok)
            return ok
    except Exception as exc:
        log("dht_provide_failed", "warning", what=what, error=f"{type(exc).__name__}: {exc}")
    return False


class ProvideState:
    """One provide pass at a time. Passes asked for while one runs (a push, a moved branch, a
    new connection each ask) fold into a single pass after it: a burst of 20 pushes and 9
    connections made the owner provide the same keys dozens of times over, concurrently."""

    def __init__(self) -> None:
        self.running = False
        self.pending = False  # another pass was asked for meanwhile
        self.pending_all = False  # ... and it must re-provide everything (a new connection)


async def provide_all(d: Daemon) -> None:
    """Announce every local repository and branch head (called on each new connection, after a
    clone: cheap on small networks)."""
    await _provide_pass(d, everything=True)


async def provide_new(d: Daemon) -> None:
    """Announce only what was never announced: heads moved by commits, pushes and merges."""
    await _provide_pass(d, everything=False)


async def _provide_pass(d: Daemon, everything: bool) -> None:
    state = d.provide_state
    if state.running:
        state.pending, state.pending_all = True, state.pending_all or everything
        return
    state.running = True
    try:
        while True:
            for key, what in _keys(d):
                if (everything or key not in d.provided) and await _provide(d, key, what):
                    d.provided.add(key)
            if not state.pending:
                return
            everything, state.pending, state.pending_all = state.pending_all, False, False
    finally:
        state.running = False


async def lookup(d: Daemon, key: str) -> list[PeerInfo]:
    """The DHT's providers of ``key`` (deduplicated, ourselves left out); dials nothing but the DHT."""
    raw = bytes.fromhex(key)
    infos: list[PeerInfo] = list(d.dht.provider_store.get_providers(raw))  # records others stored with us
    with trio.move_on_after(15):
        infos += await _network_providers(d, raw)
    unique = {i.peer_id: i for i in infos}  # the DHT returns duplicates
    return [i for i in unique.values() if i.peer_id != d.peer_id and i.addrs]


async def _network_providers(d: Daemon, raw: bytes) -> list[PeerInfo]:
    """Ask the network. py-libp2p's ``find_providers`` answers from the local provider store alone
    whenever it holds a record for the key (one another node stored with us), so one dead provider
    would hide every other: the local records are set aside during the query, then merged back."""
    store = d.dht.provider_store
    local = store.providers.pop(raw, None)
    try:
        return await store.find_providers(raw)
    finally:
        if local:
            merged = store.providers.setdefault(raw, {})
            merged.update({p: r for p, r in local.items() if p not in merged})


async def find_providers(d: Daemon, key: str, what: str) -> list[str]:
    """Dial the DHT's providers of ``key``; returns the peer ids now connected."""
    found: list[str] = []
    for info in await lookup(d, key):
        if d.pubsub.is_peer_blacklisted(info.peer_id):
            continue
        try:
            with trio.fail_after(10):
                await d.host.connect(info)
            found.append(str(info.peer_id))
            d.state.put_peer(str(info.peer_id), [str(a) for a in info.addrs])
        except Exception as exc:
            log("dial_failed", "warning", peer=str(info.peer_id), error=f"{type(exc).__name__}: {exc}")
    log("dht_providers", what=what, found=found)
    return found


FOLLOW_POLL_SECONDS = 1.0  # how soon a repository created while the daemon runs is followed


async def follow_local_repos(d: Daemon) -> None:
    """Subscribe to repositories created while the daemon runs (``fednode repo create`` writes the
    store, not the daemon) and provide them in the DHT; one store read a second."""
    while True:
        await trio.sleep(FOLLOW_POLL_SECONDS)
        with guard.last_resort(d.metrics, "follow_local_repos"):
            new = [r for r in d.state.local_repos().values() if r not in d.topics.values()]
            for repo_id in new:
                await d.subscribe(repo_id)
                log("repo_followed", repo=repo_id_text(repo_id))
            if new:
                await provide_new(d)
