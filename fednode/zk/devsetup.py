"""A development Groth16 set-up straight from an ``.r1cs``: no powers of tau, no snarkjs phase 2.

``snarkjs groth16 setup`` builds the proving key as multi-exponentiations over a prepared powers-of-tau
file (the Lagrange basis at tau), then ``zkey contribute`` rescales by delta: at 2^21 the two take
about an hour here. One machine that draws every secret itself can instead compute each point's
scalar in Fr and multiply the fixed generators once. ``groth16_setup`` draws tau, alpha, beta, gamma
and delta with ``secrets``, writes the ``.zkey`` snarkjs would write for them (sections 1-9 byte for
byte, given the same secrets: the test compares) and the ``vk.json`` of ``snarkjs zkey export
verificationkey``, and drops the secrets. Trust: like ``fednode.zk.devtau``, whoever ran it could
have kept them; development and tests only.

The scalars (snarkjs's ``zkey_new.js`` conventions; ``L_c`` the Lagrange basis at tau over the
2^p-th roots of unity, 2^p the smallest power of two above constraints + public inputs):

- ``A_s = sum_c a_cs L_c``, ``B_s = sum_c b_cs L_c`` (B in G1 and in G2), plus snarkjs's extra
  constraint per public wire s <= nPublic: ``A_s += L_{nConstraints + s}``;
- ``IC_s = (beta A_s + alpha B_s + C_s) / gamma`` for s <= nPublic, ``(...) / delta`` for the others;
- ``H_i = L'_{2i+1} / delta``: the odd points of the Lagrange basis over the 2^(p+1)-th roots, the coset
  on which snarkjs's prover evaluates ``A B - C`` (it vanishes on the even points);
- section 4 lists the A and B coefficients as ``coef R^2 mod r`` (R = 2^256), as snarkjs does.

Speed: the field work and the point products are C (``fixedbase.c``) calling MCL's Fr and curve
functions: a fixed-base table per generator, batch normalisation (docs/zk.md "A development set-up in
seconds": 14 s at 10k parameters, ~106 s at 100k here under load).

Points are affine Montgomery little-endian rows (``fednode.zk.devtau``), infinity as zeros. Section
10 (the contributions) holds 64 zero bytes and no contribution: a prover never reads it, ``snarkjs zkey
verify`` rejects the file (there is no ceremony transcript to check).
"""

from __future__ import annotations

import ctypes
import json
import secrets
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fednode.zk import binfile, devtau, mcl
from fednode.zk.curve import P, R, ZkError

FR_S = devtau.FR_S  # 2^28-th roots of unity: the largest domain snarkjs's H section supports here
_MONT_R = (1 << 256) % R
_R2 = _MONT_R * _MONT_R % R  # section 4 stores coef * R^2
_PINV = pow((1 << 256) % P, -1, P)
CHUNK = 1 << 16  # points per multiplication batch (bounds the buffers)

Secrets = tuple[int, int, int, int, int]  # tau, alpha, beta, gamma, delta


@dataclass
class R1cs:
    """An iden3 ``.r1cs`` file, terms flattened: term t is ``coef[t] * w[wire[t]]`` in matrix
    ``matrix[t]`` (0 A, 1 B, 2 C) of constraint ``cons[t]``, in file order."""

    n_vars: int
    n_public: int  # outputs + public inputs (not counting the constant wire 0)
    n_constraints: int
    matrix: np.ndarray  # (T,) int8
    cons: np.ndarray  # (T,) int64
    wire: np.ndarray  # (T,) int64
    coefs: np.ndarray  # (T, 4) uint64, little-endian normal form


