"""A native Groth16 prover for snarkjs proving keys (.zkey): the same proof ``snarkjs groth16 prove``
makes, in a fraction of its time (docs/zk.md "The native prover").

It follows snarkjs's ``groth16_prove.js`` step by step: the zkey's section 4 lists the A and B matrix
entries as (matrix, constraint, wire, coefficient * 2^512 mod r), so a Montgomery product with the
witness (normal form) gives A(w), B(w) on the domain directly in Montgomery form; C = A .* B there
(snarkjs never reads the C matrix); A, B, C are moved to the odd coset of the 2N domain (inverse
NTT, multiply by ``inc^i / N``, NTT, with ``inc`` the 2N-th root ffjavascript calls ``Fr.w[power+1]``)
and ``A B - C`` there are the scalars of the H points (section 9, already divided by Z). Then

    pi_a = A.w + alpha1 + r delta1,   pi_b = B2.w + beta2 + s delta2,   pib1 = B1.w + beta1 + s delta1,
    pi_c = C.w_private + H.h + s pi_a + r pib1 - r s delta1,

with fresh r, s. The field work is C (``fednode/zk/native``); the MSMs are mcl's Pippenger, one call
per group of witness scalars of similar size (most wires are bits), negative values (r - v) as
``-(v P)`` so they count as small.

A witness that violates a constraint still yields points (snarkjs's zkey has no C matrix to check
it against), but not a proof: ``prove`` checks the Groth16 equation with the zkey's own verifying key
before returning (``check=False`` leaves that to a caller that verifies the whole proof anyway); given
the circuit's .r1cs (``r1cs=``), every constraint is checked before any FFT or MSM.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fednode.zk import binfile, mcl, pairing
from fednode.zk import native as zknative
from fednode.zk.curve import Affine, P, R, ZkError
from fednode.zk.pairing import Affine2

MONT = (1 << 256) % R
TWO_ADICITY = 28  # r - 1 = 2^28 t
# Scalar groups by bit length of min(v, r - v): mcl's Pippenger costs ~ its largest scalar's bits
GROUPS = (1, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 192, 256)
PIECE = 1 << 18  # points per mulVec call; run on threads with STACK bytes of stack (mcl's buckets
STACK = 256 << 20  # live there: 2^17 points overflowed a default 8 MiB stack, fednode/zk/mcl.py)
THREADS = mcl.THREADS

_stack_lock = threading.Lock()
_cache_lock = threading.Lock()
_keys: OrderedDict[tuple[str, int, int], ProvingKey] = OrderedDict()
_KEEP = 2  # proving keys held in memory (a 100k-parameter key is ~1 GB of tables)


def _nqr() -> int:
    q = 2
    while pow(q, (R - 1) // 2, R) != R - 1:
        q += 1
    return q


NQR = _nqr()  # 5: ffjavascript's Fr.nqr
ROOT_MAX = pow(NQR, (R - 1) >> TWO_ADICITY, R)  # Fr.w[28]; Fr.w[k] = Fr.w[k+1]^2


def root(power: int) -> int:
    """ffjavascript's ``Fr.w[power]``: the 2^power-th root of unity snarkjs's domains use."""
    if not 0 <= power <= TWO_ADICITY:
        raise ZkError(f"no 2^{power} domain in BN254's scalar field")
    return pow(ROOT_MAX, 1 << (TWO_ADICITY - power), R)


def _fr(x: int) -> np.ndarray:
    """``x`` in Montgomery form as 4 u64 limbs."""
    return np.frombuffer((x % R * MONT % R).to_bytes(32, "little"), dtype=np.uint64).copy()


def ints_to_array(values: Sequence[int]) -> np.ndarray:
    """Integers (mod r) as an (n, 4) uint64 array in normal form."""
    raw = b"".join((int(v) % R).to_bytes(32, "little") for v in values)
    return np.frombuffer(raw, dtype=np.uint64).reshape(-1, 4).copy()


def array_to_ints(arr: np.ndarray) -> list[int]:
    raw = np.ascontiguousarray(arr, dtype=np.uint64).tobytes()
    return [int.from_bytes(raw[i:i + 32], "little") for i in range(0, len(raw), 32)]


# ---- files --------------------------------------------------------------------------------------


def read_wtns(path: Path | str) -> np.ndarray:
    """A snarkjs/circom .wtns file's witness as an (n_vars, 4) uint64 array (normal form)."""
    data = Path(path).read_bytes()
    sec = binfile.sections(data, b"wtns", str(path))
    if 1 not in sec or 2 not in sec:
        raise ZkError(f"{path} lacks the witness header or values")
    off, _ = sec[1]
    n8, q, count = struct.unpack_from("<I32sI", data, off)
    if n8 != 32 or int.from_bytes(q, "little") != R:
        raise ZkError(f"{path} is not a BN254 witness")
    off, size = sec[2]
    if size != 32 * count:
        raise ZkError(f"{path} holds {size} bytes of values for {count} wires")
    return np.frombuffer(data, dtype=np.uint64, count=4 * count, offset=off).reshape(count, 4).copy()


