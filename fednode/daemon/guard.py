"""Last-resort guards for the daemon's entry points.

Every task the daemon runs on behalf of input it does not control (a gossip message, an inbound
stream, a fetch job, a sync round, a local API request) is wrapped so that an exception, whatever
its type, is logged with its cause and counted in ``Metrics.errors`` by place, and never reaches
py-libp2p or a trio nursery: one exception escaping a nursery task stops the whole daemon.

The decoders raise only ``FormatError`` for any input (fuzzed in tests/protocol/test_fuzz_decoders.py),
so these guards should never fire; when one does, the log line says where and why.
``trio.Cancelled`` and ``KeyboardInterrupt`` are BaseExceptions and pass through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fednode.daemon.metrics import Metrics
from fednode.logs import log


def cause(exc: BaseException) -> str:
    """One line: the exception's type and message, cut to a size a log line can carry."""
    return f"{type(exc).__name__}: {exc}"[:500]


def report(metrics: Metrics, where: str, exc: BaseException, **context: Any) -> None:
    metrics.errors[where] += 1
    log("unhandled_error", "error", where=where, error=cause(exc), **context)


@contextmanager
def last_resort(metrics: Metrics, where: str, **context: Any) -> Iterator[None]:
    """Swallow (after logging) any Exception raised in the block."""
    try:
        yield
    except Exception as exc:
        report(metrics, where, exc, **context)


def task(metrics: Metrics, where: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[None]]:
    """``fn`` for ``nursery.start_soon``: its exceptions are reported, never raised into the nursery."""

    async def guarded(*args: Any) -> None:
        with last_resort(metrics, where):
            await fn(*args)

    return guarded
