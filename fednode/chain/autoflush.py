"""The daemon's anchoring loop: send the durable outbox whenever the chain answers.

Anchoring requests (``fednode anchor``) wait in the store's outbox; a running daemon
flushes it every ``[chain] flush_interval`` seconds (default 10), so requests queued
while the chain was unreachable go out, in order, once it is back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from fednode.chain import outbox
from fednode.chain.anchoring import Anchorer, FlushResult
from fednode.chain.config import open_backend
from fednode.node import Node

DEFAULT_INTERVAL = 10.0

Log = Callable[..., None]


def interval(config: dict[str, Any]) -> float:
    value = config.get("chain", {}).get("flush_interval", DEFAULT_INTERVAL)
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_INTERVAL


def queued(node: Node) -> int:
    with node.store.read() as txn:
        return len(outbox.items(txn))


async def flush_once(node: Node) -> FlushResult:
    backend = open_backend(node.config, node.store)
    try:
        return await Anchorer(node.history, node.identity, backend).flush()
    finally:
        await backend.aclose()


async def flush_loop(node: Node, log: Log, every: float | None = None,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    every = every or interval(node.config)
    task_status.started()
    while True:
        if queued(node):
            try:
                result = await flush_once(node)
                if result.sent or result.error:
                    log("chain_flush", sent=len(result.sent), remaining=result.remaining, error=result.error,
                        unavailable=result.unavailable)
            except Exception as exc:  # a broken chain config must not take the daemon down
                log("chain_flush_failed", level="warning", error=f"{type(exc).__name__}: {exc}")
        await trio.sleep(every)
