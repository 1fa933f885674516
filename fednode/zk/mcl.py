"""The native multi-scalar multiplication backend: PyPI ``mclbn256`` (the MCL library) through ctypes.

MCL must be initialised with curve id 4 (``MCL_BN_SNARK1``: the Ethereum / Solana BN254); the
package itself initialises id 0, a different 254-bit curve, so this module re-initialises it on
first use, which changes the curve for every user of ``mclbn256`` in the process.

Representation: an MCL G1 point is 12 u64 words (Jacobian x, y, z, each in Montgomery form), a
scalar 4 u64 words (Montgomery form ``v * 2^256 mod R``, checked against MCL at start-up). Tables
are numpy ``uint64`` arrays of shape (n, 12) and (n, 4), passed to ``mclBnG1_mulVec`` by address.

Speed: ``mulVec`` is Pippenger's method sized to the largest scalar, so a vector of 16-bit values
costs about 1/16 of one with full-width scalars. A negative value ``v`` is the scalar ``R - |v|``
(254 bits), so ``msm`` never feeds it as such: it commits to the positive and the negative values
separately, on their own generators, and subtracts (values of 0 cost nothing), and splits
magnitudes of 2^16 and more into 16-bit limbs (one more MSM per limb over the values that need it).
``mulVec`` over 2^17 or more points overflows the 8 MiB thread stack (a segfault), so it only ever
sees chunks of ``CHUNK`` = 2^16 points; chunks run on up to ``THREADS`` threads (ctypes releases
the GIL), and their partial sums are added.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from fednode.zk.curve import Affine, R, ZkError
from fednode.zk.generators import MAX_TRIES, message_prefix

CURVE_SNARK1 = 4  # mclBn_CurveSNARK1: BN254 as Ethereum and Solana define it
DERIVE_MIN = 1 << 12  # generators per derivation thread, at least
CHUNK = 1 << 16  # points per mulVec call: 2^17 segfaults on an 8 MiB stack
LIMB_BITS = 16
THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_MONT = (1 << 256) % R

G1 = ctypes.c_uint64 * 12
Fp = ctypes.c_uint64 * 4

_lock = threading.RLock()  # generator_table holds it while _derive loads the library
_state: dict[str, Any] = {}
_tables: dict[bytes, np.ndarray] = {}


def available() -> bool:
    """Whether ``mclbn256`` imports and initialises BN254 here."""
    try:
        _lib()
    except ZkError:
        return False
    return True


def _lib() -> Any:
    lib = _state.get("lib")
    if lib is not None:
        return lib
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _load()
        return _state["lib"]


def _load() -> Any:
    try:
        # importing writes the package's shared library to a temporary file and loads it (~0.15 s)
        import mclbn256.mclbn256 as m  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except Exception as exc:  # ImportError, or an OSError from a wheel without this platform's library
        raise ZkError(f"the mcl backend needs PyPI mclbn256 (.venv/bin/pip install mclbn256): {exc}") from None
    lib = m.lib
    if lib.mclBn_init(CURVE_SNARK1, m.MCLBN_COMPILED_TIME_VAR) != 0:
        raise ZkError("mclbn256 could not initialise BN254 (curve id 4)")
    v, c, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    signatures = {
        "mclBnFp_setBigEndianMod": [v, c, sz], "mclBnFp_sqr": [v, v], "mclBnFp_mul": [v, v, v],
        "mclBnFp_add": [v, v, v], "mclBnFp_squareRoot": [v, v], "mclBnFp_isNegative": [v], "mclBnFp_neg": [v, v],
        "mclBnFp_setInt": [v, ctypes.c_int64], "mclBnFr_setInt": [v, ctypes.c_int64],
        "mclBnG1_mulVec": [v, v, v, sz], "mclBnG1_add": [v, v, v], "mclBnG1_sub": [v, v, v],
        "mclBnG1_clear": [v], "mclBnG1_isZero": [v], "mclBnG1_isValid": [v], "mclBnG1_normalize": [v, v],
        "mclBnG1_getStr": [c, sz, v, ctypes.c_int], "mclBnG1_setStr": [v, c, sz, ctypes.c_int],
    }
    for name, args in signatures.items():
        getattr(lib, name).argtypes = args
    for k in (1, 12345, 65535):  # the scalar representation this module writes by hand
        fr = Fp()
        lib.mclBnFr_setInt(ctypes.addressof(fr), k)
        if bytes(fr) != (k * _MONT % R).to_bytes(32, "little"):
            raise ZkError("mclbn256 stores scalars in an unexpected form; use the reference backend")
    return lib


def _small_scalars() -> np.ndarray:
    """Montgomery forms of 0 .. 2^16 - 1, shape (2^16, 4): a table lookup replaces 2^16 calls."""
    table = _state.get("small")
    if table is None:
        raw = b"".join((k * _MONT % R).to_bytes(32, "little") for k in range(1 << LIMB_BITS))
        table = _state["small"] = np.frombuffer(raw, dtype=np.uint64).reshape(-1, 4)
    return table


def scalars_from_ints(values: Sequence[int]) -> np.ndarray:
    """Any integers (reduced mod R: ``-v`` is ``R - v``) as an (n, 4) scalar table."""
    raw = b"".join((int(v) % R * _MONT % R).to_bytes(32, "little") for v in values)
    return np.frombuffer(raw, dtype=np.uint64).reshape(-1, 4)


# ---- points -------------------------------------------------------------------------------------


def to_native(points: Sequence[Affine | None]) -> np.ndarray:
    """Affine points (None for infinity) as an (n, 12) MCL table."""
    lib = _lib()
    out = np.zeros((len(points), 12), dtype=np.uint64)
    base = out.ctypes.data
    for i, pt in enumerate(points):
        if pt is None:
            lib.mclBnG1_clear(base + 96 * i)
            continue
        text = b"1 %x %x" % pt
        if lib.mclBnG1_setStr(base + 96 * i, text, len(text), 16) != 0 or not lib.mclBnG1_isValid(base + 96 * i):
            raise ZkError("point is not on BN254 G1")
    return out


def from_native(point: Any) -> Affine | None:
    """An MCL G1 (a ``G1`` buffer) as an affine point, None for infinity."""
    lib = _lib()
    addr = ctypes.addressof(point)
    if lib.mclBnG1_isZero(addr):
        return None
    lib.mclBnG1_normalize(addr, addr)
    buf = ctypes.create_string_buffer(256)
    if lib.mclBnG1_getStr(buf, 256, addr, 16) == 0:
        raise ZkError("mcl could not print a G1 point")  # pragma: no cover
    _, x, y = buf.value.split()
    return int(x, 16), int(y, 16)


def generator_table(n: int, seed: bytes) -> np.ndarray:
    """``G_0 .. G_{n-1}`` as an (n, 12) table: the construction of ``fednode.zk.generators``, with MCL's
    field arithmetic (cached per seed and extended on demand; the rows are read-only)."""
    with _lock:
        table = _tables.get(seed)
        if table is None or len(table) < n:
            table = _derive(seed, 0 if table is None else len(table), n, table)
            table.setflags(write=False)
            _tables[seed] = table
    return table[:n]


def _derive(seed: bytes, start: int, n: int, old: np.ndarray | None) -> np.ndarray:
    lib = _lib()
    size = max(n, min(2 * start, n + CHUNK))  # grow geometrically, but never derive more than a chunk unasked
    out = np.zeros((size, 12), dtype=np.uint64)
    if old is not None:
        out[:start] = old
    one = Fp()
    lib.mclBnFp_setInt(ctypes.addressof(one), 1)
    # The square root dominates and ctypes releases the GIL around it: ranges on several threads.
    threads = min(THREADS, max(1, (size - start) // DERIVE_MIN))
    per = -(-(size - start) // threads)
    ranges = [(lo, min(size, lo + per)) for lo in range(start, size, per)]
    if len(ranges) == 1:
        _derive_range(lib, seed, out, *ranges[0])
    else:
        for future in [_executor().submit(_derive_range, lib, seed, out, lo, hi) for lo, hi in ranges]:
            future.result()
    out[start:, 8:12] = np.frombuffer(bytes(one), dtype=np.uint64)
    return out


def _derive_range(lib: Any, seed: bytes, out: np.ndarray, lo: int, hi: int) -> None:
    """Rows ``lo .. hi-1`` of ``out`` (x, y in MCL's form; z is set by the caller)."""
    three, tmp = Fp(), Fp()
    lib.mclBnFp_setInt(ctypes.addressof(three), 3)
    t, b3 = ctypes.addressof(tmp), ctypes.addressof(three)
    set_be, sqr, mul, add = lib.mclBnFp_setBigEndianMod, lib.mclBnFp_sqr, lib.mclBnFp_mul, lib.mclBnFp_add
    sqrt, is_neg, neg = lib.mclBnFp_squareRoot, lib.mclBnFp_isNegative, lib.mclBnFp_neg
    sha = hashlib.sha256
    prefix = message_prefix(b"G", seed)
    counters = [c.to_bytes(4, "big") for c in range(MAX_TRIES)]
    base = out.ctypes.data
    for i in range(lo, hi):
        x = base + 96 * i
        y = x + 32
        head = prefix + i.to_bytes(8, "big")
        for counter in counters:
            set_be(x, sha(head + counter).digest(), 32)
            sqr(t, x)
            mul(t, t, x)
            add(t, t, b3)
            if sqrt(y, t) == 0:
                break
        else:  # pragma: no cover (probability 2^-256)
            raise ZkError(f"no curve point for generator {i} after {MAX_TRIES} tries")
        if is_neg(y):
            neg(y, y)


# ---- multi-scalar multiplication ----------------------------------------------------------------

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="fednode-msm")
        return _pool


