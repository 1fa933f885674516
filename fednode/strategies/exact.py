"""Exact integer kernels shared by the strategies: validation, rounded division, bounded means.

Everything here is integer arithmetic (numpy int64 and Python ints); no float is
ever produced, so every machine computes identical bytes.

Rounding rule (the one rule every strategy uses): a quotient ``num / den`` with
``den > 0`` is rounded to the nearest integer, ties to even ("banker's
rounding", the same rule as ``np.rint`` in ``fixedpoint.encode_delta`` and as
Python's ``round``). Examples: 5/2 -> 2, 7/2 -> 4, -5/2 -> -2, -7/2 -> -4.

Overflow: int64 sums are only used on a block when they provably cannot
overflow, i.e. ``sum_k w_k * max|d_k| + den // 2 <= 2**63 - 1`` over that block
(the bound holds for every partial sum and for the rounding offset too). A block
that fails the bound is computed with Python ints instead (about 100x slower but
exact), so results never depend on wrapping.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fednode.errors import FednodeError
from fednode.tensors import buffers, fixedpoint, native

INT64_MAX = (1 << 63) - 1
BLOCK = 1 << 15  # elements per step: the working set of one block stays in L2 cache
PARALLEL_MIN = 1 << 20  # tensors at least this large are split across threads
CHUNKS = 4  # ranges per thread (for_blocks)
THREADS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class StrategyError(FednodeError, ValueError):
    """Incompatible inputs or parameters for an aggregation strategy (one-line message)."""


def check_deltas(deltas: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Validate one tensor's deltas: a non-empty list of signed-integer arrays of one shape; return the shape.

    int64 everywhere; narrower native signed ints (int8/16/32, as deltas are stored)
    are accepted too: strategies without ``accepts_narrow`` widen them first.
    """
    if isinstance(deltas, np.ndarray) or not isinstance(deltas, Sequence):
        raise StrategyError("deltas must be a list of numpy int64 arrays")
    if len(deltas) == 0:
        raise StrategyError("cannot aggregate an empty list of deltas")
    shape: tuple[int, ...] | None = None
    for i, d in enumerate(deltas):
        if not isinstance(d, np.ndarray):
            raise StrategyError(f"delta {i} is a {type(d).__name__}, not a numpy array")
        if d.dtype.kind != "i" or not d.dtype.isnative:
            raise StrategyError(f"delta {i} has dtype {d.dtype.str}, expected native signed integers (int64)")
        if shape is None:
            shape = d.shape
        elif d.shape != shape:
            raise StrategyError(f"delta {i} has shape {d.shape}, expected {shape} like delta 0")
    assert shape is not None  # the loop ran at least once: deltas is not empty
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
    """Vectorised ``round_div(num, den)`` of an int64 array into ``out``.

    Requires ``0 < den`` and ``num + den // 2 <= 2**63 - 1`` elementwise (implied
    by the callers' overflow bound). ``num`` is clobbered; ``tmp`` is a scratch buffer of the same
    size; neither may alias ``out``. With ``h = den // 2``:

    * odd ``den`` (no ties possible): ``q = floor((num + h) / den)``;
    * even ``den``: ``q = floor((num + h - 1 + (floor(num / den) & 1)) / den)``:
      a tie ``r == h`` rounds up exactly when the floor quotient is odd.

    Floor division by a power of two is an arithmetic shift.
    """
    if den == 1:
        np.copyto(out, num)
        return out
    half = den // 2
    shift = den.bit_length() - 1 if den & (den - 1) == 0 else None
    if den & 1:
        np.add(num, half, out=num)
    else:
        if shift is not None:
            np.right_shift(num, shift, out=tmp)
        else:
            np.floor_divide(num, den, out=tmp)
        np.bitwise_and(tmp, 1, out=tmp)
        np.add(num, tmp, out=num)
        if half > 1:
            np.add(num, half - 1, out=num)
    if shift is not None:
        np.right_shift(num, shift, out=out)
    else:
        np.floor_divide(num, den, out=out)
    return out


