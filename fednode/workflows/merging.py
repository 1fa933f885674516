"""Exact N-way merges: merged = base + aggregate(deltas of each input from the merge base).

Deltas are the exact integers of ``fixedpoint.encode_delta`` on a grid 2**-bits chosen per
float tensor (the merge grid, below); inputs are ordered by CID, so the same inputs give the
same bytes on any machine. ``verify`` recomputes a merge from what its commit records
(inputs, weights, strategy, plan and grid) and compares bit for bit.

Merge grid, versioned (``record["grid_rule"]``):

* rule 1 (merges recorded without ``grid``): every float tensor on the repository grid
  ``2**-repo.scale_bits``;
* rule 2 (``GRID_RULE``): each float tensor gets its own ``bits``, recorded in
  ``record["grid"][name]``: with ``M`` the largest finite ``|value|`` of the tensor in the merge
  base and ``M < 2**e`` (``math.frexp``), ``bits = GRID_PRECISION - e``, so the grid resolves
  2**-40 of the tensor's largest value at any magnitude. An all-zero base tensor gets
  ``fixedpoint.ZERO_BASE_BITS`` (48; merges before 2026-12-04 took ``M`` from the inputs: their
  recorded bits still verify), so updates can commit on the merge's grid before the merge exists.
  When some input's change would not fit 2**62 grid steps on that grid,
  ``M`` is taken over the base and all inputs instead. Clamped to ``[-GRID_LIMIT, GRID_LIMIT]``.
  ``verify`` never re-derives the grid: it uses the recorded bits, so the rule may evolve.
  A tensor mixing tiny and large values keeps absolute precision ``M * 2**-40``: its tiny
  elements lose relative precision (a 1e-8 element beside a 1e3 one: about 1e-9 absolute).

Sample weights (``--weights samples``): ``contributed_samples`` of each input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fednode import strategies
from fednode.errors import FednodeError
from fednode.history import CommitResult, History, RepoInfo, refstore
from fednode.tensors import fixedpoint
from fednode.tensors.modelio import ArraySource
from fednode.workflows import commitments
from protocol import dagcbor
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES, Commit

WEIGHTINGS = ("samples", "equal")
GRID_RULE = 2  # how new merges choose each float tensor's grid (module docstring)
GRID_PRECISION = fixedpoint.GRID_PRECISION
GRID_LIMIT = fixedpoint.GRID_LIMIT
grid_bits = fixedpoint.grid_bits
choose_grid = fixedpoint.choose_grid


@dataclass
class MergeOutcome:
    result: CommitResult | None  # None for a fast-forward
    fast_forward: CID | None = None
    base: CID | None = None
    inputs: tuple[CID, ...] = ()
    weights: tuple[int, ...] = ()


def declared_samples(commit: Commit) -> int:
    """Training samples a commit declares: ``info["training"]["samples"]`` (``train``) or
    ``info["samples"]`` (``commit --samples N``); 0 when it declares none. A merge declares none:
    its ``merge.samples`` total is never added on top of its own inputs."""
    if commit.kind == "merge":
        return 0
    training = commit.info.get("training")
    for value in ((training or {}).get("samples") if isinstance(training, dict) else None,
                  commit.info.get("samples")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _since(history: History, heads: list[CID], stop: set[CID]) -> dict[CID, Commit]:
    """Commits reachable from ``heads`` through all parents, without entering ``stop``."""
    seen: dict[CID, Commit] = {}
    stack = [h for h in heads if h not in stop]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        commit = history.load_commit(cid)
        seen[cid] = commit
        stack.extend(p for p in commit.parents if p not in stop and p not in seen)
    return seen


def contributed_samples(history: History, base: CID, target: CID, inputs: tuple[CID, ...]) -> tuple[int, ...]:
    """Each input's training samples since ``base``, each training commit counted once across rounds.

    An input's samples are the declared samples (``declared_samples``) of the commits reachable from
    it, through all parents, that are neither reachable from ``base`` nor already merged into
    ``target``: commits behind a merge that ``target`` contains (since ``base``) were counted by
    that merge. A merge commit adds nothing itself (its inputs are walked instead), so totals
    never accumulate round after round. A commit reachable from several inputs (not yet merged
    into ``target``) counts for each of them, as each one's delta carries its change.
    """
    before = {c for c, _ in history.walk([base])}
    on_target = _since(history, [target], before)
    merges = [c for c, commit in on_target.items() if commit.kind == "merge"]
    counted = before | set(_since(history, merges, before))
    return tuple(sum(declared_samples(c) for c in _since(history, [cid], counted).values()) for cid in inputs)


def path_samples(history: History, base: CID, head: CID) -> int:
    """Training samples ``head`` contributes since ``base`` (``contributed_samples`` with head as target)."""
    return contributed_samples(history, base, head, (head,))[0]


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
    grid: dict[str, int] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], str]:
    """The inputs' exact deltas for tensor ``name`` on its grid: ``grid[name]`` when given, else
    the repository grid. With ``grid`` given and ``name`` not in it, rule 2 chooses the bits and
    stores them in ``grid`` (widening when a change would not fit)."""
    base_arr, arrays, dtype = states or _tensor_states(history, base, inputs, name)
    if dtype in FLOAT_DTYPES:
        for cid, arr in zip(inputs, arrays, strict=True):
            if not np.isfinite(fixedpoint.to_f64(arr, dtype)).all():
                raise FednodeError(f"input {cid} has NaN/Inf in tensor {name!r}: refusing to merge")
    if dtype not in FLOAT_DTYPES or grid is None:
        return base_arr, _deltas_on(inputs, base_arr, arrays, dtype, name, repo.scale_bits), dtype
    if name in grid:
        return base_arr, _deltas_on(inputs, base_arr, arrays, dtype, name, grid[name]), dtype
    bits = choose_grid(base_arr, arrays, dtype, repo.scale_bits)
    try:
        deltas = _deltas_on(inputs, base_arr, arrays, dtype, name, bits)
    except FednodeError:
        bits = choose_grid(base_arr, arrays, dtype, repo.scale_bits, wide=True)
        deltas = _deltas_on(inputs, base_arr, arrays, dtype, name, bits)
    grid[name] = bits
    return base_arr, deltas, dtype


def _deltas_on(
    inputs: tuple[CID, ...], base_arr: np.ndarray, arrays: list[np.ndarray], dtype: str, name: str, bits: int
) -> list[np.ndarray]:
    scale_bits = bits if dtype in FLOAT_DTYPES else 0
    deltas = []
    for cid, arr in zip(inputs, arrays, strict=True):
        if dtype == "BOOL":
            deltas.append(arr.astype(np.int64) - base_arr.astype(np.int64))
            continue
        q = fixedpoint.encode_delta(base_arr, arr, dtype, scale_bits)
        if q is None:
            raise FednodeError(f"input {cid} changes tensor {name!r} by more than 2**62 steps of its grid "
                               f"2**{-bits}")
        deltas.append(q)
    return deltas


def compute_merge(
    history: History,
    repo: RepoInfo,
    base: CID,
    inputs: tuple[CID, ...],
    weights: tuple[int, ...],
    strategy: strategies.Strategy,
    grid: dict[str, int] | None = None,
) -> tuple[dict[str, tuple[str, np.ndarray]], strategies.Plan]:
    """The merged state (safetensors dtype, shaped arrays) and the strategy's plan.

    ``grid``: None merges every float tensor on the repository grid (rule 1, merges recorded
    before grids were); a dict gives each float tensor's bits (rule 2), and bits missing from it
    are chosen by rule 2 and added to it (a new merge passes ``{}`` and records what it holds after).
    """
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
            _, deltas, _ = _tensor_deltas(history, repo, base, inputs, name, grid=grid)
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
            bits = repo.scale_bits if grid is None else grid.get(name)
            fused = strategies.fused_merge(strategy, plan, *states, bits, repo.scale_bits)
            if fused is not None:  # None: not representable on that grid (or no fused path)
                if grid is not None:
                    grid[name] = fused[0]
                merged[name] = (states[2], fused[1].reshape(shape))
                continue
        base_arr, deltas, dtype = _tensor_deltas(history, repo, base, inputs, name, states, grid)
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
        scale_bits = 0 if dtype not in FLOAT_DTYPES else repo.scale_bits if grid is None else grid[name]
        merged[name] = (dtype, fixedpoint.apply_delta(base_arr, q, dtype, scale_bits).reshape(shape))
    return merged, plan


def _policy_grid(history: History, repo: RepoInfo, base: CID) -> dict[str, int]:
    """The merge grid to start from: empty (rule 2 chooses) unless the repository requires update proofs;
    then every float tensor on the policy's grid, the one its inputs are proven on, so that the merge
    carries C(d) and C(r) checkable against the inputs' commitments (rounding ``S / W`` to that grid)."""
    if "zk" not in repo.settings:
        return {}
    from fednode.workflows import zkpolicy

    policy = zkpolicy.repo_policy(repo)
    if policy is None:
        return {}
    with history.store.read() as txn:
        entries = history.load_manifest(history.load_commit(base, txn).weights, txn).tensors
    return {name: policy.grid_bits for name, e in entries.items() if e.dtype in FLOAT_DTYPES}


