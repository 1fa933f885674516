"""FedAvg: the example-weighted mean of the updates.

McMahan, Moore, Ramage, Hampson and Agüera y Arcas, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS 2017
(arXiv:1602.05629), Algorithm 1: ``w_{t+1} = sum_k (n_k / n) w^k_{t+1}``.

On fednode's grid every delta is an exact int64, so the merged delta is
``round_half_even(sum_k w_k * d_k / sum_k w_k)`` per coordinate, computed with
integer operations only. Weights are non-negative integers (typically example
counts); a weight of 0 leaves an input out. Weights are reduced by their gcd
first, which changes nothing in the result (equal weights give the plain mean).

Overflow bound: the fast int64 path is used on each block of 32,768 elements
where ``sum_k w_k * max|d_k| + W // 2 <= 2**63 - 1`` (gcd-reduced weights
``w_k``, ``W = sum w_k``; e.g. 8 inputs of weight 1000 with ``|d| < 2**49``);
other blocks are computed exactly with Python ints (about 100x slower, same
bytes). No input is rejected for its size, and the result always fits int64:
a weighted mean lies between the smallest and the largest input.

Cost: with the C kernel (``fednode.tensors.native``), one fused pass that reads each stored delta
once in its own width; in numpy, one read of each delta in cache-sized blocks with one
min/max check and one multiply-add per input, then a 2- to 5-pass rounded division.
``merge_states`` fuses quantization and the final ``apply_delta`` as well for float32
tensors, so a merge reads each input state once; where ``sum_k w_k |q_k| < 2**50`` it
accumulates in exact double arithmetic (integers below 2**53), else in int64, same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fednode.strategies.base import Plan, Strategy
from fednode.strategies.exact import weighted_mean, weighted_mean_f32_states


class FedAvg(Strategy):
    name = "fedavg"
    accepts_narrow = True  # reads stored int8/16/32 deltas directly, accumulating in int64
    paper = "McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from Decentralized Data"

    def combine(self, deltas: list[np.ndarray], weights: tuple[int, ...]) -> np.ndarray:
        return weighted_mean(deltas, weights)

    def merge_states(
        self, base: np.ndarray, states: Sequence[np.ndarray], plan: Plan, dtype: str, scale_bits: int
    ) -> np.ndarray | None:
        if dtype != "F32" or len(states) != len(plan.weights):
            return None
        return weighted_mean_f32_states(base, states, plan.weights, scale_bits)
