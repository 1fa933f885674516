"""The running daemon: libp2p host, one GossipSub topic per repository, validators, fetches."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.peer.peerstore import PeerStoreError
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from fednode.daemon import discovery, exchange, guard, sync
from fednode.daemon import host as hostmod
from fednode.daemon.bitswap import start_bitswap
from fednode.daemon.fairness import FairServing
from fednode.daemon.gate import BanGate
from fednode.daemon.inbound import InboundCatchUp
from fednode.daemon.metrics import Metrics
from fednode.daemon.ratelimit import TokenBuckets
from fednode.daemon.redial import MAX_STORED_PEERS, TICK_S, Redial, dialable
from fednode.daemon.slots import NewestFirstSlots
from fednode.daemon.validate import PENALIZED, Validator, Verdict
from fednode.errors import FednodeError
from fednode.logs import log
from fednode.node import Node
from fednode.storage.netstate import NetState, fetch_expiry_seconds
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, FormatError

BAN_THRESHOLD = 5  # invalid messages/blocks before a peer is disconnected and blacklisted
BAN_SECONDS = 24 * 3600  # how long a ban lasts; bans are stored, so a restart keeps them
# heads queries per peer: an honest peer asks once per repository it follows on connecting and
# every sync_interval (30 s) after; a burst of 64 (repositories), then 4 a second. Answers read the
# store and sign nothing new while our heads are unchanged (see sync.served_announcements).
HEADS_RATE, HEADS_BURST = 4.0, 64.0
FETCH_RETRIES = 4
LAG_PROBE_SECONDS = 0.25  # the event-loop watchdog's sleep
STALL_SECONDS = 1.0  # a wake-up later than this is logged (event_loop_stalled)
MAX_CONCURRENT_FETCHES = 4  # fetch jobs running at once (each holds up to exchange.IN_MEMORY batches)
MAX_SERVING = 32  # inbound block/heads streams served at once; more are reset, not queued (askers
# go on with their next provider): 16 refused ~50 requests a minute to each committer of a 30-node soak
SYNC_INTERVAL = 30.0  # seconds between heads exchanges with every peer (anti-entropy)


@dataclass
class Job:
    repo: bytes
    root: CID
    providers: list[str]
    thens: list[bytes] = field(default_factory=list)  # encoded head announcements / proposals
    budget: exchange.Budget = field(default_factory=exchange.Budget)
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    order: int = 0  # when it was scheduled: newer jobs get fetch slots first (slots.NewestFirstSlots)


class Daemon:
    def __init__(self, node: Node, listen: list[str], bootstrap: list[str], mdns: bool = False,
                 ban_threshold: int = BAN_THRESHOLD, sync_interval: float = SYNC_INTERVAL,
                 ban_seconds: float = BAN_SECONDS, max_fetch_bytes: int = exchange.MAX_FETCH_BYTES,
                 min_free_bytes: int = exchange.MIN_FREE_BYTES) -> None:
        self.node = node
        self.max_fetch_bytes = max_fetch_bytes
        self.ban_threshold = ban_threshold
        self.ban_seconds = ban_seconds
        self.heads_limit = TokenBuckets(HEADS_RATE, HEADS_BURST)
        self.own_cache: dict[bytes, tuple[tuple, float, list[m.HeadAnnouncement]]] = {}  # see sync.py
        self.provided: set[str] = set()  # DHT keys announced since start (see discovery.provide_new)
        self.provide_state = discovery.ProvideState()  # one provide pass at a time
        self.sync_interval = sync_interval
        self.fetch_expiry = fetch_expiry_seconds(node.config)  # unfinished fetches older than this are dropped
        self.fair = FairServing(MAX_SERVING, penalize=self.penalize)  # per-peer shares, idle streams
        self.fetch_slots = NewestFirstSlots(MAX_CONCURRENT_FETCHES)
        self.jobs_scheduled = 0
        self.listen = listen
        self.bootstrap = bootstrap
        self.mdns = mdns
        self.state = NetState(node.store)
        self.validator = Validator(node.store, self.state)
        self.metrics = Metrics()
        self.kp = hostmod.key_pair(node.identity)
        self.host: IHost = hostmod.build_host(self.kp, mdns)
        # a banned peer's new connections are closed once set up (py-libp2p gates by IP only)
        self.host.get_network().register_notifee(BanGate(lambda p: self.pubsub.is_peer_blacklisted(p), self.metrics))
        self.pubsub: Pubsub
        self.topics: dict[str, bytes] = {}  # topic -> repo id
        self.invalid: Counter[str] = Counter()
        self.jobs: dict[tuple[bytes, CID], Job] = {}
        self.nursery: trio.Nursery
        self.fetcher = exchange.Fetcher(self.host, node.store, self.metrics, self.penalize, min_free_bytes)
        self.ready = trio.Event()

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    # --- lifecycle --------------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        addrs = hostmod.parse_addrs(self.listen)
        async with self.host.run(addrs):
            self.pubsub, router = hostmod.build_pubsub(self.host)
            # Kademlia in server mode: repositories are provider records keyed by their id
            self.dht = KadDHT(self.host, DHTMode.SERVER)
            async with background_trio_service(self.pubsub), background_trio_service(router), \
                    background_trio_service(self.dht):
                await self.pubsub.wait_until_ready()
                self._restore_bans()
                self.host.set_stream_handler(exchange.PROTOCOL, self._serve_blocks)
                self.host.set_stream_handler(TProtocol(m.HEADS_PROTOCOL), self._serve_heads)
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    # IPFS bitswap on the same host, over the same store: any IPFS node (Kubo) can
                    # fetch our tensor files by CID, and we can fetch theirs
                    self.bitswap = await start_bitswap(self.host, self.node.store, nursery)
                    for repo_id in {*self.state.local_repos().values(), *self.state.follows()}:
                        await self.subscribe(repo_id)
                    # inbound connections catch up too (ours: connect()); any already here dialled us
                    self.host.get_network().register_notifee(
                        InboundCatchUp(lambda p: self.spawn("catch_up", self._catch_up, p)))
                    for peer in self.host.get_connected_peers():
                        self.spawn("catch_up", self._catch_up, peer)
                    self.state.expire_fetches(self.fetch_expiry)  # before resuming: a restart revives none
                    for repo, root, providers, thens in self.state.fetches():
                        log("fetch_resumed", root=str(root))
                        self.schedule_fetch(repo, root, providers, thens)
                    nursery.start_soon(self._connect_loop)
                    nursery.start_soon(self._sync_loop)
                    nursery.start_soon(self._watch_loop)
                    nursery.start_soon(discovery.follow_local_repos, self)  # repos created while we run
                    self.ready.set()
                    task_status.started()
                    log("daemon_started", peer_id=str(self.peer_id), addrs=self.addrs())
                    await trio.sleep_forever()

    async def _watch_loop(self) -> None:
        """Event-loop lag: how late a sleeping task wakes. Anything that blocks the trio thread
        (a slow fsync, a long computation) delays every stream and timer of the node."""
        while True:
            start = trio.current_time()
            await trio.sleep(LAG_PROBE_SECONDS)
            lag = trio.current_time() - start - LAG_PROBE_SECONDS
            self.metrics.loop_lag_max = max(self.metrics.loop_lag_max, lag)
            if lag > STALL_SECONDS:
                self.metrics.loop_stalls += 1
                log("event_loop_stalled", "warning", seconds=round(lag, 3))

    def addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()]

    async def _connect_loop(self) -> None:
        """Keep bootstrap, stored and mDNS-found peers connected, each redialled on its own
        backoff that resets on success (redial.py); catch up with each new connection."""
        redial = Redial()
        while True:
            with guard.last_resort(self.metrics, "connect_loop"):
                self._connect_round(redial)
            await trio.sleep(TICK_S)

    def _connect_round(self, redial: Redial) -> None:
        """Start a dial to each known peer that is not connected and is due."""
        connected = self.host.get_connected_peers()
        redial.seen({str(p) for p in connected})
        stored = self.state.peers()
        store = self.host.get_peerstore()
        for pid in connected:  # peers that dialled us too: a restart redials them (their identify addrs)
            if len(stored) >= MAX_STORED_PEERS:  # the ones we dial ourselves are still stored (connect)
                break
            if str(pid) in stored:
                continue
            if addrs := [a for a in self.known_addrs(pid) if dialable(a)]:
                stored[str(pid)] = addrs
                self.state.put_peer(str(pid), addrs)
        targets = list(self.bootstrap)
        for pid, addrs in stored.items():
            targets += [a if "/p2p/" in a else f"{a}/p2p/{pid}" for a in addrs]
        if self.mdns:  # mDNS only fills the peerstore: dial what it found
            for pid in store.peers_with_addrs():
                targets += [f"{a}/p2p/{pid}" for a in self.known_addrs(pid)[:1] if "/p2p/" not in a]
        by_peer: dict[str, list[str]] = {}
        for addr in targets:
            try:
                info = info_from_p2p_addr(hostmod.parse_addrs([addr])[0])
            except Exception:
                log("bad_peer_addr", "warning", addr=addr)
                continue
            if info.peer_id in connected or info.peer_id == self.peer_id:
                continue
            if self.pubsub.is_peer_blacklisted(info.peer_id):
                continue
            by_peer.setdefault(str(info.peer_id), []).append(addr)
        for peer, addrs in by_peer.items():
            if redial.due(peer):
                redial.dialing.add(peer)  # one dial at a time per peer; the others go on meanwhile
                self.spawn("redial", self._redial, redial, peer, list(dict.fromkeys(addrs)))

    async def _redial(self, redial: Redial, peer: str, addrs: list[str]) -> None:
        try:
            for addr in addrs:
                try:
                    await self.connect(addr)
                except Exception:  # logged by connect()
                    continue
                redial.succeeded(peer)
                return
            redial.failed(peer)
        finally:
            redial.dialing.discard(peer)

    async def connect(self, addr: str) -> str:
        info = info_from_p2p_addr(hostmod.parse_addrs([addr])[0])
        # py-libp2p refuses for 60 s to dial a peer whose addresses all failed once (its negative
        # cache): a peer that restarted would stay unreachable; our callers pace their own retries
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        try:
            with trio.fail_after(10):
                await self.host.connect(info)
        except Exception as exc:
            log("dial_failed", "warning", addr=addr, error=f"{type(exc).__name__}: {exc}")
            raise
        self.state.put_peer(str(info.peer_id), [str(a) for a in info.addrs])
        log("peer_connected", peer=str(info.peer_id))
        self.spawn("catch_up", self._catch_up, info.peer_id)
        return str(info.peer_id)

    async def _sync_loop(self) -> None:
        """Anti-entropy: heads exchange with every peer now and then, so a missed gossip
        message (or a commit never pushed) still arrives without a reconnect or a pull.
        Expired bans are lifted on the same beat."""
        while True:
            await trio.sleep(self.sync_interval)
            with guard.last_resort(self.metrics, "sync_loop"):
                await self._sync_round()

    async def _sync_round(self) -> None:
        self._restore_bans()
        self.state.expire_fetches(self.fetch_expiry)
        await discovery.provide_new(self)  # heads moved by local commits and merges
        peers = sync.peer_list(self)
        for repo_id in list(self.topics.values()):
            if self.state.genesis(repo_id) is None or not peers:
                continue
            try:
                await sync.sync_repo(self, repo_id, peers, create=False, wait=False)
            except Exception as exc:
                log("sync_failed", "warning", error=f"{type(exc).__name__}: {exc}")

    async def _catch_up(self, peer: ID) -> None:
        await trio.sleep(0.2)  # let identify and pubsub streams settle
        try:
            await self.dht.add_peer(peer, skip_server_mode_check=True)
        except Exception as exc:
            log("dht_add_peer_failed", "warning", peer=str(peer), error=f"{type(exc).__name__}: {exc}")
        await discovery.provide_all(self)
        for repo_id in list(self.topics.values()):
            if self.state.genesis(repo_id) is not None:
                try:
                    await sync.sync_repo(self, repo_id, [peer], create=False, wait=False)
                except Exception as exc:  # a peer's bad answer never stops the daemon
                    log("catch_up_failed", "warning", peer=str(peer), error=f"{type(exc).__name__}: {exc}")

    # --- gossip -----------------------------------------------------------------------------
    async def subscribe(self, repo_id: bytes) -> None:
        topic = m.topic_for(repo_id)
        if topic in self.topics:
            return
        self.topics[topic] = repo_id
        self.pubsub.set_topic_validator(topic, self._validator_for(repo_id), False)
        sub = await self.pubsub.subscribe(topic)
        self.nursery.start_soon(self._drain, sub)

    async def _drain(self, sub: object) -> None:
        # Work happens in the validator (hand-off to _handle); the 32-slot queue must not fill.
        async for _ in sub:  # type: ignore[attr-defined]
            pass

    def _validator_for(self, repo_id: bytes):
        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            try:
                return check(forwarder, msg)
            except Exception as exc:  # a bug met by this message: reject it, blame the forwarder
                # An honest peer runs the same checks before forwarding, so it would have met the
                # same exception and dropped the message: whoever forwards it is to blame.
                guard.report(self.metrics, "gossip_validator", exc, forwarder=str(forwarder))
                self.metrics.rejected["error"] += 1
                if forwarder != self.peer_id:
                    self.penalize(forwarder, "error")
                return False

        def check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            source = ID(msg.from_id)
            from_self = source == self.peer_id and forwarder == self.peer_id
            verdict = self.validator.check(msg.data, repo_id, from_self)
            if not verdict.ok:
                self.metrics.rejected[verdict.reason] += 1
                log("gossip_rejected", reason=verdict.reason, forwarder=str(forwarder), source=str(source))
                relayed = verdict.signer is not None and hostmod.peer_id_of_key(verdict.signer) != forwarder
                if verdict.reason in PENALIZED and not relayed:
                    self.penalize(forwarder, verdict.reason)
                return False
            if from_self:
                self.metrics.published[verdict.msg.kind] += 1
                return True
            self.metrics.accepted[verdict.msg.kind] += 1
            with guard.last_resort(self.metrics, "gossip_handle"):  # ours to fix (a full disk...), not the peer's
                self._handle(repo_id, verdict, [str(forwarder), str(source)])
            return True

        return validate

    def _handle(self, repo_id: bytes, verdict: Verdict, providers: list[str]) -> None:
        msg = verdict.msg
        if isinstance(msg, m.CommitEnvelope):
            cid = CID.hash(DAG_CBOR, msg.block)
            with self.node.store.write() as txn:
                txn.put_block(cid, msg.block)
                txn.index_commit(cid, repo_id, verdict.commit.commit_hash())
            log("commit_received", cid=str(cid), author=verdict.commit.author.hex()[:16])
            self.schedule_fetch(repo_id, cid, providers, None)
        elif isinstance(msg, m.HeadAnnouncement):
            self.state.put_announcement(msg)
            self.schedule_fetch(repo_id, msg.head, providers, msg.encode())
        elif isinstance(msg, m.MergeProposal):
            self.state.put_proposal(repo_id, msg.announcer, msg.branch, msg.encode())
            self.schedule_fetch(repo_id, msg.head, providers, msg.encode())
        elif isinstance(msg, m.Membership):
            self.state.put_membership(msg)
            log("membership_updated", members=len(msg.members), public=msg.public)

    def spawn(self, where: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a background task whose exceptions are logged (guard.py), never raised into the nursery."""
        self.nursery.start_soon(guard.task(self.metrics, where, fn), *args)

    def penalize(self, peer: ID, reason: str) -> None:
        """Our own scoring: py-libp2p's ScoreParams are not wired to disconnects we could test."""
        key = str(peer)
        if peer == self.peer_id or self.pubsub.is_peer_blacklisted(peer):
            return
        self.invalid[key] += 1
        self.metrics.penalties[reason] += 1
        if self.invalid[key] >= self.ban_threshold:
            self.metrics.bans += 1
            until = time.time() + self.ban_seconds
            log("peer_banned", "warning", peer=key, invalid=self.invalid[key], last_reason=reason, until=int(until))
            self.state.put_ban(key, until, reason)
            del self.invalid[key]
            self.pubsub.add_to_blacklist(peer)  # also tears the connection down
            self.nursery.start_soon(self._disconnect, peer)

    def unban(self, key: str) -> bool:
        """Lift ``key``'s ban now (ValueError for a malformed peer id); whether there was one."""
        peer = ID.from_base58(key)
        raw = peer.to_bytes()  # a peer id is a multihash: identity (0x00) or sha2-256 (0x12) of the key
        if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
            raise ValueError(f"not a peer id: {key!r}")
        was = self.pubsub.is_peer_blacklisted(peer) or key in self.state.bans()
        self.pubsub.remove_from_blacklist(peer)
        self.state.drop_ban(key)
        self.invalid.pop(key, None)
        if was:
            log("peer_unbanned", peer=key, reason="operator")
        return was

    def _restore_bans(self) -> None:
        """Blacklist the stored bans that still hold; lift and forget the expired ones."""
        now = time.time()
        for key, ban in self.state.bans().items():
            try:
                peer = ID.from_base58(key)
            except Exception:
                self.state.drop_ban(key)
                continue
            if float(ban["until"]) > now:  # type: ignore[arg-type]
                if not self.pubsub.is_peer_blacklisted(peer):
                    self.pubsub.add_to_blacklist(peer)
            else:
                self.pubsub.remove_from_blacklist(peer)
                self.state.drop_ban(key)
                log("peer_unbanned", peer=key, reason="expired")

    async def _disconnect(self, peer: ID) -> None:
        try:
            with trio.move_on_after(5):
                await self.host.disconnect(peer)
        except Exception:
            pass

    async def publish(self, repo_id: bytes, data: bytes) -> None:
        await self.subscribe(repo_id)
        await self.pubsub.publish(m.topic_for(repo_id), data)

    # --- fetch jobs -------------------------------------------------------------------------
    def schedule_fetch(self, repo: bytes, root: CID, providers: list[str], then: bytes | list[bytes] | None) -> Job:
        """Fetch ``root``'s closure, then apply ``then`` (announcements); recorded until done."""
        thens = [then] if isinstance(then, bytes) else list(then or [])
        key = (repo, root)
        job = self.jobs.get(key)
        if job is not None and not job.done.is_set():
            job.providers = list(dict.fromkeys(providers + job.providers))
            job.thens += [t for t in thens if t not in job.thens]
        else:
            self.jobs_scheduled += 1
            job = Job(repo, root, list(dict.fromkeys(providers)), thens, exchange.Budget(self.max_fetch_bytes),
                      order=self.jobs_scheduled)
            self.jobs[key] = job
            self.nursery.start_soon(self._job_task, job)
        self.state.add_fetch(repo, root, job.providers, job.thens)
        return job

    def _providers(self, job: Job) -> list[ID]:
        connected = self.host.get_connected_peers()
        topic_peers = self.pubsub.peer_topics.get(m.topic_for(job.repo), set())
        ordered = [ID.from_base58(p) for p in job.providers] + list(topic_peers) + list(connected)
        return [p for p in dict.fromkeys(ordered)
                if p != self.peer_id and p in connected and not self.pubsub.is_peer_blacklisted(p)]

    async def _job_task(self, job: Job) -> None:
        try:
            with guard.last_resort(self.metrics, "fetch_job", root=str(job.root)):
                await self._run_job(job)
        finally:
            job.done.set()  # waiters (a clone, a pull) never hang on a job that died
            if self.jobs.get((job.repo, job.root)) is job:  # a daemon runs for months: keep only live jobs
                del self.jobs[(job.repo, job.root)]

    async def _run_job(self, job: Job) -> None:
        delay = 0.5
        for _ in range(FETCH_RETRIES):
            try:
                async with self.fetch_slots.slot(job.order):
                    job.ok = await self.fetcher.fetch(job.repo, job.root, lambda: self._providers(job), job.budget)
            except Exception as exc:
                log("fetch_error", "error", root=str(job.root), error=f"{type(exc).__name__}: {exc}")
                job.ok = False
            if job.ok or job.budget.refused:
                break
            await self._more_providers(job)
            await trio.sleep(delay)
            delay *= 2
        if job.budget.refused:  # no retries; a too-large job is also forgotten (a full disk is not)
            self.metrics.rejected["fetch_" + job.budget.refused] += 1
            log("fetch_refused", "warning", root=str(job.root), reason=job.budget.refused,
                stored=job.budget.used, limit=job.budget.limit)
            if job.budget.refused == "too_large":
                self.state.done_fetch(job.repo, job.root)
        if job.ok:
            if self.state.genesis(job.repo) is None and job.root == self._genesis_candidate(job.repo, job.root):
                # a clone's fetch resumed after a restart: nobody waits to register the repository
                try:
                    await sync.register_clone(self, job.repo, job.root, "a resumed fetch")
                except FednodeError as exc:
                    log("resumed_clone_failed", "warning", root=str(job.root), error=str(exc))
            self.state.done_fetch(job.repo, job.root)
            log("fetch_complete", root=str(job.root))
            for raw in job.thens:  # one bad announcement must not keep the others from being applied
                with guard.last_resort(self.metrics, "apply", root=str(job.root)):
                    await sync.apply(self, job.repo, raw)
        job.done.set()  # a failed job stays in the net db: resumed at restart or by the next pull

    def _genesis_candidate(self, repo_id: bytes, root: CID) -> CID | None:
        """``root`` if it is the genesis commit of ``repo_id`` (an init commit whose hash is the id)."""
        if root.codec != DAG_CBOR:  # POST /fetch may fetch any block
            return None
        try:
            commit = self.node.history.load_commit(root)
        except (FednodeError, FormatError):  # a manifest
            return None
        return root if commit.kind == "init" and commit.commit_hash() == repo_id else None

    async def _more_providers(self, job: Job) -> None:
        """After a failed attempt: dial whoever the DHT says provides the job's root commit."""
        try:
            found = await discovery.find_providers(self, discovery.cid_key(job.root), f"commit {job.root}")
        except Exception as exc:  # the DHT is a help here, never a reason to give up
            log("dht_lookup_failed", "warning", root=str(job.root), error=f"{type(exc).__name__}: {exc}")
            return
        job.providers = list(dict.fromkeys(job.providers + found))

    # --- stream handlers --------------------------------------------------------------------
    async def _serve_blocks(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        await self._serve(stream, exchange.serve(stream, self.node.store, self.metrics, self.fetcher.in_flight,
                                               lambda why: self.fair.misbehaved(peer, why),
                                               self.fetcher.checked_block))

    async def _serve_heads(self, stream: INetStream) -> None:
        await self._serve(stream, sync.serve_heads(self, stream), self.heads_limit)

    async def _serve(self, stream: INetStream, work: Coroutine[Any, Any, None],
                     rate: TokenBuckets | None = None) -> None:
        """Refuse blacklisted peers, peers over their ``rate`` (not penalized: an eager honest peer
        is not hostile) and anything beyond MAX_SERVING concurrent streams."""
        peer = stream.muxed_conn.peer_id
        refused = "banned" if self.pubsub.is_peer_blacklisted(peer) else None
        if refused is None and rate is not None and not rate.take(str(peer)):
            refused = "rate_limited"
        if refused is None:
            refused = self.fair.admit(peer)  # busy / peer_busy: the asker goes on with its next provider
        if refused is not None:
            self.metrics.refused[refused] += 1
            work.close()
            await _reset(stream)
            return
        try:
            await work
        except Exception as exc:  # never into py-libp2p: the asker sees a reset, we see the cause
            guard.report(self.metrics, "stream_handler", exc, peer=str(peer))
            await _reset(stream)
        finally:
            self.fair.release(peer)

    # --- reporting --------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        return {
            "peer_id": str(self.peer_id),
            "address": self.node.identity.address,
            "addrs": self.addrs(),
            "peers": len(self.host.get_connected_peers()),
            "topics": sorted(self.topics),
            "pending_fetches": sum(1 for j in self.jobs.values() if not j.done.is_set()),
            "fetch_jobs_held": len(self.jobs),  # finished jobs are dropped: equals pending_fetches
            "blacklisted": sorted(str(p) for p in self.pubsub.get_blacklisted_peers()),
            "bans": self.state.bans(),
            "metrics": self.metrics.snapshot(),
            "time": time.time(),
        }

    def known_addrs(self, peer: ID) -> list[str]:
        """The peerstore's addresses of ``peer``; none yet for a peer that dialled us before identify
        told us where it listens (py-libp2p raises PeerStoreError then)."""
        try:
            return [str(a) for a in self.host.get_peerstore().addrs(peer)]
        except PeerStoreError:
            return []

    def peers(self) -> list[dict[str, object]]:
        out = []
        for pid in self.host.get_connected_peers():
            topics = sorted(t for t, ps in self.pubsub.peer_topics.items() if pid in ps)
            addrs = self.known_addrs(pid)
            out.append({"peer_id": str(pid), "addrs": addrs, "topics": topics})
        return out


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass
