"""Writing many blocks in bounded transactions, and reading UnixFS files from the store."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator

import numpy as np

from fednode.errors import Corrupt
from fednode.store import Store, Txn
from protocol.multiformats import CID, FormatError
from protocol.unixfs import UnixFSBuilder, iter_file

# Bytes of tensor blocks per write transaction; tests lower it to exercise multi-batch commits.
BATCH_BYTES = int(os.environ.get("FEDNODE_BATCH_BYTES", 64 * 1024 * 1024))


class BlockSink:
    """Collects blocks we hashed ourselves and stores them in batches.

    Blocks are immutable and content-addressed, so a batch that lands before a
    crash is harmless garbage until a ref points at it; the ref moves last.
    Batches are written by a background thread while the caller goes on hashing
    (hashlib and LMDB both release the GIL), at most two batches in flight.
    Call ``drain()`` before opening the final transaction.
    """

    def __init__(self, store: Store, batch_bytes: int = BATCH_BYTES, expected_bytes: int = 0) -> None:
        self._store = store
        self._batch_bytes = batch_bytes
        self._pending: list[tuple[CID, bytes | memoryview]] = []
        self._pending_bytes = 0
        self.new_bytes = 0
        self.total_bytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        # grow the map now: resizing is not allowed while another thread has a transaction open
        store.reserve(expected_bytes + 2 * batch_bytes)

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
        self._queue.put((self._pending, self._pending_bytes))
        self._pending = []
        self._pending_bytes = 0

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so the producer never blocks forever
            batch, _ = item
            try:
                with self._store.write(grow=False) as txn:
                    for cid, block in batch:
                        txn.put_block(cid, block, trusted=True)
                    self.new_bytes += txn.new_bytes
            except BaseException as exc:  # reported to the producer on its next call
                self._error = exc

    def drain(self) -> None:
        """Wait until every handed-off batch is stored; re-raise a writer failure."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the writer after a failure elsewhere; what it stored is unreferenced garbage."""
        self._pending = []
        try:
            self.drain()
        except BaseException:  # the original failure is the one to report
            pass

    def write_into(self, txn: Txn) -> None:
        """Write the remaining blocks inside the caller's (final, atomic) transaction."""
        if self._writer is not None:
            raise RuntimeError("drain() the block writer before the final transaction")
        for cid, block in self._pending:
            txn.put_block(cid, block, trusted=True)
        self.new_bytes += txn.new_bytes
        txn.new_bytes = 0
        self._pending = []
        self._pending_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def file(self) -> UnixFSBuilder:
        return UnixFSBuilder(self.put)


def read_file(txn: Txn, root: CID, expected_size: int) -> bytes:
    """A whole UnixFS file, every block hash-checked."""
    try:
        data = b"".join(iter_file(txn.get_block, root))
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
