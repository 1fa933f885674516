"""The durable queue of pins on an operator's Kubo (``fednode pin``), in the store's ``outbox`` database.

Keys are ``kubo/`` + a big-endian u64 sequence number (the chain outbox uses ``q/`` in the same
database). A request leaves the ``queued`` state only in the store transaction that records its
outcome, so a daemon restarted halfway pins the rest: asking Kubo to pin a CID it already pins is
a no-op, which makes every retry safe. ``done`` lists the CIDs Kubo confirmed so far.

Bounded: at most MAX_QUEUED requests wait (``append`` refuses more), and of the finished ones
(pinned or failed) the newest KEEP_FINISHED are kept (``prune``), so the queue the daemon reads
every second stays small.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field

from fednode.errors import FednodeError
from fednode.storage.store import Txn

DB = "outbox"
_ITEM = b"kubo/"
_SEQ = b"kubo-seq"
STATES = ("queued", "pinned", "failed")
DEFAULT_KUBO = "http://127.0.0.1:5001"  # Kubo's default RPC address ([ipfs] kubo_api)
MAX_QUEUED = 1_000  # requests waiting at once (the daemon reads them all every second)
KEEP_FINISHED = 1_000  # pinned or failed requests kept for `fednode pin --status`


@dataclass
class PinRequest:
    seq: int
    kubo: str  # the Kubo RPC base URL, e.g. http://127.0.0.1:5001 (or the pinning service's URL)
    repo_id: str  # hex
    commit: str  # the commit's CID text
    targets: list[tuple[str, bool]]  # (CID text, recursive) in the order they are pinned
    state: str = "queued"  # one of STATES
    done: list[str] = field(default_factory=list)
    attempts: int = 0
    next_at: float = 0.0  # unix time of the next try (exponential backoff after a failure)
    error: str | None = None  # the last failure, shown by `fednode pin --status`
    source: str = "cli"  # "cli" or "auto" (a merged head)
    time: float = 0.0
    service: str = "kubo"  # "kubo" (Kubo RPC) or "psa" (IPFS Pinning Service API: recursive targets only)
    remote: dict[str, str] = field(default_factory=dict)  # psa: CID text -> the service's requestid
    posting: list[str] = field(default_factory=list)  # psa: CIDs POSTed without a requestid recorded yet
    polls: int = 0  # psa: rounds the service answered "queued" or "pinning"
    pending_since: float = 0.0  # psa: unix time of the first such answer

    def key(self) -> bytes:
        return _ITEM + struct.pack(">Q", self.seq)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _load(raw: bytes) -> PinRequest | None:
    try:
        data = json.loads(raw)
        data["targets"] = [(str(c), bool(r)) for c, r in data["targets"]]
        return PinRequest(**{k: v for k, v in data.items() if k in PinRequest.__dataclass_fields__})
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable entry pins nothing


def items(txn: Txn) -> list[PinRequest]:
    """Every request in queue order."""
    return [r for _, v in txn.kv_items(DB, _ITEM) if (r := _load(v)) is not None]


def get(txn: Txn, seq: int) -> PinRequest | None:
    raw = txn.kv_get(DB, _ITEM + struct.pack(">Q", seq))
    return None if raw is None else _load(raw)


def append(txn: Txn, request: PinRequest) -> PinRequest:
    if sum(1 for r in items(txn) if r.state == "queued") >= MAX_QUEUED:
        raise FednodeError(f"the pin queue already holds {MAX_QUEUED} waiting requests: "
                           "let the daemon work through them first ('fednode pin --status')")
    raw = txn.kv_get(DB, _SEQ)
    request.seq = struct.unpack(">Q", raw)[0] + 1 if raw else 1
    txn.kv_put(DB, _SEQ, struct.pack(">Q", request.seq))
    save(txn, request)
    return request


def save(txn: Txn, request: PinRequest) -> None:
    txn.kv_put(DB, request.key(), json.dumps(request.to_json(), sort_keys=True).encode())


def find(txn: Txn, kubo: str, commit: str) -> PinRequest | None:
    """The queued request for this commit on this Kubo, if any (a second `pin` adds nothing)."""
    for r in items(txn):
        if r.kubo == kubo and r.commit == commit and r.state == "queued":
            return r
    return None


def prune(txn: Txn, keep: int = KEEP_FINISHED) -> int:
    """Drop the oldest finished (pinned or failed) requests beyond the newest ``keep``; the number dropped."""
    finished = [key for key, raw in txn.kv_items(DB, _ITEM) if (r := _load(raw)) is not None and r.state != "queued"]
    drop = finished[:max(0, len(finished) - keep)]  # keys sort by sequence number: oldest first
    for key in drop:
        txn.kv_delete(DB, key)
    return len(drop)
