"""Fetch slots handed out newest job first.

A burst of commits queues a fetch job per commit and per head announcement. Served first in,
first out, the newest head waits behind jobs for commits it supersedes, each retrying with
backoff. Served newest first, the newest head's job runs next; its closure holds its
ancestors, so the older jobs then find their blocks already stored and finish at once.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class NewestFirstSlots:
    """At most ``limit`` holders; a freed slot goes to the waiter with the highest ``priority``."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiting: list[tuple[int, int, trio.Event]] = []  # (-priority, arrival, event): a heap
        self._arrivals = 0

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self.free > 0 and not self._waiting:
            self.free -= 1
        else:
            self._arrivals += 1
            entry = (-priority, self._arrivals, trio.Event())
            heapq.heappush(self._waiting, entry)
            try:
                await entry[2].wait()
            except BaseException:
                if entry[2].is_set():  # handed a slot just as we were cancelled: pass it on
                    self._release()
                else:
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if self._waiting:
            heapq.heappop(self._waiting)[2].set()  # the slot goes straight to the newest waiter
        else:
            self.free += 1
