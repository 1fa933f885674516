"""Krum and Multi-Krum.

Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017. Each input
``i`` is scored by the sum of squared L2 distances to its ``n - f - 2`` closest
other inputs (``f``: number of Byzantine inputs tolerated, needs ``n >= 2f + 3``).
Krum keeps the single best-scored input; Multi-Krum (section 5 of the paper)
keeps the ``m`` best-scored and averages them, here with FedAvg weights and
FedAvg's exact rounding.

Exactness: distances are over the WHOLE model (all tensors), computed exactly:
per block of 32,768 elements each delta is split into 23-bit integer limbs (one
limb when ``|d| < 2**22``, at most three for any int64) so every int64 dot
product provably fits, and the Gram matrix is accumulated in Python ints;
``|x - y|^2 = <x,x> + <y,y> - 2<x,y>``. Scores are Python ints, so any model
size and any delta magnitude is exact. Ties (equal scores) go to the lower
input index; the caller orders inputs by CID, so the rule is "lowest CID wins".

Streaming (two passes over the tensors)::

    total = None
    for name in tensors:                                       # pass 1
        total = Strategy.add_scans(total, pairwise_sq_distances(deltas_of(name)))
    chosen = select(total, f, m, active=[i for i, w in enumerate(weights) if w > 0])
    merged = {name: fedavg_of(deltas_of(name), weights masked to chosen)}  # pass 2

``MultiKrum.scan/plan/apply`` do exactly this. Inputs with weight 0 take no part
(neither as candidates nor as neighbours); ``n`` counts the others.

Defaults: ``byzantine=1`` (needs ``n >= 5``); ``byzantine=None`` takes the most Krum
tolerates, ``(n - 3) // 2``, and refuses when that is below ``min_byzantine`` (default
1): on 3 or 4 inputs it would tolerate none, and Multi-Krum would keep every input, a
plain mean. Records written before ``min_byzantine`` existed are read with 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fednode.strategies import exact
from fednode.strategies.base import Plan, Strategy
from fednode.strategies.exact import StrategyError, check_deltas, check_weights, weighted_mean

LIMB = 23  # products of two limbs < 2**46; BLOCK (<= 2**16) of them sum below 2**62


def _limbs(row: np.ndarray, count: int) -> list[np.ndarray]:
    """``row == sum(limb << (LIMB * a))``: unsigned low limbs, a signed top limb."""
    if count == 1:
        return [row]
    mask = (1 << LIMB) - 1
    out = [np.bitwise_and(np.right_shift(row, LIMB * a), mask) for a in range(count - 1)]
    out.append(np.right_shift(row, LIMB * (count - 1)))
    return out


def pairwise_sq_distances(deltas: Sequence[np.ndarray]) -> np.ndarray:
    """Exact squared L2 distances between one tensor's deltas.

    Returns an ``(n, n)`` numpy array of dtype object holding Python ints
    (symmetric, zero diagonal). Matrices of different tensors add up with ``+``
    to the whole-model distances.
    """
    check_deltas(deltas)
    n = len(deltas)
    flat = [d.reshape(-1) for d in deltas]
    size = flat[0].size
    gram = [[0] * n for _ in range(n)]
    step = min(exact.BLOCK, 1 << 16)  # keeps every limb dot product below 2**62
    for start in range(0, size, step):
        rows = [f[start : start + step] for f in flat]
        big = max(max(-int(r.min()), int(r.max())) for r in rows)
        count = max(1, -(-(big.bit_length() + 1) // LIMB))
        limbs = [_limbs(r, count) for r in rows]
        for i in range(n):
            for j in range(i, n):
                acc = 0
                for a, x in enumerate(limbs[i]):
                    for b, y in enumerate(limbs[j]):
                        acc += int(np.dot(x, y)) << (LIMB * (a + b))
                gram[i][j] += acc
    dist = np.zeros((n, n), dtype=object)
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = gram[i][i] + gram[j][j] - 2 * gram[i][j]
        dist[i, i] = 0
    return dist


def _check_matrix(dist: Any, n: int | None = None) -> list[list[int]]:
    """The matrix as lists of Python ints; square (``n`` x ``n`` when given), integer, non-negative."""
    shape = np.shape(dist)
    if len(shape) != 2 or shape[0] != shape[1] or (n is not None and shape[0] != n):
        want = f"({n}, {n})" if n is not None else "square"
        raise StrategyError(f"distance matrix must be {want}, got shape {shape}")
    rows = [list(row) for row in np.asarray(dist, dtype=object)]
    for row in rows:
        for v in row:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise StrategyError(f"distances must be non-negative integers, got {v!r}")
    return [[int(v) for v in row] for row in rows]


def resolve_byzantine(byzantine: int | None, n: int, min_byzantine: int = 0) -> int:
    """``f`` for ``n`` participating inputs; None means the most Krum tolerates, ``(n - 3) // 2``,
    which must be at least ``min_byzantine``."""
    f = (n - 3) // 2 if byzantine is None else byzantine
    if byzantine is None and f < min_byzantine:
        raise StrategyError(
            f"krum with byzantine=None tolerates {max(f, 0)} faulty input(s) among {n}, below "
            f"min_byzantine={min_byzantine}: it needs {2 * min_byzantine + 3} inputs "
            f"(--param byzantine=0 selects without tolerance)"
        )
    if f < 0 or n < 2 * f + 3:
        hint = " (--param byzantine=0 tolerates none)" if f > 0 else ""
        raise StrategyError(f"krum with byzantine={byzantine} needs at least {2 * max(f, 0) + 3} inputs, "
                            f"got {n}{hint}")
    return f


def krum_scores(dist: Any, f: int, active: Sequence[int] | None = None) -> dict[int, int]:
    """Score of each active input: sum of its ``n - f - 2`` smallest distances to the other active inputs."""
    rows = _check_matrix(dist)
    active = list(range(len(rows))) if active is None else sorted(set(active))
    n = len(active)
    resolve_byzantine(f, n)
    closest = n - f - 2
    return {i: sum(sorted(rows[i][j] for j in active if j != i)[:closest]) for i in active}


def select(dist: Any, f: int, m: int = 1, active: Sequence[int] | None = None) -> list[int]:
    """Indices of the ``m`` best-scored inputs, best first; equal scores: lower index first."""
    scores = krum_scores(dist, f, active)
    if not 1 <= m <= len(scores):
        raise StrategyError(f"multi-krum m={m} must be between 1 and the {len(scores)} inputs")
    return sorted(scores, key=lambda i: (scores[i], i))[:m]


class MultiKrum(Strategy):
    name = "multi-krum"
    paper = "Blanchard et al. 2017, Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent"
    needs_scan = True

    def __init__(self, byzantine: int | None = 1, m: int | None = None, min_byzantine: int = 1) -> None:
        for key, value, low in (("byzantine", byzantine, 0), ("m", m, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise StrategyError(f"{key} must be an integer >= {low} or None, got {value!r}")
        if isinstance(min_byzantine, bool) or not isinstance(min_byzantine, int) or min_byzantine < 0:
            raise StrategyError(f"min_byzantine must be a non-negative integer, got {min_byzantine!r}")
        self.byzantine = byzantine
        self.m = m
        self.min_byzantine = min_byzantine

    def params(self) -> dict[str, Any]:
        return {"byzantine": self.byzantine, "m": self.m, **self._auto()}

    def _auto(self) -> dict[str, Any]:
        # only byzantine=None resolves f from n: a fixed count needs no floor
        return {"min_byzantine": self.min_byzantine} if self.byzantine is None else {}

    @classmethod
    def upgrade_record(cls, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("byzantine", 1) is None and "min_byzantine" not in params:
            return {**params, "min_byzantine": 0}  # recorded before min_byzantine existed
        return params

    def scan(self, deltas: Sequence[np.ndarray]) -> np.ndarray:
        return pairwise_sq_distances(deltas)

    def plan(self, weights: Sequence[int], scan: Any = None) -> Plan:
        ws = check_weights(weights, len(weights))
        if scan is None:
            raise StrategyError(f"{self.name} needs the distances of all tensors: pass the summed scan() results")
        _check_matrix(scan, len(ws))
        active = [i for i, w in enumerate(ws) if w > 0]
        f = resolve_byzantine(self.byzantine, len(active), self.min_byzantine)
        m = len(active) - f if self.m is None else self.m
        chosen = select(scan, f, m, active)
        keep = set(chosen)
        return Plan(tuple(w if i in keep else 0 for i, w in enumerate(ws)), {"byzantine": f, "selected": chosen})

    def combine(self, deltas: list[np.ndarray], weights: tuple[int, ...]) -> np.ndarray:
        return weighted_mean(deltas, weights)


class Krum(MultiKrum):
    name = "krum"

    def __init__(self, byzantine: int | None = 1, min_byzantine: int = 1) -> None:
        super().__init__(byzantine, 1, min_byzantine)

    def params(self) -> dict[str, Any]:
        return {"byzantine": self.byzantine, **self._auto()}
