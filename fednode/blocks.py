"""Writing many blocks in bounded transactions, and reading UnixFS files from the store."""

from __future__ import annotations

import os
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
    """

    def __init__(self, store: Store, batch_bytes: int = BATCH_BYTES) -> None:
        self._store = store
        self._batch_bytes = batch_bytes
        self._pending: list[tuple[CID, bytes | memoryview]] = []
        self._pending_bytes = 0
        self.new_bytes = 0
        self.total_bytes = 0

    def put(self, cid: CID, block: bytes | memoryview) -> None:
        self._pending.append((cid, block))
        self._pending_bytes += len(block)
        self.total_bytes += len(block)
        if self._pending_bytes >= self._batch_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        with self._store.write(size_hint=self._pending_bytes) as txn:
            self.write_into(txn)

    def write_into(self, txn: Txn) -> None:
        """Write pending blocks inside a caller's transaction (the final, atomic one)."""
        for cid, block in self._pending:
            txn.put_block(cid, block, trusted=True)
        self.new_bytes += txn.new_bytes
        txn.new_bytes = 0
        self._pending = []
        self._pending_bytes = 0

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
