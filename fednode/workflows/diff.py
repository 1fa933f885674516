"""``diff``: how much each tensor changed between two commits, or a commit and a model file."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fednode.history import History
from fednode.lazy import lazy_import
from fednode.tensors import fixedpoint
from fednode.tensors.modelio import ModelSource
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")


@dataclass
class TensorDiff:
    name: str
    status: str  # changed | same | added | removed
    l2: float = 0.0
    relative: float = 0.0
    changed_fraction: float = 0.0
    numel: int = 0

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _as_f64(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype in FLOAT_DTYPES:
        return fixedpoint.to_f64(arr, dtype)
    return arr.astype(np.float64)


def diff(history: History, a: CID, b: CID) -> list[TensorDiff]:
    with history.store.read() as txn:
        ma = history.load_manifest(history.load_commit(a, txn).weights, txn)
        mb = history.load_manifest(history.load_commit(b, txn).weights, txn)
    return _diff(
        {n: (e.dtype, e.shape) for n, e in ma.tensors.items()},
        {n: (e.dtype, e.shape) for n, e in mb.tensors.items()},
        lambda name: ma.tensors[name].state == mb.tensors[name].state,
        lambda name: history.tensor_array(a, name),
        lambda name: history.tensor_array(b, name),
    )


def diff_file(history: History, a: CID, source: ModelSource) -> list[TensorDiff]:
    """Commit ``a`` against a model on disk (``diff REV --file PATH``): what changed from ``a`` to the file."""
    with history.store.read() as txn:
        ma = history.load_manifest(history.load_commit(a, txn).weights, txn)
    return _diff(
        {n: (e.dtype, e.shape) for n, e in ma.tensors.items()},
        {n: (t.dtype, t.shape) for n, t in source.tensors.items()},
        lambda name: False,
        lambda name: history.tensor_array(a, name),
        source.array,
    )


def _diff(ta: dict[str, tuple[str, tuple[int, ...]]], tb: dict[str, tuple[str, tuple[int, ...]]],
          same_state: Callable[[str], bool], array_a: Callable[[str], np.ndarray],
          array_b: Callable[[str], np.ndarray]) -> list[TensorDiff]:
    out = []
    for name in sorted(set(ta) | set(tb)):
        if name not in tb:
            out.append(TensorDiff(name, "removed", numel=math.prod(ta[name][1])))
            continue
        if name not in ta:
            out.append(TensorDiff(name, "added", numel=math.prod(tb[name][1])))
            continue
        (da, shape), (db, shape_b) = ta[name], tb[name]
        numel = math.prod(shape_b)
        if (da, shape) != (db, shape_b):
            out.append(TensorDiff(name, "changed", float("nan"), float("nan"), 1.0, numel))
            continue
        if same_state(name):
            out.append(TensorDiff(name, "same", numel=numel))
            continue
        xa = _as_f64(array_a(name), da)
        xb = _as_f64(array_b(name), db)
        changed = xa != xb
        if not changed.any():
            out.append(TensorDiff(name, "same", numel=numel))
            continue
        l2 = float(np.linalg.norm(xb - xa))
        base = float(np.linalg.norm(xa))
        rel = l2 / base if base else float("inf")
        out.append(TensorDiff(name, "changed", l2, rel, float(changed.mean()), numel))
    return out
