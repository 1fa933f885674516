"""The model history: repositories, signed commits, branches, tags, checkout, revert.

This layer knows nothing about the network. It stores verified objects only,
and every visible change (a commit with its manifest and the branch move) is
one store transaction.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.history.repos import DEFAULT_BRANCH, register_repo
from fednode.identity import Identity, verify_signature
from fednode.lazy import lazy_import
from fednode.storage.files import BlockSink, check_file, read_array, read_file
from fednode.storage.store import Store, Txn
from fednode.tensors import encodings, fixedpoint
from fednode.tensors.modelio import ModelSource, TensorInfo, np_dtype
from protocol.multiformats import CID, DAG_CBOR, FormatError, b58decode, b58encode
from protocol.objects import FLOAT_DTYPES, Commit, Manifest, TensorEntry
from protocol.unixfs import add_bytes

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")

REMOTE_PREFIXES = ("remotes/", "proposals/")
DEFAULT_SCALE_BITS = 24
DEFAULT_SNAPSHOT_INTERVAL = 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
_REV = re.compile(r"^(?P<base>[^~^]+)(?P<ops>(?:[~^][0-9]*)*)$")


def _named_remote(txn: Txn, ref: str) -> str:
    """``remotes/NAME/b`` or ``proposals/NAME/b`` with NAME a ``fednode remote add`` name, as stored
    (with the peer id); any other ref unchanged."""
    import json

    raw = txn.get_meta("remotes")
    try:
        names = json.loads(raw) if raw else {}
    except ValueError:
        return ref
    for prefix in REMOTE_PREFIXES:
        name, sep, rest = ref.removeprefix(prefix).partition("/")
        if ref.startswith(prefix) and sep and isinstance(names, dict) and isinstance(names.get(name), str):
            return f"{prefix}{names[name]}/{rest}"
    return ref


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name) or ".." in name or name.endswith("/") or name.endswith(".lock"):
        raise FednodeError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '-', '/'")
    return name


def repo_id_text(repo_id: bytes) -> str:
    return b58encode(repo_id)


def parse_repo_id(text: str) -> bytes | None:
    try:
        raw = b58decode(text)
    except FormatError:
        return None
    return raw if len(raw) == 32 else None


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


@dataclass(frozen=True)
class TensorError:
    """How far a lossy encoding moved one tensor from the bytes it was given (float64 terms).

    ``max_rel`` is the largest |stored - given| / |given| over the elements; inf when a given 0
    comes back non-zero."""

    max_abs: float
    max_rel: float


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


def tensor_error(stored: np.ndarray, given: np.ndarray, dtype: str) -> TensorError:
    """Max absolute and relative error of ``stored`` against ``given`` (same dtype, finite values)."""
    if given.size == 0 or np.array_equal(stored.view(np.uint8), given.view(np.uint8)):
        return TensorError(0.0, 0.0)
    x, y = fixedpoint.to_f64(given, dtype), fixedpoint.to_f64(stored, dtype)
    diff = np.abs(y - x)
    mag = np.abs(x)
    nonzero = mag > 0
    rel = float(np.max(diff[nonzero] / mag[nonzero], initial=0.0))
    if (diff[~nonzero] > 0).any():
        rel = float("inf")
    return TensorError(float(diff.max()), rel)


class History:
    def __init__(self, store: Store, identity: Identity | None = None) -> None:
        self.store = store
        self.identity = identity

    # --- objects -------------------------------------------------------------
    def load_commit(self, cid: CID, txn: Txn | None = None) -> Commit:
        if cid.codec != DAG_CBOR:
            raise NotFound(f"{cid} is not a commit")
        block = txn.get_block(cid) if txn else self.store.get_block(cid)
        if not cid.verify(block):
            raise Corrupt(f"commit block {cid} does not match its hash")
        try:
            return Commit.decode(block)
        except FormatError as exc:
            raise Corrupt(f"block {cid} is not a valid commit: {exc}") from None

    def load_manifest(self, cid: CID, txn: Txn | None = None) -> Manifest:
        block = txn.get_block(cid) if txn else self.store.get_block(cid)
        if not cid.verify(block):
            raise Corrupt(f"manifest block {cid} does not match its hash")
        try:
            return Manifest.decode(block)
        except FormatError as exc:
            raise Corrupt(f"block {cid} is not a valid weights manifest: {exc}") from None

    # --- repositories --------------------------------------------------------
    def repos(self) -> list[RepoInfo]:
        with self.store.read() as txn:
            return [self._repo_info(txn, name, rid) for name, rid in sorted(txn.list_repos().items())]

    def _repo_info(self, txn: Txn, name: str, repo_id: bytes) -> RepoInfo:
        genesis_raw = txn.get_ref(repo_id, "genesis")
        if genesis_raw is None:
            raise Corrupt(f"repository {name} has no genesis ref")
        genesis = CID.from_bytes(genesis_raw)
        return RepoInfo(name, repo_id, genesis, self.load_commit(genesis, txn).settings)

    def repo(self, name_or_id: str) -> RepoInfo:
        with self.store.read() as txn:
            # an empty name or one over LMDB's key limit is no key at all (LMDB would raise BAD_VALSIZE)
            repo_id = txn.get_repo(name_or_id) if 0 < len(name_or_id.encode(errors="replace")) <= 500 else None
            if repo_id is not None:
                return self._repo_info(txn, name_or_id, repo_id)
            wanted = parse_repo_id(name_or_id)
            for name, rid in txn.list_repos().items():
                if rid == wanted:
                    return self._repo_info(txn, name, rid)
        raise NotFound(f"unknown repository {name_or_id!r} (see 'fednode repo list')")

    def repo_by_id(self, repo_id: bytes) -> RepoInfo:
        return self.repo(repo_id_text(repo_id))

    def current_branch(self, repo: RepoInfo) -> str:
        with self.store.read() as txn:
            head = txn.get_ref(repo.repo_id, "HEAD")
        return head.decode() if head else DEFAULT_BRANCH

    def _signed(self, commit: Commit) -> Commit:
        if self.identity is None:
            raise FednodeError("no identity: run 'fednode init' first")
        if commit.author != self.identity.public_key:
            raise FednodeError("commits are signed by their author only")
        try:
            sig = self.identity.sign(commit.commit_hash())
        except ValueError as exc:  # e.g. a NaN metric: not representable in DAG-CBOR
            raise FednodeError(f"invalid commit: {exc}") from None
        return Commit(**{**commit.__dict__, "sig": sig})

    def create_repo(
        self,
        name: str,
        source: ModelSource,
        message: str = "initial weights",
        scale_bits: int = DEFAULT_SCALE_BITS,
        snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL,
        metrics: dict[str, float] | None = None,
    ) -> tuple[RepoInfo, CommitResult]:
        check_name("repository", name)
        if ":" in name:
            raise FednodeError("repository names cannot contain ':'")
        if not 0 <= scale_bits <= 60:
            raise FednodeError("--scale-bits must be in 0..60")
        if not 1 <= snapshot_interval <= 1024:
            raise FednodeError("--snapshot-interval must be in 1..1024")
        if self.identity is None:
            raise FednodeError("no identity: run 'fednode init' first")
        with self.store.read() as txn:
            if txn.get_repo(name) is not None:
                raise FednodeError(f"repository {name!r} already exists")
        settings = {"name": name, "scale_bits": scale_bits, "snapshot_interval": snapshot_interval}
        sink = BlockSink(self.store, expected_bytes=sum(t.nbytes for t in source.tensors.values()))
        entries = {}
        try:
            for tname, info in source.tensors.items():
                entries[tname] = self._snapshot(sink, info, source.chunks(tname))
        except BaseException:
            sink.abort()
            raise
        manifest = Manifest(entries)
        commit = self._signed(
            Commit(
                repo=None,
                parents=(),
                kind="init",
                weights=CID.hash(DAG_CBOR, manifest.encode()),
                author=self.identity.public_key,
                time_ms=time.time_ns() // 1_000_000,
                message=message,
                metrics=metrics or {},
                info={"settings": settings},
            )
        )
        repo_id = commit.commit_hash()
        cid = commit.cid()
        def final(txn: Txn) -> int:
            if txn.get_repo(name) is not None:
                raise FednodeError(f"repository {name!r} already exists")
            new = self._put_objects(txn, manifest, commit)
            register_repo(txn, name, repo_id, cid)
            txn.index_commit(cid, repo_id, repo_id)
            return new

        new = sink.finish(final)
        info = RepoInfo(name, repo_id, cid, settings)
        return info, CommitResult(cid, commit, sink.new_bytes + new, sink.total_bytes, 0.0)

    def _put_objects(self, txn: Txn, manifest: Manifest, commit: Commit) -> int:
        before = txn.new_bytes
        manifest_block, commit_block = manifest.encode(), commit.encode()
        try:  # store only what every reader accepts (a bad name, message or metric would break the repo)
            Manifest.decode(manifest_block)
            Commit.decode(commit_block)
        except FormatError as exc:
            raise FednodeError(f"invalid commit: {exc}") from None
        txn.put_block(CID.hash(DAG_CBOR, manifest_block), manifest_block, trusted=True)
        txn.put_block(CID.hash(DAG_CBOR, commit_block), commit_block, trusted=True)
        return txn.new_bytes - before

    @staticmethod
    def _snapshot(sink: BlockSink, info: TensorInfo, chunks: Iterator[bytes | memoryview]) -> TensorEntry:
        builder = sink.file()
        size = 0
        for chunk in chunks:
            builder.write(chunk)
            size += len(chunk)
        if size != info.nbytes:
            raise FednodeError(f"tensor {info.name!r}: read {size} bytes, expected {info.nbytes}")
        root = builder.finish()
        return TensorEntry(info.dtype, info.shape, "raw", 0, root.cid, size, state=root.cid)

    # --- states ---------------------------------------------------------------
    def tensor_array(self, commit_cid: CID, name: str, txn: Txn | None = None) -> np.ndarray:
        """One tensor of a commit's state, rebuilt exactly (flat, safetensors dtype)."""
        if txn is None:
            with self.store.read() as rtxn:
                return self.tensor_array(commit_cid, name, rtxn)
        chain: list[TensorEntry] = []
        cid = commit_cid
        while True:
            commit = self.load_commit(cid, txn)
            entry = self.load_manifest(commit.weights, txn).tensors.get(name)
            if entry is None:
                raise NotFound(f"commit {cid} has no tensor {name!r}")
            chain.append(entry)
            if entry.encoding == "raw":
                break
            if not commit.parents:
                raise Corrupt(f"tensor {name!r} in {cid} has a delta but no parent")
            cid = commit.parents[0]
        snapshot = chain.pop()
        arr = read_array(txn, snapshot.cid, snapshot.size, np_dtype(snapshot.dtype))
        for entry in reversed(chain):
            if (entry.dtype, entry.shape) != (snapshot.dtype, snapshot.shape):
                raise Corrupt(f"tensor {name!r} changes dtype or shape along a delta chain")
            if entry.encoding != "same":
                blob = read_file(txn, entry.cid, entry.size)
                if entry.compression == "zstd":
                    blob = encodings.decompress(blob, entry.payload_size)
                arr = encodings.apply(arr, blob, entry)
        return arr

    def state(self, commit_cid: CID) -> dict[str, tuple[TensorEntry, np.ndarray]]:
        with self.store.read() as txn:
            manifest = self.load_manifest(self.load_commit(commit_cid, txn).weights, txn)
            return {name: (e, self.tensor_array(commit_cid, name, txn)) for name, e in manifest.tensors.items()}

    # --- committing ------------------------------------------------------------
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
    ) -> CommitResult:
        """Commit ``source`` as the new state of ``branch`` (deltas against its head).

        The default ``xor`` encoding stores every tensor bit for bit (a byte-grouped XOR
        against the parent). A lossy ``encoding`` (fixed: the repository grid, fp16, int8,
        topk) is used only when asked for; its per-tensor error is in ``CommitResult.errors``,
        and with ``exact`` a tensor whose lossy delta would not rebuild the very same bytes is
        stored as a snapshot. Delta payloads are zstd-compressed when that saves at least 1/8
        (``compress``).
        """
        if encoding not in encodings.NAMES:
            raise FednodeError(f"unknown update encoding {encoding!r}; valid: {', '.join(encodings.NAMES)}")
        if self.identity is None:
            raise FednodeError("no identity: run 'fednode init' first")
        branch = branch or self.current_branch(repo)
        head = self.branch_head(repo, branch)
        if expected_head is not None and head != expected_head:
            raise FednodeError(f"branch {branch!r} moved to {head} while committing")
        with self.store.read() as txn:
            parent = self.load_commit(head, txn)
            parent_manifest = self.load_manifest(parent.weights, txn)
        self._check_compatible(parent_manifest, source)
        sink = BlockSink(self.store, expected_bytes=2 * sum(t.nbytes for t in source.tensors.values()))
        entries: dict[str, TensorEntry] = {}
        errors: dict[str, TensorError] = {}
        try:
            for name, tinfo in source.tensors.items():
                old = parent_manifest.tensors[name]
                entry, err = self._encode_tensor(sink, repo, head, old, tinfo, source, exact, encoding,
                                                 topk_fraction, compress)
                entries[name] = entry
                if err is not None:
                    errors[name] = err
        except BaseException:
            sink.abort()
            raise
        manifest = Manifest(entries)
        parents = (head, *extra_parents)
        with self.store.read() as txn:
            parent_hashes = tuple(self.load_commit(p, txn).commit_hash() for p in parents)
        commit = self._signed(
            Commit(
                repo=repo.repo_id,
                parents=parents,
                parent_hashes=parent_hashes,
                kind=kind,
                weights=CID.hash(DAG_CBOR, manifest.encode()),
                author=self.identity.public_key,
                time_ms=max(time.time_ns() // 1_000_000, parent.time_ms),
                message=message,
                metrics=metrics or {},
                info=info or {},
            )
        )
        cid = commit.cid()
        def final(txn: Txn) -> int:
            current = txn.get_ref(repo.repo_id, "heads/" + branch)
            if current != bytes(head):  # compare-and-swap: another writer won the race
                raise FednodeError(f"branch {branch!r} moved while committing; nothing was stored")
            new = self._put_objects(txn, manifest, commit)
            txn.set_ref(repo.repo_id, "heads/" + branch, bytes(cid))
            txn.index_commit(cid, repo.repo_id, commit.commit_hash())
            return new

        new = sink.finish(final)
        max_err = max((e.max_abs for e in errors.values()), default=0.0)
        return CommitResult(cid, commit, sink.new_bytes + new, sink.total_bytes, max_err, encoding, errors)

    @staticmethod
    def _check_compatible(parent: Manifest, source: ModelSource) -> None:
        missing = sorted(set(parent.tensors) - set(source.tensors))
        extra = sorted(set(source.tensors) - set(parent.tensors))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
            if extra:
                parts.append(f"unexpected {', '.join(extra[:3])}{'...' if len(extra) > 3 else ''}")
            raise FednodeError(f"tensor names do not match the parent: {'; '.join(parts)}")
        for name, info in source.tensors.items():
            old = parent.tensors[name]
            if (old.dtype, old.shape) != (info.dtype, info.shape):
                raise FednodeError(
                    f"tensor {name!r} is {info.dtype}{list(info.shape)} but the parent has "
                    f"{old.dtype}{list(old.shape)}"
                )

    def _encode_tensor(
        self,
        sink: BlockSink,
        repo: RepoInfo,
        head: CID,
        old: TensorEntry,
        info: TensorInfo,
        source: ModelSource,
        exact: bool = False,
        encoding: str = encodings.DEFAULT,
        topk_fraction: float = encodings.DEFAULT_TOPK_FRACTION,
        compress: bool = True,
    ) -> tuple[TensorEntry, TensorError | None]:
        """One tensor's entry, and its error when a lossy encoding stored it (None: bit-exact by
        construction: a snapshot, an unchanged tensor, xor, or exact integers)."""
        new = source.array(info.name)
        lossy = encoding in encodings.LOSSY and info.dtype in FLOAT_DTYPES
        zero = TensorError(0.0, 0.0) if lossy else None
        new_state = add_bytes(memoryview(new).cast("B"))  # hash only: finds unchanged tensors cheaply
        depth = old.depth + 1
        if depth > repo.snapshot_interval:
            return self._snapshot(sink, info, iter([memoryview(new).cast("B")])), zero
        if new_state == old.state:  # the very same bytes
            return TensorEntry(info.dtype, info.shape, "same", depth, state=old.state), zero
        if info.dtype == "BOOL":
            return self._snapshot(sink, info, iter([memoryview(new).cast("B")])), zero
        parent = self.tensor_array(head, info.name)
        if encoding == encodings.DEFAULT:
            return self._store_xor(sink, info, depth, parent, new, new_state, compress), None
        encoded = encodings.encode(encoding, parent, new, info.dtype, repo.scale_bits, topk_fraction)
        if encoded is None:  # NaN/Inf or out of range: keep the exact bytes instead
            return self._snapshot(sink, info, iter([memoryview(new).cast("B")])), zero
        kind = encoding if lossy else "fixed"  # integers under a lossy choice: exact integer deltas
        fields = encoded.fields
        probe = TensorEntry(info.dtype, info.shape, kind, depth, None, len(encoded.payload),
                            fields.get("int_bits", 0), fields.get("scale_bits", 0), "none",
                            fields.get("scale", 0.0), fields.get("k", 0))
        rebuilt = encodings.apply(parent, encoded.payload, probe)
        if exact and not np.array_equal(rebuilt.view(np.uint8), new.view(np.uint8)):
            return self._snapshot(sink, info, iter([memoryview(new).cast("B")])), zero
        err = tensor_error(rebuilt, new, info.dtype) if lossy else None
        if np.array_equal(rebuilt.view(np.uint8), parent.view(np.uint8)):
            return TensorEntry(info.dtype, info.shape, "same", depth, state=old.state), err
        exact_rebuild = np.array_equal(rebuilt.view(np.uint8), new.view(np.uint8))
        state = new_state if exact_rebuild else add_bytes(memoryview(rebuilt).cast("B"))
        blob, packed = encodings.compress(encoded.payload) if compress else (encoded.payload, False)
        builder = sink.file()
        builder.write(blob)
        root = builder.finish()
        entry = replace(probe, cid=root.cid, size=len(blob), compression="zstd" if packed else "none", state=state)
        return entry, err

    def _store_xor(self, sink: BlockSink, info: TensorInfo, depth: int, parent: np.ndarray, new: np.ndarray,
                   new_state: CID, compress: bool) -> TensorEntry:
        """The lossless delta: byte-grouped XOR against the parent, zstd when that saves 1/8. A delta
        no smaller than the tensor is stored as a snapshot instead (same bytes, shorter chain)."""
        encoded = encodings.encode("xor", parent, new, info.dtype, 0)
        blob, packed = encodings.compress(encoded.payload) if compress else (encoded.payload, False)
        if len(blob) >= info.nbytes:
            return self._snapshot(sink, info, iter([memoryview(new).cast("B")]))
        builder = sink.file()
        builder.write(blob)
        root = builder.finish()
        return TensorEntry(info.dtype, info.shape, "xor", depth, root.cid, len(blob),
                           compression="zstd" if packed else "none", state=new_state)

    # --- refs and revisions ----------------------------------------------------
    def branch_head(self, repo: RepoInfo, branch: str) -> CID:
        with self.store.read() as txn:
            raw = txn.get_ref(repo.repo_id, "heads/" + branch)
        if raw is None:
            raise NotFound(f"unknown branch {branch!r} in repository {repo.name}")
        return CID.from_bytes(raw)

    def _named_refs(self, repo: RepoInfo, prefix: str) -> dict[str, CID]:
        with self.store.read() as txn:
            refs = txn.list_refs(repo.repo_id, prefix)
        return {k[len(prefix) :]: CID.from_bytes(v) for k, v in refs.items()}

    def _create_ref(self, repo: RepoInfo, kind: str, prefix: str, name: str, target: CID) -> None:
        check_name(kind, name)
        self._check_in_repo(repo, target)
        with self.store.write() as txn:
            if txn.get_ref(repo.repo_id, prefix + name) is not None:
                hint = " ('fednode branch -f NAME REV' moves it)" if kind == "branch" else ""
                raise FednodeError(f"{kind} {name!r} already exists{hint}")
            txn.set_ref(repo.repo_id, prefix + name, bytes(target))

    def _delete_ref(self, repo: RepoInfo, kind: str, prefix: str, name: str) -> None:
        with self.store.write() as txn:
            if not txn.delete_ref(repo.repo_id, prefix + name):
                raise NotFound(f"unknown {kind} {name!r}")

    def branches(self, repo: RepoInfo) -> dict[str, CID]:
        return self._named_refs(repo, "heads/")

    def tags(self, repo: RepoInfo) -> dict[str, CID]:
        return self._named_refs(repo, "tags/")

    def remote_refs(self, repo: RepoInfo) -> dict[str, CID]:
        """Heads announced by peers (``remotes/<peer>/<branch>``) and merge proposals
        (``proposals/<peer>/<branch>``), as the daemon recorded them."""
        out: dict[str, CID] = {}
        for prefix in REMOTE_PREFIXES:
            out.update({prefix + k: v for k, v in self._named_refs(repo, prefix).items()})
        return out

    def create_branch(self, repo: RepoInfo, name: str, start: CID) -> None:
        self._create_ref(repo, "branch", "heads/", name, start)

    def delete_branch(self, repo: RepoInfo, name: str) -> None:
        if name == self.current_branch(repo):
            raise FednodeError(f"cannot delete the current branch {name!r}; switch first")
        self._delete_ref(repo, "branch", "heads/", name)

    def switch_branch(self, repo: RepoInfo, name: str) -> None:
        self.branch_head(repo, name)
        with self.store.write() as txn:
            txn.set_ref(repo.repo_id, "HEAD", name.encode())

    def create_tag(self, repo: RepoInfo, name: str, target: CID) -> None:
        self._create_ref(repo, "tag", "tags/", name, target)

    def delete_tag(self, repo: RepoInfo, name: str) -> None:
        self._delete_ref(repo, "tag", "tags/", name)

    def _check_in_repo(self, repo: RepoInfo, cid: CID) -> None:
        with self.store.read() as txn:
            if txn.commit_repo(cid) != repo.repo_id or not txn.has_block(cid):  # gc keeps index entries
                raise NotFound(f"commit {cid} is not in repository {repo.name}")

    def resolve(self, rev: str, repo: RepoInfo | None = None) -> tuple[RepoInfo, CID]:
        """Resolve ``[REPO:]BASE[~N|^N]...`` (BASE: HEAD, branch, tag, CID or unique CID prefix)."""
        if ":" in rev:
            repo_name, rev = rev.split(":", 1)
            repo = self.repo(repo_name)
        match = _REV.match(rev.strip())
        if not match:
            raise NotFound(f"unknown revision {rev!r}")
        base, ops = match["base"], match["ops"]
        cid = None
        if repo is not None:
            if base == "HEAD":
                base = self.current_branch(repo)
            moved = re.fullmatch(r"(?P<branch>.*)@\{(?P<n>[0-9]+)\}", base)  # BRANCH@{N}: the reflog
            if moved:
                branch = moved["branch"] if moved["branch"] not in ("", "HEAD") else self.current_branch(repo)
                with self.store.read() as txn:
                    moves = txn.reflog(repo.repo_id, branch)
                n = int(moved["n"])
                if n >= len(moves) or moves[n]["new"] is None:
                    raise NotFound(f"unknown revision {base!r}: the reflog of {branch!r} has {len(moves)} entries")
                base = moves[n]["new"]
            with self.store.read() as txn:
                raw = txn.get_ref(repo.repo_id, "heads/" + base) or txn.get_ref(repo.repo_id, "tags/" + base)
                if raw is None and base.startswith(REMOTE_PREFIXES):  # what peers announced or proposed
                    raw = txn.get_ref(repo.repo_id, base) or txn.get_ref(repo.repo_id, _named_remote(txn, base))
            if raw is not None:
                cid = CID.from_bytes(raw)
        if cid is None:
            cid, repo_id = self._resolve_cid(base, repo)
            if repo is not None and repo.repo_id != repo_id:
                raise NotFound(f"commit {base} is not in repository {repo.name}")
            repo = repo or self.repo_by_id(repo_id)
        for op, count in re.findall(r"([~^])([0-9]*)", ops):
            n = int(count) if count else 1
            if op == "~":
                for _ in range(n):
                    parents = self.load_commit(cid).parents
                    if not parents:
                        raise NotFound(f"revision {rev!r} goes past the genesis commit")
                    cid = parents[0]
            elif n:
                parents = self.load_commit(cid).parents
                if n > len(parents):
                    raise NotFound(f"revision {rev!r}: commit has {len(parents)} parent(s)")
                cid = parents[n - 1]
        return repo, cid

    def _resolve_cid(self, text: str, repo: RepoInfo | None = None) -> tuple[CID, bytes]:
        """A full commit CID, or a prefix of 4+ characters that names one commit (of ``repo`` when
        given); a prefix that names several is ambiguous, and the error says so."""
        with self.store.read() as txn:
            try:
                cid = CID.parse(text)
            except FormatError:
                cid = None
            if cid is not None:
                repo_id = txn.commit_repo(cid)
                if repo_id is None or not txn.has_block(cid):  # gc keeps index entries
                    raise NotFound(f"unknown revision {text!r}")
                return cid, repo_id
            if len(text) >= 4 and text.startswith("b"):
                found = [(c, r) for c, r in txn.commits_with_prefix(text, limit=100_000)
                         if (repo is None or r == repo.repo_id) and txn.has_block(CID.parse(c))]
                if len(found) == 1:
                    return CID.parse(found[0][0]), found[0][1]
                if len(found) > 1:
                    shown = ", ".join(c[:20] for c, _ in found[:3]) + (", ..." if len(found) > 3 else "")
                    raise NotFound(f"ambiguous revision {text!r}: {len(found)} commits start with it "
                                   f"({shown}); give more characters")
        raise NotFound(f"unknown revision {text!r}")

    # --- reading history ------------------------------------------------------
    def walk(self, heads: list[CID], stop: Callable[[CID], bool] | None = None) -> Iterator[tuple[CID, Commit]]:
        """Commits reachable from ``heads``, children before parents, newest first.

        Commits for which ``stop`` is true are left out and not descended into.
        """
        with self.store.read() as txn:
            commits: dict[CID, Commit] = {}
            stack = list(heads)
            while stack:
                cid = stack.pop()
                if cid in commits or (stop is not None and stop(cid)):
                    continue
                commits[cid] = self.load_commit(cid, txn)
                stack.extend(commits[cid].parents)
        children: dict[CID, int] = {cid: 0 for cid in commits}
        for commit in commits.values():
            for p in commit.parents:
                if p in children:
                    children[p] += 1
        ready = sorted((c for c, n in children.items() if n == 0), key=lambda c: (commits[c].time_ms, str(c)))
        while ready:
            cid = ready.pop()
            yield cid, commits[cid]
            for p in commits[cid].parents:
                if p not in children:
                    continue
                children[p] -= 1
                if children[p] == 0:
                    ready.append(p)
                    ready.sort(key=lambda c: (commits[c].time_ms, str(c)))

    def is_ancestor(self, old: CID, new: CID) -> bool:
        """Whether ``old`` is ``new`` or one of its ancestors. Depth-first from ``new``: for a
        fast-forward it stops at ``old``, after reading only the commits in between."""
        seen: set[CID] = set()
        stack = [new]
        with self.store.read() as txn:
            while stack:
                cid = stack.pop()
                if cid == old:
                    return True
                if cid not in seen:
                    seen.add(cid)
                    stack.extend(self.load_commit(cid, txn).parents)
        return False

    def merge_base(self, cids: list[CID]) -> CID | None:
        """The newest commit that is an ancestor of all ``cids`` (None if unrelated)."""
        ancestor_sets = []
        for cid in cids:
            ancestor_sets.append({c for c, _ in self.walk([cid])})
        common = set.intersection(*ancestor_sets)
        for cid, _ in self.walk(cids):
            if cid in common:
                return cid
        return None

    def verify_commit_signature(self, commit: Commit) -> bool:
        return verify_signature(commit.author, commit.commit_hash(), commit.sig)

    def check_commit(self, cid: CID, txn: Txn, check_tensors: bool = True, rehash: bool = True) -> list[str]:
        """Problems with one commit: hashes, decoding, signature, manifest and tensor blocks.

        ``rehash=False`` walks each tensor's DAG and checks its size without re-hashing its
        blocks: only for blocks hash-checked when they were stored (``Txn.put_block``).
        """
        problems: list[str] = []
        try:
            commit = self.load_commit(cid, txn)
        except (Corrupt, NotFound) as exc:
            return [str(exc)]
        if not self.verify_commit_signature(commit):
            problems.append(f"commit {cid}: invalid signature")
        try:
            manifest = self.load_manifest(commit.weights, txn)
        except (Corrupt, NotFound) as exc:
            return problems + [f"commit {cid}: {exc}"]
        if not check_tensors:
            return problems
        for name, entry in manifest.tensors.items():
            if entry.encoding == "same":
                continue
            try:  # bounded by the entry's size before any walk: peers' DAGs may be bombs
                check_file(txn, entry.cid, entry.size, rehash)
            except (Corrupt, NotFound) as exc:
                problems.append(f"commit {cid} tensor {name!r}: {exc}")
        return problems
