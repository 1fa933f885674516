"""Walking fednode's DAG: the child CIDs of one block, whatever its codec (pure, no I/O)."""

from __future__ import annotations

from typing import Any

from protocol import dagcbor
from protocol.multiformats import CID, DAG_CBOR, DAG_PB
from protocol.unixfs import decode_node, decode_pb


def _cids(value: Any, out: list[CID]) -> None:
    if isinstance(value, CID):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _cids(v, out)
    elif isinstance(value, list):
        for v in value:
            _cids(v, out)


def links(cid: CID, block: bytes) -> list[CID]:
    """Children of a block: every CID link in a DAG-CBOR block (commits, manifests), the links of a
    DAG-PB UnixFS node, none for a raw leaf. Raises FormatError on a malformed block."""
    if cid.codec == DAG_CBOR:
        out: list[CID] = []
        _cids(dagcbor.decode(block), out)
        return out
    if cid.codec == DAG_PB:
        return decode_node(block)[0]
    return []


def all_links(cid: CID, block: bytes) -> list[CID]:
    """Children as IPLD sees them: ``links``, except that a DAG-PB node of any kind (a UnixFS
    directory's entries too) gives all its links. For reachability (gc, fsck); fetching a commit's
    DAG keeps ``links``, which refuses anything but file nodes."""
    if cid.codec == DAG_PB:
        return [link.cid for link in decode_pb(block)[0]]
    return links(cid, block)
