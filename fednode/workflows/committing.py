"""Committing a model on a branch: the checks before a commit, and train-then-commit."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fednode.errors import FednodeError
from fednode.history import CommitResult, History, RepoInfo
from fednode.history.states import state_cid
from fednode.tensors.modelio import ModelSource, SafetensorsFile
from fednode.workflows.checkout import checkout
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES

if TYPE_CHECKING:  # the training engine (subprocess, the user's script) loads only when train runs: fast start
    from fednode.workflows.training import DPConfig, TrainResult


class NothingToCommit(FednodeError):
    """A commit whose model equals the branch head: nothing is stored."""


def check_commit_source(history: History, head: CID, source: ModelSource) -> None:
    """Before committing ``source`` on a branch at ``head``: a float dtype that differs from the
    parent's is refused with the --cast that converts it, and a model identical to the head (every
    tensor's bytes the same) is "nothing to commit" (NothingToCommit). Stops at the first
    changed tensor."""
    with history.store.read() as txn:
        manifest = history.load_manifest(history.load_commit(head, txn).weights, txn)
    for name, info in source.tensors.items():
        old = manifest.tensors.get(name)
        if old is not None and old.dtype != info.dtype and old.shape == info.shape \
                and old.dtype in FLOAT_DTYPES and info.dtype in FLOAT_DTYPES:
            raise FednodeError(f"tensor {name!r} is {info.dtype} but the parent has {old.dtype}: "
                               f"pass --cast {old.dtype} to convert it")
    if set(manifest.tensors) != set(source.tensors):
        return  # History.commit names the missing and unexpected tensors
    # smallest first: an update that changes anything usually changes a bias or a norm, so a real
    # commit costs little here, even a fine-tune of a small head on a frozen backbone
    for name, info in sorted(source.tensors.items(), key=lambda kv: kv[1].nbytes):
        old = manifest.tensors[name]
        if (old.dtype, old.shape) != (info.dtype, info.shape):
            return
        if state_cid(source.array(name)) != old.state:
            return
    raise NothingToCommit(f"nothing to commit: the model is identical to {head}")


def train(
    history: History,
    repo: RepoInfo,
    script: Path,
    branch: str | None = None,
    epochs: int = 1,
    seed: int = 0,
    dp: DPConfig | None = None,
    quiet: bool = False,
    message: str | None = None,
    encoding_options: dict[str, Any] | None = None,
) -> tuple[CommitResult, TrainResult]:
    """Train locally from the branch head and commit the result as an update on that branch."""
    from fednode.workflows import zkpolicy  # numpy and the zk stack: only when training
    from fednode.workflows.training import run_training

    branch = branch or history.current_branch(repo)
    head = history.branch_head(repo, branch)
    work = Path(tempfile.mkdtemp(prefix="fednode-train-"))
    try:
        head_file = work / "head.safetensors"
        checkout(history, head, head_file)
        result = run_training(script, head_file, epochs, seed, dp, quiet, work)
        try:
            source = SafetensorsFile(result.weights)
        except FednodeError as exc:  # an executable wrote something else to OUT
            raise FednodeError(f"training script {script.name} wrote unreadable weights: {exc}") from None
        try:
            info = {"training": result.training_info()}
            metrics = {k: float(v) for k, v in result.metrics.items()}
            text = message or f"train {script.name}: {epochs} epoch(s) on {result.samples} samples"
            # a repository that requires proofs commits on its grid: the trained weights are rounded onto it
            rounded = zkpolicy.round_onto_grid(history, repo, head, source)
            commit = history.commit(repo, rounded, text, branch=branch, metrics=metrics, info=info,
                                    expected_head=head, **(encoding_options or {}))
        finally:
            source.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return commit, result
