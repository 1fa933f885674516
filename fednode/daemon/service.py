"""The running daemon: builds its components and wires them (libp2p host, pubsub, DHT, tasks).

Components, each owning its state: ``Bans`` (penalties, bans), ``Peers`` (connections, dialling),
``Discovery`` (DHT provider records), ``Gossip`` (topics, validation, acceptance), ``FetchJobs``
(fetches and their scheduler), ``Applier`` (what a completed fetch changes), ``HeadsSync`` (heads
exchange, push, pull, clone) and ``StreamServer`` (who is served). They see one another through
the small interfaces of ``abc.py``. The daemon runs the loops that tie them together.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from fednode.daemon import exchange, guard
from fednode.daemon import host as hostmod
from fednode.daemon.apply import Applier
from fednode.daemon.bans import BAN_SECONDS, BAN_THRESHOLD, Bans
from fednode.daemon.bitswap import start_bitswap
from fednode.daemon.discovery import Discovery, provide_limits
from fednode.daemon.fairness import FairServing
from fednode.daemon.gate import BanGate
from fednode.daemon.gateway import Gateway, gateway_config
from fednode.daemon.gossip import Gossip
from fednode.daemon.inbound import InboundCatchUp
from fednode.daemon.ipfsget import GetJobs
from fednode.daemon.jobs import FetchJobs
from fednode.daemon.metrics import Metrics
from fednode.daemon.ownership import Ownership, take_over
from fednode.daemon.peers import Peers
from fednode.daemon.pinning import PinWorker
from fednode.daemon.ratelimit import TokenBuckets
from fednode.daemon.serving import StreamServer
from fednode.daemon.stateblocks import StateBlocks, cache_bytes, spill_bytes
from fednode.daemon.sync import HeadsSync
from fednode.daemon.tasks import Tasks
from fednode.daemon.validate import Validator
from fednode.history import repo_id_text
from fednode.logs import log
from fednode.node import Node
from fednode.storage.keyring import Keyring
from fednode.storage.netstate import NetState, fetch_expiry_seconds
from protocol import messages as m

if TYPE_CHECKING:
    # trio-stubs (of trio-typing, which libp2p pulls in) shadow trio's inline types for mypy
    # and do not re-export TaskStatus; at run time this annotation is never evaluated
    from trio_typing import TaskStatus

# heads queries per peer: an honest peer asks once per repository it follows on connecting and
# every sync_interval (30 s) after; a burst of 64 (repositories), then 4 a second. Answers read the
# store and sign nothing new while our heads are unchanged (see HeadsSync.served_announcements).
HEADS_RATE, HEADS_BURST = 4.0, 64.0
LAG_PROBE_SECONDS = 0.25  # the event-loop watchdog's sleep
STALL_SECONDS = 1.0  # a wake-up later than this is logged (event_loop_stalled)
MAX_SERVING = 32  # inbound block/heads streams served at once; more are reset, not queued (askers
# go on with their next provider): 16 refused ~50 requests a minute to each committer of a 30-node soak
SYNC_INTERVAL = 30.0  # seconds between heads exchanges with every peer (anti-entropy)
FOLLOW_POLL_SECONDS = 1.0  # how soon a repository created while the daemon runs is followed
__all__ = ["BAN_SECONDS", "BAN_THRESHOLD", "HEADS_BURST", "HEADS_RATE", "SYNC_INTERVAL", "Daemon"]


class Daemon:
    def __init__(self, node: Node, listen: list[str], bootstrap: list[str], mdns: bool = False,
                 ban_threshold: int = BAN_THRESHOLD, sync_interval: float = SYNC_INTERVAL,
                 ban_seconds: float = BAN_SECONDS, max_fetch_bytes: int = exchange.MAX_FETCH_BYTES,
                 min_free_bytes: int = exchange.MIN_FREE_BYTES) -> None:
        self.node = node
        self.listen = listen
        self.sync_interval = sync_interval
        self.metrics = Metrics()
        self.state = NetState(node.store)
        self.keyring = Keyring(node.store)  # private repositories' keys, by epoch
        self.validator = Validator(node.store, self.state, self.keyring)
        self.ownership = Ownership(node, self.state)  # NFT holders from the chain: ownership is control
        self.validator.on_not_owner = self.ownership.suspect
        self.ownership.on_taken = lambda repo_id: take_over(self, repo_id)
        self.host: IHost = hostmod.build_host(hostmod.key_pair(node.identity), mdns)
        self.tasks = Tasks(self.metrics)
        self.bans = Bans(self.state, self.metrics, self.host, self.tasks, ban_threshold, ban_seconds)
        # a banned peer's new connections are closed once set up (py-libp2p gates by IP only)
        self.host.get_network().register_notifee(BanGate(self.bans.is_banned, self.metrics))
        self.fetcher = exchange.Fetcher(self.host, node.store, self.metrics, self.bans.penalize, min_free_bytes)
        self.fair = FairServing(MAX_SERVING, penalize=self.bans.penalize)  # per-peer shares, idle streams
        self.server = StreamServer(self.bans, self.fair, self.metrics)
        self.heads_limit = TokenBuckets(HEADS_RATE, HEADS_BURST)
        self.peers = Peers(self.host, self.state, self.bans, self.metrics, self.tasks, bootstrap, mdns,
                           on_connected=self._start_catch_up)
        self.discovery = Discovery(node.store, self.state, self.host, self.bans, self.tasks,
                                   provide_limits(node.config))
        self.applier = Applier(node.history, node.identity.public_key, self.state, self.validator, self.metrics,
                               self.fetcher, self.bans, self.discovery)
        self.jobs = FetchJobs(node.history, self.state, self.fetcher, self.metrics, self.tasks, self.peers,
                              self.discovery, self.applier, max_fetch_bytes, fetch_expiry_seconds(node.config))
        self.ipfs_jobs = GetJobs()  # `ipfs get` without waiting: progress polled by the CLI
        self.gossip = Gossip(node.store, self.state, self.validator, self.metrics, self.tasks, self.bans, self.jobs,
                             node.identity)
        self.peers.topic_of = self.gossip.topic_of  # one place names a repository's topic
        self.heads = HeadsSync(node.history, node.identity, self.state, self.validator, self.host, self.metrics,
                               self.gossip, self.peers, self.jobs, self.applier, self.discovery, self.discovery,
                               self.bans, self.fair)
        # delta-stored tensor states, generated for bitswap on demand (stateblocks.py)
        self.states = StateBlocks(node.history, self.fetcher, cache_bytes(node.config), spill_bytes(node.config))
        gateway = gateway_config(node.config)  # [gateway]: the trustless HTTP gateway, off by default
        self.gateway = Gateway(node.store, gateway, self.states.get) if gateway is not None else None
        self.gateway_port: int | None = None
        self.pubsub: Pubsub
        self.dht: KadDHT
        self.ready = trio.Event()

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    def addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()]

    # --- lifecycle --------------------------------------------------------------------------
    async def run(self, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.host.run(hostmod.parse_addrs(self.listen)):
            self.pubsub, router = hostmod.build_pubsub(self.host)
            # Kademlia in server mode: repositories are provider records keyed by their id
            self.dht = KadDHT(self.host, DHTMode.SERVER)
            async with background_trio_service(self.pubsub), background_trio_service(router), \
                    background_trio_service(self.dht):
                await self.pubsub.wait_until_ready()
                self.bans.start(self.pubsub)  # the stored bans are restored
                self.peers.start(self.pubsub)
                self.gossip.start(self.pubsub, self.peer_id)
                self.discovery.start(self.dht)
                self.host.set_stream_handler(exchange.PROTOCOL, self._serve_blocks)
                self.host.set_stream_handler(TProtocol(m.HEADS_PROTOCOL), self._serve_heads)
                async with trio.open_nursery() as nursery:
                    self.tasks.start(nursery)
                    await self._started(nursery)
                    task_status.started()
                    log("daemon_started", peer_id=str(self.peer_id), addrs=self.addrs())
                    await trio.sleep_forever()

    async def _started(self, nursery: trio.Nursery) -> None:
        """Everything that runs beside the host once it is up."""
        # IPFS bitswap on the same host, over the same store: any IPFS node (Kubo) can
        # fetch our tensor files by CID, and we can fetch theirs; every state `show` prints is
        # fetchable, a delta-stored one generated on demand
        self.bitswap = await start_bitswap(self.host, self.node.store, nursery, self.states.get,
                                          self.bans.penalize)
        self.spawn("state_index", self.states.refresh)
        self.spawn("nft_holders", self.ownership.run)
        if self.gateway is not None:  # a port it cannot bind stops the daemon with one line
            self.gateway_port = await nursery.start(self.gateway.serve)
        for repo_id in {*self.state.local_repos().values(), *self.state.follows()}:
            await self.gossip.subscribe(repo_id)
        # inbound connections catch up too (ours: Peers.connect); any already here dialled us
        self.host.get_network().register_notifee(InboundCatchUp(self._start_catch_up))
        for peer in self.host.get_connected_peers():
            self._start_catch_up(peer)
        self.jobs.resume()
        nursery.start_soon(self.peers.connect_loop)
        nursery.start_soon(self._sync_loop)
        nursery.start_soon(self._watch_loop)
        nursery.start_soon(self._follow_local_repos)
        nursery.start_soon(self._reprovide_loop)
        nursery.start_soon(self.gossip.announce_loop)
        self.discovery.provide_new_soon()  # alone, recorded locally: a peer dialling us can ask us
        # `fednode pin`'s durable queue: pins on an operator's Kubo, which fetches from us over bitswap
        self.spawn("kubo_pins", PinWorker.from_config(self.node.history, self.addrs, self.node.config).run)
        self.ready.set()

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

    async def _sync_loop(self) -> None:
        """Anti-entropy: heads exchange with every peer now and then, so a missed gossip
        message (or a commit never pushed) still arrives without a reconnect or a pull.
        Expired bans are lifted on the same beat."""
        while True:
            await trio.sleep(self.sync_interval)
            with guard.last_resort(self.metrics, "sync_loop"):
                await self._sync_round()

    async def _reprovide_loop(self) -> None:
        """DHT records: what is due (new heads and states, and the schedule's reprovides), bounded."""
        while True:
            await trio.sleep(self.discovery.limits.tick)
            with guard.last_resort(self.metrics, "reprovide_loop"):
                await self.discovery.provide_new()

    async def _sync_round(self) -> None:
        self.bans.restore()
        self.jobs.expire()
        self.discovery.provide_new_soon()  # heads moved by local commits and merges; never waited for
        peers = self.peers.usable()
        for repo_id in self.gossip.repos():
            if self.state.genesis(repo_id) is None or not peers:
                continue
            try:
                await self.heads.sync_repo(repo_id, peers, create=False, wait=False)
            except Exception as exc:
                log("sync_failed", "warning", error=f"{type(exc).__name__}: {exc}")

    def _start_catch_up(self, peer: ID) -> None:
        self.tasks.spawn("catch_up", self._catch_up, peer)

    async def _catch_up(self, peer: ID) -> None:
        """A new connection: into the DHT's routing table, our records provided, heads exchanged."""
        await trio.sleep(0.2)  # let identify and pubsub streams settle
        await self.discovery.add_peer(peer)
        self.discovery.provide_all_soon()  # announced to the new peer too; a long pass delays no heads exchange
        for repo_id in self.gossip.repos():
            if self.state.genesis(repo_id) is not None:
                try:
                    await self.heads.sync_repo(repo_id, [peer], create=False, wait=False)
                except Exception as exc:  # a peer's bad answer never stops the daemon
                    log("catch_up_failed", "warning", peer=str(peer), error=f"{type(exc).__name__}: {exc}")

    async def _follow_local_repos(self) -> None:
        """Subscribe to repositories created while the daemon runs (``fednode repo create`` writes the
        store, not the daemon) and provide them in the DHT; one store read a second."""
        while True:
            await trio.sleep(FOLLOW_POLL_SECONDS)
            with guard.last_resort(self.metrics, "follow_local_repos"):
                new = [r for r in self.state.local_repos().values() if not self.gossip.is_subscribed(r)]
                for repo_id in new:
                    await self.gossip.subscribe(repo_id)
                    log("repo_followed", repo=repo_id_text(repo_id))
                if new:
                    self.discovery.provide_new_soon()

    def spawn(self, where: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a background task whose exceptions are logged (guard.py), never raised into the nursery."""
        self.tasks.spawn(where, fn, *args)

    # --- stream handlers --------------------------------------------------------------------
    async def _serve_blocks(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        await self.server.serve(stream, exchange.serve(stream, self.node.store, self.metrics, self.fetcher.in_flight,
                                                       lambda why: self.fair.misbehaved(peer, why),
                                                       self.fetcher.checked_block))

    async def _serve_heads(self, stream: INetStream) -> None:
        await self.server.serve(stream, self.heads.serve_heads(stream), self.heads_limit)

    # --- reporting --------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        return {
            "peer_id": str(self.peer_id),
            "address": self.node.identity.address,
            "addrs": self.addrs(),
            "peers": len(self.host.get_connected_peers()),
            "gateway_port": self.gateway_port,
            "topics": sorted(self.gossip.topics),
            "pending_fetches": self.jobs.pending(),
            "fetch_jobs_held": len(self.jobs.jobs),  # finished jobs are dropped: equals pending_fetches
            "blacklisted": self.bans.blacklisted(),
            "bans": self.state.bans(),
            "metrics": self.metrics.snapshot(),
            "time": time.time(),
        }
