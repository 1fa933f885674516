"""``revert``: a new commit that restores an earlier state (history is never rewritten)."""

from __future__ import annotations

from fednode.history import CommitResult, History, RepoInfo
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import CID


def revert(history: History, repo: RepoInfo, target: CID, branch: str | None = None) -> CommitResult:
    """A new commit on ``branch`` whose state equals ``target``'s; history is never rewritten."""
    state = history.state(target)
    source = ArraySource({n: (e.dtype, arr.reshape(e.shape)) for n, (e, arr) in state.items()})
    return history.commit(
        repo,
        source,
        message=f"revert to {target}",
        branch=branch,
        kind="revert",
        info={"revert": {"target": target}},
        exact=True,
    )
