"""Named aggregation strategies for merges: pure, exact, deterministic functions over int64 deltas.

Every strategy maps the inputs' update deltas (exact int64 arrays on the tensor's
merge grid 2**-bits, see ``fednode.workflows.merging`` and ``fednode.tensors.fixedpoint``) and integer weights
(e.g. example counts) to one merged int64 delta, using integer arithmetic only:
the same inputs give the same bytes on every machine, so anyone can re-run a
merge recorded in a commit and check it.

Registry
    ``STRATEGIES``: name -> instance with default parameters;
    ``get(name)`` returns it; ``create(name, **params)`` builds one with
    parameters; ``from_description(d)`` rebuilds one from ``describe()``.
    Unknown names and bad parameters raise ``StrategyError`` (a ``ValueError``
    and a ``FednodeError``) with a one-line message.

    ========== ======================= ========================== ===========================
    name       class                   parameters                 paper
    ========== ======================= ========================== ===========================
    fedavg     ``FedAvg``              --                         McMahan et al. 2017
    median     ``Median``              weighted=False,            Yin et al. 2018
                                       min_inputs=3
    trimmed-   ``TrimmedMean``         trim_fraction=0.1,         Yin et al. 2018
    mean                               min_trim=1; or trim
    krum       ``Krum``                byzantine=1 (None: max,    Blanchard et al. 2017
                                       >= min_byzantine=1)
    multi-krum ``MultiKrum``           byzantine=1, m=None (n-f), Blanchard et al. 2017
                                       min_byzantine=1
    ========== ======================= ========================== ===========================

Design: two phases, streamed one tensor at a time
    Coordinate-wise rules (fedavg, median, trimmed-mean) need one tensor's
    deltas at a time. Krum needs distances over the whole model, so every
    strategy exposes the same three steps and the caller runs them the same way::

        s = strategies.create(name, **params)          # or from_description(...)
        scan = None
        if s.needs_scan:                               # pass 1 (Krum only)
            for t in tensor_names:
                scan = s.add_scans(scan, s.scan(deltas(t)))
        plan = s.plan(weights, scan)                   # -> Plan(weights, record)
        for t in tensor_names:                         # pass 2
            out[t] = s.apply(deltas(t), plan)          # int64, same shape as the deltas
        commit_info["merge"] = {"strategy": s.describe(), **plan.record}

    ``deltas(t)`` is a list with one int64 array per input, all of one shape,
    in a fixed input order (the caller sorts inputs by CID; Krum's ties go to
    the lower index). ``plan.weights`` are the effective weights (Krum zeroes
    the rejected inputs); ``plan.record`` holds resolved facts (Krum's
    ``selected`` indices and ``byzantine``, trimmed-mean's ``trim``).
    ``s.aggregate(deltas, weights)`` is the whole pipeline for one tensor, and
    ``s.aggregate_model({name: deltas}, weights)`` for an in-memory model.

Weights
    Non-negative integers, sum in 1..2**63-1. Weight 0 leaves an input out of
    every strategy. FedAvg, Multi-Krum's average and the weighted median use
    the values; the unweighted median and the trimmed mean only whether w > 0.

Rounding
    Every division rounds to nearest, ties to even (``round_div`` in
    ``fednode.strategies.exact``), with integer operations only.

Overflow
    Sums are done in int64 only on blocks where a bound proves no overflow
    (``sum_k w_k * max|d_k| <= 2**63 - 1``); other blocks fall back to Python
    ints. Results are exact for every int64 input; there is no input range limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fednode.strategies.base import Plan, Strategy
from fednode.strategies.exact import StrategyError, round_div
from fednode.strategies.fedavg import FedAvg
from fednode.strategies.krum import Krum, MultiKrum, krum_scores, pairwise_sq_distances, select
from fednode.strategies.median import Median
from fednode.strategies.trimmed_mean import TrimmedMean
from fednode.tensors import fixedpoint

CLASSES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, Median, TrimmedMean, Krum, MultiKrum)}
STRATEGIES: dict[str, Strategy] = {name: cls() for name, cls in CLASSES.items()}


def _lookup(name: Any) -> type[Strategy]:
    cls = CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise StrategyError(f"unknown aggregation strategy {name!r}; valid: {', '.join(CLASSES)}")
    return cls


def get(name: str) -> Strategy:
    """The registered strategy ``name`` with default parameters."""
    _lookup(name)
    return STRATEGIES[name]


def create(name: str, **params: Any) -> Strategy:
    """A new strategy ``name`` with ``params`` (keyword arguments of its constructor)."""
    cls = _lookup(name)
    try:
        return cls(**params)
    except TypeError:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        bad = sorted(set(params) - set(valid))
        raise StrategyError(
            f"{name} takes parameters {valid or 'none'}; got unexpected {bad or sorted(params)}"
        ) from None


def from_description(description: dict[str, Any]) -> Strategy:
    """Rebuild a strategy from ``describe()`` output (e.g. read back from a merge commit)."""
    if not isinstance(description, dict) or "name" not in description:
        raise StrategyError("a strategy description is a map with a 'name'")
    params = {k: v for k, v in description.items() if k != "name"}
    return create(description["name"], **_lookup(description["name"]).upgrade_record(params))


def fused_merge(
    strategy: Strategy, plan: Plan, base_arr: np.ndarray, arrays: list[np.ndarray],
    dtype: str, bits: int | None, fallback: int,
) -> tuple[int, np.ndarray] | None:
    """One float tensor through the strategy's fused path, as ``fednode.workflows.merging.compute_merge``
    runs it: the grid (``bits``, or rule 2's choice when None) and the merged state; None when the generic path must
    decide (no fused path, or a change not representable on that grid)."""
    if bits is None:
        bits = fixedpoint.choose_grid(base_arr, arrays, dtype, fallback)
    out = strategy.merge_states(base_arr, arrays, plan, dtype, bits)
    return None if out is None else (bits, out)


__all__ = [
    "CLASSES",
    "STRATEGIES",
    "FedAvg",
    "Krum",
    "Median",
    "MultiKrum",
    "Plan",
    "Strategy",
    "StrategyError",
    "TrimmedMean",
    "create",
    "fused_merge",
    "from_description",
    "get",
    "krum_scores",
    "pairwise_sq_distances",
    "round_div",
    "select",
]
