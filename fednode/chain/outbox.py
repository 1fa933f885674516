"""The durable anchoring queue: items in the store's ``outbox`` database, sent strictly in order.

Keys are ``q/`` + a big-endian u64 sequence number, so LMDB's key order is the send order
(parents were queued before children). An item leaves the queue only in the store transaction
that records its success; a crash in between is harmless because sending is idempotent (an
already-anchored commit is detected on chain and counted as done).

Every item records the chain it is meant for (``chain``: genesis hash, program id, endpoint; see
ChainId) when it is queued, and is only ever sent to that chain: after ``fednode chain use``
switches backends, items queued for the previous chain wait (shown by ``chain status``) until the
node uses that chain again, or until ``fednode chain retarget`` rebinds them to the current one.
An item queued while its RPC endpoint was unreachable is bound to that URL until the endpoint
first answers, then to its genesis hash. Items queued before chains were recorded (no ``chain``)
are bound to nothing and are never sent until retargeted: which chain they were meant for is
not known, and a guess could anchor them on the wrong one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

from fednode.chain.aio import ChainId
from fednode.storage.store import Txn

DB = "outbox"
_ITEM = b"q/"
_SEQ = b"seq"
OPS = ("create_repo", "anchor")


@dataclass
class OutboxItem:
    seq: int
    op: str  # one of OPS
    repo_id: str  # hex
    commit_hash: str = ""  # hex ("" for create_repo)
    cid: str = ""
    kind: str = ""
    branch: str | None = None  # merges move this on-chain head
    attempts: int = 0
    error: str | None = None  # last failure, shown by `fednode chain status`
    chain: dict[str, Any] | None = None  # ChainId.to_json() of the chain it is meant for; None: unbound

    def target(self) -> ChainId | None:
        return ChainId.from_json(self.chain)

    def placement(self, current: ChainId) -> str:
        """"this" (goes to ``current``), "other" (waits for another chain) or "unbound"."""
        target = self.target()
        if target is None:
            return "unbound"
        return "this" if target.matches(current) else "other"

    def key(self) -> bytes:
        return _ITEM + struct.pack(">Q", self.seq)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _load(raw: bytes) -> OutboxItem:
    data = json.loads(raw)
    known = OutboxItem.__dataclass_fields__
    return OutboxItem(**{k: v for k, v in data.items() if k in known})


def items(txn: Txn) -> list[OutboxItem]:
    return [_load(v) for _, v in txn.kv_items(DB, _ITEM)]


def append(txn: Txn, item: OutboxItem) -> OutboxItem:
    raw = txn.kv_get(DB, _SEQ)
    seq = struct.unpack(">Q", raw)[0] + 1 if raw else 1
    txn.kv_put(DB, _SEQ, struct.pack(">Q", seq))
    item.seq = seq
    save(txn, item)
    return item


def save(txn: Txn, item: OutboxItem) -> None:
    txn.kv_put(DB, item.key(), json.dumps(item.to_json(), sort_keys=True).encode())


def remove(txn: Txn, item: OutboxItem) -> bool:
    return txn.kv_delete(DB, item.key())


def drop(txn: Txn, seq: int) -> OutboxItem | None:
    """Remove item ``seq`` (e.g. one the program will always reject); None if not queued."""
    raw = txn.kv_get(DB, _ITEM + struct.pack(">Q", seq))
    if raw is None:
        return None
    item = _load(raw)
    remove(txn, item)
    return item
