"""What an NFT's metadata document and image say about a repository, read once from its history.

``summarize`` is the only part of ``fednode.nft`` that reads the store; the document and the image
are pure functions of its ``RepoSummary``, so the same repository state gives the same bytes and
the same CIDs on any node. Nothing time-dependent is read (commit times, the node's clock).
"""

from __future__ import annotations

from dataclasses import dataclass

from fednode.history import History, RepoInfo
from protocol.multiformats import CID

# The metric charted when a repository records several: the first of these it has, else the
# alphabetically first name it has.
PREFERRED_METRICS = ("loss", "val_loss", "accuracy", "acc")
MAX_METRIC_ATTRIBUTES = 16  # latest metric values listed in a public document


@dataclass(frozen=True)
class RepoSummary:
    name: str  # the repository's name from its signed genesis settings (the same on every node)
    repo_id: bytes
    head: bytes  # the commit hash (protocol.objects.Commit.commit_hash) of the summarized head
    private: bool
    commits: int  # every commit reachable from the head (all parents, merge inputs included)
    contributors: int  # distinct authors among those commits (0 for a private repository)
    metric: str | None  # the charted metric (None for a private repository: no metrics leave it)
    series: tuple[float, ...]  # its values along the head's first-parent chain, oldest first
    latest: tuple[tuple[str, float], ...]  # each metric's newest value on that chain, by name


def summarize(history: History, repo: RepoInfo, branch: str, head: CID | None = None) -> RepoSummary:
    """The summary of ``repo`` at ``head`` (default: the head of ``branch``, NotFound if unknown).

    Counts cover all commits reachable from the head; the metric series follows first parents only,
    which is the branch's own line of rounds (a merge's other inputs are members' updates)."""
    if head is None:
        head = history.branch_head(repo, branch)
    else:
        history.check_in_repo(repo, head)
    commits = 0
    authors: set[bytes] = set()
    for _, commit in history.walk([head]):
        commits += 1
        authors.add(commit.author)
    head_commit = history.load_commit(head)
    chain = [head_commit.metrics]
    cursor = head_commit
    while cursor.parents:
        cursor = history.load_commit(cursor.parents[0])
        chain.append(cursor.metrics)
    chain.reverse()
    latest: dict[str, float] = {}
    for metrics in chain:
        latest.update(metrics)
    private = history.is_private(repo.repo_id)
    if private:  # what the chain does not show stays out of the summary itself, not only the outputs
        latest, authors = {}, set()
    metric = next((m for m in PREFERRED_METRICS if m in latest), min(latest, default=None))
    series = tuple(m[metric] for m in chain if metric in m) if metric else ()
    return RepoSummary(
        name=str(repo.settings.get("name", repo.name)), repo_id=repo.repo_id,
        head=head_commit.commit_hash(), private=private, commits=commits,
        contributors=len(authors), metric=metric, series=series,
        latest=tuple(sorted(latest.items()))[:MAX_METRIC_ATTRIBUTES],
    )
