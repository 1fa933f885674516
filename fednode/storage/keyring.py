"""Repository keys of private repositories, one per epoch, in the node's store.

A private repository's gossip and its exports for third parties are sealed with a random 32-byte
repository key (``fednode.sealing``). The owner makes epoch 0 and a new epoch whenever a member is
removed, so a former member cannot read what is sealed afterwards; members receive each epoch's key
wrapped for them. Every epoch ever held is kept: older backups and messages still open.

Keys live in the ``net`` database under ``repokey/<repo id><epoch, 8 bytes big-endian>``, on the
same disk (and with the same protection) as the weights they guard.
"""

from __future__ import annotations

import struct

from fednode.errors import FednodeError
from fednode.sealing import KEY_BYTES, new_key
from fednode.storage.store import Store

DB = "net"
PREFIX = b"repokey/"
MAX_EPOCH = 2**32


def _key(repo_id: bytes, epoch: int) -> bytes:
    return PREFIX + repo_id + struct.pack(">Q", epoch)


class Keyring:
    def __init__(self, store: Store) -> None:
        self.store = store

    def epochs(self, repo_id: bytes) -> dict[int, bytes]:
        """Every key held for ``repo_id``, by epoch."""
        with self.store.read() as txn:
            items = txn.kv_items(DB, PREFIX + repo_id)
        return {struct.unpack(">Q", k[-8:])[0]: bytes(v) for k, v in items if len(k) == len(PREFIX) + 40}

    def key(self, repo_id: bytes, epoch: int) -> bytes | None:
        with self.store.read() as txn:
            raw = txn.kv_get(DB, _key(repo_id, epoch))
        return None if raw is None else bytes(raw)

    def latest(self, repo_id: bytes) -> tuple[int, bytes] | None:
        """(epoch, key) of the newest key held, None when none is."""
        held = self.epochs(repo_id)
        return max(held.items()) if held else None

    def put(self, repo_id: bytes, epoch: int, key: bytes) -> bool:
        """Keep ``key`` for ``epoch``; False when it was already held. A different key for an epoch
        already held is refused: keys never change under the same epoch."""
        if len(key) != KEY_BYTES or not 0 <= epoch < MAX_EPOCH:
            raise FednodeError("invalid repository key")
        with self.store.write() as txn:
            old = txn.kv_get(DB, _key(repo_id, epoch))
            if old is not None:
                if bytes(old) != key:
                    raise FednodeError(f"a different key for epoch {epoch} is already held")
                return False
            txn.kv_put(DB, _key(repo_id, epoch), key)
            return True

    def new_epoch(self, repo_id: bytes) -> tuple[int, bytes]:
        """The owner's next key: epoch latest+1 (0 for the first), random, stored."""
        with self.store.write() as txn:
            items = txn.kv_items(DB, PREFIX + repo_id)
            epoch = 1 + max((struct.unpack(">Q", k[-8:])[0] for k, _ in items), default=-1)
            key = new_key()
            txn.kv_put(DB, _key(repo_id, epoch), key)
        return epoch, key

    def ensure(self, repo_id: bytes) -> tuple[int, bytes]:
        """The newest key, made (epoch 0) when none is held yet: for the owner only."""
        return self.latest(repo_id) or self.new_epoch(repo_id)
