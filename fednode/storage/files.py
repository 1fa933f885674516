"""Writing many blocks in bounded transactions, and reading UnixFS files from the store."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from fednode.errors import Corrupt
from fednode.lazy import lazy_import
from fednode.storage.store import Store, Txn
from protocol.multiformats import CID, FormatError
from protocol.unixfs import CHUNK_SIZE, UnixFSBuilder, file_size, iter_file, max_depth

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")

T = TypeVar("T")

DEFAULT_BATCH_BYTES = 64 * 1024 * 1024


def default_batch_bytes() -> int:
    """Bytes of tensor blocks per write transaction: $FEDNODE_BATCH_BYTES (read at each use: tests lower it
    to exercise multi-batch commits) or 64 MiB."""
    return int(os.environ.get("FEDNODE_BATCH_BYTES", DEFAULT_BATCH_BYTES))


class _Aborted(Exception):
    """Raised inside the writer's transaction to roll it back."""


class BlockSink:
    """Collects blocks we hashed ourselves and stores them, with the commit, in ONE transaction.

    A background thread holds a single LMDB write transaction for the whole commit and
    writes each batch into it while the caller goes on hashing (hashlib and LMDB both
    release the GIL); ``finish(fn)`` runs the final writes (manifest, commit, ref
    compare-and-swap) in that same transaction, which then commits with a single sync.
    A crash or ``abort()`` leaves nothing at all. At most two batches are in flight.
    """

    def __init__(self, store: Store, batch_bytes: int | None = None, expected_bytes: int = 0) -> None:
        self._store = store
        self._batch_bytes = default_batch_bytes() if batch_bytes is None else batch_bytes
        self._pending: list[tuple[CID, bytes | memoryview]] = []
        self._pending_bytes = 0
        self.new_bytes = 0
        self.total_bytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._result: object = None
        # grow the map now: resizing is not allowed while another thread has a transaction open
        store.reserve(expected_bytes + 2 * self._batch_bytes)

    def put(self, cid: CID, block: bytes | memoryview) -> None:
        self._pending.append((cid, block))
        self._pending_bytes += len(block)
        self.total_bytes += len(block)
        if self._pending_bytes >= self._batch_bytes:
            self.flush()

    def flush(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._pending:
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, name="fednode-block-writer", daemon=True)
            self._writer.start()
        self._queue.put(("batch", self._pending))
        self._pending = []
        self._pending_bytes = 0

    def _run(self) -> None:
        try:
            with self._store.write(grow=False) as txn:
                while True:
                    item = self._queue.get()
                    if item is None:
                        raise _Aborted
                    kind, payload = item
                    if kind == "batch":
                        try:
                            for cid, block in payload:
                                txn.put_block(cid, block, trusted=True)
                        except BaseException:
                            self._skip_rest()
                            raise
                        continue
                    self.new_bytes = txn.new_bytes
                    self._result = payload(txn)  # the final writes; raising rolls everything back
                    return
        except _Aborted:
            pass
        except BaseException as exc:  # reported to the producer
            self._error = exc

    def _skip_rest(self) -> None:
        """After a failure, consume what the producer still hands over so it never blocks."""
        while True:
            item = self._queue.get()
            if item is None or item[0] == "final":
                return

    def finish(self, final: Callable[[Txn], T]) -> T:
        """Store the remaining blocks and run ``final`` in the same transaction; commit once."""
        if self._writer is None:
            with self._store.write(size_hint=self._pending_bytes) as txn:
                for cid, block in self._pending:
                    txn.put_block(cid, block, trusted=True)
                self.new_bytes = txn.new_bytes
                self._pending, self._pending_bytes = [], 0
                return final(txn)
        if self._pending and self._error is None:
            self._queue.put(("batch", self._pending))
        self._pending, self._pending_bytes = [], 0
        if self._error is None:
            self._queue.put(("final", final))
        self._writer.join()
        self._writer = None
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def abort(self) -> None:
        """Roll back everything written so far (after a failure elsewhere)."""
        self._pending = []
        if self._writer is not None:
            if self._error is None:
                self._queue.put(None)
            self._writer.join()
            self._writer = None

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def file(self) -> UnixFSBuilder:
        return UnixFSBuilder(self.put)


def read_file(txn: Txn, root: CID, expected_size: int) -> bytes:
    """A whole UnixFS file, every block hash-checked."""
    try:
        data = b"".join(iter_file(txn.get_block, root, expected_size))
    except FormatError as exc:
        raise Corrupt(str(exc)) from None
    if len(data) != expected_size:
        raise Corrupt(f"file {root} has {len(data)} bytes, expected {expected_size}")
    return data


def read_array(txn: Txn, root: CID, size: int, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(read_file(txn, root, size), dtype=dtype).copy()


def iter_file_verified(txn: Txn, root: CID) -> Iterator[bytes]:
    try:
        yield from iter_file(txn.get_block, root)
    except FormatError as exc:
        raise Corrupt(str(exc)) from None


def max_file_nodes(size: int) -> int:
    """Distinct blocks a file of ``size`` bytes has as our builder (and ``ipfs add``) lays it out:
    one leaf per CHUNK_SIZE bytes, fewer inner nodes than leaves, and slack for the 1-link tails."""
    return 2 * (size // CHUNK_SIZE + 1) + 2 * max_depth(size) + 8


def check_file(txn: Txn, root: CID, expected_size: int, rehash: bool = True) -> None:
    """Corrupt unless ``root`` is a UnixFS file of ``expected_size`` bytes laid out as we build them.

    The size its root declares is checked first, then each distinct block once (a repeated child
    is counted, not walked again), so a DAG whose links expand to far more than it declares, or
    than ``expected_size``, costs a few block reads. ``rehash=False``: sizes and structure only,
    for blocks hash-checked when stored (leaves are measured in place, see ``Store.read(buffers=True)``).
    """
    try:
        file_size(txn.get_block, root, None if rehash else txn.block_size, expected_size=expected_size,
                  verify=rehash, max_nodes=max_file_nodes(expected_size), min_chunk=CHUNK_SIZE)
    except FormatError as exc:
        raise Corrupt(str(exc)) from None
