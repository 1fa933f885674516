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

Points are affine Montgomery little-endian rows (``fednode.zk.devtau``), infinity as zeros. Section
10 (the contributions) holds 64 zero bytes and no contribution: a prover never reads it, ``snarkjs zkey
verify`` rejects the file (there is no ceremony transcript to check).
"""

from __future__ import annotations

import ctypes
import json
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fednode.zk import devtau, mcl
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
    matrix: np.ndarray
    cons: np.ndarray
    wire: np.ndarray
    coef_raw: np.ndarray  # (T, 32) uint8, little-endian normal form

    def coefs(self) -> list[int]:
        raw = self.coef_raw.tobytes()
        fb = int.from_bytes
        return [fb(raw[i:i + 32], "little") for i in range(0, len(raw), 32)]


def read_r1cs(path: Path) -> R1cs:
    """Parse ``path`` (r1cs version 1, BN254's r); ``ZkError`` with one line for anything else."""
    data = Path(path).read_bytes()
    if data[:4] != b"r1cs" or len(data) < 12:
        raise ZkError(f"{path} is not an r1cs file")
    version, count = struct.unpack_from("<II", data, 4)
    if version != 1:
        raise ZkError(f"{path}: r1cs version {version}, expected 1")
    sections: dict[int, tuple[int, int]] = {}
    pos = 12
    for _ in range(count):
        if pos + 12 > len(data):
            raise ZkError(f"{path} is truncated")
        kind, size = struct.unpack_from("<IQ", data, pos)
        sections.setdefault(kind, (pos + 12, size))
        pos += 12 + size
    if pos > len(data) or 1 not in sections or 2 not in sections:
        raise ZkError(f"{path} is truncated or lacks its header / constraints")
    off, _ = sections[1]
    (n8,) = struct.unpack_from("<I", data, off)
    prime = int.from_bytes(data[off + 4:off + 4 + n8], "little")
    if n8 != 32 or prime != R:
        raise ZkError(f"{path} is not over BN254's scalar field")
    n_wires, n_out, n_pub, _n_prv = struct.unpack_from("<IIII", data, off + 4 + n8)
    (n_cons,) = struct.unpack_from("<I", data, off + 4 + n8 + 16 + 8)
    start, size = sections[2]
    # one pass over the linear combinations' headers (Python), the terms themselves in numpy
    heads: list[int] = []
    counts: list[int] = []
    unpack = struct.Struct("<I").unpack_from
    pos, end = start, start + size
    for _ in range(3 * n_cons):
        if pos + 4 > end:
            raise ZkError(f"{path}: constraint section is truncated")
        (k,) = unpack(data, pos)
        heads.append(pos + 4)
        counts.append(k)
        pos += 4 + 36 * k
    if pos != end:
        raise ZkError(f"{path}: constraint section has {end - pos} bytes left over")
    cnt = np.asarray(counts, dtype=np.int64)
    total = int(cnt.sum())
    lc = np.repeat(np.arange(3 * n_cons, dtype=np.int64), cnt)
    first = np.cumsum(cnt) - cnt
    offsets = np.repeat(np.asarray(heads, dtype=np.int64), cnt) + 36 * (np.arange(total) - first[lc])
    raw = np.frombuffer(data, dtype=np.uint8)
    terms = raw[offsets[:, None] + np.arange(36)]
    wire = terms[:, :4].copy().view("<u4").ravel().astype(np.int64)
    if total and int(wire.max()) >= n_wires:
        raise ZkError(f"{path}: a term names wire {int(wire.max())} of {n_wires}")
    return R1cs(n_wires, n_out + n_pub, n_cons, (lc % 3).astype(np.int8), lc // 3, wire,
                np.ascontiguousarray(terms[:, 4:]))


def domain_power(r1cs: R1cs) -> int:
    """snarkjs's ``cirPower``: constraints plus one per public input and the constant within 2^p."""
    m = r1cs.n_constraints + r1cs.n_public + 1
    return max(1, (m - 1).bit_length())


def _lagrange(tau: int, power: int, idx: range) -> list[int]:
    """``L_i(tau)`` over the 2^power-th roots of unity (ffjavascript's ``Fr.w``) for i in ``idx``:
    ``(tau^N - 1) / N * w^i / (tau - w^i)`` with one batch inversion."""
    n = 1 << power
    w = devtau._root_of_unity(power)
    roots = []
    x = pow(w, idx.start, R)
    wstep = pow(w, idx.step, R)
    for _ in idx:
        roots.append(x)
        x = x * wstep % R
    diffs = [(tau - r) % R for r in roots]
    prefix = [1] * (len(diffs) + 1)
    acc = 1
    for i, d in enumerate(diffs):
        acc = acc * d % R
        prefix[i + 1] = acc
    if acc == 0:
        raise ZkError("tau is a root of unity; draw again")
    inv = pow(acc, -1, R)
    top = (pow(tau, n, R) - 1) * pow(n, -1, R) % R
    out = [0] * len(diffs)
    for i in range(len(diffs) - 1, -1, -1):
        out[i] = top * inv % R * prefix[i] % R * roots[i] % R
        inv = inv * diffs[i] % R
    return out


def _columns(r1cs: R1cs, lag: list[int]) -> tuple[list[int], list[int], list[int]]:
    """``A_s(tau), B_s(tau), C_s(tau)`` for every wire (with snarkjs's extra public constraints)."""
    n = r1cs.n_vars
    cols: tuple[list[int], list[int], list[int]] = ([0] * n, [0] * n, [0] * n)
    coefs = r1cs.coefs()
    one = np.zeros(32, dtype=np.uint8)
    one[0] = 1
    is_one = (r1cs.coef_raw == one).all(axis=1).tolist()
    for m, c, s, k, unit in zip(r1cs.matrix.tolist(), r1cs.cons.tolist(), r1cs.wire.tolist(), coefs, is_one,
                                   strict=True):
        col = cols[m]
        col[s] += lag[c] if unit else k * lag[c]  # reduced once at the end
    for s in range(r1cs.n_public + 1):
        cols[0][s] += lag[r1cs.n_constraints + s]
    for col in cols:
        for i, v in enumerate(col):
            if v >= R:
                col[i] = v % R
    return cols


def _coef_section(r1cs: R1cs) -> Iterator[bytes]:
    """Section 4: u32 count, then (u32 matrix, u32 constraint, u32 wire, coef R^2 LE) for A and B."""
    keep = np.flatnonzero(r1cs.matrix < 2)
    count = len(keep) + r1cs.n_public + 1
    yield struct.pack("<I", count)
    coefs = r1cs.coefs()
    for lo in range(0, len(keep), CHUNK):
        part = keep[lo:lo + CHUNK]
        rec = np.zeros((len(part), 44), dtype=np.uint8)
        head = np.stack([r1cs.matrix[part].astype(np.uint32), r1cs.cons[part].astype(np.uint32),
                         r1cs.wire[part].astype(np.uint32)], axis=1).astype("<u4")
        rec[:, :12] = head.view(np.uint8).reshape(len(part), 12)
        scaled = b"".join((coefs[t] * _R2 % R).to_bytes(32, "little") for t in part.tolist())
        rec[:, 12:] = np.frombuffer(scaled, dtype=np.uint8).reshape(len(part), 32)
        yield rec.tobytes()
    extra = b"".join(struct.pack("<III", 0, r1cs.n_constraints + s, s) + _R2.to_bytes(32, "little")
                     for s in range(r1cs.n_public + 1))
    yield extra


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


Multiplier = Callable[[bool, list[int]], bytes]  # (in G2, scalars) -> affine LEM rows, zeros for 0

SOURCE = Path(__file__).with_name("fixedbase.c")
FLAGS = ["-O3", "-shared", "-fPIC"]
WINDOW = 12  # bits per table window: 22 mixed additions a product, tables of 8.6 MB (G1) / 17 MB (G2)
_state: dict[str, object] = {}
_lock = threading.Lock()


class FixedBase:
    """``s G`` for many scalars and one generator: a table of ``d 2^(w j) G`` and ``fixedbase.c``
    (MCL's point addition and field inversion, called from C), batches on ``mcl.THREADS`` threads."""

    def __init__(self, g2: bool, window: int = WINDOW):
        from fednode.tensors import native

        lib = mcl._lib()
        c = native.load_library(SOURCE, FLAGS)
        if c.fednode_fixedbase_version() != 1:
            raise ZkError(f"{SOURCE.name}: unexpected version")  # pragma: no cover
        v, i64 = ctypes.c_void_p, ctypes.c_int64
        c.fednode_fixedbase_table.argtypes = [v, i64, v, i64, i64, v, v, v, v, v]
        c.fednode_fixedbase_mul.argtypes = [v, i64, v, i64, i64, v, i64, v, v, v, v]
        c.fednode_fixedbase_table.restype = c.fednode_fixedbase_mul.restype = i64
        name, fp = ("G2", "Fp2") if g2 else ("G1", "Fp")
        fns = [getattr(lib, f"mclBn{name}_add"), getattr(lib, f"mclBn{fp}_mul"), getattr(lib, f"mclBn{fp}_inv")]
        self.fns = np.array([ctypes.cast(fn, ctypes.c_void_p).value for fn in fns], dtype=np.uint64)
        self.c, self.f, self.w = c, 64 if g2 else 32, window
        self.nwin = -(-R.bit_length() // window)
        count = self.nwin * ((1 << window) - 1)
        point = 3 * self.f
        self.table = np.zeros(count * point, dtype=np.uint8)
        base = devtau._Group(g2).base
        one = np.zeros(self.f, dtype=np.uint8)
        one[:32] = np.frombuffer(((1 << 256) % P).to_bytes(32, "little"), dtype=np.uint8)
        work, pre, zero = np.zeros(count * point, np.uint8), np.zeros(count * self.f, np.uint8), np.zeros(count, np.uint8)
        if c.fednode_fixedbase_table(self.fns.ctypes.data, self.f, base.ctypes.data, window, self.nwin,
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

    def rows(self, scalars: list[int]) -> bytes:
        """Affine Montgomery rows (64 bytes in G1, 128 in G2), zero rows for zero scalars."""
        n = len(scalars)
        fr = np.frombuffer(b"".join((s % R).to_bytes(32, "little") for s in scalars), dtype=np.uint64).reshape(n, 4)
        out = np.empty((n, 2 * self.f), dtype=np.uint8)
        step = -(-n // mcl.THREADS) if n >= 4096 else n
        parts = [(lo, min(n, lo + step)) for lo in range(0, n, max(1, step))]
        if len(parts) > 1:
            futures = [mcl._executor().submit(self._run, fr[lo:hi], out[lo:hi]) for lo, hi in parts]
            for fut in futures:
                fut.result()
        elif n:
            self._run(fr, out)
        return out.tobytes()


def fixed_base(g2: bool) -> FixedBase:
    """The process's table for G1 or G2 (built once: ~0.1 s / ~0.3 s)."""
    key = "g2" if g2 else "g1"
    with _lock:
        fb = _state.get(key)
        if fb is None:
            fb = _state[key] = FixedBase(g2)
    assert isinstance(fb, FixedBase)
    return fb


def native_rows(g2: bool, scalars: list[int]) -> bytes:
    return fixed_base(g2).rows(scalars)


def mcl_rows(g2: bool, scalars: list[int]) -> bytes:
    """``s G`` rows with MCL's ``mclBnG*_mul`` (``devtau._Group``; ~65 us a G1 product here): the
    reference the test compares ``native_rows`` with. Zero scalars give zero rows."""
    group = devtau._Group(g2)
    size = 128 if g2 else 64
    rows = bytearray(group.rows([s or 1 for s in scalars]))
    for i, s in enumerate(scalars):
        if s % R == 0:
            rows[size * i:size * (i + 1)] = bytes(size)
    return bytes(rows)


def _chunked(mul: Multiplier, g2: bool, scalars: list[int]) -> Iterator[bytes]:
    for lo in range(0, len(scalars), CHUNK):
        yield mul(g2, scalars[lo:lo + CHUNK])


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
    mul = multiplier or native_rows
    tau, alpha, beta, gamma, delta = _secrets or tuple(1 + secrets.randbelow(R - 1) for _ in range(5))
    n_pub = r1cs.n_public
    t = time.perf_counter()
    lag = _lagrange(tau, power, range(r1cs.n_constraints + n_pub + 1))
    a, b, c = _columns(r1cs, lag)
    del lag
    gamma_inv, delta_inv = pow(gamma, -1, R), pow(delta, -1, R)
    ic = [(beta * a[s] + alpha * b[s] + c[s]) * gamma_inv % R for s in range(n_pub + 1)]
    lc = [(beta * a[s] + alpha * b[s] + c[s]) * delta_inv % R for s in range(n_pub + 1, r1cs.n_vars)]
    del c
    n = 1 << power
    h = [x * delta_inv % R for x in _lagrange(tau, power + 1, range(1, 2 * n, 2))]
    times["field_s"] = time.perf_counter() - t
    t = time.perf_counter()
    g1 = mul(False, [alpha, beta, delta])
    g2 = mul(True, [beta, gamma, delta])
    header = (struct.pack("<I", 32) + P.to_bytes(32, "little") + struct.pack("<I", 32) + R.to_bytes(32, "little")
              + struct.pack("<III", r1cs.n_vars, n_pub, n))
    header += g1[0:64] + g1[64:128] + g2[0:128] + g2[128:256] + g1[128:192] + g2[256:384]
    del tau, alpha, beta, gamma, delta  # the points below are all that is kept of them
    tmp = Path(zkey_path).with_name(Path(zkey_path).name + ".part")
    spent = {"g1_s": 0.0, "g2_s": 0.0}

    ic_rows = mul(False, ic)
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"zkey" + struct.pack("<II", 1, 10))
            _section(fh, 1, iter([struct.pack("<I", 1)]))
            _section(fh, 2, iter([header]))
            _section(fh, 4, _coef_section(r1cs))
            _section(fh, 3, iter([ic_rows]))
            for kind, g2_, scalars in ((9, False, h), (8, False, lc), (5, False, a), (6, False, b), (7, True, b)):
                ts = time.perf_counter()
                _section(fh, kind, _chunked(mul, g2_, scalars))
                spent["g2_s" if g2_ else "g1_s"] += time.perf_counter() - ts
            _section(fh, 10, iter([bytes(64) + struct.pack("<I", 0)]))
        tmp.replace(zkey_path)
    finally:
        tmp.unlink(missing_ok=True)
    times.update(spent)
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
