"""Revisions: ``[REPO:]BASE[~N|^N]...`` to a repository and a commit, as git reads them.

BASE is ``HEAD``, a branch, ``BRANCH@{N}`` (its reflog), a tag, a peer's ref (``remotes/...``,
``proposals/...``, the peer by id or remote name), a commit CID or a unique CID prefix."""

from __future__ import annotations

import re

from fednode.errors import NotFound
from fednode.history import objstore, refs, refstore
from fednode.history.repos import RepoInfo, find_repo, repo_id_text
from fednode.storage.store import Txn
from protocol.multiformats import CID, FormatError

_REV = re.compile(r"^(?P<base>[^~^]+)(?P<ops>(?:[~^][0-9]*)*)$")
_REFLOG = re.compile(r"(?P<branch>.*)@\{(?P<n>[0-9]+)\}")
_OPS = re.compile(r"([~^])([0-9]*)")
MIN_PREFIX = 4  # characters a CID prefix needs
_PREFIX_SCAN = 100_000  # commits a prefix look-up reads at most


def resolve(txn: Txn, rev: str, repo: RepoInfo | None = None) -> tuple[RepoInfo, CID]:
    """The repository and commit ``rev`` names (in ``repo`` unless it names its own); NotFound otherwise."""
    if ":" in rev:
        repo_name, rev = rev.split(":", 1)
        repo = find_repo(txn, repo_name)
    match = _REV.match(rev.strip())
    if not match:
        raise NotFound(f"unknown revision {rev!r}")
    base = match["base"]
    if repo is not None:
        base = _expand(txn, repo, base)
        cid = refstore.named_ref(txn, repo.repo_id, base)
        if cid is not None:
            return repo, _ancestor(txn, rev, cid, match["ops"])
    cid, repo = _commit(txn, base, repo)
    return repo, _ancestor(txn, rev, cid, match["ops"])


def _expand(txn: Txn, repo: RepoInfo, base: str) -> str:
    """``HEAD`` as its branch, ``BRANCH@{N}`` as the commit CID the reflog names; others unchanged."""
    if base == refs.HEAD:
        base = refstore.current_branch(txn, repo.repo_id)
    moved = _REFLOG.fullmatch(base)
    return _reflog_entry(txn, repo, base, moved["branch"], int(moved["n"])) if moved else base


def _reflog_entry(txn: Txn, repo: RepoInfo, base: str, branch: str, n: int) -> str:
    """``BRANCH@{N}``: where the N-th newest move of ``branch`` (HEAD's branch when empty) took it."""
    if branch in ("", refs.HEAD):
        branch = refstore.current_branch(txn, repo.repo_id)
    moves = txn.reflog(repo.repo_id, branch)
    if n >= len(moves) or moves[n]["new"] is None:
        raise NotFound(f"unknown revision {base!r}: the reflog of {branch!r} has {len(moves)} entries")
    return str(moves[n]["new"])


def _commit(txn: Txn, text: str, repo: RepoInfo | None) -> tuple[CID, RepoInfo]:
    """A commit named by its CID or a prefix of it, and its repository (which must be ``repo`` when given)."""
    cid, repo_id = commit_by_cid(txn, text, repo)
    if repo is not None and repo.repo_id != repo_id:
        raise NotFound(f"commit {text} is not in repository {repo.name}")
    return cid, repo or find_repo(txn, repo_id_text(repo_id))


def commit_by_cid(txn: Txn, text: str, repo: RepoInfo | None = None) -> tuple[CID, bytes]:
    """A full commit CID, or a prefix of 4+ characters that names one commit (of ``repo`` when
    given); a prefix that names several is ambiguous, and the error says so."""
    try:
        cid = CID.parse(text)
    except FormatError:
        cid = None
    if cid is not None:
        repo_id = txn.commit_repo(cid)
        if repo_id is None or not txn.has_block(cid):  # gc keeps index entries
            raise NotFound(f"unknown revision {text!r}")
        return cid, repo_id
    if len(text) >= MIN_PREFIX and text.startswith("b"):
        found = [(c, r) for c, r in txn.commits_with_prefix(text, limit=_PREFIX_SCAN)
                 if (repo is None or r == repo.repo_id) and txn.has_block(CID.parse(c))]
        if len(found) == 1:
            return CID.parse(found[0][0]), found[0][1]
        if len(found) > 1:
            shown = ", ".join(c[:20] for c, _ in found[:3]) + (", ..." if len(found) > 3 else "")
            raise NotFound(f"ambiguous revision {text!r}: {len(found)} commits start with it "
                           f"({shown}); give more characters")
    raise NotFound(f"unknown revision {text!r}")


def _ancestor(txn: Txn, rev: str, cid: CID, ops: str) -> CID:
    """Follow ``~N`` (N first parents back) and ``^N`` (the N-th parent; ``^0`` the commit itself)."""
    for op, count in _OPS.findall(ops):
        n = int(count) if count else 1
        if op == "~":
            for _ in range(n):
                parents = objstore.load_commit(txn, cid).parents
                if not parents:
                    raise NotFound(f"revision {rev!r} goes past the genesis commit")
                cid = parents[0]
        elif n:
            parents = objstore.load_commit(txn, cid).parents
            if n > len(parents):
                raise NotFound(f"revision {rev!r}: commit has {len(parents)} parent(s)")
            cid = parents[n - 1]
    return cid
