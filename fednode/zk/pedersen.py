"""Pedersen vector commitments over BN254 G1: ``C(v; b) = sum_i v_i G_i + b H``, 64 bytes.

``v`` is a vector of integers (a delta on the merge grid: int64, typically 16 bits or so); each
value is taken mod R, so ``-v`` commits as ``R - v`` and the commitment is additively homomorphic
over the integers as long as no sum wraps mod R (|values| far below 2^253):
``C(a) + C(b) = C(a + b)`` and ``k C(a) = C(k a)``. The generators ``G_i`` and ``H`` come from
``fednode.zk.generators`` (hash-to-curve from a public seed, no trusted setup), so the commitment
is computationally binding under the discrete logarithm assumption in G1; with a uniformly random
blinding ``b`` it is perfectly hiding, with ``b = 0`` (the default) it hides nothing that a guess
of ``v`` cannot confirm.

Encoding: ``fednode.zk.curve`` (64-byte big-endian ``x || y``, infinity as 64 zero bytes), the
form ``protocol/chain.py`` carries and the program's ``alt_bn128`` syscalls check.

Backends: one small interface, ``MsmBackend``; ``mcl`` (native, PyPI ``mclbn256``) and
``reference`` (``py_ecc.optimized_bn128``: about 5 ms a point, for cross-checks on short
vectors). ``backend()`` is mcl when it loads, else the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fednode.zk import generators as gens
from fednode.zk.curve import INFINITY, Affine, P, R, ZkError, decode, encode
from fednode.zk.registry import Backends

Values = Sequence[int] | np.ndarray
INT64_MIN = -(1 << 63)


class MsmBackend(Protocol):
    """Multi-scalar multiplication over BN254 G1 in some native point form."""

    name: str

    def points(self, affine: Sequence[Affine | None]) -> Any:
        """Affine points (None: infinity) in this backend's form."""
        ...

    def generators(self, n: int, seed: bytes) -> Any:
        """``G_0 .. G_{n-1}`` for ``seed`` in this backend's form (cached)."""
        ...

    def msm(self, points: Any, scalars: Values) -> Affine | None:
        """``sum_i scalars[i] * points[i]`` (integers taken mod R) as an affine point, None for infinity."""
        ...


class MclBackend:
    """PyPI ``mclbn256`` (curve id 4), see ``fednode.zk.mcl``."""

    name = "mcl"

    def __init__(self, threads: int | None = None) -> None:
        from fednode.zk import mcl

        mcl._lib()  # ZkError now if the library is missing
        self._mcl = mcl
        self.threads = threads or mcl.THREADS

    def points(self, affine: Sequence[Affine | None]) -> Any:
        return self._mcl.to_native(affine)

    def generators(self, n: int, seed: bytes) -> Any:
        return self._mcl.generator_table(n, seed)

    def msm(self, points: Any, scalars: Values) -> Affine | None:
        mcl = self._mcl
        if len(points) != len(scalars):
            raise ZkError(f"{len(scalars)} scalars for {len(points)} points")
        ints = _int_array(scalars)
        if ints is not None:
            return mcl.from_native(mcl.msm_ints(points, ints, self.threads))
        return mcl.from_native(mcl.msm_wide(points, [int(v) for v in scalars], self.threads))


class ReferenceBackend:
    """``py_ecc.optimized_bn128``: double-and-add per point, about 5 ms each. For cross-checks."""

    name = "reference"

    def __init__(self) -> None:
        from py_ecc import optimized_bn128 as bn

        self._bn = bn

    def points(self, affine: Sequence[Affine | None]) -> Any:
        bn = self._bn
        return [bn.Z1 if p is None else (bn.FQ(p[0]), bn.FQ(p[1]), bn.FQ.one()) for p in affine]

    def generators(self, n: int, seed: bytes) -> Any:
        return self.points(gens.generators(n, seed))

    def msm(self, points: Any, scalars: Values) -> Affine | None:
        bn = self._bn
        if len(points) != len(scalars):
            raise ZkError(f"{len(scalars)} scalars for {len(points)} points")
        acc = bn.Z1
        for point, value in zip(points, scalars, strict=True):
            k = int(value) % R
            if k:
                acc = bn.add(acc, bn.multiply(point, k))
        if bn.is_inf(acc):
            return None
        x, y = bn.normalize(acc)
        return int(x), int(y)


_backends: Backends[MsmBackend] = Backends("MSM", {"mcl": MclBackend, "reference": ReferenceBackend})


def backend(name: str | None = None) -> MsmBackend:
    """The backend ``name`` ("mcl" or "reference"); None: mcl if it loads, else the reference."""
    return _backends.get(name)


def _int_array(values: Values) -> np.ndarray | None:
    """A flat int64/uint64 view of ``values`` when they all fit one (the fast path), else None."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iu" or values.dtype.itemsize > 8:
            if values.dtype.kind == "O":
                return None
            raise ZkError(f"commitments are to integers, got dtype {values.dtype}")
        flat = values.reshape(-1)
        if flat.dtype.kind == "i" and flat.size and int(flat.min()) == INT64_MIN:
            return None  # -2^63 has no int64 magnitude
        return flat
    try:
        arr = np.asarray(values, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        return None
    if arr.ndim != 1 or (arr.size and int(arr.min()) == INT64_MIN):
        return None
    return arr


def _check_values(values: Values) -> int:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ZkError("commit to a sequence or numpy array of integers")
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuO":
            raise ZkError(f"commitments are to integers, got dtype {values.dtype}")
        if values.dtype.kind != "O":
            return int(values.size)
    for v in values.reshape(-1) if isinstance(values, np.ndarray) else values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ZkError(f"commitments are to integers, got {v!r}")
    return len(values)


def commit(values: Values, blinding: int = 0, *, seed: bytes = gens.DEFAULT_SEED,
           backend_name: str | None = None) -> bytes:
    """``C(values; blinding) = sum_i values[i] G_i + blinding H`` as 64 bytes (values taken mod R)."""
    n = _check_values(values)
    be = backend(backend_name)
    flat = values.reshape(-1) if isinstance(values, np.ndarray) else values
    point = be.msm(be.generators(n, seed), flat)
    if blinding % R:
        point = be.msm(be.points([point, gens.blinding_generator(seed)]), [1, blinding])
    return encode(point)


def combine(points: Sequence[bytes], scalars: Sequence[int], *, backend_name: str | None = None) -> bytes:
    """``sum_k scalars[k] * points[k]`` over encoded points (each checked), encoded."""
    if len(points) != len(scalars):
        raise ZkError(f"{len(scalars)} scalars for {len(points)} points")
    decoded = [decode(p) for p in points]
    be = backend(backend_name)
    return encode(be.msm(be.points(decoded), [int(s) for s in scalars]))


def add(a: bytes, b: bytes, *, backend_name: str | None = None) -> bytes:
    """``a + b`` for encoded points."""
    return combine([a, b], [1, 1], backend_name=backend_name)


def scale(a: bytes, k: int, *, backend_name: str | None = None) -> bytes:
    """``k * a`` for an encoded point and an integer (mod R; negative allowed)."""
    return combine([a], [k], backend_name=backend_name)


def negate(a: bytes) -> bytes:
    """``-a`` (no group operation: ``(x, P - y)``)."""
    point = decode(a)
    if point is None:
        return INFINITY
    return encode((point[0], (P - point[1]) % P))


def equal(a: bytes, b: bytes) -> bool:
    """Whether two encodings are the same point (both checked: a malformed one raises ``ZkError``)."""
    return decode(a) == decode(b)