def _check_proofs(history: History, repo: RepoInfo, heads: list[CID], before: set[CID]) -> None:
    """In a repository that requires update proofs, refuse (before computing anything) inputs whose
    commits since ``before`` (the merge base's ancestry) fail the policy (``zkpolicy.first_failure``)."""
    if "zk" not in repo.settings:
        return
    from fednode.workflows import zkpolicy
    from fednode.zk.curve import ZkError

    try:
        failed = zkpolicy.first_failure(history, repo, _since(history, heads, before))
    except ZkError as exc:
        raise FednodeError(f"the repository's proof policy is malformed ({exc}); nothing was merged") from None
    if failed is not None:
        cid, why = failed
        raise FednodeError(f"commit {str(cid)[:16]} (an input's update since the merge base): {why}; "
                           "nothing was merged")


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
    names: dict[CID, str] = {target: into}
    for rev in revs:
        _, cid = history.resolve(rev, repo)
        names.setdefault(cid, rev)
        if cid not in heads:
            heads.append(cid)
    if not heads:
        raise FednodeError("nothing to merge: name at least one branch")
    target_ancestors = {c for c, _ in history.walk([target])}
    heads = [h for h in heads if h not in target_ancestors]
    if not heads:
        raise FednodeError(f"already up to date: {into} contains every input")
    if len(heads) == 1 and target in {c for c, _ in history.walk(heads)}:
        _check_proofs(history, repo, heads, target_ancestors)
        with history.store.write() as txn:  # fast-forward, compare-and-swap
            if refstore.branch_head(txn, repo.repo_id, into) != target:
                raise FednodeError(f"branch {into!r} moved during the merge; nothing was changed")
            refstore.set_branch(txn, repo.repo_id, into, heads[0])
        return MergeOutcome(None, fast_forward=heads[0])
    base = history.merge_base([target, *heads])
    if base is None:
        raise FednodeError("the inputs share no history: nothing to merge from")
    _check_proofs(history, repo, heads, {c for c, _ in history.walk([base])})
    # deterministic order, ties broken by CID
    inputs = tuple(sorted(heads + ([target] if target != base else []), key=str))
    if weighting == "equal":
        weights = tuple(1 for _ in inputs)
    else:
        weights = contributed_samples(history, base, target, inputs)
        missing = [f"{names[c]} ({str(c)[:16]})" for c, w in zip(inputs, weights, strict=True) if w <= 0]
        if missing:
            which = f"inputs {', '.join(missing)} declare" if len(missing) > 1 else f"input {missing[0]} declares"
            raise FednodeError(f"{which} no training samples since the merge base "
                               f"{str(base)[:16]}: use --weights equal, or record them with "
                               f"`fednode commit --samples N`")
    prover = _merge_prover(history, repo, strategy)  # missing keys: refused before computing anything
    grid = _policy_grid(history, repo, base)
    merged, plan = compute_merge(history, repo, base, inputs, weights, strategy, grid)
    record = {
        "strategy": strategy.describe(),
        "grid_rule": GRID_RULE,
        "grid": dict(sorted(grid.items())),
        "base": base,
        "inputs": list(inputs),
        "weights": list(weights),
        "weighting": weighting,
        "plan": plan.record,
        "samples": sum(w for w, pw in zip(weights, plan.weights, strict=True) if pw > 0)
        if weighting == "samples" else 0,
    }
    info: dict[str, Any] = {"merge": record}
    zk, remainder = commitments.merge_info(history, repo, base, inputs, weights, strategy, plan, grid)
    if zk is not None:
        info["zk"] = zk
    finish = None
    if prover is not None and remainder is not None:  # a FedAvg merge carrying C(r): prove |2 r_i| <= W
        prover.check(remainder[0], sum(weights))
        finish = prover.finisher(remainder[0], remainder[1], sum(weights))
    others = tuple(c for c in sorted(heads, key=str) if c != target)
    text = message or f"merge {', '.join(revs)} into {into} ({strategy.name})"
    source = ArraySource(merged)
    result = history.commit(repo, source, text, branch=into, kind="merge", extra_parents=others,
                            info=info, expected_head=target, exact=True, finish=finish)
    return MergeOutcome(result, base=base, inputs=inputs, weights=weights)