def _mulvec(points: np.ndarray, scalars: np.ndarray, threads: int) -> Any:
    """sum scalars[i] * points[i] (tables of equal length) as a ``G1`` buffer, in chunks of CHUNK."""
    lib = _lib()
    acc = G1()
    lib.mclBnG1_clear(ctypes.addressof(acc))
    n = len(points)
    if n == 0:
        return acc
    points = np.ascontiguousarray(points)
    scalars = np.ascontiguousarray(scalars)
    starts = range(0, n, CHUNK)
    parts = [G1() for _ in starts]

    def run(k: int) -> None:
        lo = starts[k]
        count = min(CHUNK, n - lo)
        out = ctypes.addressof(parts[k])
        lib.mclBnG1_mulVec(out, points.ctypes.data + 96 * lo, scalars.ctypes.data + 32 * lo, count)

    if threads > 1 and len(parts) > 1:
        list(_executor().map(run, range(len(parts))))
    else:
        for k in range(len(parts)):
            run(k)
    for part in parts:
        lib.mclBnG1_add(ctypes.addressof(acc), ctypes.addressof(acc), ctypes.addressof(part))
    return acc


def _msm_magnitudes(points: np.ndarray, mags: np.ndarray, threads: int) -> Any:
    """sum mags[i] * points[i] for non-negative uint64 magnitudes: one MSM per 16-bit limb."""
    lib = _lib()
    small = _small_scalars()
    acc = _mulvec(points, small[mags & 0xFFFF], threads)
    shift = LIMB_BITS
    while True:
        rest = mags >> np.uint64(shift)
        keep = np.flatnonzero(rest)
        if keep.size == 0:
            return acc
        part = _mulvec(points[keep], small[rest[keep] & 0xFFFF], threads)
        scaled = _mulvec(_point_table(part), scalars_from_ints([1 << shift]), 1)
        lib.mclBnG1_add(ctypes.addressof(acc), ctypes.addressof(acc), ctypes.addressof(scaled))
        shift += LIMB_BITS


