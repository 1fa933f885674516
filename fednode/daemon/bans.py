"""Penalties and bans: our own peer scoring (py-libp2p's ScoreParams are not wired to
disconnects we could test). Each penalty counts against a peer; ``threshold`` of them, each within
STRIKE_MEMORY_SECONDS of the one before (older strikes are forgiven), ban it for
``seconds``: it is blacklisted in pubsub (its gossip ignored, its connection torn down), gated on
reconnecting (``gate.BanGate``), and the ban is stored, so a restart keeps it until it expires.
"""

from __future__ import annotations

import time

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from fednode.daemon.abc import Blacklist, Spawner
from fednode.daemon.metrics import Metrics
from fednode.logs import log
from fednode.storage.netstate import NetState

BAN_THRESHOLD = 5  # invalid messages/blocks before a peer is disconnected and blacklisted
BAN_SECONDS = 24 * 3600  # how long a ban lasts; bans are stored, so a restart keeps them
STRIKE_MEMORY_SECONDS = 3600.0  # a peer's strikes are forgotten this long after its last one
MAX_TRACKED = 4096  # peers with strikes remembered; past it the one struck longest ago is forgotten
MAX_BANS = 4096  # bans stored; past it the one that ends soonest is lifted


class Bans:
    def __init__(self, state: NetState, metrics: Metrics, host: IHost, tasks: Spawner,
                 threshold: int = BAN_THRESHOLD, seconds: float = BAN_SECONDS) -> None:
        self.state = state
        self.metrics = metrics
        self.host = host
        self.tasks = tasks
        self.threshold = threshold
        self.seconds = seconds
        self.invalid: dict[str, tuple[int, float]] = {}  # peers not banned (yet): strikes, time of the last
        self.clock = time.monotonic
        self.blacklist: Blacklist

    def start(self, blacklist: Blacklist) -> None:
        """Ban through ``blacklist`` (the pubsub's, once it runs) and restore the stored bans."""
        self.blacklist = blacklist
        self.restore()

    def is_banned(self, peer: ID, /) -> bool:
        return self.blacklist.is_peer_blacklisted(peer)

    def blacklisted(self) -> list[str]:
        return sorted(str(p) for p in self.blacklist.get_blacklisted_peers())

    def penalize(self, peer: ID, reason: str, /) -> None:
        key = str(peer)
        if peer == self.host.get_id() or self.is_banned(peer):
            return
        now = self.clock()
        strikes, last = self.invalid.pop(key, (0, now))
        strikes = 1 if now - last > STRIKE_MEMORY_SECONDS else strikes + 1  # an old lapse is forgiven
        self.invalid[key] = (strikes, now)  # re-inserted: the most recently struck last
        if len(self.invalid) > MAX_TRACKED:
            del self.invalid[next(iter(self.invalid))]
        self.metrics.penalties[reason] += 1
        if strikes >= self.threshold:
            self.metrics.bans += 1
            until = time.time() + self.seconds
            log("peer_banned", "warning", peer=key, invalid=strikes, last_reason=reason, until=int(until))
            self._make_room()
            self.state.put_ban(key, until, reason)
            del self.invalid[key]
            self.blacklist.add_to_blacklist(peer)  # also tears the connection down
            self.tasks.start_soon(self._disconnect, peer)

    def unban(self, key: str) -> bool:
        """Lift ``key``'s ban now (ValueError for a malformed peer id); whether there was one."""
        peer = ID.from_base58(key)
        raw = peer.to_bytes()  # a peer id is a multihash: identity (0x00) or sha2-256 (0x12) of the key
        if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
            raise ValueError(f"not a peer id: {key!r}")
        was = self.is_banned(peer) or key in self.state.bans()
        self.blacklist.remove_from_blacklist(peer)
        self.state.drop_ban(key)
        self.invalid.pop(key, None)
        if was:
            log("peer_unbanned", peer=key, reason="operator")
        return was

    def _make_room(self) -> None:
        """At most MAX_BANS stored (each is restored every sync round and listed in /status): past it,
        the ban that ends soonest is lifted (a peer id costs an attacker nothing; the bound is ours)."""
        stored = self.state.bans()
        excess = len(stored) + 1 - MAX_BANS
        if excess <= 0:
            return
        for key in sorted(stored, key=lambda k: float(stored[k]["until"]))[:excess]:  # type: ignore[arg-type]
            self.state.drop_ban(key)
            try:
                self.blacklist.remove_from_blacklist(ID.from_base58(key))
            except Exception:
                pass

    def restore(self) -> None:
        """Blacklist the stored bans that still hold; lift and forget the expired ones."""
        now = time.time()
        for key, ban in self.state.bans().items():
            try:
                peer = ID.from_base58(key)
            except Exception:
                self.state.drop_ban(key)
                continue
            if float(ban["until"]) > now:  # type: ignore[arg-type]
                if not self.is_banned(peer):
                    self.blacklist.add_to_blacklist(peer)
            else:
                self.blacklist.remove_from_blacklist(peer)
                self.state.drop_ban(key)
                log("peer_unbanned", peer=key, reason="expired")

    async def _disconnect(self, peer: ID) -> None:
        try:
            with trio.move_on_after(5):
                await self.host.disconnect(peer)
        except Exception:
            pass