class _Native:
    """``fixedbase.c`` (built with ``fednode.nativebuild``: zig cc, private cache) and the
    addresses of the MCL functions it calls."""

    def __init__(self) -> None:
        from fednode import nativebuild as native

        lib = mcl._lib()
        try:
            c = native.load_library(SOURCE, FLAGS)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ZkError(f"devsetup needs {SOURCE.name} built with zig cc (PyPI ziglang): {exc}") from None
        if c.fednode_fixedbase_version() != 1:
            raise ZkError(f"{SOURCE.name}: unexpected version")  # pragma: no cover
        v, i64 = ctypes.c_void_p, ctypes.c_int64
        for name, args, res in (
            ("fednode_fixedbase_table", [v, i64, v, i64, i64, v, v, v, v, v], i64),
            ("fednode_fixedbase_mul", [v, i64, v, i64, i64, v, i64, v, v, v, v], i64),
            ("fednode_fr_scale", [v, v, v, i64, v], None),
            ("fednode_fr_geometric", [v, v, v, i64, v], None),
            ("fednode_fr_lagrange", [v, v, v, v, i64, v, v], i64),
            ("fednode_fr_columns", [v, i64, v, v, v, v, v, v, v, v], None),
            ("fednode_fr_combine", [v, v, v, v, i64, v, v, v, v], None),
            ("fednode_r1cs_scan", [v, i64, i64, i64, v, v], i64),
            ("fednode_r1cs_terms", [v, v, v, i64, v, v, v, v], None),
        ):
            fn = getattr(c, name)
            fn.argtypes, fn.restype = args, res
        self.c = c

        def addresses(*names: str) -> np.ndarray:
            return np.array([ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names], dtype=np.uint64)

        self.fr = addresses("mclBnFr_mul", "mclBnFr_add", "mclBnFr_sub", "mclBnFr_inv")
        self.g1 = addresses("mclBnG1_add", "mclBnFp_mul", "mclBnFp_inv")
        self.g2 = addresses("mclBnG2_add", "mclBnFp2_mul", "mclBnFp2_inv")


_state: dict[str, object] = {}
_lock = threading.RLock()


def _native() -> _Native:
    with _lock:
        nat = _state.get("native")
        if nat is None:
            nat = _state["native"] = _Native()
    assert isinstance(nat, _Native)
    return nat


def _elem(x: int) -> np.ndarray:
    """One raw 4-word element (x as it is; Montgomery form is the caller's business)."""
    return np.frombuffer((x % (1 << 256)).to_bytes(32, "little"), dtype=np.uint64).copy()


def _mont(x: int) -> np.ndarray:
    return _elem(x % R * _MONT_R % R)


_RAW_ONE = _elem(1)  # MCL multiplication by the raw 1 leaves Montgomery form
_TO_MONT = _elem(_R2)  # by 2^512 mod r enters it


