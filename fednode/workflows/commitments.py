"""Pedersen commitments carried by commits (issue 15 items 1-2; docs/zk.md, "Commitments on commits").

``commit.info["zk"]`` (inside the signed body):

* update commits (commit, train, revert...): ``{"v": 1, "base": round base, "grid": {float tensor:
  bits}, "commitment": C(v; b)[, "blinding": b]}``, ``v`` the exact deltas from the round base (the
  nearest first-parent ancestor that is a merge or the genesis) on rule 2's grid;
* merges: ``C(d)`` of the merged delta from the merge base on the merge's grid, and for FedAvg the
  remainder's ``C(r)`` so that ``sum_k w_k C_k = W C(d) + C(r)`` can be checked without weights;
* ``{"v": 1, "none": why}`` when no commitment can be made (a change not representable on the grid,
  a lossy encoding, inputs on another base or grid...): the commit is made all the same.

Blinding: 0 for public repositories; a uniform scalar for private ones (members alone read commit
bodies). ``ZkHistory`` is the node's ``History``: its ``commit`` adds the info to every update
commit; ``merging.merge`` asks ``merge_info``; ``workflows.verify`` runs ``zkcheck.check``.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fednode.errors import FednodeError
from fednode.history import CommitResult, History, RepoInfo, repos
from fednode.identity import Identity
from fednode.lazy import lazy_import
from fednode.logs import log
from fednode.storage.store import Store
from fednode.tensors import encodings
from fednode.tensors.modelio import ArraySource, ModelSource
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES, Commit

if TYPE_CHECKING:
    import numpy as np

    from fednode import strategies
else:
    np = lazy_import("numpy")

VERSION = 1
DEFAULT_MAX_PARAMETERS = 1 << 22  # above: "none" (deriving 4M generators the first time takes ~2-3 min)
SPOT_CHECKS = 4  # generators of a cached table derived again at random positions when it is loaded
ROW_BYTES = 96  # one generator in fednode.zk.mcl's table form


@dataclass
class ZkSettings:
    """``[zk]`` of config.toml: ``commitments`` (default true), ``max_parameters``, ``keys`` (proving keys
    for repositories that require proofs; ``keys_override``: --zk-keys); the cache folder."""

    enabled: bool = True
    cache_dir: Path | None = None
    max_parameters: int = DEFAULT_MAX_PARAMETERS
    keys: Path | None = None
    keys_override: Path | None = None


class GeneratorCache:
    """The default seed's generator table on disk (``fednode.storage.zkcache``), loaded and checked once
    per process, derived and written when missing, short or failing a check (never trusted unchecked)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._loaded = False

    def prepare(self, n: int) -> None:
        from fednode.storage import zkcache
        from fednode.zk import mcl
        from fednode.zk.generators import DEFAULT_SEED

        if not mcl.available() or mcl.cached_rows(DEFAULT_SEED) >= n:
            return
        path = zkcache.cache_path(self.directory, DEFAULT_SEED)
        with self._lock:
            if not self._loaded:
                self._loaded = True
                payload, why = zkcache.read_table(path, DEFAULT_SEED, ROW_BYTES)
                table = None if payload is None else np.frombuffer(payload, dtype=np.uint64).reshape(-1, 12)
                if table is not None:
                    picks = random.SystemRandom().sample(range(len(table)), min(SPOT_CHECKS, len(table)))
                    why = mcl.check_table(table, DEFAULT_SEED, [0, len(table) - 1, *picks]) or ""
                    if why:
                        table = None
                if table is not None:
                    mcl.install_table(DEFAULT_SEED, table)
                elif why != "absent":
                    log("zk_generator_cache_rejected", "warning", path=str(path), reason=why)
            if mcl.cached_rows(DEFAULT_SEED) >= n:
                return
            mcl.generator_table(n, DEFAULT_SEED)  # derives what is missing (extends a loaded table)
            full = mcl.generator_table(mcl.cached_rows(DEFAULT_SEED), DEFAULT_SEED)
            try:
                zkcache.write_table(path, DEFAULT_SEED, ROW_BYTES, full.tobytes())
            except OSError as exc:  # a read-only or full home: commit all the same, derive again next time
                log("zk_generator_cache_unwritable", "warning", path=str(path), reason=str(exc))


