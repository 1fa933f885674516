"""Repositories in the store: their records, lookup by name or id, and the one place that writes a
new repository's records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednode.errors import Corrupt, NotFound
from fednode.history import objstore, refs, refstore
from fednode.storage.store import Txn
from protocol.multiformats import CID, FormatError, b58decode, b58encode

DEFAULT_BRANCH = refs.DEFAULT_BRANCH
DEFAULT_SCALE_BITS = 24
DEFAULT_SNAPSHOT_INTERVAL = 8
_MAX_KEY = 500  # LMDB's key limit is 511 bytes: a longer (or empty) name is no key at all


@dataclass(frozen=True)
class RepoInfo:
    name: str
    repo_id: bytes
    genesis: CID
    settings: dict[str, Any]

    @property
    def scale_bits(self) -> int:
        return int(self.settings["scale_bits"])

    @property
    def snapshot_interval(self) -> int:
        return int(self.settings["snapshot_interval"])

    @property
    def genesis_visibility(self) -> str:
        """The visibility chosen at creation ("private" or "public"; a genesis from before
        visibility existed is public). ``visibility(txn, repo_id)`` adds a later publish decision."""
        return str(self.settings.get("visibility", "public"))


def repo_id_text(repo_id: bytes) -> str:
    return b58encode(repo_id)


def parse_repo_id(text: str) -> bytes | None:
    try:
        raw = b58decode(text)
    except FormatError:
        return None
    return raw if len(raw) == 32 else None


def repo_info(txn: Txn, name: str, repo_id: bytes) -> RepoInfo:
    """A repository's record, its settings read off its genesis commit."""
    genesis = refstore.genesis(txn, repo_id)
    if genesis is None:
        raise Corrupt(f"repository {name} has no genesis ref")
    return RepoInfo(name, repo_id, genesis, objstore.load_commit(txn, genesis).settings)


def all_repos(txn: Txn) -> list[RepoInfo]:
    return [repo_info(txn, name, rid) for name, rid in sorted(txn.list_repos().items())]


def find_repo(txn: Txn, name_or_id: str) -> RepoInfo:
    """The repository named ``name_or_id``, or whose id it spells; NotFound otherwise."""
    repo_id = txn.get_repo(name_or_id) if 0 < len(name_or_id.encode(errors="replace")) <= _MAX_KEY else None
    if repo_id is not None:
        return repo_info(txn, name_or_id, repo_id)
    wanted = parse_repo_id(name_or_id)
    for name, rid in txn.list_repos().items():
        if rid == wanted:
            return repo_info(txn, name, rid)
    raise NotFound(f"unknown repository {name_or_id!r} (see 'fednode repo list')")


def visibility(txn: Txn, repo_id: bytes) -> str | None:
    """A repository's visibility now: "public" when its genesis says so or its owner published it
    (the ``published`` ref), "private" otherwise; None for a repository this store does not hold."""
    genesis = refstore.genesis(txn, repo_id)
    if genesis is None:
        return None
    if txn.get_ref(repo_id, refs.PUBLISHED) is not None:
        return "public"
    return str(objstore.load_commit(txn, genesis).settings.get("visibility", "public"))


def is_private(txn: Txn, repo_id: bytes) -> bool:
    """Whether only members may read ``repo_id`` (False for a repository this store does not hold)."""
    return visibility(txn, repo_id) == "private"


def register_repo(txn: Txn, name: str, repo_id: bytes, genesis: CID) -> None:
    """Record repository ``name`` (id ``repo_id``, genesis commit ``genesis``): its name, its
    genesis, a ``main`` branch at the genesis and ``HEAD`` on it. Used by ``repo create`` and by a
    clone; the caller checks that the name is free."""
    txn.put_repo(name, repo_id)
    txn.set_ref(repo_id, refs.GENESIS, bytes(genesis))
    refstore.set_branch(txn, repo_id, DEFAULT_BRANCH, genesis)
    refstore.set_current_branch(txn, repo_id, DEFAULT_BRANCH)