def weighted_sum_block(
    rows: Sequence[np.ndarray], weights: Sequence[int], den: int, out: np.ndarray, acc: np.ndarray, tmp: np.ndarray
) -> None:
    """``out = round_div(sum_k weights[k] * rows[k], den)`` for one block, exactly.

    All weights positive; ``acc`` and ``tmp`` are scratch buffers of the block's
    size. Uses int64 when ``sum_k w_k * max|rows[k]| + den // 2 <= 2**63 - 1``
    (then neither a partial sum nor the rounding offset can overflow), Python
    ints otherwise. Each row's bound is taken right before it is accumulated,
    while it is in cache.
    """
    bound = 0
    for i, (row, w) in enumerate(zip(rows, weights, strict=True)):
        if row.size:
            bound += w * max(-int(row.min()), int(row.max()))
        if i == 0:
            if w == 1:
                np.copyto(acc, row)
            else:  # dtype=int64: a narrow row must not be multiplied in its own width
                np.multiply(row, w, out=acc, dtype=np.int64)
        elif w == 1:
            np.add(acc, row, out=acc, dtype=np.int64)
        else:
            np.multiply(row, w, out=tmp, dtype=np.int64)
            np.add(acc, tmp, out=acc)
    if bound + den // 2 > INT64_MAX:  # acc may have wrapped: redo this block exactly
        exact = [round_div(v, den) for v in _python_sums(rows, weights)]
        out[...] = np.array(exact, dtype=np.int64)
        return
    round_div_array(acc, den, out, tmp)


def _python_sums(rows: Sequence[np.ndarray], weights: Sequence[int]) -> list[int]:
    total = [0] * rows[0].size
    for row, w in zip(rows, weights, strict=True):
        total = [t + w * v for t, v in zip(total, row.tolist(), strict=True)]
    return total


