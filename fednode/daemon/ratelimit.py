"""Per-peer token buckets for inbound requests that cost us work (heads queries, bitswap wants)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBuckets:
    """``rate`` tokens per second per key, at most ``burst`` saved; at most ``max_keys`` keys are
    remembered (the least recently used is forgotten first, so memory stays bounded)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of last update)

    def take(self, key: str) -> bool:
        """Spend one token of ``key``; False (nothing spent) when its bucket is empty."""
        ok = self.available(key) >= 1
        self._spend(key, 1 if ok else 0)
        return ok

    def available(self, key: str) -> float:
        """``key``'s tokens now, nothing spent (an unknown key: a full bucket)."""
        tokens, then = self._buckets.get(key, (self.burst, self.clock()))
        return min(self.burst, tokens + (self.clock() - then) * self.rate)

    def pace(self, key: str, cost: float) -> float:
        """Spend ``cost`` tokens of ``key`` even past empty, and return how many seconds the caller
        should wait before doing the work: the debt over ``rate``. Nothing is refused; a key that
        asks faster than ``rate`` is slowed to it (a burst of ``burst`` goes at once)."""
        return max(0.0, -self._spend(key, cost) / self.rate)

    def _spend(self, key: str, cost: float) -> float:
        """Take ``cost`` from ``key``'s refilled bucket (it may go below zero); the tokens left. The key
        is re-inserted as the most recently used; past ``max_keys``, the least recently used goes."""
        tokens = self.available(key) - cost
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, self.clock())
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return tokens
