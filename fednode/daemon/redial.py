"""When the connect loop dials each known peer: a per-peer backoff that resets on success.

A peer we lose is redialled at once, then after 0.25 s, 0.5 s, 1 s ... up to 10 s (with jitter, so
the peers of a restarting node do not all dial in step). Any connection to the peer, ours or
theirs, resets its backoff: a node that restarts is redialled within a fraction of a second of
coming back, however long it was down (before: one loop-wide delay grew to 10 s and never reset).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

REDIAL_MIN_S = 0.25
REDIAL_MAX_S = 10.0
TICK_S = 0.25  # how often the connect loop looks for peers that are due
MAX_STORED_PEERS = 256  # peers that dialled us are remembered up to this many (each is redialled)
_UNSPECIFIED = re.compile(r"/ip4/0\.0\.0\.0/|/ip6/::/")


def dialable(addr: str) -> bool:
    """False for the 0.0.0.0 / :: listen addresses a peer listening on every interface advertises."""
    return not _UNSPECIFIED.match(addr)


class Redial:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._next: dict[str, tuple[float, float]] = {}  # peer id -> (next dial time, last delay)
        self._connected: set[str] = set()
        self.dialing: set[str] = set()

    def seen(self, connected: set[str]) -> None:
        """Record who is connected now: their backoff resets, and a peer lost since the last
        call is due at once."""
        for peer in connected | (self._connected - connected):
            self._next.pop(peer, None)
        self._connected = connected

    def due(self, peer: str) -> bool:
        entry = self._next.get(peer)
        return peer not in self.dialing and (entry is None or self.clock() >= entry[0])

    def failed(self, peer: str) -> None:
        delay = min(self._next.get(peer, (0.0, REDIAL_MIN_S / 2))[1] * 2, REDIAL_MAX_S)
        self._next[peer] = (self.clock() + delay * random.uniform(0.8, 1.2), delay)

    def succeeded(self, peer: str) -> None:
        self._next.pop(peer, None)