def _scale(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    nat = _native()
    nat.c.fednode_fr_scale(nat.fr.ctypes.data, x.ctypes.data, k.ctypes.data, len(x), out.ctypes.data)
    return out


def read_r1cs(path: Path) -> R1cs:
    """Parse ``path`` (r1cs version 1, BN254's r); ``ZkError`` with one line for anything else."""
    data = Path(path).read_bytes()
    sections = binfile.sections(data, b"r1cs", str(path))
    if binfile.version(data) != 1:
        raise ZkError(f"{path}: r1cs version {binfile.version(data)}, expected 1")
    if 1 not in sections or 2 not in sections:
        raise ZkError(f"{path} is truncated or lacks its header / constraints")
    off, _ = sections[1]
    (n8,) = struct.unpack_from("<I", data, off)
    prime = int.from_bytes(data[off + 4:off + 4 + n8], "little")
    if n8 != 32 or prime != R:
        raise ZkError(f"{path} is not over BN254's scalar field")
    n_wires, n_out, n_pub, _n_prv = struct.unpack_from("<IIII", data, off + 4 + n8)
    (n_cons,) = struct.unpack_from("<I", data, off + 4 + n8 + 16 + 8)
    start, size = sections[2]
    heads, cnt = np.empty(3 * n_cons, np.int64), np.empty(3 * n_cons, np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    end = _native().c.fednode_r1cs_scan(buf.ctypes.data, start, size, 3 * n_cons, heads.ctypes.data, cnt.ctypes.data)
    if end != start + size:
        raise ZkError(f"{path}: the constraint section does not hold {n_cons} constraints")
    total = int(cnt.sum())
    wire, coefs = np.empty(total, np.int64), np.empty((total, 4), np.uint64)
    matrix, cons = np.empty(total, np.int8), np.empty(total, np.int64)
    _native().c.fednode_r1cs_terms(buf.ctypes.data, heads.ctypes.data, cnt.ctypes.data, 3 * n_cons, wire.ctypes.data,
                                   coefs.ctypes.data, matrix.ctypes.data, cons.ctypes.data)
    if total and int(wire.max()) >= n_wires:
        raise ZkError(f"{path}: a term names wire {int(wire.max())} of {n_wires}")
    if total and not _below_r(coefs).all():
        raise ZkError(f"{path}: coefficient {int(np.flatnonzero(~_below_r(coefs))[0])} is not reduced mod r")
    return R1cs(n_wires, n_out + n_pub, n_cons, matrix, cons, wire, coefs)


def _below_r(x: np.ndarray) -> np.ndarray:
    """Which rows of an (n, 4) little-endian limb array are below r (MCL's arithmetic expects it)."""
    below = np.zeros(len(x), dtype=bool)
    equal = np.ones(len(x), dtype=bool)
    for k in (3, 2, 1, 0):
        limb = np.uint64((R >> (64 * k)) & (2**64 - 1))
        below |= equal & (x[:, k] < limb)
        equal &= x[:, k] == limb
    return below


def domain_power(r1cs: R1cs) -> int:
    """snarkjs's ``cirPower``: constraints plus one per public input and the constant within 2^p."""
    m = r1cs.n_constraints + r1cs.n_public + 1
    return max(1, (m - 1).bit_length())


def _lagrange(tau: int, power: int, start: int, step: int, count: int, scale: int = 1) -> np.ndarray:
    """``scale L_i(tau)`` over the 2^power-th roots of unity (ffjavascript's ``Fr.w``) for i = start,
    start + step, ... (count of them), Montgomery form: ``(tau^N - 1) / N w^i / (tau - w^i)``."""
    n = 1 << power
    w = devtau._root_of_unity(power)
    nat = _native()
    roots = np.empty((count, 4), np.uint64)
    first, ratio = _mont(pow(w, start, R)), _mont(pow(w, step, R))  # held: ctypes gets bare addresses
    nat.c.fednode_fr_geometric(nat.fr.ctypes.data, first.ctypes.data, ratio.ctypes.data, count, roots.ctypes.data)
    top = (pow(tau, n, R) - 1) * pow(n, -1, R) * scale % R
    out, pre = np.empty_like(roots), np.empty_like(roots)
    tau_m, top_m = _mont(tau), _mont(top)
    if nat.c.fednode_fr_lagrange(nat.fr.ctypes.data, tau_m.ctypes.data, top_m.ctypes.data,
                                 roots.ctypes.data, count, out.ctypes.data, pre.ctypes.data) != 0:
        raise ZkError("tau is a root of unity; draw again")  # pragma: no cover (probability 2^-226)
    return out


def _columns(r1cs: R1cs, lag: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A_s(tau), B_s(tau), C_s(tau)`` for every wire (Montgomery form), with snarkjs's extra
    constraint per public wire s: ``A_s += L_{nConstraints + s}``."""
    pub = np.arange(r1cs.n_public + 1, dtype=np.int64)
    matrix = np.concatenate([r1cs.matrix, np.zeros(len(pub), np.int8)])
    cons = np.concatenate([r1cs.cons, r1cs.n_constraints + pub])
    wire = np.concatenate([r1cs.wire, pub])
    coefs = np.concatenate([_scale(r1cs.coefs, _TO_MONT), np.tile(_mont(1), (len(pub), 1))])
    col_a, col_b, col_c = (np.zeros((r1cs.n_vars, 4), np.uint64) for _ in range(3))
    nat = _native()
    nat.c.fednode_fr_columns(nat.fr.ctypes.data, len(wire), matrix.ctypes.data, cons.ctypes.data, wire.ctypes.data,
                             coefs.ctypes.data, lag.ctypes.data, col_a.ctypes.data, col_b.ctypes.data,
                             col_c.ctypes.data)
    return col_a, col_b, col_c


def _combine(a: np.ndarray, b: np.ndarray, c: np.ndarray, alpha: int, beta: int, scale: int) -> np.ndarray:
    """``(beta a + alpha b + c) scale``, in and out in Montgomery form."""
    a, b, c = (np.ascontiguousarray(x) for x in (a, b, c))
    out = np.empty_like(a)
    nat = _native()
    al, be, sc = _mont(alpha), _mont(beta), _mont(scale)
    nat.c.fednode_fr_combine(nat.fr.ctypes.data, a.ctypes.data, b.ctypes.data, c.ctypes.data, len(a),
                             al.ctypes.data, be.ctypes.data, sc.ctypes.data, out.ctypes.data)
    return out


def _coef_section(r1cs: R1cs) -> Iterator[bytes]:
    """Section 4: u32 count, then (u32 matrix, u32 constraint, u32 wire, coef R^2 LE) for A and B."""
    keep = np.flatnonzero(r1cs.matrix < 2)
    yield struct.pack("<I", len(keep) + r1cs.n_public + 1)
    r3 = _elem(_R2 * _MONT_R % R)  # MCL's x y / 2^256 with y = 2^768: x 2^512, snarkjs's coef R^2
    for lo in range(0, len(keep), 1 << 20):
        part = keep[lo:lo + (1 << 20)]
        rec = np.empty((len(part), 11), dtype="<u4")
        rec[:, 0] = r1cs.matrix[part]
        rec[:, 1] = r1cs.cons[part]
        rec[:, 2] = r1cs.wire[part]
        rec[:, 3:] = _scale(np.ascontiguousarray(r1cs.coefs[part]), r3).view("<u4")
        yield rec.tobytes()
    yield b"".join(struct.pack("<III", 0, r1cs.n_constraints + s, s) + _R2.to_bytes(32, "little")
                   for s in range(r1cs.n_public + 1))


def _section(fh: BinaryIO, kind: int, parts: Iterator[bytes]) -> None:
    """A binfileutils section: u32 id, u64 size (patched after the body), body."""
    start = fh.tell()
    fh.write(struct.pack("<IQ", kind, 0))
    size = 0
    for part in parts:
        fh.write(part)
        size += len(part)
    end = fh.tell()
    fh.seek(start + 4)
    fh.write(struct.pack("<Q", size))
    fh.seek(end)


Multiplier = Callable[[bool, np.ndarray], bytes]  # (in G2, (n, 4) normal-form scalars) -> affine LEM rows

SOURCE = Path(__file__).with_name("fixedbase.c")
FLAGS = ["-O3", "-shared", "-fPIC"]


class FixedBase:
    """``s G`` for many scalars and one generator: a table of ``d 2^(w j) G`` for each w-bit window j
    and ``fixedbase.c`` (ceil(254 / w) of MCL's mixed additions a product, one inversion a batch),
    batches on ``mcl.THREADS`` threads."""

    def __init__(self, g2: bool, window: int):
        nat = _native()
        self.c, self.fns = nat.c, nat.g2 if g2 else nat.g1
        self.f, self.w = 64 if g2 else 32, window
        self.nwin = -(-R.bit_length() // window)
        count = self.nwin * ((1 << window) - 1)
        point = 3 * self.f
        self.table = np.zeros(count * point, dtype=np.uint8)
        base = devtau._Group(g2).base
        one = np.zeros(self.f, dtype=np.uint8)
        one[:32] = np.frombuffer(((1 << 256) % P).to_bytes(32, "little"), dtype=np.uint8)
        work, pre = np.zeros(count * point, np.uint8), np.zeros(count * self.f, np.uint8)
        zero = np.zeros(count, np.uint8)
        if self.c.fednode_fixedbase_table(self.fns.ctypes.data, self.f, base.ctypes.data, window, self.nwin,
                                          one.ctypes.data, self.table.ctypes.data, work.ctypes.data, pre.ctypes.data,
                                          zero.ctypes.data) != 0:
            raise ZkError("fixed-base table: a point at infinity")  # pragma: no cover

    def _run(self, fr: np.ndarray, out: np.ndarray) -> None:
        n = len(fr)
        work, pre, zero = np.empty(n * 3 * self.f, np.uint8), np.empty(n * self.f, np.uint8), np.empty(n, np.uint8)
        if self.c.fednode_fixedbase_mul(self.fns.ctypes.data, self.f, self.table.ctypes.data, self.w, self.nwin,
                                        fr.ctypes.data, n, out.ctypes.data, work.ctypes.data, pre.ctypes.data,
                                        zero.ctypes.data) != 0:
            raise ZkError("fixed-base multiplication: a zero denominator")  # pragma: no cover

    def rows(self, scalars: np.ndarray) -> bytes:
        """Affine Montgomery rows (64 bytes in G1, 128 in G2) of (n, 4) normal-form scalars below r,
        zero rows for zero scalars."""
        n = len(scalars)
        fr = np.ascontiguousarray(scalars, dtype=np.uint64)
        out = np.empty((n, 2 * self.f), dtype=np.uint8)
        step = -(-n // mcl.THREADS) if n >= 4096 else max(n, 1)
        parts = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
        if len(parts) > 1:
            for fut in [mcl._executor().submit(self._run, fr[lo:hi], out[lo:hi]) for lo, hi in parts]:
                fut.result()
        elif n:
            self._run(fr, out)
        return out.tobytes()


def fixed_base(g2: bool, window: int) -> FixedBase:
    """The process's table for G1 or G2 and that window (12 bits: 0.1 s / 0.3 s to build, 8.6 / 17 MB;
    16 bits in G1: ~1.5 s, 100 MB)."""
    key = f"{'g2' if g2 else 'g1'}-{window}"
    with _lock:
        fb = _state.get(key)
        if fb is None:
            fb = _state[key] = FixedBase(g2, window)
    assert isinstance(fb, FixedBase)
    return fb


def native_multiplier(points: int) -> Multiplier:
    """``fixed_base`` rows, the window sized to the work: from ~2^18 points, 16-bit G1 tables (16
    additions a product instead of 22: ~8.7 instead of ~10.6 us CPU; 1-2 s, 100 MB to build) and
    14-bit G2 ones (19 additions: ~19 instead of ~22 us; 0.8 s, 60 MB) pay for themselves."""
    large = points >= 1 << 18

    def rows(g2: bool, scalars: np.ndarray) -> bytes:
        return fixed_base(g2, (14 if g2 else 16) if large else 12).rows(scalars)
    return rows


def _ints(scalars: np.ndarray) -> list[int]:
    raw = np.ascontiguousarray(scalars, dtype="<u8").tobytes()
    return [int.from_bytes(raw[i:i + 32], "little") for i in range(0, len(raw), 32)]


def mcl_rows(g2: bool, scalars: np.ndarray) -> bytes:
    """``s G`` rows with MCL's ``mclBnG*_mul`` (``devtau._Group``; ~65 us a G1 product here): the
    reference the test compares the fixed-base rows with. Zero scalars give zero rows."""
    values = _ints(scalars)
    group = devtau._Group(g2)
    size = 128 if g2 else 64
    rows = bytearray(group.rows([s or 1 for s in values]))
    for i, s in enumerate(values):
        if s % R == 0:
            rows[size * i:size * (i + 1)] = bytes(size)
    return bytes(rows)


def _chunked(mul: Multiplier, g2: bool, scalars: np.ndarray) -> Iterator[bytes]:
    for lo in range(0, len(scalars), CHUNK):
        yield mul(g2, scalars[lo:lo + CHUNK])


def _normal(x: np.ndarray) -> np.ndarray:
    return _scale(x, _RAW_ONE)


def groth16_setup(r1cs_path: Path, zkey_path: Path, vk_json_path: Path, *, multiplier: Multiplier | None = None,
                  _secrets: Secrets | None = None) -> dict[str, float]:
    """Write a Groth16 ``.zkey`` for ``r1cs_path`` and its ``vk.json`` from secrets drawn here (then
    dropped); returns the seconds spent per stage. ``_secrets`` (tau, alpha, beta, gamma, delta) is
    for the test that compares with snarkjs; never pass it otherwise."""
    times: dict[str, float] = {}
    t0 = t = time.perf_counter()
    r1cs = read_r1cs(Path(r1cs_path))
    times["read_s"] = time.perf_counter() - t
    power = domain_power(r1cs)
    if power >= FR_S:
        raise ZkError(f"{r1cs_path}: a domain of 2^{power} is beyond snarkjs's 2^{FR_S - 1}")
    n_pub, n = r1cs.n_public, 1 << power
    mul = multiplier or native_multiplier(2 * r1cs.n_vars + n)
    tau, alpha, beta, gamma, delta = _secrets or tuple(1 + secrets.randbelow(R - 1) for _ in range(5))
    t = time.perf_counter()
    lag = _lagrange(tau, power, 0, 1, r1cs.n_constraints + n_pub + 1)
    a, b, c = _columns(r1cs, lag)
    del lag
    gamma_inv, delta_inv = pow(gamma, -1, R), pow(delta, -1, R)
    ic = _normal(_combine(a[:n_pub + 1], b[:n_pub + 1], c[:n_pub + 1], alpha, beta, gamma_inv))
    lc = _normal(_combine(a[n_pub + 1:], b[n_pub + 1:], c[n_pub + 1:], alpha, beta, delta_inv))
    del c
    a, b = _normal(a), _normal(b)
    h = _normal(_lagrange(tau, power + 1, 1, 2, n, delta_inv))  # the odd points of the 2n domain
    times["field_s"] = time.perf_counter() - t
    t = time.perf_counter()
    g1 = mul(False, np.stack([_elem(x) for x in (alpha, beta, delta)]))
    g2 = mul(True, np.stack([_elem(x) for x in (beta, gamma, delta)]))
    header = (struct.pack("<I", 32) + P.to_bytes(32, "little") + struct.pack("<I", 32) + R.to_bytes(32, "little")
              + struct.pack("<III", r1cs.n_vars, n_pub, n))
    header += g1[0:64] + g1[64:128] + g2[0:128] + g2[128:256] + g1[128:192] + g2[256:384]
    del tau, alpha, beta, gamma, delta, gamma_inv, delta_inv  # the points are all that is kept of them
    ic_rows = mul(False, ic)
    times["g1_s"], times["g2_s"] = time.perf_counter() - t, 0.0
    same = (a == b).all(axis=1)  # a wire whose A and B columns agree (a bit b in b (b - 1) = 0) shares its row
    a_rows: list[bytes] = []

    def a_section() -> Iterator[bytes]:
        for part in _chunked(mul, False, a):
            a_rows.append(part)
            yield part

    def b1_section() -> Iterator[bytes]:
        for k, lo in enumerate(range(0, len(b), CHUNK)):
            hi = min(len(b), lo + CHUNK)
            rows = np.frombuffer(a_rows[k], dtype=np.uint8).reshape(hi - lo, 64).copy()
            todo = np.flatnonzero(~same[lo:hi])
            rows[todo] = np.frombuffer(mul(False, b[lo:hi][todo]), dtype=np.uint8).reshape(len(todo), 64)
            a_rows[k] = b""
            yield rows.tobytes()

    t = time.perf_counter()
    coefs = b"".join(_coef_section(r1cs))
    times["coefs_s"] = time.perf_counter() - t
    tmp = Path(zkey_path).with_name(Path(zkey_path).name + ".part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"zkey" + struct.pack("<II", 1, 10))
            _section(fh, 1, iter([struct.pack("<I", 1)]))
            _section(fh, 2, iter([header]))
            _section(fh, 4, iter([coefs]))
            _section(fh, 3, iter([ic_rows]))
            bodies = ((9, False, _chunked(mul, False, h)), (8, False, _chunked(mul, False, lc)),
                      (5, False, a_section()), (6, False, b1_section()), (7, True, _chunked(mul, True, b)))
            for kind, g2_, body in bodies:
                ts = time.perf_counter()
                _section(fh, kind, body)
                times["g2_s" if g2_ else "g1_s"] += time.perf_counter() - ts
            _section(fh, 10, iter([bytes(64) + struct.pack("<I", 0)]))
        tmp.replace(zkey_path)
    finally:
        tmp.unlink(missing_ok=True)
    t = time.perf_counter()
    Path(vk_json_path).write_text(json.dumps(verification_key(n_pub, header[84:], ic_rows), indent=1))
    times["vk_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0
    return times


def _fp(raw: bytes) -> str:
    return str(int.from_bytes(raw, "little") * _PINV % P)


def _g1_obj(row: bytes) -> list[str]:
    if not any(row):
        return ["0", "1", "0"]
    return [_fp(row[:32]), _fp(row[32:64]), "1"]


def _g2_obj(row: bytes) -> list[list[str]]:
    return [[_fp(row[0:32]), _fp(row[32:64])], [_fp(row[64:96]), _fp(row[96:128])], ["1", "0"]]


def verification_key(n_public: int, points: bytes, ic_rows: bytes) -> dict[str, object]:
    """snarkjs's ``vk.json`` from the header's points (alpha1, beta1, beta2, gamma2, delta1, delta2 rows)."""
    alpha1, beta2, gamma2, delta2 = points[0:64], points[128:256], points[256:384], points[448:576]
    return {
        "protocol": "groth16", "curve": "bn128", "nPublic": n_public,
        "vk_alpha_1": _g1_obj(alpha1), "vk_beta_2": _g2_obj(beta2), "vk_gamma_2": _g2_obj(gamma2),
        "vk_delta_2": _g2_obj(delta2), "vk_alphabeta_12": _alphabeta(alpha1, beta2),
        "IC": [_g1_obj(ic_rows[64 * i:64 * (i + 1)]) for i in range(n_public + 1)],
    }


def _alphabeta(alpha1: bytes, beta2: bytes) -> list[list[list[str]]]:
    """``e(alpha1, beta2)`` as ffjavascript's ``Gt.toObject``: MCL's GT (12 Fp, Montgomery) is laid out
    in the same tower order (c0.c0.c0, c0.c0.c1, c0.c1.c0, ..., c1.c2.c1); the test compares."""
    lib = mcl._lib()
    one = ((1 << 256) % P).to_bytes(32, "little")
    g1 = np.frombuffer(alpha1 + one, dtype=np.uint64).copy()
    g2 = np.frombuffer(beta2 + one + bytes(32), dtype=np.uint64).copy()
    gt = np.zeros(48, dtype=np.uint64)
    lib.mclBn_pairing.argtypes = [ctypes.c_void_p] * 3
    lib.mclBn_pairing(gt.ctypes.data, g1.ctypes.data, g2.ctypes.data)
    raw = gt.tobytes()
    fp = [_fp(raw[32 * i:32 * (i + 1)]) for i in range(12)]
    return [[[fp[6 * j + 2 * k], fp[6 * j + 2 * k + 1]] for k in range(3)] for j in range(2)]
