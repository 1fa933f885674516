"""The daemon's background tasks: one nursery, every task guarded (guard.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fednode.daemon import guard
from fednode.daemon.metrics import Metrics


class Tasks:
    """Starts tasks in the nursery given to ``start`` (the daemon's, once it runs)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.nursery: trio.Nursery

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def spawn(self, where: str, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> None:
        """Start a task whose exceptions are logged (guard.py), never raised into the nursery."""
        self.nursery.start_soon(guard.task(self.metrics, where, fn), *args)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> None:
        """Start a task that guards itself (a fetch job, a gossip drain)."""
        self.nursery.start_soon(fn, *args)
