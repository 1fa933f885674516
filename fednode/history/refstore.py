"""Refs as a store transaction holds them: reading, writing, and logging every branch move.

Names come from ``refs`` (the layout); this module adds the store. A branch write always names
its reflog (``Txn.set_ref(..., reflog=branch)``): the store logs what it is told to and knows no
ref layout itself.
"""

from __future__ import annotations

import json

from fednode.errors import FednodeError, NotFound
from fednode.history import refs
from fednode.storage.store import Txn
from protocol.multiformats import CID

REMOTE_NAMES_META = "remotes"  # meta key: JSON {remote name: peer id} ('fednode remote add')


def branch_head(txn: Txn, repo_id: bytes, branch: str) -> CID | None:
    """Where ``branch`` points; None for no such branch."""
    raw = txn.get_ref(repo_id, refs.branch(branch))
    return None if raw is None else CID.from_bytes(raw)


def set_branch(txn: Txn, repo_id: bytes, branch: str, target: CID, reason: str | None = None) -> None:
    """Point ``branch`` at ``target`` (creating it), logged in the branch's reflog (``reason``: see
    ``Txn.set_ref``)."""
    txn.set_ref(repo_id, refs.branch(branch), bytes(target), reason=reason, reflog=branch)


def current_branch(txn: Txn, repo_id: bytes) -> str:
    """The branch ``HEAD`` names (``main`` when unset)."""
    head = txn.get_ref(repo_id, refs.HEAD)
    return head.decode() if head else refs.DEFAULT_BRANCH


def set_current_branch(txn: Txn, repo_id: bytes, branch: str) -> None:
    txn.set_ref(repo_id, refs.HEAD, branch.encode())


def genesis(txn: Txn, repo_id: bytes) -> CID | None:
    raw = txn.get_ref(repo_id, refs.GENESIS)
    return None if raw is None else CID.from_bytes(raw)


def named_refs(txn: Txn, repo_id: bytes, prefix: str) -> dict[str, CID]:
    """The refs under ``prefix`` (``refs.BRANCHES``, ``refs.TAGS``...), by their name after it."""
    return {name[len(prefix):]: CID.from_bytes(raw) for name, raw in txn.list_refs(repo_id, prefix).items()}


def peer_refs(txn: Txn, repo_id: bytes) -> dict[str, CID]:
    """Heads announced by peers and merge proposals, by their full ref name."""
    out: dict[str, CID] = {}
    for prefix in refs.PEER_PREFIXES:
        out.update({prefix + name: cid for name, cid in named_refs(txn, repo_id, prefix).items()})
    return out


def _ref(kind: str, name: str) -> str:
    return refs.branch(name) if kind == "branch" else refs.tag(name)


def create_ref(txn: Txn, repo_id: bytes, kind: str, name: str, target: CID) -> None:
    """A new ``kind`` ("branch" or "tag") ref; refused when it exists. A branch is logged in its reflog."""
    ref = _ref(kind, name)
    if txn.get_ref(repo_id, ref) is not None:
        hint = " ('fednode branch -f NAME REV' moves it)" if kind == "branch" else ""
        raise FednodeError(f"{kind} {name!r} already exists{hint}")
    txn.set_ref(repo_id, ref, bytes(target), reflog=name if kind == "branch" else None)


def delete_ref(txn: Txn, repo_id: bytes, kind: str, name: str) -> None:
    """Delete a ``kind`` ("branch" or "tag") ref, a branch's deletion logged; NotFound when there is none."""
    if not txn.delete_ref(repo_id, _ref(kind, name), reflog=name if kind == "branch" else None):
        raise NotFound(f"unknown {kind} {name!r}")


def remote_names(txn: Txn) -> dict[str, str]:
    """Remote names (``fednode remote add``): name -> peer id; a damaged record reads as none."""
    raw = txn.get_meta(REMOTE_NAMES_META)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def set_remote_names(txn: Txn, names: dict[str, str]) -> None:
    txn.set_meta(REMOTE_NAMES_META, json.dumps(names, sort_keys=True).encode())


def named_ref(txn: Txn, repo_id: bytes, name: str) -> CID | None:
    """What ``name`` names in a revision: a branch, else a tag, else a peer's ref (stored with the peer
    id, or with a remote name for the peer)."""
    raw = txn.get_ref(repo_id, refs.branch(name)) or txn.get_ref(repo_id, refs.tag(name))
    if raw is None and refs.is_peer_ref(name):
        raw = txn.get_ref(repo_id, name) or txn.get_ref(repo_id, refs.expand_ref(name, remote_names(txn)))
    return None if raw is None else CID.from_bytes(raw)
