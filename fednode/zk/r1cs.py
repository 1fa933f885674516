"""The update and remainder circuits' R1CS and witnesses, written without circom (docs/zk.md
"Circuits without circom for large n").

circom2 compiles ``update_bound.circom`` in time superlinear in ``n`` and its wasm witness calculator
is slow; both circuits are a few fixed templates repeated ``n`` times, so this module writes the
constraint system and computes the witness directly, in blocks of parameters with numpy.

- ``update`` (``UpdateBound(n, k, sb)``): byte for byte the ``.r1cs`` that ``circom2 --O2`` writes
  (the tests compare), and the witness its wasm computes. circom's --O2 keeps every ``Bits``
  component's top bit out of the wires: it substitutes it from the component's sum equation, so
  its boolean constraint reads ``(t - 1) * t = 0`` with ``t`` the linear combination.
- ``remainder`` (``RemainderBound(n, K)``): circom's --O2 substitutes across components there (W's
  bits through ``lo[0]``), which is impractical to reproduce, so this writes an equivalent system of
  the same statement: the same public inputs in the same order, the same constraint count, the same
  substitution of each ``Bits`` top bit, one wire more than circom's. The tests check it accepts
  exactly the inputs circom's does (all of them, for small ``K``).

Wire order (both): ``1``, the public inputs ``hash_hi, hash_lo, X, values[n], blind`` (``X`` is B^2
or W; the verifying key's IC order), ``hsq`` / ``sq`` squares, then the bit wires.
Formats (iden3 binary, ``r1csfile`` / snarkjs ``wtns_utils.js``): ``"r1cs"`` or ``"wtns"``, u32
version, u32 section count, sections of (u32 type, u64 size, body); field elements 32 bytes
little-endian in normal form; a linear combination is u32 count then (u32 wire, element) terms.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fednode.errors import FednodeError
from fednode.zk import binfile
from fednode.zk.curve import R, ZkError

BLOCK_BYTES = 32 << 20  # the numpy buffer that a block of parameters' constraints is written from
WITNESS_BLOCK = 1 << 16  # values per block of bit decompositions (bounded temporaries)
_MASK = (1 << 64) - 1
_R_LIMBS = [(R >> (64 * j)) & _MASK for j in range(4)]
Term = tuple[int, int]  # (wire, coefficient mod R)
Constraint = tuple[list[Term], list[Term], list[Term]]


def _inv2(e: int) -> int:
    return pow(2, -e, R)


def _merged(terms: list[Term]) -> list[Term]:
    """Terms sorted by wire (circom's order for short combinations), equal wires added, zeros dropped."""
    merged: dict[int, int] = {}
    for wire, coeff in terms:
        merged[wire] = (merged.get(wire, 0) + coeff) % R
    return sorted((w, c) for w, c in merged.items() if c)


def _terms(kept: list[Term]) -> bytes:
    return b"".join(struct.pack("<I", w) + c.to_bytes(32, "little") for w, c in kept)


def _lc(terms: list[Term]) -> bytes:
    kept = _merged(terms)
    return struct.pack("<I", len(kept)) + _terms(kept)


def _lc_run(terms: list[Term], start: int, count: int, coeff: int) -> bytes:
    """A linear combination of ``terms`` and ``coeff`` times each wire in [start, start + count),
    the run built with numpy (the norm's sum over all n squares)."""
    kept = _merged(terms)
    if any(start <= w < start + count for w, _ in kept):
        raise AssertionError("a term falls inside the run")
    run = np.empty((count, 9), dtype="<u4")
    run[:, 0] = np.arange(start, start + count, dtype=np.uint32)
    run[:, 1:] = np.frombuffer((coeff % R).to_bytes(32, "little"), dtype="<u4")
    before = [t for t in kept if t[0] < start]
    after = [t for t in kept if t[0] >= start + count]
    return struct.pack("<I", len(kept) + count) + _terms(before) + run.tobytes() + _terms(after)


def _constraint(c: Constraint) -> bytes:
    return b"".join(_lc(part) for part in c)


def _boolean(wire: int) -> Constraint:
    return [(0, R - 1), (wire, 1)], [(wire, 1)], []


def _top_bit(total: list[Term], low_bits: Sequence[int]) -> Constraint:
    """``(t - 1) * t = 0`` for the top bit ``t = (total - sum_j 2^j bit_j) / 2^len(low_bits)`` of a
    ``Bits(len(low_bits) + 1)`` whose sum equation circom's --O2 substituted (``total`` = its input)."""
    scale = _inv2(len(low_bits))
    t = [(w, c * scale % R) for w, c in total] + [(b, (R - (1 << j)) * scale % R) for j, b in enumerate(low_bits)]
    return [*t, (0, R - 1)], t, []


def _square(x: int, sq: int) -> Constraint:
    return [(x, R - 1)], [(x, 1)], [(sq, R - 1)]


class _Writer:
    """Streams constraints into the constraints section; the header (which needs the count) goes after
    it, as circom writes it (sections 2, 1, 3)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.count = fh, 0
        fh.write(b"r1cs" + struct.pack("<II", 1, 3))
        self.start = fh.tell()
        fh.write(struct.pack("<IQ", 2, 0))  # size patched in finish

    def one(self, c: Constraint) -> None:
        self.fh.write(_constraint(c))
        self.count += 1

    def repeated(self, n: int, make: Callable[[int], list[Constraint]]) -> None:
        """``make(i)`` for i < n, whose bytes are affine in i (wire ids step, coefficients do not):
        built from i = 0, 1 and 2, written a block at a time (only the wire-id words change per block)."""
        rows = [np.frombuffer(b"".join(_constraint(c) for c in make(i)), dtype="<u4") for i in range(min(n, 3))]
        first = rows[0]
        step = rows[1] - first if n > 1 else np.zeros_like(first)
        if n > 2 and not np.array_equal(rows[2], first + 2 * step):
            raise AssertionError("constraint template is not affine in the parameter index")
        cols = np.flatnonzero(step)
        block = max(1, min(n, BLOCK_BYTES // first.nbytes))
        buf = np.empty((block, len(first)), dtype="<u4")
        buf[:] = first
        for lo in range(0, n, block):
            count = min(n - lo, block)
            idx = np.arange(lo, lo + count, dtype=np.uint32)[:, None]
            buf[:count, cols] = first[cols] + idx * step[cols]
            self.fh.write(buf[:count].data)  # the block's bytes, no copy
        self.count += len(make(0)) * n

    def finish(self, wires: int, public: int, labels: int, wire_labels: Iterator[np.ndarray]) -> None:
        end = self.fh.tell()
        self.fh.seek(self.start)
        self.fh.write(struct.pack("<IQ", 2, end - self.start - 12))
        self.fh.seek(end)
        head = struct.pack("<I", 32) + R.to_bytes(32, "little")
        head += struct.pack("<IIIIQI", wires, 0, public, 0, labels, self.count)
        self.fh.write(struct.pack("<IQ", 1, len(head)) + head)
        self.fh.write(struct.pack("<IQ", 3, 8 * wires))
        written = 0
        for part in wire_labels:
            self.fh.write(np.ascontiguousarray(part, dtype="<u8").data)
            written += len(part)
        if written != wires:
            raise AssertionError(f"{written} wire labels for {wires} wires")


# ---- the update circuit: UpdateBound(n, k, sb) as circom2 --O2 compiles it ----

def update_layout(n: int, k: int, sb: int) -> dict[str, int]:
    """Where the update circuit's wire groups start, and the wire count."""
    sq = n + 5
    bits = sq + n + 3  # after sq[n], hsq[2], bsq
    gap = bits + n * (k - 1)
    return {"sq": sq, "hsq": sq + n, "bsq": sq + n + 2, "bits": bits, "gap": gap, "wires": gap + sb - 1}


def _check_update(n: int, k: int, sb: int) -> None:
    if not (1 <= n < 1 << 26 and 2 <= k <= 32 and 2 <= sb <= 250):
        raise FednodeError(f"update circuit parameters out of range: n={n}, k={k}, sb={sb}")


def write_update_r1cs(path: Path, n: int, k: int, sb: int) -> dict[str, int]:
    """``UpdateBound(n, k, sb)``'s R1CS (main ``{public [hash, bound2, v, blind]}``), the bytes circom2
    --O2 writes; returns the wire and constraint counts."""
    _check_update(n, k, sb)
    lay = update_layout(n, k, sb)
    v0, bits0 = 4, lay["bits"]
    with open(path, "wb") as fh:
        w = _Writer(fh)
        w.repeated(n, lambda i: [_square(v0 + i, lay["sq"] + i)])
        w.one(_square(1, lay["hsq"]))
        w.one(_square(2, lay["hsq"] + 1))
        w.one(_square(n + 4, lay["bsq"]))

        def bits(i: int) -> list[Constraint]:  # Bits(k) of v_i + 2^(k-1)
            low = [bits0 + i * (k - 1) + j for j in range(k - 1)]
            return [*(_boolean(b) for b in low), _top_bit([(v0 + i, 1), (0, 1 << (k - 1))], low)]

        w.repeated(n, bits)
        gap = [lay["gap"] + j for j in range(sb - 1)]
        for wire in gap:
            w.one(_boolean(wire))
        # gap's top bit t = (bound2 - sum sq_i - sum_j 2^j gap_j) / 2^(sb-1): (t - 1) * t = 0
        top_a, top_b, top_c = _top_bit([(3, 1)], gap)
        coeff = (R - 1) * _inv2(sb - 1)
        fh.write(_lc_run(top_a, lay["sq"], n, coeff) + _lc_run(top_b, lay["sq"], n, coeff) + _lc(top_c))
        w.count += 1
        # labels: circom's signal list (one, inputs, sq, hsq, bsq, per Bits out[k] then in, gap likewise)
        def labels() -> Iterator[np.ndarray]:
            yield np.arange(bits0)
            for lo in range(0, n, 1 << 16):
                i = np.arange(lo, min(n, lo + (1 << 16)))[:, None]
                yield (2 * n + 8 + i * (k + 1) + np.arange(k - 1)[None, :]).ravel()
            yield 2 * n + 8 + n * (k + 1) + np.arange(sb - 1)

        w.finish(lay["wires"], n + 4, 2 * n + 8 + n * (k + 1) + sb + 1, labels())
    return {"wires": lay["wires"], "constraints": w.count}


# ---- the remainder circuit: RemainderBound(n, K), an equivalent system ----

def remainder_layout(n: int, k: int) -> dict[str, int]:
    """Wire groups: W's low K-2 bits, then per value ``lo`` (K-2 bits) and ``hi`` (K-1 bits)."""
    w = n + 8  # after one, publics (n + 4), hsq[2], bsq
    per = 2 * k - 3
    return {"hsq": n + 5, "bsq": n + 7, "w": w, "vals": w + k - 2, "per": per, "wires": w + k - 2 + n * per}


def _check_remainder(n: int, k: int) -> None:
    if not (1 <= n < 1 << 26 and 3 <= k <= 64):
        raise FednodeError(f"remainder circuit parameters out of range: n={n}, K={k}")


def write_remainder_r1cs(path: Path, n: int, k: int) -> dict[str, int]:
    """An R1CS of ``RemainderBound(n, K)``'s statement (main ``{public [hash, total, r, blind]}``):
    ``total = W`` in [0, 2^(K-1)), every ``r_i + floor(W/2)`` in [0, 2^(K-1)) and ``W - 2 r_i`` in
    [0, 2^K); returns the wire and constraint counts (constraints: circom2 --O2's count)."""
    _check_remainder(n, k)
    lay = remainder_layout(n, k)
    with open(path, "wb") as fh:
        w = _Writer(fh)
        w.one(_square(1, lay["hsq"]))
        w.one(_square(2, lay["hsq"] + 1))
        w.one(_square(n + 4, lay["bsq"]))
        wbits = [lay["w"] + j for j in range(k - 2)]
        for b in wbits:
            w.one(_boolean(b))
        w.one(_top_bit([(3, 1)], wbits))  # Bits(K-1) of W
        half = [(3, _inv2(1)), (wbits[0], R - _inv2(1))]  # floor(W/2) = (W - w_0) / 2

        def value(i: int) -> list[Constraint]:
            base = lay["vals"] + i * lay["per"]
            lo = [base + j for j in range(k - 2)]
            hi = [base + k - 2 + j for j in range(k - 1)]
            return [*(_boolean(b) for b in lo), _top_bit([(4 + i, 1), *half], lo),
                    *(_boolean(b) for b in hi), _top_bit([(3, 1), (4 + i, R - 2)], hi)]

        w.repeated(n, value)
        step = 1 << 22
        w.finish(lay["wires"], n + 4, lay["wires"],
                 (np.arange(lo, min(lay["wires"], lo + step)) for lo in range(0, lay["wires"], step)))
    return {"wires": lay["wires"], "constraints": w.count}


# ---- witnesses: (wires, 4) uint64 little-endian limbs, normal form ----

def _limbs(x: int) -> list[int]:
    x %= R
    return [(x >> (64 * j)) & _MASK for j in range(4)]


def _signed(col: np.ndarray) -> np.ndarray:
    """Signed int64 values as field elements' limbs: ``v`` or ``R - |v|``."""
    out = np.zeros((len(col), 4), dtype=np.uint64)
    neg = col < 0
    mag = np.abs(col).astype(np.uint64)
    out[:, 0] = np.where(neg, np.uint64(_R_LIMBS[0]) - mag, mag)  # wraps mod 2^64; the borrow below
    borrow = neg & (mag > np.uint64(_R_LIMBS[0]))
    for j in (1, 2, 3):
        out[:, j] = np.where(neg, np.uint64(_R_LIMBS[j]), 0)
    out[:, 1] -= borrow.astype(np.uint64)  # R's limb 1 is nonzero: the borrow stops there
    return out


def _bits(col: np.ndarray, count: int) -> np.ndarray:
    """The low ``count`` bits of non-negative uint64 values, (len, count)."""
    return (col[:, None] >> np.arange(count, dtype=np.uint64)[None, :]) & np.uint64(1)


def _int_bits(x: int, count: int) -> np.ndarray:
    return np.array([(x >> j) & 1 for j in range(count)], dtype=np.uint64)


def _vector(values: Sequence[int] | np.ndarray, n: int, what: str) -> np.ndarray:
    """``values`` zero-padded to ``n`` as int64, each of magnitude below 2^62 (so 2 v and v^2 of any
    value a circuit accepts stay exact in 64 bits)."""
    vals = np.asarray(values)
    if vals.ndim != 1 or len(vals) > n:
        raise FednodeError(f"{what}: at most {n} values in one vector, not shape {vals.shape}")
    if len(vals) and vals.dtype.kind not in "iu" and (
            vals.dtype != object or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals.tolist())):
        raise FednodeError(f"{what}: values must be integers")
    if len(vals) and (int(vals.min()) <= -(1 << 62) or int(vals.max()) >= 1 << 62):
        raise FednodeError(f"{what}: a value is outside (-2^62, 2^62)")
    out = np.zeros(n, dtype=np.int64)
    out[:len(vals)] = vals.astype(np.int64)
    return out