def _point_table(point: Any) -> np.ndarray:
    return np.frombuffer(bytes(point), dtype=np.uint64).reshape(1, 12).copy()


def msm_ints(points: np.ndarray, values: np.ndarray, threads: int = THREADS) -> Any:
    """sum values[i] * points[i] for a signed or unsigned integer array (no value equal to int64's minimum)."""
    lib = _lib()
    if values.dtype.kind == "u":
        return _msm_magnitudes(points, values.astype(np.uint64, copy=False), threads)
    values = values.astype(np.int64, copy=False)
    pos = np.flatnonzero(values > 0)
    neg = np.flatnonzero(values < 0)
    if pos.size == len(values):  # nothing to gather
        return _msm_magnitudes(points, values.view(np.uint64), threads)
    plus = _msm_magnitudes(points[pos], values[pos].view(np.uint64), threads)
    minus = _msm_magnitudes(points[neg], (-values[neg]).view(np.uint64), threads)
    lib.mclBnG1_sub(ctypes.addressof(plus), ctypes.addressof(plus), ctypes.addressof(minus))
    return plus


def msm_wide(points: np.ndarray, values: Sequence[int], threads: int = THREADS) -> Any:
    """sum values[i] * points[i] for arbitrary Python integers (full-width scalars mod R)."""
    return _mulvec(points, scalars_from_ints(values), threads)


