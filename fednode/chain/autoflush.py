"""The daemon's anchoring loop: send the durable outbox whenever the chain answers.

Anchoring requests (``fednode anchor``) wait in the store's outbox; a running daemon
flushes it every ``[chain] flush_interval`` seconds (default 10), so requests queued
while the chain was unreachable go out, in order, once it is back. While the chain stays
unavailable the wait doubles, up to 32 intervals (320 s by default), and a lasting error is logged
when it changes and once an hour.

The ``[chain]`` section is read from config.toml again at every cycle, so ``fednode chain use``
takes effect in a running daemon at its next flush (no restart). Each item goes only to the chain
it was queued for (outbox.py); an unreadable config skips the cycle rather than fall back to the
backend the daemon started with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from fednode.chain import outbox
from fednode.chain.anchoring import Anchorer, FlushResult
from fednode.chain.config import chain_section, open_backend
from fednode.logs import shown_url
from fednode.node import CONFIG_FILE, Node, load_config

if TYPE_CHECKING:
    # trio-stubs (of trio-typing, which libp2p and multiaddr pull in) shadow trio's inline types for
    # mypy and do not re-export TaskStatus; at run time this annotation is never evaluated
    from trio_typing import TaskStatus

DEFAULT_INTERVAL = 10.0
BACKOFF_STEPS = 5  # while the chain stays unavailable the wait doubles up to 2**5 intervals (default 320 s)

Log = Callable[..., None]


def interval(config: dict[str, Any]) -> float:
    value = config.get("chain", {}).get("flush_interval", DEFAULT_INTERVAL)
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_INTERVAL


def sendable(node: Node, config: dict[str, Any]) -> bool:
    """Whether any queued item could be meant for the backend ``config`` names: an embedded chain
    never matches an item queued for an RPC endpoint nor the reverse, and unbound items match
    nothing, so a queue of only such items does not open a backend every cycle."""
    embedded = chain_section(config)["backend"] == "embedded"
    with node.store.read() as txn:
        targets = [item.target() for item in outbox.items(txn)]
    return any(t is not None and (t.endpoint == "embedded") == embedded for t in targets)


def current_config(node: Node) -> dict[str, Any]:
    """config.toml as it is now (``chain use`` may have changed it since the daemon started)."""
    return load_config(node.home / CONFIG_FILE)


async def flush_once(node: Node, config: dict[str, Any] | None = None) -> FlushResult:
    backend = open_backend(current_config(node) if config is None else config, node.store)
    try:
        return await Anchorer(node.history, node.identity, backend).flush()
    finally:
        await backend.aclose()


def _where(config: dict[str, Any]) -> tuple[str, str | None, str | None]:
    section = chain_section(config)
    return section["backend"], section.get("url"), section.get("program_id")


async def flush_loop(node: Node, log: Log, every: float | None = None,
                     task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    where = _where(node.config)
    task_status.started()
    down = 0  # rounds in a row the chain was unavailable: the next try waits longer
    said: tuple[str | None, float] = (None, 0.0)  # the last error logged, and when
    while True:
        config = node.config
        unavailable = False
        try:
            config = current_config(node)
            if (now := _where(config)) != where:
                log("chain_backend_changed", backend=now[0], url=shown_url(now[1]), program_id=now[2])
                where, down = now, 0
            if sendable(node, config):
                result = await flush_once(node, config)
                unavailable = result.unavailable
                # an error that lasts is logged when it changes and once an hour, not every round
                if result.sent or (result.error and (result.error != said[0] or time.monotonic() - said[1] > 3600)):
                    log("chain_flush", sent=len(result.sent), remaining=result.remaining, error=result.error,
                        unavailable=result.unavailable, held=result.held)  # fmt: skip
                    said = (result.error, time.monotonic())
                if not result.error:
                    said = (None, 0.0)
        except Exception as exc:  # a broken chain config must not take the daemon down
            log("chain_flush_failed", level="warning", error=f"{type(exc).__name__}: {exc}")
        down = down + 1 if unavailable else 0
        base = every or interval(config)
        await trio.sleep(base * 2 ** min(down, BACKOFF_STEPS))
