"""Discovery: Kademlia provider records for repositories and for the commits at branch heads.

Keys are sha2-256 multihashes in hex: a repository id (itself a sha2-256 digest; for a private
repository sha256("fednode/dht/v1" + id), see ``repo_key``) for "who holds this repository",
and a CID's digest for "who can serve this commit and what it reaches" (the way IPFS keys
provider records). A clone looks up the repository; a fetch that no connected
peer can finish looks up its root commit.
"""

from __future__ import annotations

import hashlib

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from fednode.daemon.abc import BanList, Spawner
from fednode.history import refs, repo_id_text, repos
from fednode.logs import log
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from protocol.multiformats import CID

DHT_DOMAIN = b"fednode/dht/v1"


def dht_key(digest: bytes) -> str:
    """The provider-record key of a sha2-256 digest (a repository id, or a CID's digest)."""
    return "1220" + digest.hex()


def repo_key(repo_id: bytes, private: bool) -> str:
    """A repository's provider-record key: its id, or for a private repository a hash of it, so the
    DHT does not list a private repository's id (whoever knows the id can still look it up)."""
    return dht_key(hashlib.sha256(DHT_DOMAIN + repo_id).digest() if private else repo_id)


def cid_key(cid: CID) -> str:
    return dht_key(cid.digest)


class Discovery:
    """Provides our repositories and heads in the DHT given to ``start``, and finds providers.

    One provide pass at a time: passes asked for while one runs (a push, a moved branch, a new
    connection each ask) fold into a single pass after it; a burst of 20 pushes and 9
    connections made the owner provide the same keys dozens of times over, concurrently.
    """

    def __init__(self, store: Store, state: NetState, host: IHost, bans: BanList, tasks: Spawner) -> None:
        self.store = store
        self.state = state
        self.host = host
        self.bans = bans
        self.tasks = tasks
        self.dht: KadDHT
        self.provided: set[str] = set()  # keys provided since start (provide_new skips them)
        self.running = False  # a provide pass runs
        self.pending = False  # another pass was asked for meanwhile
        self.pending_all = False  # ... and it must re-provide everything (a new connection)

    def start(self, dht: KadDHT) -> None:
        self.dht = dht

    async def add_peer(self, peer: ID) -> None:
        """Put a new connection in the DHT's routing table (logged, never raised)."""
        try:
            await self.dht.add_peer(peer, skip_server_mode_check=True)
        except Exception as exc:
            log("dht_add_peer_failed", "warning", peer=str(peer), error=f"{type(exc).__name__}: {exc}")

    # --- providing --------------------------------------------------------------------------
    def _keys(self) -> list[tuple[str, str]]:
        """(key, what) for every local repository and the distinct commits at its branch heads."""
        out = []
        for repo_id in self.state.local_repos().values():
            with self.store.read() as txn:
                out.append((repo_key(repo_id, repos.is_private(txn, repo_id)), f"repo {repo_id_text(repo_id)}"))
                heads = {CID.from_bytes(raw) for raw in txn.list_refs(repo_id, refs.BRANCHES).values()}
            out += [(cid_key(c), f"head {c}") for c in sorted(heads, key=str)]
        return out

    async def _provide(self, key: str, what: str) -> bool:
        try:
            with trio.move_on_after(10):
                ok = bool(await self.dht.provide(key))
                log("dht_provided", what=what, ok=ok)
                return ok
        except Exception as exc:
            log("dht_provide_failed", "warning", what=what, error=f"{type(exc).__name__}: {exc}")
        return False

    async def provide_all(self) -> None:
        """Announce every local repository and branch head (called on each new connection, after a
        clone: cheap on small networks)."""
        await self._provide_pass(everything=True)

    async def provide_new(self) -> None:
        """Announce only what was never announced: heads moved by commits, pushes and merges."""
        await self._provide_pass(everything=False)

    def provide_all_soon(self) -> None:
        self.tasks.spawn("provide", self.provide_all)

    def provide_new_soon(self) -> None:
        self.tasks.spawn("provide", self.provide_new)

    async def _provide_pass(self, everything: bool) -> None:
        if self.running:
            self.pending, self.pending_all = True, self.pending_all or everything
            return
        self.running = True
        try:
            while True:
                for key, what in self._keys():
                    if (everything or key not in self.provided) and await self._provide(key, what):
                        self.provided.add(key)
                if not self.pending:
                    return
                everything, self.pending, self.pending_all = self.pending_all, False, False
        finally:
            self.running = False

    # --- finding ----------------------------------------------------------------------------
    async def lookup(self, key: str) -> list[PeerInfo]:
        """The DHT's providers of ``key`` (deduplicated, ourselves left out); dials nothing but the DHT."""
        raw = bytes.fromhex(key)
        infos: list[PeerInfo] = list(self.dht.provider_store.get_providers(raw))  # records others stored with us
        with trio.move_on_after(15):
            infos += await self._network_providers(raw)
        unique = {i.peer_id: i for i in infos}  # the DHT returns duplicates
        return [i for i in unique.values() if i.peer_id != self.host.get_id() and i.addrs]

    async def _network_providers(self, raw: bytes) -> list[PeerInfo]:
        """Ask the network. py-libp2p's ``find_providers`` answers from the local provider store alone
        whenever it holds a record for the key (one another node stored with us), so one dead provider
        would hide every other: the local records are set aside during the query, then merged back."""
        store = self.dht.provider_store
        local = store.providers.pop(raw, None)
        try:
            return await store.find_providers(raw)
        finally:
            if local:
                merged = store.providers.setdefault(raw, {})
                merged.update({p: r for p, r in local.items() if p not in merged})

    async def find_providers(self, key: str, what: str, /) -> list[str]:
        """Dial the DHT's providers of ``key``; returns the peer ids now connected."""
        found: list[str] = []
        for info in await self.lookup(key):
            if self.bans.is_banned(info.peer_id):
                continue
            try:
                with trio.fail_after(10):
                    await self.host.connect(info)
                found.append(str(info.peer_id))
                self.state.put_peer(str(info.peer_id), [str(a) for a in info.addrs])
            except Exception as exc:
                log("dial_failed", "warning", peer=str(info.peer_id), error=f"{type(exc).__name__}: {exc}")
        log("dht_providers", what=what, found=found)
        return found
