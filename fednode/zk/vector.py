"""One commitment to a commit's whole update: the tensors' integer deltas as one concatenated vector.

The vector is the concatenation, in the order given (a manifest's sorted tensor names), of each
tensor's deltas flattened row-major; tensor ``t`` uses generators ``G_{off_t} .. G_{off_t + n_t - 1}``
with ``off_t`` the sum of the earlier sizes (docs/zk.md, "Commitments on commits"). Nothing is
concatenated in memory: each tensor is one MSM over its slice of the generator table, and the
partial points are added.

Pure: generators come from the backend's in-process table; a caller that keeps a table on disk
passes ``prepare``, called with the total size before the table is read, to fill it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fednode.zk import generators as gens
from fednode.zk import pedersen
from fednode.zk.curve import R, ZkError, encode

Prepare = Callable[[int], None]  # makes G_0 .. G_{n-1} of the default seed cheap to read (a disk cache)


def total_size(deltas: Sequence[np.ndarray]) -> int:
    return sum(int(np.asarray(d).size) for d in deltas)


def commit_tensors(deltas: Sequence[np.ndarray], blinding: int = 0, *, prepare: Prepare | None = None,
                   seed: bytes = gens.DEFAULT_SEED, backend_name: str | None = None) -> bytes:
    """``C(v; blinding)`` over the concatenation ``v`` of ``deltas`` (integer arrays), 64 bytes."""
    for d in deltas:
        if not isinstance(d, np.ndarray) or d.dtype.kind not in "iuO":
            raise ZkError("tensor deltas are integer numpy arrays")
    n = total_size(deltas)
    if prepare is not None:
        prepare(n)
    be = pedersen.backend(backend_name)
    table = be.generators(n, seed)
    partial = []
    off = 0
    for d in deltas:
        flat = d.reshape(-1)
        if flat.size and np.any(flat):
            partial.append(be.msm(table[off:off + flat.size], flat))
        off += flat.size
    points = [p for p in partial if p is not None]
    scalars = [1] * len(points)
    if blinding % R:
        points.append(gens.blinding_generator(seed))
        scalars.append(blinding % R)
    if not points:
        return encode(None)
    if len(points) == 1 and scalars[0] == 1:
        return encode(points[0])
    return encode(be.msm(be.points(points), scalars))
