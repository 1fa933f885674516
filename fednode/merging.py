"""Exact N-way merges: merged = base + aggregate(deltas of each input from the merge base).

Deltas are the exact integers of ``fixedpoint.encode_delta`` on the repository grid;
inputs are ordered by CID, so the same inputs give the same bytes on any machine.
``verify`` recomputes a merge from what its commit records and compares bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fednode import fixedpoint, strategies
from fednode.errors import FednodeError
from fednode.history import CommitResult, History, RepoInfo
from fednode.modelio import ArraySource
from protocol import dagcbor
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES, Commit

WEIGHTINGS = ("samples", "equal")


@dataclass
class MergeOutcome:
    result: CommitResult | None  # None for a fast-forward
    fast_forward: CID | None = None
    base: CID | None = None
    inputs: tuple[CID, ...] = ()
    weights: tuple[int, ...] = ()


def path_samples(history: History, base: CID, head: CID) -> int:
    """Training samples recorded by the commits on ``head``'s first-parent path since ``base``."""
    total = 0
    cid = head
    while cid != base:
        commit = history.load_commit(cid)
        samples = commit.info.get("training", {}).get("samples", 0)
        if commit.kind == "merge":
            samples = commit.info.get("merge", {}).get("samples", 0)
        total += int(samples) if isinstance(samples, int) else 0
        if not commit.parents:
            break
        cid = commit.parents[0]
    return total


def _tensor_states(
    history: History, base: CID, inputs: tuple[CID, ...], name: str
) -> tuple[np.ndarray, list[np.ndarray], str]:
    with history.store.read() as txn:
        entry = history.load_manifest(history.load_commit(base, txn).weights, txn).tensors[name]
        base_arr = history.tensor_array(base, name, txn)
        arrays = [history.tensor_array(cid, name, txn) for cid in inputs]
    return base_arr, arrays, entry.dtype


def _tensor_deltas(
    history: History, repo: RepoInfo, base: CID, inputs: tuple[CID, ...], name: str,
    states: tuple[np.ndarray, list[np.ndarray], str] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], str]:
    base_arr, arrays, dtype = states or _tensor_states(history, base, inputs, name)
    scale_bits = repo.scale_bits if dtype in FLOAT_DTYPES else 0
    deltas = []
    for cid, arr in zip(inputs, arrays, strict=True):
        if dtype in FLOAT_DTYPES and not np.isfinite(fixedpoint.to_f64(arr, dtype)).all():
            raise FednodeError(f"input {cid} has NaN/Inf in tensor {name!r}: refusing to merge")
        if dtype == "BOOL":
            deltas.append(arr.astype(np.int64) - base_arr.astype(np.int64))
            continue
        q = fixedpoint.encode_delta(base_arr, arr, dtype, scale_bits)
        if q is None:
            raise FednodeError(f"input {cid} changes tensor {name!r} beyond the repository's integer range")
        deltas.append(q)
    return base_arr, deltas, dtype


def compute_merge(
    history: History,
    repo: RepoInfo,
    base: CID,
    inputs: tuple[CID, ...],
    weights: tuple[int, ...],
    strategy: strategies.Strategy,
) -> tuple[dict[str, tuple[str, np.ndarray]], strategies.Plan]:
    """The merged state (safetensors dtype, shaped arrays) and the strategy's plan."""
    with history.store.read() as txn:
        base_manifest = history.load_manifest(history.load_commit(base, txn).weights, txn)
        for cid in inputs:
            manifest = history.load_manifest(history.load_commit(cid, txn).weights, txn)
            if set(manifest.tensors) != set(base_manifest.tensors):
                raise FednodeError(f"input {cid} has different tensor names than the merge base")
            for name, e in manifest.tensors.items():
                b = base_manifest.tensors[name]
                if (e.dtype, e.shape) != (b.dtype, b.shape):
                    raise FednodeError(f"input {cid}: tensor {name!r} is {e.dtype}{list(e.shape)}, "
                                       f"base has {b.dtype}{list(b.shape)}")
    names = sorted(base_manifest.tensors)
    scan: Any = None
    if strategy.needs_scan:
        for name in names:
            _, deltas, _ = _tensor_deltas(history, repo, base, inputs, name)
            scan = strategy.add_scans(scan, strategy.scan(deltas))
    try:
        plan = strategy.plan(weights, scan)
    except ValueError as exc:
        raise FednodeError(f"merge strategy {strategy.name}: {exc}") from None
    merged: dict[str, tuple[str, np.ndarray]] = {}
    for name in names:
        shape = base_manifest.tensors[name].shape
        states = _tensor_states(history, base, inputs, name)
        if states[2] in FLOAT_DTYPES:  # a fused path reads each state once (FedAvg on float32)
            fused = strategy.merge_states(states[0], states[1], plan, states[2], repo.scale_bits)
            if fused is not None:
                merged[name] = (states[2], fused.reshape(shape))
                continue
        base_arr, deltas, dtype = _tensor_deltas(history, repo, base, inputs, name, states)
        if dtype == "BOOL":
            values = {d.tobytes() for d in deltas}
            if len(values) > 1:
                raise FednodeError(f"bool tensor {name!r} differs between inputs; it cannot be averaged")
            merged[name] = (dtype, (base_arr.astype(np.int64) + deltas[0]).astype(np.bool_).reshape(shape))
            continue
        try:
            q = strategy.apply(deltas, plan)
        except ValueError as exc:
            raise FednodeError(f"merge strategy {strategy.name} on {name!r}: {exc}") from None
        scale_bits = repo.scale_bits if dtype in FLOAT_DTYPES else 0
        merged[name] = (dtype, fixedpoint.apply_delta(base_arr, q, dtype, scale_bits).reshape(shape))
    return merged, plan


