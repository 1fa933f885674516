"""Optional compiled kernels (C, built on first use with the bundled ``zig cc``).

Why: an exact FedAvg in numpy needs ~20 passes over each block (widen, multiply,
add, bound check, rounded division); one fused C loop reads every input once.
The kernels compute exactly what the numpy path computes (integer arithmetic,
same rounding rule), so they change speed and never bytes; a test compares both.

The shared library is built once per source, compiler and CPU into
``$FEDNODE_NATIVE_CACHE`` (default ``$XDG_CACHE_HOME/fednode/native``, i.e.
``~/.cache/fednode/native``), a directory that must be private to the user
(a library there is loaded into the process). ``FEDNODE_NATIVE=0`` turns the
kernels off. Any failure to build or load falls back to numpy with one warning.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import threading
from pathlib import Path

import numpy as np

from fednode import nativebuild

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
BLOCK = 4096  # must equal BLOCK in kernels.c: one flag byte per block
# -ffp-contract=off: IEEE operations exactly as written (no FMA); 512-bit vectors where the CPU has them
FLAGS = ["-O3", "-shared", "-fPIC", "-fno-strict-aliasing", "-ffp-contract=off", "-march=native",
         "-mprefer-vector-width=512"]
VERSION = 4  # fednode_kernels_version() in kernels.c

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def library_path(source: Path = SOURCE, flags: list[str] = FLAGS) -> Path:
    """Where the merge kernels' library lives in the cache (``nativebuild.library_path``)."""
    return nativebuild.library_path(source, flags)


def load_library(source: Path, flags: list[str]) -> ctypes.CDLL:
    return nativebuild.load_library(source, flags)


def _load() -> ctypes.CDLL:
    lib = load_library(SOURCE, FLAGS)
    path = library_path()
    if lib.fednode_kernels_version() != VERSION:
        raise OSError(f"{path} is kernel version {lib.fednode_kernels_version()}, expected {VERSION}")
    fn = lib.fednode_weighted_mean
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    fn = lib.fednode_fedavg_f32
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_double, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    fn = lib.fednode_absmax_f32
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    return lib


def kernels() -> ctypes.CDLL | None:
    """The loaded library, or None when disabled or unavailable (then callers use numpy)."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("FEDNODE_NATIVE", "1") != "0":
                try:
                    _lib = _load()
                except (OSError, subprocess.SubprocessError) as exc:
                    log.warning("native kernels unavailable, using numpy: %s", exc)
            _tried = True
    return _lib


def loaded() -> ctypes.CDLL | None:
    """The library if an earlier ``kernels()`` call loaded it, else None (builds nothing)."""
    return _lib if _tried else None


def reset() -> None:
    """Forget the loaded library (tests switch between native and numpy)."""
    global _lib, _tried
    with _lock:
        _lib, _tried = None, False


def weighted_mean_range(
    lib: ctypes.CDLL, flat: list[np.ndarray], weights: list[int], den: int, out: np.ndarray, lo: int, hi: int
) -> list[int]:
    """``out[lo:hi] = round_div(sum w_k flat_k, den)`` in C; returns the starts of blocks it left
    undone because an int64 sum could overflow there (the caller computes those exactly).

    ``flat``: contiguous 1-D native signed-int arrays (any of 1/2/4/8 bytes), positive weights,
    ``out``: contiguous int64.
    """
    n = len(flat)
    ptrs = (ctypes.c_void_p * n)(*(f.ctypes.data for f in flat))
    widths = (ctypes.c_int32 * n)(*(f.dtype.itemsize for f in flat))
    ws = (ctypes.c_int64 * n)(*weights)
    bad = _flags(lo, hi)
    flagged = lib.fednode_weighted_mean(n, ptrs, widths, ws, den, lo, hi, out.ctypes.data, bad.ctypes.data)
    return _undone(bad, lo, flagged)


def _flags(lo: int, hi: int) -> np.ndarray:
    """One flag byte per BLOCK of ``[lo, hi)``: the kernels set it for a block they left undone."""
    return np.zeros(-(-(hi - lo) // BLOCK), dtype=np.uint8)


def _undone(bad: np.ndarray, lo: int, flagged: int) -> list[int]:
    return [lo + int(i) * BLOCK for i in np.flatnonzero(bad)] if flagged else []


def absmax_f32(lib: ctypes.CDLL, arr: np.ndarray) -> float | None:
    """max |x| of a contiguous native float32 array in one pass; None when some value is NaN or
    infinite (the caller's numpy path then skips those)."""
    out = ctypes.c_double()
    finite = lib.fednode_absmax_f32(arr.ctypes.data, arr.size, ctypes.byref(out))
    return out.value if finite else None


def fedavg_f32_range(
    lib: ctypes.CDLL, states: list[np.ndarray], base: np.ndarray, weights: list[int], den: int, scale_bits: int,
    out: np.ndarray, lo: int, hi: int,
) -> list[int] | None:
    """``out[lo:hi]`` = FedAvg of float32 ``states`` around ``base`` on the 2**-scale_bits grid, fused
    (quantize, weighted mean, apply) and byte-identical to the three steps done apart.

    Returns the starts of blocks left undone (an int64 sum could overflow there), or None when some
    delta is not representable (NaN/Inf or beyond 2**62 grid steps): the caller then takes the
    generic path, which reports it. All arrays contiguous 1-D float32 (``out`` too).
    """
    n = len(states)
    ptrs = (ctypes.c_void_p * n)(*(s.ctypes.data for s in states))
    ws = (ctypes.c_int64 * n)(*weights)
    bad = _flags(lo, hi)
    flagged = lib.fednode_fedavg_f32(n, ptrs, base.ctypes.data, ws, den, float(2**scale_bits), lo, hi,
                                     out.ctypes.data, bad.ctypes.data)
    return None if flagged < 0 else _undone(bad, lo, flagged)
