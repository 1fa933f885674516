"""Repositories in the store: the one place that writes a new repository's records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fednode.history import refs

if TYPE_CHECKING:
    from fednode.storage.store import Txn
    from protocol.multiformats import CID

DEFAULT_BRANCH = "main"
GENESIS_REF = "genesis"


def register_repo(txn: Txn, name: str, repo_id: bytes, genesis: CID) -> None:
    """Record repository ``name`` (id ``repo_id``, genesis commit ``genesis``): its name, its
    genesis, a ``main`` branch at the genesis and ``HEAD`` on it. Used by ``repo create`` and by a
    clone; the caller checks that the name is free."""
    txn.put_repo(name, repo_id)
    txn.set_ref(repo_id, GENESIS_REF, bytes(genesis))
    txn.set_ref(repo_id, refs.branch(DEFAULT_BRANCH), bytes(genesis))
    txn.set_ref(repo_id, refs.HEAD, DEFAULT_BRANCH.encode())