def merge(
    history: History,
    repo: RepoInfo,
    revs: list[str],
    into: str | None = None,
    strategy_name: str = "fedavg",
    params: dict[str, Any] | None = None,
    weighting: str = "samples",
    message: str | None = None,
) -> MergeOutcome:
    if weighting not in WEIGHTINGS:
        raise FednodeError(f"--weights must be one of {', '.join(WEIGHTINGS)}")
    try:
        strategy = strategies.create(strategy_name, **(params or {}))
    except (ValueError, TypeError) as exc:
        raise FednodeError(str(exc).splitlines()[0]) from None
    into = into or history.current_branch(repo)
    target = history.branch_head(repo, into)
    heads: list[CID] = []
    for rev in revs:
        _, cid = history.resolve(rev, repo)
        if cid not in heads:
            heads.append(cid)
    if not heads:
        raise FednodeError("nothing to merge: name at least one branch")
    target_ancestors = {c for c, _ in history.walk([target])}
    heads = [h for h in heads if h not in target_ancestors]
    if not heads:
        raise FednodeError(f"already up to date: {into} contains every input")
    if len(heads) == 1 and target in {c for c, _ in history.walk(heads)}:
        with history.store.write() as txn:  # fast-forward, compare-and-swap
            if txn.get_ref(repo.repo_id, "heads/" + into) != bytes(target):
                raise FednodeError(f"branch {into!r} moved during the merge; nothing was changed")
            txn.set_ref(repo.repo_id, "heads/" + into, bytes(heads[0]))
        return MergeOutcome(None, fast_forward=heads[0])
    base = history.merge_base([target, *heads])
    if base is None:
        raise FednodeError("the inputs share no history: nothing to merge from")
    inputs = heads + ([target] if target != base else [])
    inputs = tuple(sorted(inputs, key=str))  # deterministic order, ties broken by CID
    if weighting == "equal":
        weights = tuple(1 for _ in inputs)
    else:
        weights = tuple(path_samples(history, base, cid) for cid in inputs)
        missing = [str(c)[:16] for c, w in zip(inputs, weights, strict=True) if w <= 0]
        if missing:
            raise FednodeError(f"no training sample count recorded for {', '.join(missing)}: use --weights equal")
    merged, plan = compute_merge(history, repo, base, inputs, weights, strategy)
    record = {
        "strategy": strategy.describe(),
        "base": base,
        "inputs": list(inputs),
        "weights": list(weights),
        "weighting": weighting,
        "plan": plan.record,
        "samples": sum(w for w, pw in zip(weights, plan.weights, strict=True) if pw > 0)
        if weighting == "samples" else 0,
    }
    others = tuple(c for c in sorted(heads, key=str) if c != target)
    text = message or f"merge {', '.join(revs)} into {into} ({strategy.name})"
    source = ArraySource(merged)
    result = history.commit(repo, source, text, branch=into, kind="merge", extra_parents=others,
                            info={"merge": record}, expected_head=target, exact=True)
    return MergeOutcome(result, base=base, inputs=inputs, weights=weights)


def recompute(history: History, repo: RepoInfo, commit: Commit) -> dict[str, tuple[str, np.ndarray]]:
    """Rebuild a merge commit's state from the inputs, weights and strategy it records."""
    record = commit.info.get("merge")
    if not isinstance(record, dict):
        raise FednodeError("merge commit records no merge")
    try:
        strategy = strategies.from_description(record["strategy"])
        base = record["base"]
        inputs = tuple(record["inputs"])
        weights = tuple(int(w) for w in record["weights"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FednodeError(f"malformed merge record: {exc}") from None
    if not isinstance(base, CID) or not all(isinstance(c, CID) for c in inputs):
        raise FednodeError("malformed merge record: base and inputs must be commit links")
    if set(commit.parents[1:]) - set(inputs):
        raise FednodeError("merge parents are not among its recorded inputs")
    merged, plan = compute_merge(history, repo, base, inputs, weights, strategy)
    if dagcbor.encode(plan.record) != dagcbor.encode(record.get("plan", {})):
        raise FednodeError("the strategy's decisions differ from the recorded ones")
    return merged


def check_merge(history: History, repo: RepoInfo, cid: CID) -> list[str]:
    commit = history.load_commit(cid)
    try:
        expected = recompute(history, repo, commit)
    except FednodeError as exc:
        return [f"merge {cid}: {exc}"]
    actual = history.state(cid)
    if set(actual) != set(expected):
        return [f"merge {cid}: tensor names differ from the recomputed merge"]
    for name, (_, arr) in expected.items():
        if not np.array_equal(actual[name][1].view(np.uint8), np.ascontiguousarray(arr).reshape(-1).view(np.uint8)):
            return [f"merge {cid}: tensor {name!r} does not match the recomputed merge"]
    return []
