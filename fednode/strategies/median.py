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

Cost: one ``np.sort`` (``np.argsort`` when weighted) along the input axis per block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fednode.strategies import exact
from fednode.strategies.base import Strategy, positive
from fednode.strategies.exact import StrategyError, mean_of_two
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

    def __init__(self, weighted: bool = False) -> None:
        if not isinstance(weighted, bool):
            raise StrategyError(f"weighted must be true or false, got {weighted!r}")
        self.weighted = weighted

    def params(self) -> dict[str, Any]:
        return {"weighted": self.weighted}

    def combine(self, deltas: list[np.ndarray], weights: tuple[int, ...]) -> np.ndarray:
        kept, ws = positive(deltas, weights)
        if self.weighted:
            return weighted_median(kept, ws)
        return trimmed_mean(kept, (len(kept) - 1) // 2)
