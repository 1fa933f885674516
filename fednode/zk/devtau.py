"""A development powers-of-tau file for snarkjs, written directly from secrets drawn here.

A ceremony run on one machine knows its toxic waste anyway, so instead of ``snarkjs powersoftau new /
contribute / prepare phase2`` (minutes at 2^13, about half an hour at 2^16) this draws tau, alpha and
beta with ``secrets``, computes every point's scalar in Fr, multiplies the fixed generators with MCL
(``fednode.zk.mcl``) and writes the *prepared* file that ``prepare phase2`` would write. The secrets
live only inside ``write_ptau``; the file is for development only (whoever ran it could have kept them).

Format (snarkjs 0.7, ``binfileutils`` / ``powersoftau_new.js`` / ``powersoftau_preparephase2.js``):
``"ptau"``, u32 version 1, u32 section count, then sections (u32 id, u64 size, body):

1. header: u32 n8 = 32, q (32 bytes LE), u32 power, u32 ceremony power (``prepare`` writes ``power``);
2. ``tau^i G1`` for i < 2^(p+1) - 1;  3. ``tau^i G2`` for i < 2^p;  4. ``alpha tau^i G1``;
   5. ``beta tau^i G1`` (i < 2^p);  6. ``beta G2``;
7. contributions: u32 count = 0 (no transcript: ``powersoftau verify`` rejects the file, see the test);
12-15. sections 2-5 in the Lagrange basis: for q = 0..p (and q = p+1 for section 12, whose 2^(p+1)-th
   power is missing and taken as 0) the 2^q points ``L_i(tau) X`` over the 2^q-th roots of unity
   ``w^i`` (``w`` = ffjavascript's ``Fr.w[q]``, powers of its first non-residue), i.e. the inverse
   FFT of the section's first 2^q points, in natural order.

Points are affine ``x, y`` (``G2``: ``x.c0, x.c1, y.c0, y.c1``) in Montgomery form ``v 2^256 mod q``,
little-endian (ffjavascript's ``toRprLEM``): exactly MCL's limbs after ``normalize``, so rows are copied
out of MCL's buffers as they are.
"""

from __future__ import annotations

import ctypes
import secrets
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fednode.zk import mcl
from fednode.zk.curve import GENERATOR, P, R, ZkError

MAX_POWER = 27  # ffjavascript's Fr has 2^28-th roots of unity; section 12 goes one power further
FR_S = 28
G2_GENERATOR = (  # EIP-197 / snarkjs bn128 G2 generator: (x.c0, x.c1), (y.c0, y.c1)
    (10857046999023057135944570762232829481370756359578518086990519993285655852781,
     11559732032986387107991004021392285783925812861821192530917403151452391805634),
    (8495653923123431417604973247489272438418190587263600148770280649306958101930,
     4082367875863433681332203403145435568316851327593401208105741076214120093531),
)
BLOCK = 1 << 14  # points per work item (one thread multiplies a block)

_G1_WORDS, _G2_WORDS = 12, 24  # MCL's Jacobian points: 3 Fp / 3 Fp2 of 4 u64 words


