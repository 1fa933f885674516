"""Checking the commitments commits carry (``info["zk"]``, made by ``fednode.workflows.commitments``).

An update's commitment is recomputed from the stored states on its recorded grid, against its round
base; a FedAvg merge's relation ``sum_k w_k C_k = W C(d) + C(r)`` is checked from the commitments alone,
then ``C(d)`` and ``C(r)`` are recomputed from the inputs; another strategy's ``C(d)`` is recomputed.
``workflows.verify`` calls ``check`` for every commit it verifies.

The relation alone admits ``d + 1`` with ``r - W``: it proves an integer decomposition of the weighted
sum. Under a policy naming a remainder key, ``workflows.verify`` also checks each FedAvg merge's
remainder proof (``policy.check_merge``: ``|r_i| <= W/2``, missing or failing, each its own reason);
the two together prove the rounding, and ``verify`` reports how many merges it proved so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.history import History, RepoInfo
from fednode.logs import log
from fednode.workflows.commitments import (
    DEFAULT_MAX_PARAMETERS,
    VERSION,
    commit_deltas,
    input_commitments,
    merged_deltas,
    round_base,
    settings_of,
    tensor_delta,
)
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES, Commit

if TYPE_CHECKING:
    from fednode import strategies


def _fields(zk: dict[str, Any]) -> tuple[CID, dict[str, int], bytes, int]:
    base, grid, c, b = zk.get("base"), zk.get("grid"), zk.get("commitment"), zk.get("blinding", bytes(32))
    if zk.get("v") != VERSION or not isinstance(base, CID) or not isinstance(grid, dict) \
            or not isinstance(c, bytes) or not isinstance(b, bytes) or len(b) != 32:
        raise FednodeError("malformed zk info")
    if not all(isinstance(k, str) and type(v) is int for k, v in grid.items()):
        raise FednodeError("malformed zk grid")
    return base, grid, c, int.from_bytes(b, "big")


def check(history: History, repo: RepoInfo, cid: CID, commit: Commit) -> list[str]:
    """Problems with a commit's ``info["zk"]``: recomputed from the stored states, and for a FedAvg merge
    the relation checked from the commitments alone."""
    zk = commit.info.get("zk")
    if zk is None or commit.kind == "init":
        return []
    if not isinstance(zk, dict):
        return [f"commit {cid}: malformed zk info"]
    if "none" in zk:
        return [] if isinstance(zk["none"], str) else [f"commit {cid}: malformed zk info"]
    try:
        recompute = _affordable(history, cid, commit)
        if commit.kind == "merge":
            return _check_merge(history, repo, cid, commit, zk, recompute)
        return _check_update(history, repo, cid, commit, zk) if recompute else []
    except (Corrupt, NotFound) as exc:
        return [f"commit {cid}: commitment not checked: {exc}"]
    except FednodeError as exc:  # ZkError included: a point that does not decode
        return [f"commit {cid}: {exc}"]


def _affordable(history: History, cid: CID, commit: Commit) -> bool:
    """Whether recomputing ``commit``'s commitment fits ``zk.max_parameters``: a peer's commit must not make
    this node derive generators without bound (the relation of a merge is checked whatever its size)."""
    settings = settings_of(history)
    limit = settings.max_parameters if settings is not None else DEFAULT_MAX_PARAMETERS
    size = sum(e.numel for e in history.load_manifest(commit.weights).tensors.values())
    if size <= limit:
        return True
    log("zk_commitment_not_recomputed", "warning", commit=str(cid), parameters=size, max_parameters=limit)
    return False


def _check_update(history: History, repo: RepoInfo, cid: CID, commit: Commit, zk: dict[str, Any]) -> list[str]:
    base, grid, c, b = _fields(zk)
    if not commit.parents or base != round_base(history, commit.parents[0]):
        return [f"commit {cid}: commitment base is not its round base"]
    with history.store.read() as txn:
        entries = history.load_manifest(commit.weights, txn).tensors
        if set(grid) != {n for n, e in entries.items() if e.dtype in FLOAT_DTYPES}:
            return [f"commit {cid}: commitment grid does not name every float tensor"]
        deltas = []
        exact = "zk" in repo.settings  # under a proof policy the change must be exactly what was proven
        for name in sorted(entries):
            dtype = entries[name].dtype
            old, new = history.tensor_array(base, name, txn), history.tensor_array(cid, name, txn)
            q = tensor_delta(old, new, dtype, grid.get(name, 0))
            if q is None:
                return [f"commit {cid}: commitment mismatch (tensor {name!r} not representable on its grid)"]
            if exact and dtype in FLOAT_DTYPES and _off_grid(old, new, dtype, grid[name]):
                return [f"commit {cid}: tensor {name!r} changed off its commitment's grid (not the vector proven)"]
            deltas.append(q)
    from fednode.zk import pedersen

    if not pedersen.equal(commit_deltas(history, deltas, b), c):
        return [f"commit {cid}: commitment mismatch"]
    return []


def _off_grid(old: Any, new: Any, dtype: str, bits: int) -> bool:
    from fednode.workflows.zkpolicy import on_grid

    return on_grid(old, new, dtype, bits) is None


def _check_merge(history: History, repo: RepoInfo, cid: CID, commit: Commit, zk: dict[str, Any],
                 recompute: bool = True) -> list[str]:
    from fednode import strategies
    from fednode.workflows.merging import recorded_grid
    from fednode.zk import merge_check, pedersen

    base, grid, c_d, b_d = _fields(zk)
    record = commit.info.get("merge")
    try:
        strategy = strategies.from_description(record["strategy"])  # type: ignore[index]
        inputs = tuple(record["inputs"])  # type: ignore[index]
        weights = tuple(int(w) for w in record["weights"])  # type: ignore[index]
        merged_grid = recorded_grid(record)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        return [f"merge {cid}: malformed merge record: {exc}"]
    if base != record.get("base") or grid != (merged_grid or {}):  # type: ignore[union-attr]
        return [f"merge {cid}: commitment base or grid differs from the merge's"]
    problems = []
    c_r = zk.get("remainder")
    linear = isinstance(strategy, strategies.FedAvg)
    if c_r is not None and not linear:
        return [f"merge {cid}: a remainder commitment on a {strategy.name} merge (not linear)"]
    blindings: list[int] = []
    if linear:
        if not isinstance(c_r, bytes):
            return [f"merge {cid}: a FedAvg merge commitment without its remainder"]
        commitments, blindings, why = input_commitments(history, base, inputs, weights, grid)
        if why:
            return [f"merge {cid}: {why}"]
        if not merge_check.check_linear_merge(commitments, weights, c_d, c_r):  # the remainder proof: verify's
            problems.append(f"merge {cid}: merge commitment relation fails")
    if not recompute:
        return problems
    try:
        plan = strategy.plan(weights, _scan(history, repo, base, inputs, strategy, grid))
    except ValueError as exc:  # reported by the merge's recomputation too
        return [*problems, f"merge {cid}: merge strategy {strategy.name}: {exc}"]
    ds, rs = merged_deltas(history, repo, base, inputs, weights, strategy, plan, grid)
    if not pedersen.equal(commit_deltas(history, ds, b_d), c_d):
        problems.append(f"merge {cid}: merge commitment mismatch (C(d) is not the merged delta's)")
    if linear and rs is not None and isinstance(c_r, bytes):
        _, b_r = merge_check.split_blinding(blindings, weights, b_d)
        if not pedersen.equal(commit_deltas(history, rs, b_r), c_r):
            problems.append(f"merge {cid}: remainder commitment mismatch")
    return problems


def _scan(history: History, repo: RepoInfo, base: CID, inputs: tuple[CID, ...], strategy: strategies.Strategy,
          grid: dict[str, int]) -> Any:
    from fednode.workflows.merging import _tensor_deltas

    if not strategy.needs_scan:
        return None
    scan: Any = None
    with history.store.read() as txn:
        names = sorted(history.load_manifest(history.load_commit(base, txn).weights, txn).tensors)
    for name in names:
        _, deltas, _ = _tensor_deltas(history, repo, base, inputs, name, grid=dict(grid))
        scan = strategy.add_scans(scan, strategy.scan(deltas))
    return scan
