"""Review of a contributor's update before merging it, like reading a pull request.

Shows what merging REV into a branch would do: per-tensor delta norms and changed
fractions from the merge base, metrics before and after on the reviewer's own
held-out data (optional), and anomaly flags: NaN/Inf, and an update norm far above
the repository's history of update norms.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fednode import fixedpoint, strategies
from fednode.history import History, RepoInfo
from fednode.merging import compute_merge
from fednode.modelio import TensorInfo, write_safetensors
from fednode.operations import checkout, diff
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES

NORM_FACTOR = 10.0  # flag an update whose L2 norm exceeds this many times the history's median
MIN_HISTORY = 3


@dataclass
class Review:
    rev: CID
    target: CID
    base: CID
    tensors: list[dict] = field(default_factory=list)
    update_l2: float = 0.0
    history_median_l2: float | None = None
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "rev": str(self.rev), "target": str(self.target), "base": str(self.base),
            "tensors": self.tensors, "update_l2": self.update_l2, "history_median_l2": self.history_median_l2,
            "before": self.before, "after": self.after, "flags": self.flags,
        }


def update_norm(history: History, a: CID, b: CID) -> float:
    rows = diff(history, a, b)
    return math.sqrt(sum(r.l2**2 for r in rows if r.status == "changed" and math.isfinite(r.l2)))


def history_norms(history: History, head: CID, exclude: set[CID], limit: int = 50) -> list[float]:
    norms = []
    for cid, commit in history.walk([head]):
        if cid in exclude or commit.kind != "update" or not commit.parents:
            continue
        norms.append(update_norm(history, commit.parents[0], cid))
        if len(norms) >= limit:
            break
    return norms


def _save_state(state: dict[str, tuple[str, np.ndarray]], path: Path) -> None:
    items = [(TensorInfo(n, d, tuple(a.shape)), iter([memoryview(np.ascontiguousarray(a)).cast("B")]))
             for n, (d, a) in sorted(state.items())]
    with open(path, "wb") as fh:
        write_safetensors(fh, items)


def review(history: History, repo: RepoInfo, rev: CID, target: CID, eval_script: Path | None = None) -> Review:
    base = history.merge_base([target, rev]) or target
    result = Review(rev, target, base)
    if base == rev:
        result.flags.append("already merged: the target branch contains this commit")
    for row in diff(history, base, rev):
        result.tensors.append(row.to_json())
    state = history.state(rev)
    for name, (entry, arr) in state.items():
        if entry.dtype in FLOAT_DTYPES and not np.isfinite(fixedpoint.to_f64(arr, entry.dtype)).all():
            result.flags.append(f"NaN/Inf in tensor {name!r}: merge would be refused")
    result.update_l2 = update_norm(history, base, rev)
    past = history_norms(history, target, exclude={rev})
    if len(past) >= MIN_HISTORY:
        result.history_median_l2 = float(np.median(past))
        if result.history_median_l2 > 0 and result.update_l2 > NORM_FACTOR * result.history_median_l2:
            result.flags.append(
                f"update norm {result.update_l2:.4g} is {result.update_l2 / result.history_median_l2:.1f}x "
                f"the repository's median update norm {result.history_median_l2:.4g}"
            )
    if eval_script is not None and base != rev and not any("NaN" in f for f in result.flags):
        from fednode.training import evaluate_file

        work = Path(tempfile.mkdtemp(prefix="fednode-review-"))
        try:
            checkout(history, target, work / "before.safetensors")
            result.before = evaluate_file(eval_script, work / "before.safetensors")
            inputs = tuple(sorted({rev} | ({target} if target != base else set()), key=str))
            merged, _ = compute_merge(history, repo, base, inputs, tuple(1 for _ in inputs),
                                      strategies.create("fedavg"))
            _save_state(merged, work / "after.safetensors")
            result.after = evaluate_file(eval_script, work / "after.safetensors")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if "accuracy" in result.before and "accuracy" in result.after:
            drop = result.before["accuracy"] - result.after["accuracy"]
            if drop > 0.05:
                result.flags.append(f"held-out accuracy drops by {drop:.3f} after merging")
    return result
