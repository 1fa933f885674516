"""Our peers: who is connected and usable, dialling, and keeping known peers connected.

Bootstrap, stored and mDNS-found peers are redialled, each on its own backoff that resets on
success (redial.py); every connection we make is handed to ``on_connected`` (the daemon's
catch-up). The topics peers follow are read from the pubsub given to ``start``.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.peer.peerstore import PeerStoreError
from libp2p.pubsub.pubsub import Pubsub

from fednode.daemon import guard
from fednode.daemon import host as hostmod
from fednode.daemon.abc import BanList, Spawner
from fednode.daemon.metrics import Metrics
from fednode.daemon.redial import MAX_STORED_PEERS, TICK_S, Redial, dialable
from fednode.logs import log
from fednode.storage.netstate import MAX_PEER_ADDRS, NetState
from protocol import messages as m


class Peers:
    def __init__(self, host: IHost, state: NetState, bans: BanList, metrics: Metrics, tasks: Spawner,
                 bootstrap: list[str], mdns: bool, on_connected: Callable[[ID], None]) -> None:
        self.host = host
        self.state = state
        self.bans = bans
        self.metrics = metrics
        self.tasks = tasks
        self.bootstrap = bootstrap
        self.mdns = mdns
        self.on_connected = on_connected
        self.pubsub: Pubsub
        self.topic_of: Callable[[bytes], str] = m.topic_for  # the daemon sets Gossip.topic_of
        self._bootstrap_ids: dict[str, str | None] = {}

    def start(self, pubsub: Pubsub) -> None:
        self.pubsub = pubsub

    # --- who is there -----------------------------------------------------------------------
    def usable(self) -> list[ID]:
        return [p for p in self.host.get_connected_peers() if not self.bans.is_banned(p)]

    def topic_peers(self, repo_id: bytes, /) -> list[ID]:
        return list(self.pubsub.peer_topics.get(self.topic_of(repo_id), set()))

    def providers(self, first: list[str], repo_id: bytes, /) -> list[ID]:
        connected = self.host.get_connected_peers()
        ordered = [ID.from_base58(p) for p in first] + self.topic_peers(repo_id) + list(connected)
        me = self.host.get_id()
        return [p for p in dict.fromkeys(ordered) if p != me and p in connected and not self.bans.is_banned(p)]

    def known_addrs(self, peer: ID) -> list[str]:
        """The peerstore's addresses of ``peer``; none yet for a peer that dialled us before identify
        told us where it listens (py-libp2p raises PeerStoreError then)."""
        try:
            return [str(a) for a in self.host.get_peerstore().addrs(peer)]
        except PeerStoreError:
            return []

    def listing(self) -> list[dict[str, object]]:
        """Each connected peer: its id, addresses and the topics it follows."""
        out: list[dict[str, object]] = []
        for pid in self.host.get_connected_peers():
            topics = sorted(t for t, ps in self.pubsub.peer_topics.items() if pid in ps)
            out.append({"peer_id": str(pid), "addrs": self.known_addrs(pid), "topics": topics})
        return out

    # --- dialling ---------------------------------------------------------------------------
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
        self.on_connected(info.peer_id)
        return str(info.peer_id)

    async def connect_loop(self) -> None:
        """Keep bootstrap, stored and mDNS-found peers connected."""
        redial = Redial()
        while True:
            with guard.last_resort(self.metrics, "connect_loop"):
                self._connect_round(redial)
            await trio.sleep(TICK_S)

    def _connect_round(self, redial: Redial) -> None:
        """Start a dial to each known peer that is not connected and is due. Runs every TICK_S:
        only the addresses of due peers are parsed (by ``connect``), each peer's id read from its
        key (stored, mDNS) or its address once (bootstrap)."""
        connected = self.host.get_connected_peers()
        keys = {str(p) for p in connected}
        redial.seen(keys)
        stored = self._remember(connected)
        by_peer: dict[str, list[str]] = {}
        skip = keys | {str(self.host.get_id())}
        for peer, addr in self._targets(stored):
            if peer in skip or not redial.due(peer):
                continue
            try:
                banned = self.bans.is_banned(ID.from_base58(peer))
            except Exception:  # not a peer id: never dialled
                banned = True
            if banned:
                skip.add(peer)
                continue
            by_peer.setdefault(peer, []).append(addr)
        for peer, addrs in by_peer.items():
            redial.dialing.add(peer)  # one dial at a time per peer; the others go on meanwhile
            self.tasks.spawn("redial", self._redial, redial, peer, list(dict.fromkeys(addrs)))

    def _remember(self, connected: list[ID]) -> dict[str, list[str]]:
        """The stored peers, plus those that dialled us (a restart redials them at their identify
        addresses; the ones we dial ourselves are stored by ``connect``)."""
        stored = self.state.peers()
        for pid in connected:
            if len(stored) >= MAX_STORED_PEERS:
                break
            if str(pid) in stored:
                continue
            addrs = [a for a in self.known_addrs(pid) if dialable(a)]
            if addrs and self.state.put_peer(str(pid), addrs, limit=MAX_STORED_PEERS):
                stored[str(pid)] = addrs[:MAX_PEER_ADDRS]
        return stored

    def _targets(self, stored: dict[str, list[str]]) -> list[tuple[str, str]]:
        """(peer id, address with /p2p/ and that id) of each peer to keep connected."""
        targets = [(peer, addr) for addr in self.bootstrap if (peer := self._bootstrap_peer(addr))]
        for pid, addrs in stored.items():
            targets += [(pid, a if "/p2p/" in a else f"{a}/p2p/{pid}") for a in addrs]
        if self.mdns:  # mDNS only fills the peerstore: dial what it found
            for found in self.host.get_peerstore().peers_with_addrs():
                targets += [(str(found), f"{a}/p2p/{found}") for a in self.known_addrs(found)[:1] if "/p2p/" not in a]
        return targets

    def _bootstrap_peer(self, addr: str) -> str | None:
        """The peer id in a bootstrap address, parsed once; None (logged once) if it has none."""
        if addr not in self._bootstrap_ids:
            try:
                self._bootstrap_ids[addr] = str(info_from_p2p_addr(hostmod.parse_addrs([addr])[0]).peer_id)
            except Exception:
                log("bad_peer_addr", "warning", addr=addr)
                self._bootstrap_ids[addr] = None
        return self._bootstrap_ids[addr]

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
