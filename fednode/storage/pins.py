"""Pins: UnixFS files (``fednode ipfs add`` / ``ipfs get``) whose blocks ``gc`` keeps.

One entry per root in the ``meta`` database under ``pin/<CID text>``, its value a small JSON
object (size in bytes, where it came from, when). ``workflows/fsck.mark`` walks every pinned root.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from fednode.storage.store import Txn
from protocol.multiformats import CID, FormatError

_DB = "meta"
_PREFIX = b"pin/"


@dataclass(frozen=True)
class Pin:
    root: CID
    size: int
    source: str  # "add", "get" or "nft" (an NFT's metadata document and image)
    time: float


def pin(txn: Txn, root: CID, size: int, source: str) -> None:
    value = json.dumps({"size": size, "source": source, "time": time.time()}).encode()
    txn.kv_put(_DB, _PREFIX + str(root).encode(), value)


def unpin(txn: Txn, root: CID) -> bool:
    """Remove the pin of ``root``; False when there was none."""
    return txn.kv_delete(_DB, _PREFIX + str(root).encode())


def pins(txn: Txn) -> list[Pin]:
    """Every pin, in CID-text order (an unreadable entry is skipped: it pins nothing)."""
    out: list[Pin] = []
    for key, value in txn.kv_items(_DB, _PREFIX):
        try:
            root = CID.parse(key[len(_PREFIX):].decode())
            info = json.loads(value)
            out.append(Pin(root, int(info["size"]), str(info["source"]), float(info["time"])))
        except (FormatError, ValueError, KeyError, TypeError):
            continue
    return out
