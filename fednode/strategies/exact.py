"""Exact integer kernels shared by the strategies: validation, rounded division, bounded means.

Everything here is integer arithmetic (numpy int64 and Python ints); no float is
ever produced, so every machine computes identical bytes.

Rounding rule (the one rule every strategy uses): a quotient ``num / den`` with
``den > 0`` is rounded to the nearest integer, ties to even ("banker's
rounding", the same rule as ``np.rint`` in ``fixedpoint.encode_delta`` and as
Python's ``round``). Examples: 5/2 -> 2, 7/2 -> 4, -5/2 -> -2, -7/2 -> -4.

Overflow: int64 sums are only used on a block when they provably cannot
overflow, i.e. ``sum_k w_k * max|d_k| <= 2**63 - 1`` over that block (a bound
that holds for every partial sum too). A block that fails the bound is computed
with Python ints instead (slow but exact), so results never depend on wrapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fednode.errors import FednodeError

INT64_MAX = (1 << 63) - 1
BLOCK = 1 << 16  # elements per step: a few int64 buffers of this size stay in L2 cache


class StrategyError(FednodeError, ValueError):
    """Incompatible inputs or parameters for an aggregation strategy (one-line message)."""


def check_deltas(deltas: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Validate one tensor's deltas: a non-empty list of int64 arrays of one shape; return the shape."""
    if isinstance(deltas, np.ndarray) or not isinstance(deltas, Sequence):
        raise StrategyError("deltas must be a list of numpy int64 arrays")
    if len(deltas) == 0:
        raise StrategyError("cannot aggregate an empty list of deltas")
    shape = None
    for i, d in enumerate(deltas):
        if not isinstance(d, np.ndarray):
            raise StrategyError(f"delta {i} is a {type(d).__name__}, not a numpy array")
        if d.dtype != np.dtype(np.int64):
            raise StrategyError(f"delta {i} has dtype {d.dtype.str}, expected native int64")
        if shape is None:
            shape = d.shape
        elif d.shape != shape:
            raise StrategyError(f"delta {i} has shape {d.shape}, expected {shape} like delta 0")
    return shape


def check_weights(weights: Sequence[int], n: int) -> tuple[int, ...]:
    """Validate weights: ``n`` non-negative integers with a positive sum below 2**63."""
    if isinstance(weights, np.ndarray):
        weights = weights.tolist()
    if not isinstance(weights, Sequence) or isinstance(weights, (str, bytes)):
        raise StrategyError("weights must be a list of integers")
    if len(weights) != n:
        raise StrategyError(f"got {len(weights)} weights for {n} deltas")
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer)):
            raise StrategyError(f"weight {i} is {w!r}, not an integer")
        if w < 0:
            raise StrategyError(f"weight {i} is negative ({w})")
        out.append(int(w))
    total = sum(out)
    if total <= 0:
        raise StrategyError("weights sum to zero: nothing to aggregate")
    if total > INT64_MAX:
        raise StrategyError(f"weights sum to {total}, more than 2**63 - 1")
    return tuple(out)


def round_div(num: int, den: int) -> int:
    """``num / den`` rounded to nearest, ties to even (Python ints, ``den > 0``)."""
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
    return q


