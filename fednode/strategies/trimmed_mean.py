"""Coordinate-wise trimmed mean.

Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018 (arXiv:1803.01498), Definition 2:
per coordinate, drop the ``b`` largest and the ``b`` smallest of the ``n`` values
and average the remaining ``n - 2b``.

Unweighted, as in the paper: a weight only decides whether an input takes part
(``w > 0``); ``n`` counts the inputs that do. ``b`` is ``trim`` when given, else
``floor(trim_fraction * n)`` computed exactly from the fraction's decimal form
(``0.1`` means 1/10, so ``n = 10`` trims exactly 1 from each side), raised to
``min_trim`` (default 1) so that small merges are trimmed too: the default trims 1
from each side for 3 to 19 inputs (a fraction alone trims nothing below 10) and
refuses fewer than 3, naming ``min_trim``. ``b`` must leave at least one value
(``2b < n``). The mean of the kept values is rounded to nearest, ties to even, in
integers only; ``b = 0`` (``trim=0``, or ``min_trim=0`` with a small fraction) is
FedAvg with equal weights.

Why it holds: with at most ``b`` poisoned inputs, every kept value of a coordinate
lies between two honest values, so the result stays within the honest inputs'
range per coordinate whatever the poisoned values are.

Merge records written before ``min_trim`` existed carry only ``trim_fraction``;
``upgrade_record`` reads them with ``min_trim=0``, the rule they were made with.

Overflow: int64 sums on a block when ``(n - 2b) * max|kept| <= 2**63 - 1``,
Python ints otherwise. Cost: one ``np.sort`` along the input axis per block.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from fednode.strategies import exact
from fednode.strategies.base import Plan, Strategy, positive
from fednode.strategies.exact import StrategyError, check_weights, weighted_sum_block


def trimmed_mean(deltas: list[np.ndarray], b: int) -> np.ndarray:
    """Per coordinate: sort the ``n`` values, average ranks ``b .. n-b-1`` (validated int64 deltas)."""
    n = len(deltas)
    if not 0 <= 2 * b < n:
        raise StrategyError(f"cannot trim {b} from each side of {n} values")
    shape = deltas[0].shape
    flat = [d.reshape(-1) for d in deltas]
    size = flat[0].size
    out = np.empty(size, dtype=np.int64)
    kept = n - 2 * b
    ones = [1] * kept

    def work(lo: int, hi: int) -> None:
        step = min(exact.BLOCK, max(hi - lo, 1))
        acc = np.empty(step, dtype=np.int64)
        tmp = np.empty(step, dtype=np.int64)
        for start, stop, block in exact.stacked_blocks(flat, lo, hi):
            k = stop - start
            if n > 1:
                block.sort(axis=0)
            weighted_sum_block(list(block[b : n - b]), ones, kept, out[start:stop], acc[:k], tmp[:k])

    exact.for_blocks(size, work)
    return out.reshape(shape)


class TrimmedMean(Strategy):
    name = "trimmed-mean"
    paper = "Yin et al. 2018, Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"

    def __init__(self, trim_fraction: float = 0.1, trim: int | None = None, min_trim: int = 1) -> None:
        if isinstance(min_trim, bool) or not isinstance(min_trim, int) or min_trim < 0:
            raise StrategyError(f"min_trim must be a non-negative integer, got {min_trim!r}")
        self.min_trim = min_trim
        if trim is not None:
            if isinstance(trim, bool) or not isinstance(trim, int) or trim < 0:
                raise StrategyError(f"trim must be a non-negative integer, got {trim!r}")
            self.trim_fraction = None
        else:
            if isinstance(trim_fraction, bool) or not isinstance(trim_fraction, (int, float)):
                raise StrategyError(f"trim_fraction must be a number, got {trim_fraction!r}")
            if not (math.isfinite(trim_fraction) and 0 <= trim_fraction < 0.5):
                raise StrategyError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
            self.trim_fraction = float(trim_fraction)
        self.trim = trim

    def params(self) -> dict[str, Any]:
        if self.trim is not None:
            return {"trim": self.trim}  # an exact count: min_trim does not apply
        return {"trim_fraction": self.trim_fraction, "min_trim": self.min_trim}

    @classmethod
    def upgrade_record(cls, params: dict[str, Any]) -> dict[str, Any]:
        if "trim" in params or "min_trim" in params:
            return params
        return {**params, "min_trim": 0}  # recorded before min_trim existed: the fraction alone

    def trim_count(self, n: int) -> int:
        """``b`` for ``n`` participating inputs."""
        if self.trim is not None:
            b = self.trim
        else:
            b = max(math.floor(Fraction(repr(self.trim_fraction)) * n), self.min_trim)
            if not 2 * b < n:
                raise StrategyError(
                    f"trimmed-mean trims min_trim={self.min_trim} from each side and needs at least "
                    f"{2 * b + 1} inputs, got {n} (--param min_trim=0 allows a plain mean)"
                )
        if not 2 * b < n:
            raise StrategyError(f"trimmed-mean cannot trim {b} from each side of {n} inputs (needs 2*trim < n)")
        return b

    def plan(self, weights, scan=None) -> Plan:
        ws = check_weights(weights, len(weights))
        return Plan(ws, {"trim": self.trim_count(sum(1 for w in ws if w > 0))})

    def combine(self, deltas: list[np.ndarray], weights: tuple[int, ...]) -> np.ndarray:
        kept, _ = positive(deltas, weights)
        return trimmed_mean(kept, self.trim_count(len(kept)))
