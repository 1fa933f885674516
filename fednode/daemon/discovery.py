"""Discovery: Kademlia provider records for repositories, branch heads, their tensor states and pinned files.

Keys are sha2-256 multihashes in hex: a repository id (itself a sha2-256 digest; for a private
repository sha256("fednode/dht/v1" + id), see ``repo_key``) for "who holds this repository",
and a CID's digest for "who can serve this" (the way IPFS keys provider records): the commits at
branch heads, and the tensor states of those commits in public repositories (the UnixFS CIDs
``fednode show`` prints, which any IPFS node can look up and fetch over bitswap), and the roots of
pinned files (``storage/pins.py``: ``fednode ipfs add`` and ``ipfs get`` files, and an NFT's image
and metadata document, which wallets look up by the CID in the mint's ``uri``): public content,
served to anyone, provided as Kubo's "roots" strategy provides. A private
repository's states are never provided: their blocks go to members only, and a record would tell
anyone who holds them. A clone looks up the repository; a fetch that no connected peer can finish
looks up its root commit.

Providing is bounded (``ProvideLimits``, ``[network]`` keys): a pass provides at most ``per_pass``
keys, at most ``per_hour`` provides reach the network in any hour, and a key provided is provided
again after ``reprovide_seconds`` (py-libp2p's own 22 h republisher is kept off our keys, so this
schedule is the only one). A provide that reached no node (an empty routing table) only records us
locally and is provided to the network when a peer connects.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from fednode.daemon.abc import BanList, Spawner
from fednode.daemon.redial import MAX_STORED_PEERS
from fednode.errors import FednodeError
from fednode.history import objstore, refs, repo_id_text, repos
from fednode.logs import log
from fednode.storage import pins
from fednode.storage.netstate import MAX_PEER_ADDRS, NetState
from fednode.storage.store import Store, Txn
from protocol.multiformats import CID

DHT_DOMAIN = b"fednode/dht/v1"
HOUR = 3600.0
REPROVIDE_SECONDS = 22 * HOUR  # IPFS's reprovide interval; records live 48 h
PROVIDES_PER_HOUR = 3000  # network provides in any hour (each: a lookup and up to 20 ADD_PROVIDERs)
PROVIDES_PER_PASS = 256  # keys one pass provides; the rest wait for the next pass
MAX_TICK = 60.0  # the reprovide loop wakes at least this often
MAX_PROVIDER_KEYS = 65536  # keys of provider records others store with us (prune_records)


@dataclass(frozen=True)
class ProvideLimits:
    reprovide_seconds: float = REPROVIDE_SECONDS
    per_hour: int = PROVIDES_PER_HOUR
    per_pass: int = PROVIDES_PER_PASS

    @property
    def tick(self) -> float:
        """How often the reprovide loop looks for due keys."""
        return min(MAX_TICK, self.reprovide_seconds / 4)


def provide_limits(config: dict[str, Any]) -> ProvideLimits:
    """``[network] dht_reprovide_interval``, ``dht_provides_per_hour``, ``dht_provides_per_pass``
    from a node config, checked (a one-line error if wrong)."""
    net = config.get("network", {})
    interval = net.get("dht_reprovide_interval", REPROVIDE_SECONDS)
    per_hour = net.get("dht_provides_per_hour", PROVIDES_PER_HOUR)
    per_pass = net.get("dht_provides_per_pass", PROVIDES_PER_PASS)
    if type(interval) not in (int, float) or not math.isfinite(interval) or interval <= 0:
        raise FednodeError(f"[network] dht_reprovide_interval must be a number of seconds > 0, not {interval!r}")
    if type(per_hour) is not int or per_hour < 0:
        raise FednodeError(f"[network] dht_provides_per_hour must be an integer >= 0, not {per_hour!r}")
    if type(per_pass) is not int or per_pass < 1:
        raise FednodeError(f"[network] dht_provides_per_pass must be an integer >= 1, not {per_pass!r}")
    return ProvideLimits(float(interval), per_hour, per_pass)


def dht_key(digest: bytes) -> str:
    """The provider-record key of a sha2-256 digest (a repository id, or a CID's digest)."""
    return "1220" + digest.hex()


def repo_key(repo_id: bytes, private: bool) -> str:
    """A repository's provider-record key: its id, or for a private repository a hash of it, so the
    DHT does not list a private repository's id (whoever knows the id can still look it up)."""
    return dht_key(hashlib.sha256(DHT_DOMAIN + repo_id).digest() if private else repo_id)


def cid_key(cid: CID) -> str:
    return dht_key(cid.digest)


@dataclass(frozen=True)
class Wanted:
    """A key this node should provide; ``small``: a repository or a head, re-provided on every new
    connection (few keys); states wait for their schedule."""

    key: str
    what: str
    small: bool


def head_states(txn: Txn, head: CID) -> tuple[CID, ...]:
    """The tensor state CIDs of a commit (each manifest entry's ``state``; a raw entry's ``cid``);
    empty if the commit or its manifest is not complete here."""
    try:
        manifest = objstore.load_manifest(txn, objstore.load_commit(txn, head).weights)
    except FednodeError:  # not complete here yet: read again next pass
        return ()
    found = (e.state or (e.cid if e.encoding == "raw" else None) for e in manifest.tensors.values())
    return tuple(sorted({s for s in found if s is not None}, key=str))


class Discovery:
    """Provides our repositories, heads and public states in the DHT given to ``start``, and finds providers.

    One provide pass at a time: passes asked for while one runs (a push, a moved branch, a new
    connection each ask) fold into a single pass after it; a burst of 20 pushes and 9
    connections made the owner provide the same keys dozens of times over, concurrently.
    """

    def __init__(self, store: Store, state: NetState, host: IHost, bans: BanList, tasks: Spawner,
                 limits: ProvideLimits | None = None) -> None:
        self.store = store
        self.state = state
        self.host = host
        self.bans = bans
        self.tasks = tasks
        self.limits = limits or ProvideLimits()
        self.dht: KadDHT
        self.provided: dict[str, float] = {}  # key -> when a provide last reached a node (trio clock)
        self.local: dict[str, float] = {}  # key -> when recorded locally only (no node to reach)
        self.sent: deque[float] = deque()  # when each network provide of the last hour started
        self._states: dict[CID, tuple[CID, ...]] = {}  # head -> its states (commits are immutable)
        self.running = False  # a provide pass runs
        self.pending = False  # another pass was asked for meanwhile
        self.pending_all = False  # ... and it must re-provide the small keys (a new connection)

    def start(self, dht: KadDHT) -> None:
        self.dht = dht

    async def add_peer(self, peer: ID) -> None:
        """Put a new connection in the DHT's routing table (logged, never raised)."""
        try:
            await self.dht.add_peer(peer, skip_server_mode_check=True)
        except Exception as exc:
            log("dht_add_peer_failed", "warning", peer=str(peer), error=f"{type(exc).__name__}: {exc}")

    # --- what to provide --------------------------------------------------------------------
    def wanted(self) -> list[Wanted]:
        """Every local repository, the distinct commits at its branch heads, (public repositories
        only) the tensor states of those commits, and the roots of pinned files."""
        out: list[Wanted] = []
        states: set[CID] = set()
        cache: dict[CID, tuple[CID, ...]] = {}
        files: dict[CID, str] = {}
        with self.store.read() as txn:
            for pinned in pins.pins(txn):
                files.setdefault(pinned.root, pinned.source)
            for repo_id in self.state.local_repos().values():
                private = repos.is_private(txn, repo_id)
                out.append(Wanted(repo_key(repo_id, private), f"repo {repo_id_text(repo_id)}", True))
                heads = sorted({CID.from_bytes(raw) for raw in txn.list_refs(repo_id, refs.BRANCHES).values()},
                               key=str)
                out += [Wanted(cid_key(c), f"head {c}", True) for c in heads]
                if private:
                    continue  # members only: no record tells anyone who holds them
                for head in heads:
                    found = self._states.get(head)
                    if found is None:
                        found = head_states(txn, head)
                    if found:
                        cache[head] = found  # an incomplete head is read again next time
                    states.update(found)
        self._states = cache  # only current heads stay cached
        out += [Wanted(cid_key(s), f"state {s}", False) for s in sorted(states, key=str)]
        return out + [Wanted(cid_key(c), f"file {c} ({source})", False) for c, source in files.items()
                      if c not in states]

    def due(self, wanted: list[Wanted], everything: bool, now: float) -> list[Wanted]:
        """What a pass provides, in order: small keys first, then never provided, then the oldest."""
        every = self.limits.reprovide_seconds
        out = [w for w in wanted if w.key not in self.provided or now - self.provided[w.key] >= every
               or (everything and w.small)]
        return sorted(out, key=lambda w: (not w.small, self.provided.get(w.key, -math.inf)))

    # --- providing --------------------------------------------------------------------------
    def _networked(self) -> bool:
        """Whether a provide can reach a node: the routing table holds a peer."""
        return self.dht.get_routing_table_size() > 0

    def _budget(self, now: float) -> bool:
        """Whether one more network provide stays within ``per_hour`` in the last hour."""
        while self.sent and self.sent[0] <= now - HOUR:
            self.sent.popleft()
        return len(self.sent) < self.limits.per_hour

    async def _provide(self, key: str, what: str) -> bool:
        try:
            with trio.move_on_after(10):
                ok = bool(await self.dht.provide(key))
                log("dht_provided", what=what, ok=ok)
                return ok
        except Exception as exc:
            log("dht_provide_failed", "warning", what=what, error=f"{type(exc).__name__}: {exc}")
        finally:
            # py-libp2p republishes every key it provided, unbounded, 10 minutes after a provide and
            # then every 22 h: our schedule (bounded) is the only one
            self.dht.provider_store.providing_keys.discard(bytes.fromhex(key))
        return False

    def _record_locally(self, key: str) -> None:
        """Us as a provider of ``key`` in our own provider store (answered to GET_PROVIDERS), no network."""
        me = PeerInfo(self.host.get_id(), list(self.host.get_addrs()))
        self.dht.provider_store.add_provider(bytes.fromhex(key), me)

    async def provide_all(self) -> None:
        """Announce the repositories and heads again, and whatever is due (on each new connection,
        inbound or outbound, and after a clone)."""
        await self._provide_pass(everything=True)

    async def provide_new(self) -> None:
        """Announce what is due: never provided (heads moved by commits, pushes and merges, their
        states), or provided longer than ``reprovide_seconds`` ago."""
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
                await self._one_pass(everything)
                if not self.pending:
                    return
                everything, self.pending, self.pending_all = self.pending_all, False, False
        finally:
            self.running = False

    def prune_records(self) -> int:
        """Forget the oldest provider records others stored with us past MAX_PROVIDER_KEYS keys (ours
        are kept); how many keys went. py-libp2p bounds ADD_PROVIDER per peer (10 each 10 s) and
        providers per key, not keys: new peer ids would grow its store for the records' 48 h."""
        records = self.dht.provider_store.providers
        excess = len(records) - MAX_PROVIDER_KEYS
        if excess <= 0:
            return 0
        me = str(self.host.get_id())
        gone = [key for key, providers in records.items() if me not in providers][:excess]
        for key in gone:
            del records[key]
        return len(gone)

    async def _one_pass(self, everything: bool) -> None:
        start = trio.current_time()
        if pruned := self.prune_records():
            log("dht_records_pruned", keys=pruned)
        wanted = self.wanted()
        keys = {w.key for w in wanted}  # what we no longer hold is forgotten (and expires in 48 h)
        self.provided = {k: t for k, t in self.provided.items() if k in keys}
        self.local = {k: t for k, t in self.local.items() if k in keys}
        due = self.due(wanted, everything, start)
        if not self._networked():  # no node to reach: answer GET_PROVIDERS ourselves, send nothing
            todo = [w for w in due if start - self.local.get(w.key, -math.inf) >= self.limits.reprovide_seconds]
            for w in todo[:self.limits.per_pass]:
                self._record_locally(w.key)
                self.local[w.key] = start
            if todo:
                log("dht_provide_pass", due=len(due), sent=0, ok=0, local=min(len(todo), self.limits.per_pass),
                    seconds=round(trio.current_time() - start, 3))
            return
        sent = ok = 0
        for w in due[:self.limits.per_pass]:
            now = trio.current_time()
            if not self._budget(now):
                log("dht_provide_limited", "warning", per_hour=self.limits.per_hour, left=len(due) - sent)
                break
            self.sent.append(now)
            sent += 1
            if await self._provide(w.key, w.what):
                self.provided[w.key] = trio.current_time()
                ok += 1
        if sent:
            log("dht_provide_pass", due=len(due), sent=sent, ok=ok, seconds=round(trio.current_time() - start, 3))

    # --- finding ----------------------------------------------------------------------------
    async def lookup(self, key: str) -> list[PeerInfo]:
        """The DHT's providers of ``key`` (deduplicated, ourselves left out); dials nothing but the DHT."""
        raw = bytes.fromhex(key)
        infos: list[PeerInfo] = list(self.dht.provider_store.get_providers(raw))  # records others stored with us
        with trio.move_on_after(15):
            infos += await self._network_providers(raw)
        unique = {i.peer_id: i for i in infos}  # the DHT returns duplicates
        # a provider chooses its addresses (a record may carry thousands): the first few are dialled
        return [PeerInfo(i.peer_id, list(i.addrs[:MAX_PEER_ADDRS])) for i in unique.values()
                if i.peer_id != self.host.get_id() and i.addrs]

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
                self.state.put_peer(str(info.peer_id), [str(a) for a in info.addrs], limit=MAX_STORED_PEERS)
            except Exception as exc:
                log("dial_failed", "warning", peer=str(info.peer_id), error=f"{type(exc).__name__}: {exc}")
        log("dht_providers", what=what, found=found)
        return found