def round_div_array(num: np.ndarray, den: int, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Vectorised ``round_div`` of an int64 array by ``0 < den <= 2**62`` into ``out``.

    ``num`` is clobbered (used as scratch); ``tmp`` is a scratch buffer of the
    same size; neither may alias ``out``. Floor division, then the remainder
    ``r`` recovered with wrapping int64 arithmetic (exact because the true
    remainder lies in [0, den)), then a branch-free tie-to-even correction:
    round up iff ``2r - den + (q & 1) > 0``.
    """
    if not 0 < den <= 1 << 62:
        raise StrategyError(f"divisor {den} outside 1..2**62")
    if den == 1:
        np.copyto(out, num)
        return out
    if den & (den - 1) == 0:  # power of two: arithmetic shift is floor division
        np.right_shift(num, den.bit_length() - 1, out=out)
        np.bitwise_and(num, den - 1, out=tmp)
    else:
        np.floor_divide(num, den, out=out)
        np.multiply(out, den, out=tmp)  # may wrap; the difference below is still exact
        np.subtract(num, tmp, out=tmp)
    np.left_shift(tmp, 1, out=tmp)  # 2r <= 2 * den - 2 < 2**63
    np.subtract(tmp, den, out=tmp)  # 2r - den in [-den, den)
    np.bitwise_and(out, 1, out=num)
    np.add(tmp, num, out=tmp)  # 2r - den + (q & 1) in [-den, den]
    np.negative(tmp, out=tmp)
    np.right_shift(tmp, 63, out=tmp)  # -1 where rounding up, else 0
    np.subtract(out, tmp, out=out)
    return out


def weighted_sum_block(
    rows: Sequence[np.ndarray], weights: Sequence[int], den: int, out: np.ndarray, acc: np.ndarray, tmp: np.ndarray
) -> None:
    """``out = round_div(sum_k weights[k] * rows[k], den)`` for one block, exactly.

    All weights positive; ``acc`` and ``tmp`` are scratch buffers of the block's size.
    Uses int64 when ``sum_k w_k * max|rows[k]| <= 2**63 - 1`` (then no partial sum
    can overflow) and ``den <= 2**62``, Python ints otherwise.
    """
    bound = 0
    for row, w in zip(rows, weights, strict=True):
        if row.size:
            bound += w * max(-int(row.min()), int(row.max()))
    if bound > INT64_MAX or den > 1 << 62:
        exact = [round_div(v, den) for v in _python_sums(rows, weights)]
        out[...] = np.array(exact, dtype=np.int64)
        return
    first = True
    for row, w in zip(rows, weights, strict=True):
        if first:
            if w == 1:
                np.copyto(acc, row)
            else:
                np.multiply(row, w, out=acc)
            first = False
        elif w == 1:
            np.add(acc, row, out=acc)
        else:
            np.multiply(row, w, out=tmp)
            np.add(acc, tmp, out=acc)
    round_div_array(acc, den, out, tmp)


def _python_sums(rows: Sequence[np.ndarray], weights: Sequence[int]) -> list[int]:
    total = [0] * rows[0].size
    for row, w in zip(rows, weights, strict=True):
        total = [t + w * v for t, v in zip(total, row.tolist(), strict=True)]
    return total


def weighted_mean(deltas: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """Exact ``round_div(sum w_k d_k, sum w_k)`` per coordinate (validated inputs).

    Zero-weight deltas are skipped; weights are divided by their gcd first (the
    quotient is unchanged, the overflow bound gets looser, and equal weights need
    no multiplication at all).
    """
    shape = deltas[0].shape
    pairs = [(d, w) for d, w in zip(deltas, weights, strict=True) if w > 0]
    g = math.gcd(*(w for _, w in pairs))
    flat = [d.reshape(-1) for d, _ in pairs]
    ws = [w // g for _, w in pairs]
    den = sum(ws)
    size = flat[0].size
    out = np.empty(size, dtype=np.int64)
    step = min(BLOCK, max(size, 1))
    acc = np.empty(step, dtype=np.int64)
    tmp = np.empty(step, dtype=np.int64)
    for start in range(0, size, step):
        stop = min(start + step, size)
        k = stop - start
        weighted_sum_block([f[start:stop] for f in flat], ws, den, out[start:stop], acc[:k], tmp[:k])
    return out.reshape(shape)


def mean_of_two(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``round_div(a + b, 2)`` elementwise without overflow: halves, carry, then ties to even."""
    floor = np.right_shift(a, 1) + np.right_shift(b, 1) + (a & b & 1)
    half = (a ^ b) & 1  # 1 where a + b is odd, i.e. the exact mean ends in .5
    return floor + (half & floor & 1)
