"""Fair serving: no peer holds more than a small share of the serving slots, and a peer whose
streams carry no request (or a malformed one) is penalized, then banned by ``Bans.penalize``.

An honest node opens at most one block stream per fetch job (MAX_CONCURRENT_FETCHES of them) to
a provider, plus a heads query now and then, and writes its request as soon as the stream is
open: hence a share of PER_PEER slots, and a stream idle for ``wire.FIRST_FRAME_TIMEOUT`` is
closed. A few idle streams are forgiven (a stalled link, a peer killed mid-open: IDLE_FORGIVEN,
refilled at IDLE_RATE a second); beyond that each one costs a penalty. Without shares, one peer
holding all MAX_SERVING slots with idle streams stopped every honest fetch (issue 10).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from libp2p.peer.id import ID

from fednode.daemon.ratelimit import TokenBuckets

PER_PEER = 6  # of the daemon's MAX_SERVING (32): 4 fetch jobs, a heads query and one spare
# idle streams a peer may open without penalty, and their refill per second: penalties never expire
# (Bans.penalize), so an honest peer's rare stalled stream must stay free; an attacker renewing
# its PER_PEER idle streams makes 3 a second
IDLE_FORGIVEN, IDLE_RATE = 4.0, 0.1
IDLE = "idle_stream"  # the reason for a stream that sent no request in time


class FairServing:
    """Serving slots: at most ``slots`` streams served at once, at most ``per_peer`` of one peer."""

    def __init__(self, slots: int, per_peer: int = PER_PEER, penalize: Callable[[ID, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.slots, self.per_peer, self.penalize = slots, per_peer, penalize
        self.in_use = 0
        self.held: Counter[ID] = Counter()
        self._idle = TokenBuckets(IDLE_RATE, IDLE_FORGIVEN, clock=clock)

    def admit(self, peer: ID) -> str | None:
        """Take a slot for ``peer``; or why not: ``peer_busy`` (its share is used) or ``busy``."""
        if self.held[peer] >= self.per_peer:
            return "peer_busy"
        if self.in_use >= self.slots:
            return "busy"
        self.held[peer] += 1
        self.in_use += 1
        return None

    def release(self, peer: ID) -> None:
        self.in_use -= 1
        self.held[peer] -= 1
        if self.held[peer] <= 0:
            del self.held[peer]  # the counter only remembers peers being served: bounded memory

    def misbehaved(self, peer: ID, reason: str) -> bool:
        """A served stream of ``peer`` sent no request in time (IDLE) or a bad one; whether the peer
        was penalized (idle streams beyond the forgiven few; any bad request)."""
        if reason == IDLE and self._idle.take(str(peer)):
            return False
        if self.penalize is not None:
            self.penalize(peer, reason)
        return True
