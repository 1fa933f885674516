"""Review of a contributor's update before merging it, like reading a pull request.

Shows what merging REV into a branch would do: per-tensor delta norms and changed
fractions from the merge base, metrics before and after on the reviewer's own
held-out data (optional), and anomaly flags: NaN/Inf, and an update L2 norm more
than ``NORM_FACTOR`` times (a) the median of the repository's past update norms
(with at least ``MIN_HISTORY`` of them), (b) the median norm of the other open
updates, i.e. branches, remote heads and proposals not yet in the target, each from
its own merge base with the target (with at least one), or (c) the base model's own
norm. (b) and (c) work on a new repository with no history: the first round's
poisoned update is flagged among its peers.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fednode import strategies
from fednode.history import History, RepoInfo
from fednode.history.states import tensor_bytes
from fednode.tensors import fixedpoint
from fednode.tensors.modelio import TensorInfo, write_safetensors
from fednode.workflows.checkout import checkout
from fednode.workflows.diff import diff
from fednode.workflows.merging import compute_merge
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES

NORM_FACTOR = 10.0  # flag an update whose L2 norm exceeds this many times a reference norm
MIN_HISTORY = 3
MAX_PEERS = 20  # each peer costs one diff against its merge base (two states read)


@dataclass
class Review:
    rev: CID
    target: CID
    base: CID
    tensors: list[dict] = field(default_factory=list)
    update_l2: float = 0.0
    history_median_l2: float | None = None
    peer_median_l2: float | None = None
    peers: int = 0
    base_l2: float = 0.0
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "rev": str(self.rev), "target": str(self.target), "base": str(self.base),
            "tensors": self.tensors, "update_l2": self.update_l2, "history_median_l2": self.history_median_l2,
            "peer_median_l2": self.peer_median_l2, "peers": self.peers, "base_l2": self.base_l2,
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


def float_norm(history: History, cid: CID) -> float:
    """L2 norm of a commit's float tensors (finite values): the model's scale; integer tensors such
    as step counters are left out, they are no weights."""
    total = 0.0
    for entry, arr in history.state(cid).values():
        if entry.dtype in FLOAT_DTYPES:
            x = fixedpoint.to_f64(arr, entry.dtype)
            x = x[np.isfinite(x)]
            total += float(np.dot(x, x))
    return math.sqrt(total)


def peer_norms(history: History, repo: RepoInfo, rev: CID, target: CID, base: CID) -> list[float]:
    """Update norms of the other open updates: branch, remote and proposal heads not contained in
    ``target`` and not on ``rev``'s own line, each from its merge base with ``target``; plus the
    target's own update when it moved past ``base`` (it is an input of the same merge)."""
    heads = {*history.branches(repo).values(), *history.remote_refs(repo).values()}
    norms = [update_norm(history, base, target)] if target != base else []
    for cid in sorted(heads - {rev, target}, key=str):
        if len(norms) >= MAX_PEERS:
            break
        if history.is_ancestor(cid, target) or history.is_ancestor(cid, rev) or history.is_ancestor(rev, cid):
            continue
        peer_base = history.merge_base([target, cid])
        if peer_base is not None:
            norms.append(update_norm(history, peer_base, cid))
    return [n for n in norms if math.isfinite(n)]


def _norm_flag(update: float, reference: float | None, what: str) -> str | None:
    if reference is None or reference <= 0 or not update > NORM_FACTOR * reference:
        return None
    return f"update norm {update:.4g} is {update / reference:.1f}x {what} {reference:.4g}"


def _save_state(state: dict[str, tuple[str, np.ndarray]], path: Path) -> None:
    items: list[tuple[TensorInfo, Iterator[bytes | memoryview]]] = [
        (TensorInfo(n, d, tuple(a.shape)), iter([tensor_bytes(np.ascontiguousarray(a))]))
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
    peers = peer_norms(history, repo, rev, target, base)
    result.peers = len(peers)
    if peers:
        result.peer_median_l2 = float(np.median(peers))
    result.base_l2 = float_norm(history, base)
    floats = {name for name, (entry, _) in state.items() if entry.dtype in FLOAT_DTYPES}
    float_l2 = math.sqrt(sum(t["l2"] ** 2 for t in result.tensors
                             if t["name"] in floats and t["status"] == "changed" and math.isfinite(t["l2"])))
    for update, reference, what in (
        (result.update_l2, result.history_median_l2, "the repository's median update norm"),
        (result.update_l2, result.peer_median_l2, f"the median norm of {len(peers)} other open update(s)"),
        (float_l2, result.base_l2, "the base model's norm (float tensors)"),
    ):
        flag = _norm_flag(update, reference, what)
        if flag is not None:
            result.flags.append(flag)
    if eval_script is not None and base != rev and not any("NaN" in f for f in result.flags):
        from fednode.workflows.training import evaluate_file

        work = Path(tempfile.mkdtemp(prefix="fednode-review-"))
        try:
            checkout(history, target, work / "before.safetensors")
            result.before = evaluate_file(eval_script, work / "before.safetensors")
            inputs = tuple(sorted({rev} | ({target} if target != base else set()), key=str))
            merged, _ = compute_merge(history, repo, base, inputs, tuple(1 for _ in inputs),
                                      strategies.create("fedavg"), grid={})  # the grid a merge would choose
            _save_state(merged, work / "after.safetensors")
            result.after = evaluate_file(eval_script, work / "after.safetensors")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if "accuracy" in result.before and "accuracy" in result.after:
            drop = result.before["accuracy"] - result.after["accuracy"]
            if drop > 0.05:
                result.flags.append(f"held-out accuracy drops by {drop:.3f} after merging")
    return result