_caches: dict[Path, GeneratorCache] = {}
_caches_lock = threading.Lock()


def _cache_for(directory: Path) -> GeneratorCache:
    with _caches_lock:
        return _caches.setdefault(directory, GeneratorCache(directory))


def settings_of(history: History) -> ZkSettings | None:
    return history.zk if isinstance(history, ZkHistory) else None


def _prepare(history: History) -> Any:
    settings = settings_of(history)
    if settings is None or settings.cache_dir is None:
        return None
    return _cache_for(settings.cache_dir).prepare


def none(why: str) -> dict[str, Any]:
    return {"v": VERSION, "none": why}


def round_base(history: History, cid: CID) -> CID:
    """The nearest commit from ``cid`` along first parents (``cid`` included) that is a merge or the genesis."""
    with history.store.read() as txn:
        while True:
            commit = history.load_commit(cid, txn)
            if commit.kind in ("merge", "init") or not commit.parents:
                return cid
            cid = commit.parents[0]


def _blinding_for(history: History, repo: RepoInfo) -> int:
    from fednode.zk.curve import R

    with history.store.read() as txn:
        public = repos.visibility(txn, repo.repo_id) == "public"
    return 0 if public else secrets.randbelow(R - 1) + 1


def commit_deltas(history: History, deltas: list[np.ndarray], blinding: int) -> bytes:
    from fednode.zk import vector

    return vector.commit_tensors(deltas, blinding, prepare=_prepare(history))


def tensor_delta(base_arr: np.ndarray, arr: np.ndarray, dtype: str, bits: int) -> np.ndarray | None:
    from fednode.tensors import fixedpoint

    return fixedpoint.encode_delta(base_arr.reshape(-1), arr.reshape(-1), dtype, bits if dtype in FLOAT_DTYPES else 0)


def round_base_entries(history: History, head: CID) -> tuple[CID, dict[str, Any]]:
    """``head``'s round base and its manifest's tensor entries: what an update's delta is taken from."""
    base = round_base(history, head)
    with history.store.read() as txn:
        return base, history.load_manifest(history.load_commit(base, txn).weights, txn).tensors


def update_info(history: History, repo: RepoInfo, head: CID, source: ModelSource,
                settings: ZkSettings) -> dict[str, Any]:
    """``info["zk"]`` of an update committing ``source`` on top of ``head``."""
    from fednode.tensors import fixedpoint

    base, entries = round_base_entries(history, head)
    names = sorted(source.tensors)
    if set(names) != set(entries):
        return none("tensor names differ from the round base's")
    size = sum(int(source.tensors[n].numel) for n in names)
    if size > settings.max_parameters:
        return none(f"{size} parameters, over zk.max_parameters ({settings.max_parameters})")
    grid: dict[str, int] = {}
    deltas = []
    for name in names:
        info, entry = source.tensors[name], entries[name]
        if (info.dtype, tuple(info.shape)) != (entry.dtype, tuple(entry.shape)):
            return none(f"tensor {name!r} changed dtype or shape since the round base")
        base_arr, arr = history.tensor_array(base, name), source.array(name).reshape(-1)
        bits = 0
        if info.dtype in FLOAT_DTYPES:
            bits = grid[name] = fixedpoint.choose_grid(base_arr, [arr], info.dtype, repo.scale_bits)
        q = tensor_delta(base_arr, arr, info.dtype, bits)
        if q is None:
            return none(f"tensor {name!r}: its change is not representable on the grid 2**{-bits}")
        deltas.append(q)
    blinding = _blinding_for(history, repo)
    out = {"v": VERSION, "base": base, "grid": grid, "commitment": commit_deltas(history, deltas, blinding)}
    if blinding:
        out["blinding"] = blinding.to_bytes(32, "big")
    return out


