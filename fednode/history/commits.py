"""Making commits: a repository's first (``create_repo``) and a new state on a branch (``commit``).

Each becomes visible in one store transaction: the tensor blocks, the manifest, the signed commit
and the branch move (a compare-and-swap against the head it was made from)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fednode.errors import FednodeError, NotFound
from fednode.history import objstore, refs, refstore, repos, states
from fednode.history.repos import DEFAULT_SCALE_BITS, DEFAULT_SNAPSHOT_INTERVAL, RepoInfo, register_repo
from fednode.history.states import EncodeOptions, TensorError
from fednode.identity import Identity
from fednode.storage.files import BlockSink
from fednode.storage.netstate import controller_in
from fednode.storage.store import Store, Txn
from fednode.tensors import encodings
from fednode.tensors.modelio import ModelSource
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import VISIBILITIES, Commit, Manifest, TensorEntry


@dataclass
class CommitResult:
    cid: CID
    commit: Commit
    new_bytes: int
    total_bytes: int
    max_quantization_error: float  # the largest TensorError.max_abs; 0.0 when lossless
    encoding: str = encodings.DEFAULT
    errors: dict[str, TensorError] = field(default_factory=dict)  # lossy encodings only: every float tensor

    @property
    def lossless(self) -> bool:
        """Every tensor of the commit stores exactly the bytes it was given."""
        return all(e.max_abs == 0.0 and e.max_rel == 0.0 for e in self.errors.values())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_new_repo(store: Store, identity: Identity | None, name: str, scale_bits: int,
                    snapshot_interval: int) -> Identity:
    refs.check_name("repository", name)
    if ":" in name:
        raise FednodeError("repository names cannot contain ':'")
    if not 0 <= scale_bits <= 60:
        raise FednodeError("--scale-bits must be in 0..60")
    if not 1 <= snapshot_interval <= 1024:
        raise FednodeError("--snapshot-interval must be in 1..1024")
    if identity is None:
        raise FednodeError("no identity: run 'fednode init' first")
    with store.read() as txn:
        if txn.get_repo(name) is not None:
            raise FednodeError(f"repository {name!r} already exists")
    return identity


def create_repo(
    store: Store,
    identity: Identity | None,
    name: str,
    source: ModelSource,
    message: str = "initial weights",
    scale_bits: int = DEFAULT_SCALE_BITS,
    snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL,
    metrics: dict[str, float] | None = None,
    visibility: str = "private",
    zk_policy: dict[str, Any] | None = None,
) -> tuple[RepoInfo, CommitResult]:
    """A new repository whose genesis commit holds ``source`` (every tensor a snapshot) and records
    its ``visibility``: "private" (the default: only members read it) or "public"; ``zk_policy``
    (``fednode.zk.policy.settings_entry``) goes in its settings as ``"zk"``: the update proofs its
    commits must carry, fixed for good (the repository id covers it)."""
    if visibility not in VISIBILITIES:
        raise FednodeError(f"visibility must be 'private' or 'public', not {visibility!r}")
    identity = _check_new_repo(store, identity, name, scale_bits, snapshot_interval)
    settings = {"name": name, "scale_bits": scale_bits, "snapshot_interval": snapshot_interval,
                "visibility": visibility}
    if zk_policy is not None:
        settings["zk"] = zk_policy
    sink = BlockSink(store, expected_bytes=sum(t.nbytes for t in source.tensors.values()))
    entries = {}
    try:
        for tname, tinfo in source.tensors.items():
            entries[tname] = states.snapshot(sink, tinfo, source.chunks(tname))
    except BaseException:
        sink.abort()
        raise
    manifest = Manifest(entries)
    commit = objstore.sign(identity, Commit(
        repo=None, parents=(), kind="init", weights=CID.hash(DAG_CBOR, manifest.encode()),
        author=identity.public_key, time_ms=_now_ms(), message=message, metrics=metrics or {},
        info={"settings": settings},
    ))
    repo_id = commit.commit_hash()
    cid = commit.cid()

    def final(txn: Txn) -> int:
        if txn.get_repo(name) is not None:
            raise FednodeError(f"repository {name!r} already exists")
        new = objstore.put_objects(txn, manifest, commit)
        register_repo(txn, name, repo_id, cid)
        txn.index_commit(cid, repo_id, repo_id)
        return new

    new = sink.finish(final)
    info = RepoInfo(name, repo_id, cid, settings)
    return info, CommitResult(cid, commit, sink.new_bytes + new, sink.total_bytes, 0.0)


def commit(
    store: Store,
    identity: Identity | None,
    repo: RepoInfo,
    source: ModelSource,
    message: str,
    branch: str | None = None,
    metrics: dict[str, float] | None = None,
    kind: str = "update",
    extra_parents: tuple[CID, ...] = (),
    info: dict[str, Any] | None = None,
    expected_head: CID | None = None,
    options: EncodeOptions | None = None,
    finish: Callable[[Commit], Commit] | None = None,
) -> CommitResult:
    """Commit ``source`` as the new state of ``branch`` (HEAD's when None; see ``History.commit``).
    ``finish`` gets the complete unsigned commit and returns it as it is to be signed (an update
    proof bound to its hash is added there); raising stores nothing."""
    options = options or EncodeOptions()
    if options.encoding not in encodings.NAMES:
        raise FednodeError(f"unknown update encoding {options.encoding!r}; valid: {', '.join(encodings.NAMES)}")
    if identity is None:
        raise FednodeError("no identity: run 'fednode init' first")
    with store.read() as txn:
        branch = branch or refstore.current_branch(txn, repo.repo_id)
        head = refstore.branch_head(txn, repo.repo_id, branch)
        if head is None:
            raise NotFound(f"unknown branch {branch!r} in repository {repo.name}")
        if expected_head is not None and head != expected_head:
            raise FednodeError(f"branch {branch!r} moved to {head} while committing")
        parent = objstore.load_commit(txn, head)
        parent_manifest = objstore.load_manifest(txn, parent.weights)
    states.check_compatible(parent_manifest, source)
    sink = BlockSink(store, expected_bytes=2 * sum(t.nbytes for t in source.tensors.values()))
    entries: dict[str, TensorEntry] = {}
    errors: dict[str, TensorError] = {}
    try:
        for name, tinfo in source.tensors.items():
            entry, err = states.encode_tensor(store, sink, repo.scale_bits, repo.snapshot_interval, head,
                                              parent_manifest.tensors[name], tinfo, source, options)
            entries[name] = entry
            if err is not None:
                errors[name] = err
    except BaseException:
        sink.abort()
        raise
    manifest = Manifest(entries)
    parents = (head, *extra_parents)
    try:
        with store.read() as txn:
            parent_hashes = tuple(objstore.load_commit(txn, p).commit_hash() for p in parents)
        unsigned = Commit(
            repo=repo.repo_id, parents=parents, parent_hashes=parent_hashes, kind=kind,
            weights=CID.hash(DAG_CBOR, manifest.encode()), author=identity.public_key,
            time_ms=max(_now_ms(), parent.time_ms), message=message, metrics=metrics or {}, info=info or {},
        )
        signed = objstore.sign(identity, finish(unsigned) if finish is not None else unsigned)
    except BaseException:
        sink.abort()
        raise
    cid = signed.cid()

    def final(txn: Txn) -> int:
        if refstore.branch_head(txn, repo.repo_id, branch) != head:  # compare-and-swap: another writer won
            raise FednodeError(f"branch {branch!r} moved while committing; nothing was stored")
        new = objstore.put_objects(txn, manifest, signed)
        refstore.set_branch(txn, repo.repo_id, branch, cid)
        txn.index_commit(cid, repo.repo_id, signed.commit_hash())
        return new

    new = sink.finish(final)
    max_err = max((e.max_abs for e in errors.values()), default=0.0)
    return CommitResult(cid, signed, sink.new_bytes + new, sink.total_bytes, max_err, options.encoding, errors)


PUBLISH_MESSAGE = "make the repository public"


def check_publish(txn: Txn, identity: Identity | None, repo: RepoInfo) -> Identity:
    """Refuse unless ``identity`` may publish ``repo`` now: its owner (the NFT's recorded holder once
    the repository is bound to one, else the genesis author), and the repository still private."""
    if identity is None:
        raise FednodeError("no identity: run 'fednode init' first")
    ctl = controller_in(txn, repo.repo_id)
    if ctl is not None and ctl.holder != identity.public_key:
        raise FednodeError(f"only the holder of {repo.name}'s NFT can make it public")
    if ctl is None and objstore.load_commit(txn, repo.genesis).author != identity.public_key:
        raise FednodeError(f"only the owner of {repo.name} (its genesis author) can make it public")
    if repos.visibility(txn, repo.repo_id) == "public":
        raise FednodeError(f"{repo.name} is already public")
    return identity


def publish(store: Store, identity: Identity | None, repo: RepoInfo, branch: str | None = None,
            message: str = PUBLISH_MESSAGE, zk: dict[str, Any] | None = None, expected_head: CID | None = None,
            finish: Callable[[Commit], Commit] | None = None) -> CommitResult:
    """The owner's decision to make private ``repo`` public, for good: an ``update`` commit on
    ``branch`` (HEAD's when None) whose tensors are all its head's (``same``: nothing stored) and
    whose info is {"visibility": "public"} (and ``zk``, made for ``expected_head``, in a repository
    that requires update proofs; ``finish`` as in ``commit``); the commit, the branch move and the
    ``published`` ref are one store transaction."""
    with store.read() as txn:
        identity = check_publish(txn, identity, repo)
        branch = branch or refstore.current_branch(txn, repo.repo_id)
        head = refstore.branch_head(txn, repo.repo_id, branch)
        if head is None:
            raise NotFound(f"unknown branch {branch!r} in repository {repo.name}")
        if expected_head is not None and head != expected_head:
            raise FednodeError(f"branch {branch!r} moved while publishing; nothing was stored")
        parent = objstore.load_commit(txn, head)
        parent_manifest = objstore.load_manifest(txn, parent.weights)
    # the head's manifest itself cannot be reused: its deltas are relative to the head's own parent
    manifest = Manifest({name: TensorEntry(e.dtype, e.shape, "same", e.depth + 1, state=e.state)
                         for name, e in parent_manifest.tensors.items()})
    unsigned = Commit(
        repo=repo.repo_id, parents=(head,), parent_hashes=(parent.commit_hash(),), kind="update",
        weights=CID.hash(DAG_CBOR, manifest.encode()), author=identity.public_key,
        time_ms=max(_now_ms(), parent.time_ms), message=message, metrics={},
        info={"visibility": "public", **({"zk": zk} if zk is not None else {})},
    )
    signed = objstore.sign(identity, finish(unsigned) if finish is not None else unsigned)
    cid = signed.cid()
    with store.write() as txn:
        check_publish(txn, identity, repo)  # still private: nobody published meanwhile
        if refstore.branch_head(txn, repo.repo_id, branch) != head:
            raise FednodeError(f"branch {branch!r} moved while publishing; nothing was stored")
        new = objstore.put_objects(txn, manifest, signed)
        refstore.set_branch(txn, repo.repo_id, branch, cid)
        txn.index_commit(cid, repo.repo_id, signed.commit_hash())
        txn.set_ref(repo.repo_id, refs.PUBLISHED, bytes(cid))
    return CommitResult(cid, signed, new, 0, 0.0)