def stacked_blocks(flat: Sequence[np.ndarray], lo: int, hi: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, block) over ``[lo, hi)``: ``block[i]`` is input i's slice, stacked as one
    (n, k) int64 array in a reused buffer (coordinate-wise rules sort or rank along axis 0)."""
    step = min(BLOCK, max(hi - lo, 1))
    buf = np.empty((len(flat), step), dtype=np.int64)
    for start in range(lo, hi, step):
        stop = min(start + step, hi)
        block = buf[:, : stop - start]
        for i, f in enumerate(flat):
            block[i] = f[start:stop]
        yield start, stop, block


def for_blocks(size: int, work: Callable[[int, int], None], parallel_min: int | None = None) -> None:
    """Run ``work(lo, hi)`` over disjoint, BLOCK-aligned ranges covering ``[0, size)``.

    Large tensors are split across up to ``THREADS`` threads (numpy and the C kernels
    release the GIL). The ranges are ``CHUNKS`` per thread, taken in turn by whichever
    thread is free (the caller included), so a thread that the OS delays holds up at
    most one small range. Each range writes only its own output slice and blocks never
    interact, so the bytes do not depend on the thread count.
    """
    threads = min(THREADS, size // (parallel_min or PARALLEL_MIN))
    if threads <= 1:
        work(0, size)
        return
    per = -(-size // (threads * CHUNKS))
    per = -(-per // BLOCK) * BLOCK
    ranges = [(lo, min(lo + per, size)) for lo in range(0, size, per)]
    taken = itertools.count()  # next() on a count is atomic under the GIL

    def run() -> None:
        for i in iter(lambda: next(taken), None):
            if i >= len(ranges):
                return
            work(*ranges[i])

    futures = [_pool().submit(run) for _ in range(threads - 1)]
    try:
        run()
    finally:
        for future in futures:
            future.result()


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """One process-wide pool (threads are reused from tensor to tensor); its work never submits
    to it, so concurrent callers cannot deadlock it."""
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max(1, THREADS - 1), thread_name_prefix="fednode-merge")
    return _executor


def weighted_mean(deltas: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """Exact ``round_div(sum w_k d_k, sum w_k)`` per coordinate (validated inputs).

    Zero-weight deltas are skipped; weights are divided by their gcd first (the
    quotient is unchanged, the overflow bound gets looser, and equal weights need
    no multiplication at all).
    """
    shape = deltas[0].shape
    flat, ws, den = _reduced(deltas, weights)
    size = deltas[0].size
    out = buffers.empty(size, np.int64)

    lib = native.kernels()
    if lib is not None and size:
        flat = [np.ascontiguousarray(f) for f in flat]

        def work_native(lo: int, hi: int) -> None:
            for start in native.weighted_mean_range(lib, flat, ws, den, out, lo, hi):
                _exact_range(flat, ws, den, out, start, min(start + native.BLOCK, hi))

        for_blocks(size, work_native)
        return out.reshape(shape)

    def work(lo: int, hi: int) -> None:
        _exact_range(flat, ws, den, out, lo, hi)

    for_blocks(size, work)
    return out.reshape(shape)


def _reduced(arrays: Sequence[np.ndarray], weights: Sequence[int]) -> tuple[list[np.ndarray], list[int], int]:
    """The inputs with a positive weight, flattened, with weights divided by their gcd, and their sum."""
    pairs = [(a, w) for a, w in zip(arrays, weights, strict=True) if w > 0]
    g = math.gcd(*(w for _, w in pairs))
    ws = [w // g for _, w in pairs]
    return [a.reshape(-1) for a, _ in pairs], ws, sum(ws)


class _Unrepresentable(Exception):
    pass


def weighted_mean_f32_states(
    base: np.ndarray, states: Sequence[np.ndarray], weights: Sequence[int], scale_bits: int
) -> np.ndarray | None:
    """``apply_delta(base, weighted_mean([encode_delta(base, s) ...]))`` for float32 tensors in one
    fused C pass (same bytes); None without the kernel or when a delta is not representable
    (NaN/Inf, too large), so that the caller's generic path reports it."""
    lib = native.kernels()
    native_f32 = np.dtype(np.float32)
    if lib is None or base.dtype != native_f32 or any(s.dtype != native_f32 or s.shape != base.shape for s in states):
        return None
    if 0 in weights:  # the generic path refuses an unrepresentable input even at weight 0; this one
        return None  # would skip it, so a node without the kernel could not recompute the merge
    flat, ws, den = _reduced([np.ascontiguousarray(s) for s in states], weights)
    base_flat = np.ascontiguousarray(base).reshape(-1)
    out = buffers.empty(base_flat.size, np.float32)

    def work(lo: int, hi: int) -> None:
        undone = native.fedavg_f32_range(lib, flat, base_flat, ws, den, scale_bits, out, lo, hi)
        if undone is None:
            raise _Unrepresentable
        for start in undone:  # an int64 sum could overflow: the exact numpy path for this block
            stop = min(start + native.BLOCK, hi)
            part = base_flat[start:stop]
            encoded = [fixedpoint.encode_delta(part, f[start:stop], "F32", scale_bits) for f in flat]
            deltas = [d for d in encoded if d is not None]
            if len(deltas) < len(encoded):
                raise _Unrepresentable
            merged = np.empty(stop - start, dtype=np.int64)
            _exact_range(deltas, ws, den, merged, 0, stop - start)
            out[start:stop] = fixedpoint.apply_delta(part, merged, "F32", scale_bits)

    if base_flat.size:
        try:  # compute-bound (not memory-bound like the int kernel): worth threads from smaller sizes
            for_blocks(base_flat.size, work, parallel_min=PARALLEL_MIN // 8)
        except _Unrepresentable:
            return None
    return out.reshape(base.shape)


def _exact_range(flat: Sequence[np.ndarray], ws: Sequence[int], den: int, out: np.ndarray, lo: int, hi: int) -> None:
    """The numpy path of ``weighted_mean`` over ``out[lo:hi]`` (also the C kernel's overflow fallback)."""
    step = min(BLOCK, max(hi - lo, 1))
    acc = np.empty(step, dtype=np.int64)
    tmp = np.empty(step, dtype=np.int64)
    for start in range(lo, hi, step):
        stop = min(start + step, hi)
        k = stop - start
        weighted_sum_block([f[start:stop] for f in flat], ws, den, out[start:stop], acc[:k], tmp[:k])


def mean_of_two(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``round_div(a + b, 2)`` elementwise without overflow: halves, carry, then ties to even."""
    floor = np.right_shift(a, 1) + np.right_shift(b, 1) + (a & b & 1)
    half = (a ^ b) & 1  # 1 where a + b is odd, i.e. the exact mean ends in .5
    return floor + (half & floor & 1)
