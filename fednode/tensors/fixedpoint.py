"""Fixed-point update deltas: exact integers on a grid 2**-scale_bits (the repository's, or a
merge's per-tensor grid: ``choose_grid``, rule 2 of ``fednode.workflows.merging``).

Pure functions over flat numpy arrays. Reconstruction only uses IEEE-754
operations that are correctly rounded (int->float64 conversion, multiplication by
a power of two, one float64 addition, rounding to the tensor's dtype), so every
machine rebuilds identical bytes. BF16 is rounded float64 -> float32 -> bfloat16
(two round-to-nearest-even steps, as torch does from float32): deterministic,
though not always the correctly rounded bfloat16 of the float64 value. Integer tensors use exact wrapping
int64 differences (scale 0).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fednode.lazy import lazy_import
from protocol.objects import FLOAT_DTYPES

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")

BLOCK = 1 << 20  # elements per step: bounds the float64 temporaries
GRID_PRECISION = 40  # merge grid rule 2: bits of a tensor's largest magnitude the grid resolves
GRID_LIMIT = 1000  # |bits| bound: 2.0**bits stays a finite, exact float64
# An all-zero base tensor (a zero-initialised bias) gets this fixed grid, known before any input is:
# every update of a round then commits on the merge's grid (issue 15). 2**-48 resolves 2**-20 of
# values down to ~1e-8 and holds changes up to 2**14 in 2**62 steps (larger ones widen).
ZERO_BASE_BITS = 48


def to_f64(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return arr.astype(np.float64)


def from_f64(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        bits = x.astype(np.float32).view(np.uint32)
        # round to nearest even on the 16 dropped bits; NaN stays NaN
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)
    return x.astype({"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dtype])


def int_bits_for(q: np.ndarray) -> int:
    if q.size == 0:
        return 8
    lo, hi = int(q.min()), int(q.max())
    for bits in (8, 16, 32):
        if -(1 << (bits - 1)) <= lo and hi < 1 << (bits - 1):
            return bits
    return 64


def encode_delta(parent: np.ndarray, new: np.ndarray, dtype: str, scale_bits: int) -> np.ndarray | None:
    """int64 delta with ``apply_delta(parent, q) ~= new``; None when not representable
    (NaN/Inf in either side, or a change too large for int64 on this grid)."""
    if dtype not in FLOAT_DTYPES:
        return new.astype(np.int64) - parent.astype(np.int64)
    q = np.empty(new.size, dtype=np.int64)
    scale = float(2**scale_bits)
    limit = float(2**62)
    for start in range(0, new.size, BLOCK):
        stop = start + BLOCK
        d = (to_f64(new[start:stop], dtype) - to_f64(parent[start:stop], dtype)) * scale
        if not np.isfinite(d).all() or np.abs(d).max(initial=0.0) >= limit:
            return None
        q[start:stop] = np.rint(d)
    return q


def apply_delta(parent: np.ndarray, q: np.ndarray, dtype: str, scale_bits: int) -> np.ndarray:
    if dtype not in FLOAT_DTYPES:
        return (parent.astype(np.int64) + q.astype(np.int64)).astype(parent.dtype)
    out = np.empty_like(parent)
    step = float(2.0**-scale_bits)
    for start in range(0, parent.size, BLOCK):
        stop = start + BLOCK
        x = to_f64(parent[start:stop], dtype) + q[start:stop].astype(np.float64) * step
        out[start:stop] = from_f64(x, dtype)
    return out


def max_abs(arr: np.ndarray, dtype: str) -> float:
    """Largest finite |value| of a float tensor (0.0 when none)."""
    if arr.size == 0:
        return 0.0
    if dtype == "F32" and arr.dtype == np.dtype(np.float32) and arr.flags.c_contiguous:
        from fednode.tensors import native

        lib = native.loaded()  # never builds them: a commit's grid must not wait on a compiler
        found = None if lib is None else native.absmax_f32(lib, arr)
        if found is not None:  # one pass instead of numpy's max and min
            return found
    if dtype == "F32" or dtype == "F64":
        hi, lo = float(arr.max()), float(arr.min())
        if math.isfinite(hi) and math.isfinite(lo):
            return max(hi, -lo)
    x = to_f64(arr, dtype)
    x = np.abs(x[np.isfinite(x)])
    return float(x.max()) if x.size else 0.0


def grid_bits(magnitude: float, fallback: int) -> int:
    """Rule 2's grid for a tensor whose largest |value| is ``magnitude``: 2**-bits resolves
    2**-GRID_PRECISION of it; ``fallback`` (the repository grid) for an all-zero tensor."""
    if not magnitude > 0 or not math.isfinite(magnitude):
        return fallback
    _, e = math.frexp(magnitude)  # magnitude < 2**e
    return max(-GRID_LIMIT, min(GRID_LIMIT, GRID_PRECISION - e))


def choose_grid(base_arr: np.ndarray, arrays: list[np.ndarray], dtype: str, fallback: int, wide: bool = False) -> int:
    """Rule 2 of ``fednode.workflows.merging`` (its docstring): from the base's magnitude,
    ``ZERO_BASE_BITS`` for an all-zero base, or from every state's when ``wide``."""
    magnitude = max_abs(base_arr, dtype)
    if wide:
        magnitude = max([magnitude, *(max_abs(a, dtype) for a in arrays)])
    elif magnitude == 0.0:
        return ZERO_BASE_BITS
    return grid_bits(magnitude, fallback)