class ZkHistory(History):
    """The node's history: every update commit carries ``info["zk"]`` (unless ``[zk] commitments = false``)."""

    def __init__(self, store: Store, identity: Identity | None = None, zk: ZkSettings | None = None) -> None:
        super().__init__(store, identity)
        self.zk = zk or ZkSettings()

    def commit(self, repo: RepoInfo, source: ModelSource, message: str, branch: str | None = None,
               metrics: dict[str, float] | None = None, kind: str = "update", extra_parents: tuple[CID, ...] = (),
               info: dict[str, Any] | None = None, expected_head: CID | None = None, exact: bool = False,
               encoding: str = encodings.DEFAULT, topk_fraction: float = encodings.DEFAULT_TOPK_FRACTION,
               compress: bool = True, finish: Callable[[Commit], Commit] | None = None) -> CommitResult:
        from fednode.workflows import zkpolicy

        policy = zkpolicy.repo_policy(repo)
        if policy is not None and policy.require_proof and kind != "merge" and "zk" not in (info or {}):
            # the repository requires proofs: commit on its grid and prove, or refuse before storing anything
            if encoding in encodings.LOSSY:
                raise FednodeError(f"{repo.name} requires update proofs: a lossy encoding ({encoding}) cannot be "
                                   "proven before it is stored; nothing was stored")
            branch = branch or self.current_branch(repo)
            head = expected_head or self.branch_head(repo, branch)
            prepared = zkpolicy.prepare_update(self, repo, head, source, self.zk, policy)
            info, expected_head, finish = {**(info or {}), "zk": prepared.zk}, head, prepared.finish
        elif self.zk.enabled and kind != "merge" and "zk" not in (info or {}):
            branch = branch or self.current_branch(repo)
            head = expected_head or self.branch_head(repo, branch)
            if encoding in encodings.LOSSY:
                zk = none(f"lossy encoding {encoding}: the stored state is known only once committed")
            else:
                zk = update_info(self, repo, head, source, self.zk)
            info, expected_head = {**(info or {}), "zk": zk}, head
        return super().commit(repo, source, message, branch, metrics, kind, extra_parents, info, expected_head,
                              exact, encoding, topk_fraction, compress, finish)


    def publish(self, repo: RepoInfo, branch: str | None = None) -> CommitResult:
        """In a repository that requires update proofs the publish decision is an update like any
        other: it proves its (unchanged) state's delta from the round base."""
        from fednode.workflows import zkpolicy

        policy = zkpolicy.repo_policy(repo)
        if policy is None or not policy.require_proof:
            return super().publish(repo, branch)
        self.check_publish(repo)
        branch = branch or self.current_branch(repo)
        head = self.branch_head(repo, branch)
        state = self.state(head)
        source = ArraySource({n: (e.dtype, arr.reshape(e.shape)) for n, (e, arr) in state.items()})
        prepared = zkpolicy.prepare_update(self, repo, head, source, self.zk, policy)
        return self._publish(repo, branch, prepared.zk, head, prepared.finish)


# ---- merges --------------------------------------------------------------------------------------


def input_commitments(history: History, base: CID, inputs: tuple[CID, ...], active: tuple[int, ...],
                       grid: dict[str, int]) -> tuple[list[bytes], list[int], str]:
    """Each input's commitment and blinding (zero for an input that is the base or weighs nothing), or
    the reason they cannot be combined."""
    from fednode.zk.curve import INFINITY

    commitments, blindings = [], []
    for cid, w in zip(inputs, active, strict=True):
        if cid == base or not w:
            commitments.append(INFINITY)
            blindings.append(0)
            continue
        zk = history.load_commit(cid).info.get("zk")
        short = str(cid)[:16]
        if not isinstance(zk, dict) or not isinstance(zk.get("commitment"), bytes):
            why = zk.get("none") if isinstance(zk, dict) else None
            return [], [], f"input {short} carries no commitment" + (f" ({why})" if isinstance(why, str) else "")
        if zk.get("base") != base:
            return [], [], f"input {short} is committed against another round base than the merge base"
        if zk.get("grid") != grid:
            return [], [], f"input {short} is committed on another grid than the merge's"
        b = zk.get("blinding", b"")
        commitments.append(zk["commitment"])
        blindings.append(int.from_bytes(b, "big") if isinstance(b, bytes) else 0)
    return commitments, blindings, ""