def write_wtns(path: Path | str, witness: np.ndarray) -> None:
    """The witness as a .wtns file snarkjs reads (for cross-checks)."""
    w = np.ascontiguousarray(witness, dtype=np.uint64)
    head = struct.pack("<I32sI", 32, R.to_bytes(32, "little"), len(w))
    body = w.tobytes()
    Path(path).write_bytes(b"wtns" + struct.pack("<II", 2, 2) + struct.pack("<IQ", 1, len(head)) + head
                           + struct.pack("<IQ", 2, len(body)) + body)


_ONE = np.frombuffer(((1 << 256) % P).to_bytes(32, "little"), dtype=np.uint64)  # 1 in Montgomery form


def _table(raw: np.ndarray, affine_words: int) -> np.ndarray:
    """zkey points (affine coordinates in Montgomery form, all zero for infinity) as an mcl Jacobian
    table: z = 1 (1 + 0 i in G2), or 0 for infinity."""
    pts = raw.reshape(-1, affine_words)
    out = np.zeros((len(pts), affine_words * 3 // 2), dtype=np.uint64)
    out[:, :affine_words] = pts
    out[pts.any(axis=1), affine_words:affine_words + 4] = _ONE
    return out


def _g1_table(raw: np.ndarray) -> np.ndarray:
    return _table(raw, 8)  # x, y


def _g2_table(raw: np.ndarray) -> np.ndarray:
    return _table(raw, 16)  # x.c0, x.c1, y.c0, y.c1


@dataclass
class ProvingKey:
    n_vars: int
    n_public: int
    power: int
    coefs: np.ndarray  # section 4's records, raw bytes (44 each)
    n_coefs: int
    alpha1: np.ndarray  # (1, 12) mcl tables from here on
    beta1: np.ndarray
    delta1: np.ndarray
    beta2: np.ndarray  # (1, 24)
    gamma2: np.ndarray
    delta2: np.ndarray
    # the point sections as the zkey holds them (affine rows over the file's pages, 64 / 128 bytes a
    # point): each MSM piece is made an mcl table only when it runs, so a 1M-parameter key (11 GB)
    # is never held whole in mcl's 1.5x larger form
    ic: np.ndarray
    a: np.ndarray
    b1: np.ndarray
    b2: np.ndarray
    c: np.ndarray
    h: np.ndarray
    _file: Any = None  # the open mmap the arrays above read from

    @property
    def domain(self) -> int:
        return 1 << self.power

    @staticmethod
    def load(path: Path | str) -> ProvingKey:
        """The zkey at ``path``, read once per path, size and mtime (the last few are kept)."""
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        with _cache_lock:
            if key in _keys:
                _keys.move_to_end(key)
                return _keys[key]
        pk = _read_zkey(Path(path))
        with _cache_lock:
            _keys[key] = pk
            while len(_keys) > _KEEP:
                _keys.popitem(last=False)
        return pk


def _read_zkey(path: Path) -> ProvingKey:
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # stays open with the key
    sec = binfile.sections(buf, b"zkey", str(path))
    if any(k not in sec for k in range(1, 10)):
        raise ZkError(f"{path} lacks a Groth16 section")
    if struct.unpack_from("<I", buf, sec[1][0])[0] != 1:
        raise ZkError(f"{path} is not a Groth16 key")
    off = sec[2][0]
    n8q, q, n8r, r, n_vars, n_public, domain = struct.unpack_from("<I32sI32sIII", buf, off)
    if n8q != 32 or n8r != 32 or int.from_bytes(q, "little") != P or int.from_bytes(r, "little") != R:
        raise ZkError(f"{path} is not a BN254 key")
    power = domain.bit_length() - 1
    if domain != 1 << power or power >= TWO_ADICITY:
        raise ZkError(f"{path} has a domain of {domain}, not a power of two below 2^{TWO_ADICITY}")
    off += 4 + 32 + 4 + 32 + 12
    vk = np.frombuffer(buf, dtype=np.uint64, count=(3 * 8 + 3 * 16), offset=off).copy()
    g1 = lambda i: _g1_table(vk[i:i + 8])  # noqa: E731 (offsets in u64 words: a1, b1, b2, g2, d1, d2)

    def section(k: int, width: int, count: int) -> np.ndarray:
        o, size = sec[k]
        if size != 8 * width * count:
            raise ZkError(f"{path}: section {k} holds {size} bytes, expected {8 * width * count}")
        return np.frombuffer(buf, dtype=np.uint64, count=width * count, offset=o)

    coef_off, coef_size = sec[4]
    (n_coefs,) = struct.unpack_from("<I", buf, coef_off)
    if coef_size != 4 + 44 * n_coefs:
        raise ZkError(f"{path}: section 4 holds {coef_size} bytes for {n_coefs} coefficients")
    coefs = np.frombuffer(buf, dtype=np.uint8, count=44 * n_coefs, offset=coef_off + 4).copy()
    pk = ProvingKey(
        n_vars=n_vars, n_public=n_public, power=power, coefs=coefs, n_coefs=n_coefs,
        alpha1=g1(0), beta1=g1(8), delta1=g1(48),
        beta2=_g2_table(vk[16:32]), gamma2=_g2_table(vk[32:48]), delta2=_g2_table(vk[56:72]),
        ic=section(3, 8, n_public + 1).reshape(-1, 8), a=section(5, 8, n_vars).reshape(-1, 8),
        b1=section(6, 8, n_vars).reshape(-1, 8), b2=section(7, 16, n_vars).reshape(-1, 16),
        c=section(8, 8, n_vars - n_public - 1).reshape(-1, 8), h=section(9, 8, domain).reshape(-1, 8),
        _file=buf,
    )
    return pk


# ---- the field side: A, B, C on the odd coset ---------------------------------------------------

_twiddles: dict[tuple[int, bool], np.ndarray] = {}


def _twiddle(power: int, inverse: bool) -> np.ndarray:
    """The NTT's twiddles level by level (``fednode_fr_ntt``: row h + k = root^(k n / 2h)), Montgomery
    form, root inverted for the inverse NTT; the last size's kept."""
    key = (power, inverse)
    with _cache_lock:
        tw = _twiddles.get(key)
    if tw is None:
        n = 1 << power
        w = pow(root(power), -1, R) if inverse else root(power)
        tw = np.zeros((n, 4), dtype=np.uint64)
        lib, one = zknative.library(), _fr(1)
        h = 1
        while h < n:
            g = _fr(pow(w, n // (2 * h), R))  # named: a temporary's address would dangle
            lib.fednode_fr_powers(tw.ctypes.data + 32 * h, g.ctypes.data, one.ctypes.data, h)
            h *= 2
        with _cache_lock:
            for old in [k for k in _twiddles if k[0] != power]:
                del _twiddles[old]
            _twiddles[key] = tw
    return tw


def ntt(values: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The DFT over the 2^k domain snarkjs uses (Montgomery in and out; inverse includes 1/n)."""
    out = np.ascontiguousarray(values, dtype=np.uint64).copy()
    n = len(out)
    power = n.bit_length() - 1
    if n != 1 << power:
        raise ZkError("an NTT needs a power-of-two length")
    lib = zknative.library()
    tw = _twiddle(power, inverse)
    lib.fednode_fr_ntt(out.ctypes.data, power, tw.ctypes.data)
    if inverse:
        inv_n = _fr(pow(n, -1, R))
        lib.fednode_fr_mul(out.ctypes.data, out.ctypes.data, inv_n.ctypes.data, 0, n)
    return out


def _to_coset(col: np.ndarray, power: int) -> None:
    """Domain evaluations -> evaluations at inc * w^i (inc the 2N-th root), in place."""
    lib = zknative.library()
    n = 1 << power
    inc, inv_n = _fr(root(power + 1)), _fr(pow(n, -1, R))
    back, fwd = _twiddle(power, True), _twiddle(power, False)
    lib.fednode_fr_ntt(col.ctypes.data, power, back.ctypes.data)
    lib.fednode_fr_scale_powers(col.ctypes.data, n, inc.ctypes.data, inv_n.ctypes.data)
    lib.fednode_fr_ntt(col.ctypes.data, power, fwd.ctypes.data)


def _parallel(jobs: Sequence[Callable[[], Any]], threads: int = THREADS) -> list[Any]:
    """Run ``jobs`` on up to ``threads`` threads with STACK-sized stacks; results in order."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    nxt = iter(range(len(jobs)))
    take = threading.Lock()

    def worker() -> None:
        while True:
            with take:
                i = next(nxt, None)
            if i is None or errors:
                return
            try:
                results[i] = jobs[i]()
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

    count = max(1, min(threads, len(jobs)))
    with _stack_lock:
        old = threading.stack_size(STACK)
        try:
            workers = [threading.Thread(target=worker, name="fednode-groth16") for _ in range(count)]
            for t in workers:
                t.start()
        finally:
            threading.stack_size(old)
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return results


def qap_evaluations(pk: ProvingKey, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A(w) and B(w) on the domain (Montgomery), from section 4."""
    lib = zknative.library()
    cols = [np.zeros((pk.domain, 4), dtype=np.uint64) for _ in range(2)]

    def run(m: int) -> int:
        return int(lib.fednode_qap_eval(pk.coefs.ctypes.data, pk.n_coefs, m, w.ctypes.data, pk.n_vars,
                                        cols[m].ctypes.data, pk.domain))

    bad = [x for x in _parallel([lambda: run(0), lambda: run(1)]) if x >= 0]
    if bad:
        raise ZkError(f"the proving key's coefficient {bad[0]} is malformed")
    return cols[0], cols[1]


def h_scalars(pk: ProvingKey, w: np.ndarray, times: dict[str, float] | None = None) -> np.ndarray:
    """``A B - C`` on the odd coset (Montgomery: mcl's scalar form), the H points' scalars."""
    times = {} if times is None else times
    t = time.perf_counter()
    a, b = qap_evaluations(pk, w)
    c = np.empty_like(a)
    zknative.library().fednode_fr_mul_sub(c.ctypes.data, a.ctypes.data, b.ctypes.data, None, 0, pk.domain)
    times["ab_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _parallel([lambda col=col: _to_coset(col, pk.power) for col in (a, b, c)])  # type: ignore[misc]
    zknative.library().fednode_fr_mul_sub(a.ctypes.data, a.ctypes.data, b.ctypes.data, c.ctypes.data, 0,
                                          pk.domain)
    times["fft_s"] = time.perf_counter() - t
    return a


# ---- the group side: MSMs with mcl --------------------------------------------------------------


class _Group:
    """mcl's G1 or G2 through ctypes: rows of ``words`` u64."""

    def __init__(self, g2: bool) -> None:
        lib = mcl._lib()
        name = "G2" if g2 else "G1"
        self.words = 24 if g2 else 12
        v, sz = ctypes.c_void_p, ctypes.c_size_t
        self.mulvec = getattr(lib, f"mclBn{name}_mulVec")
        self.mul = getattr(lib, f"mclBn{name}_mul")
        self.add = getattr(lib, f"mclBn{name}_add")
        self.sub = getattr(lib, f"mclBn{name}_sub")
        self.normalize = getattr(lib, f"mclBn{name}_normalize")
        self.is_zero = getattr(lib, f"mclBn{name}_isZero")
        self.get_str = getattr(lib, f"mclBn{name}_getStr")
        for fn, args in ((self.mulvec, [v, v, v, sz]), (self.mul, [v, v, v]), (self.add, [v, v, v]),
                         (self.sub, [v, v, v]), (self.normalize, [v, v]), (self.is_zero, [v]),
                         (self.get_str, [ctypes.c_char_p, sz, v, ctypes.c_int])):
            fn.argtypes = args

    def zero(self) -> np.ndarray:
        return np.zeros((1, self.words), dtype=np.uint64)  # z = 0: infinity in mcl's Jacobian form

    def add_to(self, acc: np.ndarray, x: np.ndarray, negate: bool = False) -> None:
        (self.sub if negate else self.add)(acc.ctypes.data, acc.ctypes.data, x.ctypes.data)

    def times(self, x: np.ndarray, k: int) -> np.ndarray:
        out, scalar = self.zero(), _fr(k)
        self.mul(out.ctypes.data, x.ctypes.data, scalar.ctypes.data)
        return out

    def table(self, raw: np.ndarray) -> np.ndarray:
        """zkey rows (affine, Montgomery) as this group's mcl table."""
        return _g2_table(raw) if self.words == 24 else _g1_table(raw)

    def msm_jobs(self, points: np.ndarray, scalars: np.ndarray, acc: np.ndarray, negate: bool,
                 lock: threading.Lock) -> list[Callable[[], None]]:
        """Jobs adding (or subtracting) ``sum scalars[i] points[i]`` to ``acc``, in pieces of PIECE;
        ``points`` are zkey rows, made mcl tables a piece at a time."""
        n = len(points)
        pieces = max(1, -(-n // PIECE), THREADS if n >= 1 << 14 else 1)
        step = -(-n // pieces)

        def job(lo: int) -> None:
            part = self.zero()
            hi = min(n, lo + step)
            pts = self.table(points[lo:hi])
            self.mulvec(part.ctypes.data, pts.ctypes.data, scalars.ctypes.data + 32 * lo, hi - lo)
            with lock:
                self.add_to(acc, part, negate)

        return [lambda lo=lo: job(lo) for lo in range(0, n, step)]  # type: ignore[misc]

    def affine(self, x: np.ndarray) -> tuple[int, ...] | None:
        if self.is_zero(x.ctypes.data):
            return None
        y = x.copy()
        self.normalize(y.ctypes.data, y.ctypes.data)
        buf = ctypes.create_string_buffer(1024)
        if self.get_str(buf, 1024, y.ctypes.data, 16) == 0:
            raise ZkError("mcl could not print a point")  # pragma: no cover
        return tuple(int(part, 16) for part in buf.value.split()[1:])


_groups: dict[bool, _Group] = {}


def _group(g2: bool) -> _Group:
    with _cache_lock:
        if g2 not in _groups:
            _groups[g2] = _Group(g2)
        return _groups[g2]


@dataclass
class _Scalars:
    """The witness split for MSMs: per group of sizes, the wires, and their |value| in mcl's form."""
    groups: list[tuple[np.ndarray, np.ndarray, bool]]  # (wire indices, Montgomery magnitudes, negative)


def _split(w: np.ndarray) -> _Scalars:
    lib = zknative.library()
    n = len(w)
    mag = np.empty_like(w)
    bits = np.empty(n, dtype=np.uint8)
    neg = np.empty(n, dtype=np.uint8)
    if lib.fednode_fr_classify(w.ctypes.data, n, mag.ctypes.data, bits.ctypes.data, neg.ctypes.data) >= 0:
        raise ZkError("a witness value is not below the field order")
    bucket = np.searchsorted(np.array(GROUPS), bits)  # bits <= GROUPS[bucket]; 0 bits: bucket 0, dropped
    key = bucket.astype(np.int64) * 2 + neg
    key[bits == 0] = -1
    order = np.argsort(key, kind="stable")
    keys = key[order]
    out = []
    for k in np.unique(keys[keys >= 0]):
        idx = order[np.searchsorted(keys, k, "left"):np.searchsorted(keys, k, "right")]
        sc = np.empty((len(idx), 4), dtype=np.uint64)
        m = np.ascontiguousarray(mag[idx])
        lib.fednode_fr_to_mont(sc.ctypes.data, m.ctypes.data, len(idx))
        out.append((idx, sc, bool(k & 1)))
    return _Scalars(out)


def _witness_msm_jobs(group: _Group, table: np.ndarray, split: _Scalars, acc: np.ndarray, lock: threading.Lock,
                      first: int = 0) -> list[Callable[[], None]]:
    """Jobs for ``sum_i w[first + i] table[i]`` into ``acc`` (wires below ``first`` skipped)."""
    jobs: list[Callable[[], None]] = []
    live = np.asarray(table.any(axis=1), dtype=bool)  # zkey rows: (0, 0) is infinity
    for idx, sc, negative in split.groups:
        keep = idx >= first
        rows = idx[keep] - first
        sel = live[rows]
        if not sel.any():
            continue
        pts = np.ascontiguousarray(table[rows[sel]])
        jobs += group.msm_jobs(pts, np.ascontiguousarray(sc[keep][sel]), acc, negative, lock)
    return jobs


# ---- the constraints themselves (optional: a zkey has no C matrix) ------------------------------

_RECORD = np.dtype([("m", "<u4"), ("c", "<u4"), ("s", "<u4"), ("v", "<u8", (4,))])  # section 4's 44 bytes
_r1cs: dict[tuple[str, int, int], tuple[int, np.ndarray]] = {}


def _r1cs_records(path: Path) -> tuple[int, np.ndarray]:
    """An .r1cs's terms as section-4-style records (A 0, B 1, C 2; coefficient times 2^512), the last
    file's kept."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _r1cs:
            return _r1cs[key]
    from fednode.zk.devsetup import read_r1cs  # its reader checks the format and the coefficients

    system = read_r1cs(Path(path))
    lib = zknative.library()
    coefs = np.ascontiguousarray(system.coefs, dtype=np.uint64)
    once = np.empty_like(coefs)
    lib.fednode_fr_to_mont(once.ctypes.data, coefs.ctypes.data, len(coefs))
    rec = np.empty(len(coefs), dtype=_RECORD)
    rec["m"], rec["c"], rec["s"] = system.matrix, system.cons, system.wire
    twice = np.empty_like(coefs)
    lib.fednode_fr_to_mont(twice.ctypes.data, once.ctypes.data, len(coefs))
    rec["v"] = twice
    with _cache_lock:
        _r1cs.clear()
        _r1cs[key] = (system.n_constraints, rec)
    return system.n_constraints, rec


def check_constraints(r1cs_path: Path | str, witness: Sequence[int] | np.ndarray) -> None:
    """Every constraint ``(A.w) (B.w) = C.w`` of the .r1cs holds for ``witness``; ``ZkError`` naming the
    first that does not (what ``prove(..., r1cs=)`` checks before any MSM)."""
    count, rec = _r1cs_records(Path(r1cs_path))
    w = np.ascontiguousarray(witness if isinstance(witness, np.ndarray) else ints_to_array(witness), dtype=np.uint64)
    lib = zknative.library()
    cols = [np.zeros((count, 4), dtype=np.uint64) for _ in range(3)]
    for m in range(3):
        bad = lib.fednode_qap_eval(rec.ctypes.data, len(rec), m, w.ctypes.data, len(w), cols[m].ctypes.data, count)
        if bad >= 0:
            raise ZkError(f"{r1cs_path}: term {bad} names a wire beyond the witness's {len(w)}")
    a, b, c = cols
    lib.fednode_fr_mul_sub(a.ctypes.data, a.ctypes.data, b.ctypes.data, c.ctypes.data, 0, count)
    broken = np.flatnonzero(a.any(axis=1))
    if broken.size:
        raise ZkError(f"the witness breaks constraint {int(broken[0])} of {count} ({broken.size} broken): no proof")


# ---- proving ------------------------------------------------------------------------------------


Proof = tuple[Affine | None, Affine2 | None, Affine | None]


def as_witness(witness: Sequence[int] | np.ndarray, pk: ProvingKey) -> np.ndarray:
    w = witness if isinstance(witness, np.ndarray) else ints_to_array(witness)
    w = np.ascontiguousarray(w, dtype=np.uint64)
    if w.shape != (pk.n_vars, 4):
        raise ZkError(f"the witness has {len(w)} wires; this proving key takes {pk.n_vars}")
    if array_to_ints(w[:1]) != [1]:
        raise ZkError("the witness's wire 0 must be 1")
    return w


def prove(pk: ProvingKey, witness: Sequence[int] | np.ndarray, *, check: bool = True,
          r1cs: Path | str | None = None, times: dict[str, float] | None = None) -> Proof:
    """(pi_a, pi_b, pi_c) for ``witness`` (all wires, normal form), with fresh blinding r, s.

    ``check``: verify the proof against the key's own verifying key (4 pairings and the public-input
    MSM) and raise ``ZkError`` instead of returning a proof of a witness that breaks a constraint.
    ``r1cs``: the circuit's .r1cs, to check every constraint first (``check_constraints``: the first
    broken one named, before any FFT or MSM). ``times`` (if given) receives the stages' seconds: wall
    time for ``*_wall_s``, ``ab_s``, ``check_s``, ``constraints_s`` and ``prove_s``, seconds summed over
    both threads for ``fft_s`` and ``msm_{a,b1,b2,c}_s``."""
    times = {} if times is None else times
    t0 = time.perf_counter()
    w = as_witness(witness, pk)
    if r1cs is not None:
        t = time.perf_counter()
        check_constraints(r1cs, w)
        times["constraints_s"] = time.perf_counter() - t
    lib = zknative.library()
    t = time.perf_counter()
    a, b = qap_evaluations(pk, w)
    c = np.empty_like(a)
    lib.fednode_fr_mul_sub(c.ctypes.data, a.ctypes.data, b.ctypes.data, None, 0, pk.domain)
    split = _split(w)
    times["ab_s"] = time.perf_counter() - t
    g1, g2 = _group(False), _group(True)
    lock = threading.Lock()
    acc = {name: (g2 if name == "b2" else g1).zero() for name in ("a", "b1", "b2", "c", "h")}

    def timed(name: str, jobs: list[Callable[[], None]]) -> list[Callable[[], None]]:
        """The jobs, adding their seconds (on whichever thread) to times[name]."""
        times[name] = 0.0

        def run(job: Callable[[], None]) -> None:
            start = time.perf_counter()
            job()
            with lock:
                times[name] += time.perf_counter() - start

        return [lambda job=job: run(job) for job in jobs]  # type: ignore[misc]

    # The coset FFTs and the witness MSMs do not depend on each other: one queue keeps both threads busy
    # (three FFT columns alone would leave one idle a third of the time).
    t = time.perf_counter()
    _parallel([
        *timed("fft_s", [lambda col=col: _to_coset(col, pk.power) for col in (a, b, c)]),  # type: ignore[misc]
        *timed("msm_b2_s", _witness_msm_jobs(g2, pk.b2, split, acc["b2"], lock)),
        *timed("msm_a_s", _witness_msm_jobs(g1, pk.a, split, acc["a"], lock)),
        *timed("msm_b1_s", _witness_msm_jobs(g1, pk.b1, split, acc["b1"], lock)),
        *timed("msm_c_s", _witness_msm_jobs(g1, pk.c, split, acc["c"], lock, pk.n_public + 1)),
    ])
    times["fft_and_witness_msms_wall_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lib.fednode_fr_mul_sub(a.ctypes.data, a.ctypes.data, b.ctypes.data, c.ctypes.data, 0, pk.domain)
    _parallel(g1.msm_jobs(pk.h, a, acc["h"], False, lock))
    times["msm_h_wall_s"] = time.perf_counter() - t
    r, s = 1 + secrets.randbelow(R - 1), 1 + secrets.randbelow(R - 1)
    pi_a = acc["a"]
    g1.add_to(pi_a, pk.alpha1)
    g1.add_to(pi_a, g1.times(pk.delta1, r))
    pi_b = acc["b2"]
    g2.add_to(pi_b, pk.beta2)
    g2.add_to(pi_b, g2.times(pk.delta2, s))
    pib1 = acc["b1"]
    g1.add_to(pib1, pk.beta1)
    g1.add_to(pib1, g1.times(pk.delta1, s))
    pi_c = acc["c"]
    g1.add_to(pi_c, acc["h"])
    g1.add_to(pi_c, g1.times(pi_a, s))
    g1.add_to(pi_c, g1.times(pib1, r))
    g1.add_to(pi_c, g1.times(pk.delta1, r * s % R), negate=True)
    xa, xb, xc = g1.affine(pi_a), g2.affine(pi_b), g1.affine(pi_c)
    proof: Proof = (None if xa is None else (xa[0], xa[1]),
                    None if xb is None else ((xb[0], xb[1]), (xb[2], xb[3])),
                    None if xc is None else (xc[0], xc[1]))
    if check:
        t = time.perf_counter()
        if not verify(pk, proof, w[1:pk.n_public + 1]):
            raise ZkError("the witness does not satisfy the circuit's constraints: no proof")
        times["check_s"] = time.perf_counter() - t
    times["prove_s"] = time.perf_counter() - t0
    return proof


def verify(pk: ProvingKey, proof: Proof, public: np.ndarray) -> bool:
    """The Groth16 equation with the zkey's verifying key: e(A, B) = e(alpha, beta) e(IC.x, gamma) e(C, delta)."""
    g1, g2 = _group(False), _group(True)
    a, b, c = proof
    pub = np.concatenate([ints_to_array([1]), np.asarray(public, dtype=np.uint64).reshape(-1, 4)])
    if len(pub) != len(pk.ic):
        raise ZkError(f"{len(pub) - 1} public inputs; this key takes {len(pk.ic) - 1}")
    acc = g1.zero()
    _parallel(_witness_msm_jobs(g1, pk.ic, _split(pub), acc, threading.Lock()))
    vk_x = g1.affine(acc)

    def pt1(x: np.ndarray) -> Affine | None:
        v = g1.affine(x)
        return None if v is None else (v[0], v[1])

    def pt2(x: np.ndarray) -> Affine2 | None:
        v = g2.affine(x)
        return None if v is None else ((v[0], v[1]), (v[2], v[3]))

    neg_a = None if a is None else (a[0], (P - a[1]) % P)
    return pairing.check([(neg_a, b), (pt1(pk.alpha1), pt2(pk.beta2)),
                          (None if vk_x is None else (vk_x[0], vk_x[1]), pt2(pk.gamma2)),
                          (c, pt2(pk.delta2))])