# ---- tables kept outside the process (a node's disk cache) ---------------------------------------


def cached_rows(seed: bytes) -> int:
    """How many generators of ``seed`` this process holds now."""
    with _lock:
        table = _tables.get(seed)
        return 0 if table is None else len(table)


def install_table(seed: bytes, table: np.ndarray) -> None:
    """Use ``table`` (checked with ``check_table`` by the caller) as the generators of ``seed`` when it is
    longer than what the process holds."""
    with _lock:
        held = _tables.get(seed)
        if held is None or len(held) < len(table):
            table.setflags(write=False)
            _tables[seed] = table


def check_table(table: np.ndarray, seed: bytes, positions: Sequence[int]) -> str | None:
    """Why ``table`` (an (n, 12) table read from outside) is not the generators of ``seed``, or None.

    Every row must be a point of the curve in this module's form (z = 1, coordinates below P): in
    Montgomery form ``X = x M``, ``Y = y M`` the curve equation reads ``Y^2 M = X^3 + 3 M^3 (mod P)``,
    checked with Python integers (~1.3 us a point, where ``mclBnG1_isValid`` takes ~45 us). The rows at
    ``positions`` are derived again and must be equal."""
    from fednode.zk.curve import P
    from fednode.zk.generators import hash_to_curve

    if table.ndim != 2 or table.shape[1] != 12 or table.dtype != np.uint64:
        return "not a generator table"
    mont = (1 << 256) % P
    one = np.frombuffer(mont.to_bytes(32, "little"), dtype=np.uint64)
    if len(table) and not (table[:, 8:12] == one).all():
        return "a point is not normalised"
    c = 3 * mont * mont * mont % P
    raw = table[:, :8].tobytes()
    fb = int.from_bytes
    for i in range(0, len(raw), 64):
        x, y = fb(raw[i:i + 32], "little"), fb(raw[i + 32:i + 64], "little")
        if x >= P or y >= P or (y * y * mont - x * x * x - c) % P:
            return f"generator {i // 64} is not on the curve"
    for k in positions:
        if not 0 <= k < len(table):
            continue
        point = G1.from_buffer_copy(table[k].tobytes())
        if from_native(point) != hash_to_curve(b"G", seed, k):
            return f"generator {k} differs from its derivation"
    return None