def _public(wit: np.ndarray, hash_hi: int, hash_lo: int, x: int, vals: np.ndarray, blind: int) -> None:
    for name, val in (("hash_hi", hash_hi), ("hash_lo", hash_lo), ("blind", blind)):
        if not 0 <= val < R:
            raise FednodeError(f"{name} must be a field element in [0, r)")
    n = len(vals)
    wit[0, 0] = 1
    wit[1], wit[2], wit[3] = _limbs(hash_hi), _limbs(hash_lo), _limbs(x)
    wit[4:4 + n] = _signed(vals)
    wit[4 + n] = _limbs(blind)


def update_witness(n: int, k: int, sb: int, hash_hi: int, hash_lo: int, bound2: int,
                   values: Sequence[int] | np.ndarray, blind: int) -> np.ndarray:
    """The update circuit's full witness in ``write_update_r1cs``'s wire order (values zero-padded to
    n); refuses inputs with no witness (a value outside signed k bits, the norm over the bound)."""
    _check_update(n, k, sb)
    vals = _vector(values, n, "update witness")
    lo, hi = -(1 << (k - 1)), (1 << (k - 1)) - 1
    if len(vals) and (vals.min() < lo or vals.max() > hi):
        bad = int(np.flatnonzero((vals < lo) | (vals > hi))[0])
        raise FednodeError(f"value {bad} is {int(vals[bad])}: outside the signed {k}-bit range [{lo}, {hi}]")
    if not 0 <= bound2 < 1 << sb:
        raise FednodeError(f"the norm bound B^2 must be in [0, 2^{sb})")
    sq = (vals * vals).astype(np.uint64)  # < 2^62
    norm2 = (int(np.sum(sq >> np.uint64(32), dtype=np.uint64)) << 32) + int(np.sum(sq & np.uint64(_MASK >> 32),
                                                                                     dtype=np.uint64))
    if norm2 > bound2:
        raise FednodeError(f"the squared L2 norm {norm2} exceeds the bound {bound2}")
    lay = update_layout(n, k, sb)
    wit = np.zeros((lay["wires"], 4), dtype=np.uint64)
    _public(wit, hash_hi, hash_lo, bound2, vals, blind)
    wit[lay["sq"]:lay["sq"] + n, 0] = sq
    wit[lay["hsq"]], wit[lay["hsq"] + 1] = _limbs(hash_hi * hash_hi), _limbs(hash_lo * hash_lo)
    wit[lay["bsq"]] = _limbs(blind * blind)
    bits = wit[lay["bits"]:lay["gap"], 0].reshape(n, k - 1)  # a view: the bit wires' low limbs
    for lo in range(0, n, WITNESS_BLOCK):
        bits[lo:lo + WITNESS_BLOCK] = _bits((vals[lo:lo + WITNESS_BLOCK] + (1 << (k - 1))).astype(np.uint64), k - 1)
    wit[lay["gap"]:, 0] = _int_bits(bound2 - norm2, sb - 1)
    return wit


