"""The model history of a node's store: repositories, signed commits and their tensor states,
branches, tags and peers' refs, revisions and walks over the commit graph.

``History`` is a small facade over the modules that do the work: ``objects`` (load, sign, put
commits and manifests), ``repos``, ``refs`` (the ref layout) and ``refstore`` (refs in the store,
branch moves logged), ``commits`` (making commits), ``states`` (rebuilding and encoding tensors),
``revisions``, ``walk`` and ``integrity`` (checks of one commit). Operations over whole histories
(checkout, diff, revert, verify, fsck, gc, merge) are in ``fednode.workflows``.

This layer knows nothing about the network. It stores verified objects only, and every visible
change (a commit with its manifest and the branch move) is one store transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fednode.errors import FednodeError, NotFound
from fednode.history import commits, integrity, objstore, refs, refstore, repos, revisions, states
from fednode.history import walk as graph_walk
from fednode.history.commits import CommitResult
from fednode.history.refs import check_name
from fednode.history.repos import (
    DEFAULT_BRANCH,
    DEFAULT_SCALE_BITS,
    DEFAULT_SNAPSHOT_INTERVAL,
    RepoInfo,
    parse_repo_id,
    repo_id_text,
)
from fednode.history.states import EncodeOptions, TensorError, tensor_error
from fednode.identity import Identity
from fednode.lazy import lazy_import
from fednode.storage.store import Store, Txn
from fednode.tensors import encodings
from fednode.tensors.modelio import ModelSource
from protocol.multiformats import CID
from protocol.objects import Commit, Manifest, TensorEntry

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")

__all__ = [
    "DEFAULT_BRANCH", "DEFAULT_SCALE_BITS", "DEFAULT_SNAPSHOT_INTERVAL", "CommitResult",
    "History", "RepoInfo", "TensorError", "check_name", "parse_repo_id", "repo_id_text", "tensor_error",
]


class History:
    """Repositories, commits, refs and revisions in one store; commits are signed by ``identity``."""

    def __init__(self, store: Store, identity: Identity | None = None) -> None:
        self.store = store
        self.identity = identity

    # --- objects -------------------------------------------------------------
    def load_commit(self, cid: CID, txn: Txn | None = None) -> Commit:
        if txn is not None:
            return objstore.load_commit(txn, cid)
        with self.store.read() as rtxn:
            return objstore.load_commit(rtxn, cid)

    def load_manifest(self, cid: CID, txn: Txn | None = None) -> Manifest:
        if txn is not None:
            return objstore.load_manifest(txn, cid)
        with self.store.read() as rtxn:
            return objstore.load_manifest(rtxn, cid)

    def _signed(self, commit: Commit) -> Commit:
        return objstore.sign(self.identity, commit)

    def _put_objects(self, txn: Txn, manifest: Manifest, commit: Commit) -> int:
        return objstore.put_objects(txn, manifest, commit)

    def verify_commit_signature(self, commit: Commit) -> bool:
        return objstore.signature_valid(commit)

    def check_commit(self, cid: CID, txn: Txn, check_tensors: bool = True, rehash: bool = True) -> list[str]:
        """Problems with one commit (see ``integrity.check_commit``)."""
        return integrity.check_commit(txn, cid, check_tensors, rehash)

    # --- repositories --------------------------------------------------------
    def repos(self) -> list[RepoInfo]:
        with self.store.read() as txn:
            return repos.all_repos(txn)

    def repo(self, name_or_id: str) -> RepoInfo:
        with self.store.read() as txn:
            return repos.find_repo(txn, name_or_id)

    def repo_by_id(self, repo_id: bytes) -> RepoInfo:
        return self.repo(repo_id_text(repo_id))

    def create_repo(
        self,
        name: str,
        source: ModelSource,
        message: str = "initial weights",
        scale_bits: int = DEFAULT_SCALE_BITS,
        snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL,
        metrics: dict[str, float] | None = None,
        visibility: str = "private",
        zk_policy: dict[str, Any] | None = None,
    ) -> tuple[RepoInfo, CommitResult]:
        """A new repository whose genesis commit holds ``source``, with ``main`` on it; private (only
        members read it) unless ``visibility`` is "public"; ``zk_policy``: its settings' "zk" entry."""
        return commits.create_repo(self.store, self.identity, name, source, message, scale_bits,
                                   snapshot_interval, metrics, visibility, zk_policy)

    def visibility(self, repo_id: bytes) -> str | None:
        """"private" or "public" now (a publish decision counts); None for an unknown repository."""
        with self.store.read() as txn:
            return repos.visibility(txn, repo_id)

    def is_private(self, repo_id: bytes) -> bool:
        with self.store.read() as txn:
            return repos.is_private(txn, repo_id)

    def check_publish(self, repo: RepoInfo) -> None:
        """Refuse (one line) unless this node's identity may make ``repo`` public now."""
        with self.store.read() as txn:
            commits.check_publish(txn, self.identity, repo)

    def publish(self, repo: RepoInfo, branch: str | None = None) -> CommitResult:
        """The owner's signed decision to make private ``repo`` public, for good (see
        ``commits.publish``): a commit on ``branch`` that changes no tensor, and the ``published`` ref."""
        return commits.publish(self.store, self.identity, repo, branch)

    def _publish(self, repo: RepoInfo, branch: str, zk: dict[str, Any], expected_head: CID,
                 finish: Callable[[Commit], Commit]) -> CommitResult:
        """``publish`` with an update proof (a repository that requires proofs: ``ZkHistory.publish``)."""
        return commits.publish(self.store, self.identity, repo, branch, zk=zk, expected_head=expected_head,
                               finish=finish)

    def published(self, repo_id: bytes) -> CID | None:
        """The commit that made ``repo_id`` public, when its owner published it."""
        with self.store.read() as txn:
            raw = txn.get_ref(repo_id, refs.PUBLISHED)
        return CID.from_bytes(raw) if raw else None

    # --- committing and tensor states ----------------------------------------
    def commit(
        self,
        repo: RepoInfo,
        source: ModelSource,
        message: str,
        branch: str | None = None,
        metrics: dict[str, float] | None = None,
        kind: str = "update",
        extra_parents: tuple[CID, ...] = (),
        info: dict[str, Any] | None = None,
        expected_head: CID | None = None,
        exact: bool = False,
        encoding: str = encodings.DEFAULT,
        topk_fraction: float = encodings.DEFAULT_TOPK_FRACTION,
        compress: bool = True,
        finish: Callable[[Commit], Commit] | None = None,
    ) -> CommitResult:
        """Commit ``source`` as the new state of ``branch`` (deltas against its head).

        The default ``xor`` encoding stores every tensor bit for bit (a byte-grouped XOR
        against the parent). A lossy ``encoding`` (fixed: the repository grid, fp16, int8,
        topk) is used only when asked for; its per-tensor error is in ``CommitResult.errors``,
        and with ``exact`` a tensor whose lossy delta would not rebuild the very same bytes is
        stored as a snapshot. Delta payloads are zstd-compressed when that saves at least 1/8
        (``compress``). ``finish``: the last change to the unsigned commit before it is signed
        (``commits.commit``).
        """
        options = EncodeOptions(encoding, exact, topk_fraction, compress)
        return commits.commit(self.store, self.identity, repo, source, message, branch, metrics, kind,
                              extra_parents, info, expected_head, options, finish)

    def tensor_array(self, commit_cid: CID, name: str, txn: Txn | None = None) -> np.ndarray:
        """One tensor of a commit's state, rebuilt exactly (flat, safetensors dtype)."""
        if txn is not None:
            return states.tensor_array(txn, commit_cid, name)
        with self.store.read() as rtxn:
            return states.tensor_array(rtxn, commit_cid, name)

    def state(self, commit_cid: CID) -> dict[str, tuple[TensorEntry, np.ndarray]]:
        """Every tensor of a commit: its manifest entry and its rebuilt array."""
        with self.store.read() as txn:
            manifest = objstore.load_manifest(txn, objstore.load_commit(txn, commit_cid).weights)
            return {name: (e, states.tensor_array(txn, commit_cid, name)) for name, e in manifest.tensors.items()}

    # --- refs ------------------------------------------------------------------
    def current_branch(self, repo: RepoInfo) -> str:
        with self.store.read() as txn:
            return refstore.current_branch(txn, repo.repo_id)

    def branch_head(self, repo: RepoInfo, branch: str) -> CID:
        with self.store.read() as txn:
            head = refstore.branch_head(txn, repo.repo_id, branch)
        if head is None:
            raise NotFound(f"unknown branch {branch!r} in repository {repo.name}")
        return head

    def branches(self, repo: RepoInfo) -> dict[str, CID]:
        with self.store.read() as txn:
            return refstore.named_refs(txn, repo.repo_id, refs.BRANCHES)

    def tags(self, repo: RepoInfo) -> dict[str, CID]:
        with self.store.read() as txn:
            return refstore.named_refs(txn, repo.repo_id, refs.TAGS)

    def remote_refs(self, repo: RepoInfo) -> dict[str, CID]:
        """Heads announced by peers (``remotes/<peer>/<branch>``) and merge proposals
        (``proposals/<peer>/<branch>``), as the daemon recorded them."""
        with self.store.read() as txn:
            return refstore.peer_refs(txn, repo.repo_id)

    def create_branch(self, repo: RepoInfo, name: str, start: CID) -> None:
        self._create_ref(repo, "branch", name, start)

    def delete_branch(self, repo: RepoInfo, name: str) -> None:
        if name == self.current_branch(repo):
            raise FednodeError(f"cannot delete the current branch {name!r}; switch first")
        with self.store.write() as txn:
            refstore.delete_ref(txn, repo.repo_id, "branch", name)

    def switch_branch(self, repo: RepoInfo, name: str) -> None:
        self.branch_head(repo, name)
        with self.store.write() as txn:
            refstore.set_current_branch(txn, repo.repo_id, name)

    def create_tag(self, repo: RepoInfo, name: str, target: CID) -> None:
        self._create_ref(repo, "tag", name, target)

    def delete_tag(self, repo: RepoInfo, name: str) -> None:
        with self.store.write() as txn:
            refstore.delete_ref(txn, repo.repo_id, "tag", name)

    def _create_ref(self, repo: RepoInfo, kind: str, name: str, target: CID) -> None:
        check_name(kind, name)
        self.check_in_repo(repo, target)
        with self.store.write() as txn:
            refstore.create_ref(txn, repo.repo_id, kind, name, target)

    def check_in_repo(self, repo: RepoInfo, cid: CID) -> None:
        """NotFound unless ``cid`` is a commit of ``repo`` held in the store."""
        with self.store.read() as txn:
            if txn.commit_repo(cid) != repo.repo_id or not txn.has_block(cid):  # gc keeps index entries
                raise NotFound(f"commit {cid} is not in repository {repo.name}")

    # --- revisions and walks ---------------------------------------------------
    def resolve(self, rev: str, repo: RepoInfo | None = None) -> tuple[RepoInfo, CID]:
        """Resolve ``[REPO:]BASE[~N|^N]...`` (BASE: HEAD, branch, BRANCH@{N}, tag, peer ref, CID or
        unique CID prefix); see ``revisions``."""
        with self.store.read() as txn:
            return revisions.resolve(txn, rev, repo)

    def walk(self, heads: list[CID], stop: Callable[[CID], bool] | None = None) -> Iterator[tuple[CID, Commit]]:
        """Commits reachable from ``heads``, children before parents, newest first.

        Commits for which ``stop`` is true are left out and not descended into.
        """
        with self.store.read() as txn:
            found = graph_walk.ancestry(txn, heads, stop)
        yield from graph_walk.children_first(found)

    def is_ancestor(self, old: CID, new: CID) -> bool:
        """Whether ``old`` is ``new`` or one of its ancestors (reads only the commits in between
        for a fast-forward)."""
        with self.store.read() as txn:
            return graph_walk.is_ancestor(txn, old, new)

    def merge_base(self, cids: list[CID]) -> CID | None:
        """The newest commit that is an ancestor of all ``cids`` (None if unrelated)."""
        with self.store.read() as txn:
            return graph_walk.merge_base(txn, cids)