def merged_deltas(history: History, repo: RepoInfo, base: CID, inputs: tuple[CID, ...], weights: tuple[int, ...],
                  strategy: strategies.Strategy, plan: strategies.Plan,
                  grid: dict[str, int]) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The merged delta ``d`` of every tensor (sorted names) on ``grid``, and for FedAvg the remainder ``r``."""
    from fednode.strategies import FedAvg
    from fednode.workflows.merging import _tensor_deltas
    from fednode.zk.merge_check import fedavg_delta

    with history.store.read() as txn:
        names = sorted(history.load_manifest(history.load_commit(base, txn).weights, txn).tensors)
    linear = isinstance(strategy, FedAvg)
    ds, rs = [], []
    for name in names:
        _, deltas, dtype = _tensor_deltas(history, repo, base, inputs, name, grid=dict(grid))
        if dtype == "BOOL":  # merged only when every input agrees: d is that delta, r = 0
            d, r = deltas[0], np.zeros_like(deltas[0])
        elif linear:
            d, r = fedavg_delta(deltas, weights)
        else:
            d, r = np.asarray(strategy.apply(deltas, plan)), None
        ds.append(d)
        if r is not None:
            rs.append(r)
    return ds, (rs if linear else None)


def merge_info(history: History, repo: RepoInfo, base: CID, inputs: tuple[CID, ...], weights: tuple[int, ...],
               strategy: strategies.Strategy, plan: strategies.Plan,
               grid: dict[str, int]) -> tuple[dict[str, Any] | None, tuple[list[int], int] | None]:
    """``info["zk"]`` of a merge (None when this history makes no commitments) and, for a FedAvg merge
    carrying ``C(r)``, the remainder ``r`` (flattened, sorted tensor names) and its blinding ``b_r``:
    what a remainder proof needs (``zkpolicy.MergeProver``)."""
    from fednode.strategies import FedAvg
    from fednode.zk import merge_check

    settings = settings_of(history)
    if settings is None or not settings.enabled:
        return None, None
    linear = isinstance(strategy, FedAvg)
    active = weights if linear else plan.weights
    commitments, blindings, why = input_commitments(history, base, inputs, active, grid)
    if why:
        return none(why), None
    ds, rs = merged_deltas(history, repo, base, inputs, weights, strategy, plan, grid)
    size = sum(int(d.size) for d in ds)
    if size > settings.max_parameters:
        return none(f"{size} parameters, over zk.max_parameters ({settings.max_parameters})"), None
    private = any(blindings) or _blinding_for(history, repo) != 0
    out: dict[str, Any] = {"v": VERSION, "base": base, "grid": dict(sorted(grid.items()))}
    remainder = None
    if rs is None:
        b_d = _blinding_for(history, repo) if private else 0
        out["commitment"] = commit_deltas(history, ds, b_d)
    else:
        b_d, b_r = merge_check.split_blinding(blindings, weights)
        c_d, c_r = commit_deltas(history, ds, b_d), commit_deltas(history, rs, b_r)
        if not merge_check.check_linear_merge(commitments, weights, c_d, c_r):
            return none("the inputs' commitments do not match their deltas"), None
        out["commitment"], out["remainder"] = c_d, c_r
        remainder = [int(v) for r in rs for v in np.asarray(r).reshape(-1).tolist()], b_r
    if b_d:
        out["blinding"] = b_d.to_bytes(32, "big")
    return out, remainder


# ---- display -----------------------------------------------------------------------------------------


def describe(commit: Commit) -> str | None:
    """``info["zk"]`` in a few words for ``show``: the commitment (hex, short) or "none: why"; None without."""
    zk = commit.info.get("zk")
    if not isinstance(zk, dict):
        return None
    if "none" in zk:
        return f"none: {zk['none']}"
    c = zk.get("commitment")
    text = c.hex()[:16] + "..." if isinstance(c, bytes) else "malformed"
    if isinstance(zk.get("remainder"), bytes):
        text += f" (remainder {zk['remainder'].hex()[:16]}...)"
    return text + (" blinded" if "blinding" in zk else "")