def remainder_witness(n: int, k: int, hash_hi: int, hash_lo: int, total: int,
                      remainder: Sequence[int] | np.ndarray, blind: int) -> np.ndarray:
    """The remainder circuit's full witness in ``write_remainder_r1cs``'s wire order (zero-padded to
    n); refuses inputs with no witness (W outside [0, 2^(K-1)), some |2 r_i| > W)."""
    _check_remainder(n, k)
    vals = _vector(remainder, n, "remainder witness")
    if isinstance(total, bool) or not 0 <= total < 1 << (k - 1):
        raise FednodeError(f"the total weight {total} is outside [0, 2^{k - 1})")
    over = np.flatnonzero(2 * np.abs(vals) > total) if len(vals) else np.array([], dtype=np.int64)
    if len(over):
        bad = int(over[0])
        raise FednodeError(f"remainder value {bad} is {int(vals[bad])}: over half the total weight {total}")
    lay = remainder_layout(n, k)
    wit = np.zeros((lay["wires"], 4), dtype=np.uint64)
    _public(wit, hash_hi, hash_lo, total, vals, blind)
    wit[lay["hsq"]], wit[lay["hsq"] + 1] = _limbs(hash_hi * hash_hi), _limbs(hash_lo * hash_lo)
    wit[lay["bsq"]] = _limbs(blind * blind)
    wit[lay["w"]:lay["vals"], 0] = _int_bits(total, k - 2)
    per = wit[lay["vals"]:, 0].reshape(n, lay["per"])  # a view: each value's lo bits, then its hi bits
    for lo in range(0, n, WITNESS_BLOCK):
        block = vals[lo:lo + WITNESS_BLOCK]
        per[lo:lo + WITNESS_BLOCK, :k - 2] = _bits((block + total // 2).astype(np.uint64), k - 2)
        per[lo:lo + WITNESS_BLOCK, k - 2:] = _bits((total - 2 * block).astype(np.uint64), k - 1)
    return wit


def write_wtns(path: Path, witness: np.ndarray | Sequence[int]) -> None:
    """A snarkjs ``.wtns`` file (version 2: header n8, r, count; then the elements)."""
    if isinstance(witness, np.ndarray):
        if witness.ndim != 2 or witness.shape[1] != 4 or witness.dtype != np.uint64:
            raise FednodeError("a witness array must be (wires, 4) uint64 limbs")
        body: bytes | memoryview = np.ascontiguousarray(witness, dtype="<u8").data  # no copy
        count = len(witness)
    else:
        body = b"".join((int(x) % R).to_bytes(32, "little") for x in witness)
        count = len(witness)
    head = struct.pack("<I", 32) + R.to_bytes(32, "little") + struct.pack("<I", count)
    with open(path, "wb") as fh:
        fh.write(b"wtns" + struct.pack("<II", 2, 2))
        fh.write(struct.pack("<IQ", 1, len(head)) + head)
        fh.write(struct.pack("<IQ", 2, 32 * count))
        fh.write(body)


def witness_ints(witness: np.ndarray) -> list[int]:
    """A (wires, 4) limb array as Python ints (for tests and small circuits)."""
    return [int(a) | int(b) << 64 | int(c) << 128 | int(d) << 192 for a, b, c, d in witness.tolist()]


def read_r1cs(path: Path) -> tuple[dict[str, int], list[Constraint], list[int]]:
    """(header, constraints, wire labels) of an iden3 ``.r1cs`` file, in Python (small circuits)."""
    data = Path(path).read_bytes()
    try:
        sections = {kind: off for kind, (off, _) in binfile.sections(data, b"r1cs", str(path)).items()}
    except ZkError as exc:
        raise FednodeError(str(exc)) from None
    if not {1, 2, 3} <= set(sections):
        raise FednodeError(f"{path} lacks the header, constraints or wire labels")
    pos = sections[1]
    (n8,) = struct.unpack_from("<I", data, pos)
    names = ("wires", "pub_out", "pub_in", "prv_in", "labels", "constraints")
    head = dict(zip(names, struct.unpack_from("<IIIIQI", data, pos + 4 + n8), strict=True))
    pos, cons = sections[2], []
    for _ in range(head["constraints"]):
        parts: list[list[Term]] = []
        for _ in range(3):
            (terms,) = struct.unpack_from("<I", data, pos)
            pos += 4
            lc = []
            for _ in range(terms):
                (wire,) = struct.unpack_from("<I", data, pos)
                lc.append((wire, int.from_bytes(data[pos + 4:pos + 4 + n8], "little")))
                pos += 4 + n8
            parts.append(lc)
        cons.append((parts[0], parts[1], parts[2]))
    labels = list(struct.unpack_from(f"<{head['wires']}Q", data, sections[3]))
    return head, cons, labels


def satisfied(constraints: list[Constraint], witness: Sequence[int]) -> list[int]:
    """The indices of the constraints ``witness`` violates (empty: it satisfies them all)."""
    def ev(lc: list[Term]) -> int:
        return sum(c * witness[w] for w, c in lc) % R

    return [i for i, (a, b, c) in enumerate(constraints) if ev(a) * ev(b) % R != ev(c)]

