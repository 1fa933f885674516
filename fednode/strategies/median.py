"""Coordinate-wise median.

Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018 (arXiv:1803.01498), Definition 1.

Unweighted by default, as in the paper: a weight only decides whether an input
takes part (``w > 0``). For an odd count the median is the middle value; for an
even count it is the mean of the two middle values, rounded to nearest, ties to
even (integers only, no overflow: ``floor(a/2) + floor(b/2) + carry``). This is
exactly the trimmed mean with ``b = (n - 1) // 2``.

``weighted=True``: the weighted median. With the values of a coordinate sorted
``v_1 <= ... <= v_n``, positive integer weights and cumulative weights ``C_k``
out of ``W``, take the first ``k`` with ``2 C_k >= W``: if ``2 C_k == W`` the
result is the rounded mean of ``v_k`` and ``v_{k+1}``, otherwise ``v_k``. With
unit weights this is the unweighted median above. Ties between equal values
cannot change the result, so it is independent of input order.

``min_inputs`` (default 3): fewer participating inputs are refused, naming the
parameter, because the median of two is their mean and one outlier moves it at will.
Merge records written before ``min_inputs`` existed are read with ``min_inputs=1``,
the rule they were made with.

Cost: one ``np.sort`` (``np.argsort`` when weighted) along the input axis per block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fednode.strategies import exact
from fednode.strategies.base import Plan, Strategy, positive
from fednode.strategies.exact import StrategyError, check_weights, mean_of_two
from fednode.strategies.trimmed_mean import trimmed_mean


def weighted_median(deltas: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """Weighted median per coordinate (validated int64 deltas, positive weights summing below 2**63)."""
    n = len(deltas)
    shape = deltas[0].shape
    flat = [d.reshape(-1) for d in deltas]
    size = flat[0].size
    out = np.empty(size, dtype=np.int64)
    total = sum(weights)
    w = np.array(weights, dtype=np.int64)

    def work(lo: int, hi: int) -> None:
        for start, stop, block in exact.stacked_blocks(flat, lo, hi):
            k = stop - start
            order = np.argsort(block, axis=0, kind="stable")
            values = np.take_along_axis(block, order, axis=0)
            cum = np.cumsum(w[order], axis=0)  # <= total < 2**63
            rest = total - cum
            first = np.argmax(cum >= rest, axis=0)  # 2 C_k >= W, written without overflow
            cols = np.arange(k)
            lo_v = values[first, cols]
            split = cum[first, cols] == rest[first, cols]
            hi_v = values[np.minimum(first + 1, n - 1), cols]
            out[start:stop] = np.where(split, mean_of_two(lo_v, hi_v), lo_v)

    exact.for_blocks(size, work)
    return out.reshape(shape)


class Median(Strategy):
    name = "median"
    paper = "Yin et al. 2018, Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"

    def __init__(self, weighted: bool = False, min_inputs: int = 3) -> None:
        if not isinstance(weighted, bool):
            raise StrategyError(f"weighted must be true or false, got {weighted!r}")
        if isinstance(min_inputs, bool) or not isinstance(min_inputs, int) or min_inputs < 1:
            raise StrategyError(f"min_inputs must be an integer >= 1, got {min_inputs!r}")
        self.weighted = weighted
        self.min_inputs = min_inputs

    def params(self) -> dict[str, Any]:
        return {"weighted": self.weighted, "min_inputs": self.min_inputs}

    @classmethod
    def upgrade_record(cls, params: dict[str, Any]) -> dict[str, Any]:
        return params if "min_inputs" in params else {**params, "min_inputs": 1}

    def plan(self, weights, scan=None) -> Plan:
        ws = check_weights(weights, len(weights))
        n = sum(1 for w in ws if w > 0)
        if n < self.min_inputs:
            raise StrategyError(
                f"median needs min_inputs={self.min_inputs} inputs to outvote an outlier, got {n} "
                f"(--param min_inputs=1 allows fewer; the median of 1 or 2 inputs is their mean)"
            )
        return Plan(ws)

    def combine(self, deltas: list[np.ndarray], weights: tuple[int, ...]) -> np.ndarray:
        kept, ws = positive(deltas, weights)
        if self.weighted:
            return weighted_median(kept, ws)
        return trimmed_mean(kept, (len(kept) - 1) // 2)