def _merge_prover(history: History, repo: RepoInfo, strategy: strategies.Strategy) -> Any:
    """The remainder prover of a FedAvg merge under a policy naming a remainder key (``zkpolicy.merge_prover``),
    None otherwise: median, trimmed mean and Krum carry no C(r) and need no proof."""
    if "zk" not in repo.settings or not isinstance(strategy, strategies.FedAvg):
        return None
    from fednode.workflows import zkpolicy

    return zkpolicy.merge_prover(commitments.settings_of(history), repo)


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
    grid = recorded_grid(record)
    merged, plan = compute_merge(history, repo, base, inputs, weights, strategy, grid)
    if grid is not None and len(grid) != len(record["grid"]):
        missing = sorted(set(grid) - set(record["grid"]))
        raise FednodeError(f"malformed merge record: no grid for float tensor {missing[0]!r}")
    if dagcbor.encode(plan.record) != dagcbor.encode(record.get("plan", {})):
        raise FednodeError("the strategy's decisions differ from the recorded ones")
    return merged


def recorded_grid(record: dict[str, Any]) -> dict[str, int] | None:
    """The per-tensor grid a merge record holds (rule 2), or None for rule 1 (no ``grid``:
    the repository grid, as merges recorded before grids were)."""
    rule = record.get("grid_rule", 1)
    if rule == 1 and "grid" not in record:
        return None
    grid = record.get("grid")
    if rule != GRID_RULE or not isinstance(grid, dict):
        raise FednodeError(f"merge record has grid rule {rule!r}; this version knows rules 1 and {GRID_RULE}")
    for name, bits in grid.items():
        if not isinstance(name, str) or isinstance(bits, bool) or not isinstance(bits, int) \
                or not -GRID_LIMIT <= bits <= GRID_LIMIT:
            raise FednodeError(f"malformed merge record: grid {name!r}: {bits!r} is not an integer "
                               f"in [-{GRID_LIMIT}, {GRID_LIMIT}]")
    return dict(grid)


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
