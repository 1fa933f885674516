"""One session with the node's chain backend: open it, run an anchorer task under trio, close it;
and the anchoring queue's edits that need no backend.

Chain failures come out as one-line ``FednodeError``s. trio, solders and the chain client are
imported only when a session runs, so commands that never touch the chain start fast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from fednode.errors import FednodeError

if TYPE_CHECKING:
    from fednode.chain.anchoring import Anchorer
    from fednode.chain.outbox import OutboxItem
    from fednode.node import Node

T = TypeVar("T")


def run(node: Node, task: Callable[[Anchorer, Node], Awaitable[T]]) -> T:
    """Open ``node``'s chain backend, run ``task`` under trio, close the backend."""
    import trio

    from fednode.chain.aio import ChainUnavailable
    from fednode.chain.anchoring import Anchorer, explain
    from fednode.chain.backend import ChainError
    from fednode.chain.config import open_backend

    backend = open_backend(node.config, node.store)

    async def session() -> T:
        try:
            return await task(Anchorer(node.history, node.identity, backend), node)
        except ChainUnavailable as exc:
            raise FednodeError(f"chain unavailable: {exc}") from None
        except ChainError as exc:
            raise FednodeError(f"transaction rejected: {explain(exc)}") from None
        finally:
            await backend.aclose()

    return trio.run(session)


def describe_failure(exc: Exception) -> str:
    """One line for a failure inside a session: the chain's words for chain errors."""
    from fednode.chain.aio import ChainUnavailable
    from fednode.chain.anchoring import explain
    from fednode.chain.backend import ChainError

    if isinstance(exc, ChainUnavailable):
        return f"chain unavailable: {exc}"
    if isinstance(exc, ChainError):
        return f"transaction rejected: {explain(exc)}"
    return str(exc) if isinstance(exc, FednodeError) else f"{type(exc).__name__}: {exc}"


def drop_queued(node: Node, seq: int) -> OutboxItem | None:
    """Remove anchoring request #``seq`` from the queue (no backend needed); None when none has that number."""
    from fednode.chain import outbox

    with node.store.write() as txn:
        return outbox.drop(txn, seq)


def queued_count(node: Node) -> int:
    """How many anchoring requests wait in the queue, for any chain."""
    from fednode.chain import outbox

    with node.store.read() as txn:
        return len(outbox.items(txn))
