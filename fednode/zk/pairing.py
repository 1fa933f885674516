"""BN254 G2 points and pairing-product checks: MCL (fast) and py_ecc (the slow reference).

G2 encoding, as the ``alt_bn128`` pairing precompile (EIP-197) and Solana's syscall read it:
128 bytes ``x.c1 || x.c0 || y.c1 || y.c0``, each 32-byte big-endian below P (imaginary part first),
infinity as 128 zero bytes. Python-side points are ``((x.c0, x.c1), (y.c0, y.c1))``. Decoding checks
the coordinates, the twist equation and membership of the prime-order subgroup (G2's cofactor is
not 1, so on-curve is not enough).

``check(pairs)`` answers whether ``prod_k e(P_k, Q_k) == 1``: one multi-Miller loop and one final
exponentiation.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from fednode.zk.curve import Affine, P, ZkError
from fednode.zk.registry import Backends

G2_BYTES = 128
G2_INFINITY = bytes(G2_BYTES)
Affine2 = tuple[tuple[int, int], tuple[int, int]]  # ((x.c0, x.c1), (y.c0, y.c1))
Pair = tuple[Affine | None, Affine2 | None]


def encode_g2(point: Affine2 | None) -> bytes:
    """The 128-byte EIP-197 encoding (imaginary part first)."""
    if point is None:
        return G2_INFINITY
    (x0, x1), (y0, y1) = point
    return b"".join(c.to_bytes(32, "big") for c in (x1, x0, y1, y0))


def decode_g2(data: bytes, what: str = "G2 point", *, backend_name: str | None = None) -> Affine2 | None:
    """The point of a 128-byte encoding (None for infinity): on the twist and in the subgroup, else ``ZkError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != G2_BYTES:
        raise ZkError(f"{what} must be {G2_BYTES} bytes")
    data = bytes(data)
    if data == G2_INFINITY:
        return None
    x1, x0, y1, y0 = (int.from_bytes(data[i:i + 32], "big") for i in range(0, G2_BYTES, 32))
    if max(x0, x1, y0, y1) >= P:
        raise ZkError(f"{what} has a coordinate not below the BN254 field prime")
    point = ((x0, x1), (y0, y1))
    if not backend(backend_name).in_g2(point):
        raise ZkError(f"{what} is not a point of BN254 G2 (off the twist or outside the prime-order subgroup)")
    return point


class MclPairing:
    """MCL's optimal ate pairing (PyPI ``mclbn256``, initialised for BN254 by ``fednode.zk.mcl``)."""

    name = "mcl"

    def __init__(self) -> None:
        from fednode.zk import mcl

        mcl._lib()  # ZkError now if the library is missing; selects curve id 4
        import mclbn256.mclbn256 as m  # type: ignore[import-untyped, import-not-found, unused-ignore]

        lib = m.lib
        v, c, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, args in {
            "mclBnG2_setStr": [v, c, sz, ctypes.c_int], "mclBnG2_isValid": [v], "mclBnG2_isValidOrder": [v],
            "mclBnG2_clear": [v], "mclBn_millerLoopVec": [v, v, v, sz], "mclBn_finalExp": [v, v],
            "mclBnGT_isOne": [v],
        }.items():
            getattr(lib, name).argtypes = args
        self._lib = lib
        self._mcl = mcl

    def _g2(self, points: Sequence[Affine2 | None]) -> np.ndarray:
        out = np.zeros((len(points), 24), dtype=np.uint64)
        base = out.ctypes.data
        for i, pt in enumerate(points):
            addr = base + 192 * i
            if pt is None:
                self._lib.mclBnG2_clear(addr)
                continue
            (x0, x1), (y0, y1) = pt
            text = b"1 %x %x %x %x" % (x0, x1, y0, y1)
            if self._lib.mclBnG2_setStr(addr, text, len(text), 16) != 0 or not self._lib.mclBnG2_isValid(addr):
                raise ZkError("point is not on the BN254 twist")
        return out

    def in_g2(self, point: Affine2) -> bool:
        try:
            table = self._g2([point])
        except ZkError:
            return False
        return bool(self._lib.mclBnG2_isValidOrder(table.ctypes.data))

    def check(self, pairs: Sequence[Pair]) -> bool:
        g1 = self._mcl.to_native([p for p, _ in pairs])
        g2 = self._g2([q for _, q in pairs])
        gt = (ctypes.c_uint64 * 48)()
        out = ctypes.addressof(gt)
        self._lib.mclBn_millerLoopVec(out, g1.ctypes.data, g2.ctypes.data, len(pairs))
        self._lib.mclBn_finalExp(out, out)
        return bool(self._lib.mclBnGT_isOne(out))


class ReferencePairing:
    """``py_ecc.optimized_bn128``: about 0.2 s a pairing. For cross-checks."""

    name = "reference"

    def __init__(self) -> None:
        from py_ecc import optimized_bn128 as bn

        self._bn = bn

    def _q(self, point: Affine2) -> Any:
        bn = self._bn
        (x0, x1), (y0, y1) = point
        return (bn.FQ2([x0, x1]), bn.FQ2([y0, y1]), bn.FQ2.one())

    def in_g2(self, point: Affine2) -> bool:
        bn = self._bn
        q = self._q(point)
        return bool(bn.is_on_curve(q, bn.b2)) and bool(bn.is_inf(bn.multiply(q, bn.curve_order)))

    def check(self, pairs: Sequence[Pair]) -> bool:
        bn = self._bn
        acc = bn.FQ12.one()
        for p, q in pairs:
            if p is None or q is None:
                continue  # e(0, Q) = e(P, 0) = 1
            g1 = (bn.FQ(p[0]), bn.FQ(p[1]), bn.FQ.one())
            acc = acc * bn.pairing(self._q(q), g1, final_exponentiate=False)
        return bool(bn.final_exponentiate(acc) == bn.FQ12.one())


PairingBackend = MclPairing | ReferencePairing
_backends: Backends[PairingBackend] = Backends("pairing", {"mcl": MclPairing, "reference": ReferencePairing})


def backend(name: str | None = None) -> PairingBackend:
    """The pairing backend ``name`` ("mcl" or "reference"); None: mcl if it loads, else the reference."""
    return _backends.get(name)


def check(pairs: Sequence[Pair], *, backend_name: str | None = None) -> bool:
    """Whether ``prod_k e(P_k, Q_k)`` is the identity of GT."""
    return backend(backend_name).check(pairs)