def _root_of_unity(q: int) -> int:
    """ffjavascript's ``Fr.w[q]``: its first quadratic non-residue (from 2 up) to the (R-1)/2^q."""
    nqr = 2
    while pow(nqr, (R - 1) // 2, R) != R - 1:
        nqr += 1
    return pow(nqr, (R - 1) >> q, R)


def lagrange_scalars(tau: int, q: int, truncate: bool = False) -> list[int]:
    """``L_i(tau)`` for i < 2^q over the 2^q-th roots of unity; with ``truncate``, the inverse FFT of
    ``tau^0 .. tau^(2^q - 2), 0`` (snarkjs's last tauG1 block) instead."""
    m = 1 << q
    w = _root_of_unity(q)
    roots = [1] * m
    for i in range(1, m):
        roots[i] = roots[i - 1] * w % R
    # batch inversion of tau - w^i (tau is random, so never a root of unity in practice)
    diffs = [(tau - x) % R for x in roots]
    prefix = [1] * (m + 1)
    for i, d in enumerate(diffs):
        prefix[i + 1] = prefix[i] * d % R
    if prefix[m] == 0:
        raise ZkError("tau is a root of unity; draw again")
    inv = pow(prefix[m], -1, R)
    inv_m = pow(m, -1, R)
    top = (pow(tau, m, R) - 1) * inv_m % R
    tail = pow(tau, m - 1, R) * inv_m % R if truncate else 0
    out = [0] * m
    for i in range(m - 1, -1, -1):
        d_inv = inv * prefix[i] % R
        inv = inv * diffs[i] % R
        out[i] = (top * d_inv - tail) % R * roots[i] % R
    return out


def _powers(x: int, count: int, scale: int = 1) -> list[int]:
    out = [0] * count
    acc = scale % R
    for i in range(count):
        out[i] = acc
        acc = acc * x % R
    return out


class _Group:
    """Fixed-base multiplication in G1 or G2 with MCL: ``scalars -> affine LEM rows``."""

    def __init__(self, g2: bool):
        lib = mcl._lib()
        v = ctypes.c_void_p
        name = "G2" if g2 else "G1"
        self.mul = getattr(lib, f"mclBn{name}_mul")
        self.norm = getattr(lib, f"mclBn{name}_normalize")
        self.mul.argtypes, self.norm.argtypes = [v, v, v], [v, v]
        self.words = _G2_WORDS if g2 else _G1_WORDS
        self.base = np.zeros(self.words, dtype=np.uint64)
        if g2:
            (x0, x1), (y0, y1) = G2_GENERATOR
            text = b"1 %d %d %d %d" % (x0, x1, y0, y1)
            set_str, valid = lib.mclBnG2_setStr, lib.mclBnG2_isValid
            set_str.argtypes, valid.argtypes = [v, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int], [v]
            if set_str(self.base.ctypes.data, text, len(text), 10) != 0 or not valid(self.base.ctypes.data):
                raise ZkError("mcl rejects the BN254 G2 generator")  # pragma: no cover
        else:
            self.base[:] = mcl.to_native([GENERATOR])[0]

    def rows(self, scalars: list[int]) -> bytes:
        """``s G`` for each scalar, as affine Montgomery rows (64 bytes in G1, 128 in G2)."""
        n = len(scalars)
        fr = mcl.scalars_from_ints(scalars)
        out = np.zeros((n, self.words), dtype=np.uint64)
        size = self.words * 8
        blocks = [(lo, min(n, lo + BLOCK)) for lo in range(0, n, BLOCK)]

        def run(lo: int, hi: int) -> None:
            mul, norm, base = self.mul, self.norm, self.base.ctypes.data
            o, s = out.ctypes.data + size * lo, fr.ctypes.data + 32 * lo
            for _ in range(hi - lo):
                mul(o, base, s)
                norm(o, o)
                o += size
                s += 32

        if len(blocks) > 1 and mcl.THREADS > 1:
            for future in [mcl._executor().submit(run, lo, hi) for lo, hi in blocks]:
                future.result()
        else:
            for lo, hi in blocks:
                run(lo, hi)
        keep = self.words * 2 // 3  # x, y; z is 1 after normalize
        return np.ascontiguousarray(out[:, :keep]).tobytes()


def _header(power: int) -> bytes:
    return struct.pack("<I", 32) + P.to_bytes(32, "little") + struct.pack("<II", power, power)


def _section(fh: BinaryIO, kind: int, parts: Iterator[bytes], size: int) -> None:
    fh.write(struct.pack("<IQ", kind, size))
    written = 0
    for part in parts:
        fh.write(part)
        written += len(part)
    if written != size:
        raise ZkError(f"ptau section {kind}: wrote {written} bytes, expected {size}")  # pragma: no cover


def write_ptau(path: Path, power: int, *, prepared: bool = True, _secrets: tuple[int, int, int] | None = None) -> Path:
    """Write a snarkjs powers-of-tau file for 2^``power`` at ``path`` (prepared for phase 2 unless
    ``prepared=False``, then sections 1-7 only, as ``powersoftau contribute`` leaves them).
    ``_secrets`` (tau, alpha, beta) is for tests that compare with snarkjs; never pass it otherwise."""
    if not 1 <= power <= MAX_POWER:
        raise ZkError(f"devtau makes powers 1..{MAX_POWER}, not {power}")
    tau, alpha, beta = _secrets or tuple(1 + secrets.randbelow(R - 1) for _ in range(3))
    g1, g2 = _Group(False), _Group(True)
    m = 1 << power
    tmp = path.with_name(path.name + ".part")
    sections: list[tuple[int, Callable[[], Iterator[bytes]], int]] = [  # id, its body (made lazily), size
        (1, lambda: iter([_header(power)]), 4 + 32 + 8),
        (2, lambda: _chunks(g1, _powers(tau, 2 * m - 1)), (2 * m - 1) * 64),
        (3, lambda: _chunks(g2, _powers(tau, m)), m * 128),
        (4, lambda: _chunks(g1, _powers(tau, m, alpha)), m * 64),
        (5, lambda: _chunks(g1, _powers(tau, m, beta)), m * 64),
        (6, lambda: iter([g2.rows([beta])]), 128),
        (7, lambda: iter([struct.pack("<I", 0)]), 4),
    ]
    if prepared:
        def lagrange(group: _Group, scale: int, extra: bool) -> Iterator[bytes]:
            for q in range(power + 1):
                yield from _chunks(group, [x * scale % R for x in lagrange_scalars(tau, q)] if scale != 1
                                   else lagrange_scalars(tau, q))
            if extra:
                yield from _chunks(group, lagrange_scalars(tau, power + 1, truncate=True))

        total = 2 * m - 1  # points over q = 0..power
        sections += [
            (12, lambda: lagrange(g1, 1, True), (total + 2 * m) * 64),
            (13, lambda: lagrange(g2, 1, False), total * 128),
            (14, lambda: lagrange(g1, alpha, False), total * 64),
            (15, lambda: lagrange(g1, beta, False), total * 64),
        ]
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"ptau" + struct.pack("<II", 1, len(sections)))
            for kind, parts, size in sections:
                _section(fh, kind, parts(), size)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _chunks(group: _Group, scalars: list[int]) -> Iterator[bytes]:
    """The rows of ``scalars`` in pieces (bounds the memory of the MCL buffers at large powers)."""
    step = 1 << 18
    for lo in range(0, len(scalars), step):
        yield group.rows(scalars[lo:lo + step])
