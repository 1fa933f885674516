"""Git habits over the history's refs: moving a branch (reset, ``branch -f``) with a reflog,
short names for peers (``remote add``), and the merge proposals peers sent.

Every branch move is logged in the branch's reflog in the transaction that makes it
(``fednode.history.refstore.set_branch``), whoever moves it: a commit, a merge, a revert, the
daemon fast-forwarding to an owner's head, a reset. This module only adds the moves that rewrite
where a branch points, and the names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fednode.errors import FednodeError, NotFound
from fednode.history import History, RepoInfo, refs, refstore
from fednode.history.refs import display_ref, expand_ref
from fednode.identity import peer_id_from_public_key
from protocol.multiformats import CID, FormatError, b58decode, b58encode

__all__ = ["Proposal", "add_remote", "display_ref", "expand_ref", "move_branch", "named_remote_refs", "peer_id_of",
           "proposals", "reflog", "remotes", "remove_remote"]
_REMOTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,39}$")
_ED25519_PEER_PREFIX = bytes([0x00, 36]) + b"\x08\x01\x12\x20"  # identity multihash of a libp2p Ed25519 key


# --- moving branches ------------------------------------------------------------------------------


def move_branch(history: History, repo: RepoInfo, branch: str, target: CID, reason: str,
                create: bool = False) -> CID | None:
    """Point ``branch`` at ``target`` (a commit of ``repo``); the old head goes to the reflog.
    Returns the old head (None when ``create`` made a new branch)."""
    refs.check_name("branch", branch)
    history.check_in_repo(repo, target)
    with history.store.write() as txn:
        old = refstore.branch_head(txn, repo.repo_id, branch)
        if old is None and not create:
            raise NotFound(f"unknown branch {branch!r} in repository {repo.name}")
        refstore.set_branch(txn, repo.repo_id, branch, target, reason=reason)
    return old


def reflog(history: History, repo: RepoInfo, branch: str) -> list[dict]:
    """Moves of ``branch``, newest first (see ``Txn.reflog``)."""
    with history.store.read() as txn:
        entries = txn.reflog(repo.repo_id, branch)
        if not entries and refstore.branch_head(txn, repo.repo_id, branch) is None:
            raise NotFound(f"unknown branch {branch!r} in repository {repo.name} (and no reflog for it)")
    return entries


# --- remote names ---------------------------------------------------------------------------------


def peer_id_of(text: str) -> str:
    """A libp2p peer id (``12D3KooW...``) from a peer id or a wallet address (the same Ed25519 key)."""
    try:
        raw = b58decode(text)
    except FormatError:
        raw = b""
    if len(raw) == 32:
        return peer_id_from_public_key(raw)
    if len(raw) == 38 and raw.startswith(_ED25519_PEER_PREFIX):
        return b58encode(raw)
    raise FednodeError(f"{text[:80]!r} is not a peer id (12D3KooW...) or a wallet address")


def remotes(history: History) -> dict[str, str]:
    """Remote names: name -> peer id."""
    with history.store.read() as txn:
        return refstore.remote_names(txn)


def add_remote(history: History, name: str, peer: str) -> str:
    if not _REMOTE_NAME.match(name):
        raise FednodeError(f"invalid remote name {name!r}: a letter, then up to 39 letters, digits, '.', '_', '-'")
    peer_id = peer_id_of(peer)
    with history.store.write() as txn:
        names = refstore.remote_names(txn)
        if name in names:
            raise FednodeError(f"remote {name!r} already exists (for {names[name]}); remove it first")
        taken = [n for n, p in names.items() if p == peer_id]
        if taken:
            raise FednodeError(f"peer {peer_id} is already named {taken[0]!r}")
        names[name] = peer_id
        refstore.set_remote_names(txn, names)
    return peer_id


def remove_remote(history: History, name: str) -> str:
    with history.store.write() as txn:
        names = refstore.remote_names(txn)
        if name not in names:
            raise NotFound(f"unknown remote {name!r} (see 'fednode remote list')")
        peer_id = names.pop(name)
        refstore.set_remote_names(txn, names)
    return peer_id


def named_remote_refs(history: History, repo: RepoInfo) -> dict[str, CID]:
    names = remotes(history)
    return {display_ref(r, names): c for r, c in history.remote_refs(repo).items()}


# --- merge proposals ------------------------------------------------------------------------------


@dataclass
class Proposal:
    ref: str  # proposals/<peer or name>/<branch>
    peer: str
    author: str  # wallet address of the proposer
    branch: str
    head: CID
    message: str
    time_ms: int


def proposals(history: History, repo: RepoInfo) -> list[Proposal]:
    """The merge proposals peers sent for ``repo`` (refs ``proposals/<peer>/<branch>``), newest first,
    with the message and time of the signed proposal the daemon recorded (else the head commit's)."""
    # the daemon's records and message decoding: loaded only here (fast start)
    from fednode.storage.netstate import NetState
    from protocol.messages import MergeProposal, decode

    names = remotes(history)
    signed: dict[tuple[str, str], MergeProposal] = {}
    with history.store.read() as txn:
        proposed = refstore.named_refs(txn, repo.repo_id, refs.PROPOSALS)
    for raw in NetState(history.store).proposals(repo.repo_id):
        try:
            record = decode(raw)
        except Exception:  # a damaged record: the ref still lists the proposal
            continue
        if isinstance(record, MergeProposal):
            signed[(peer_id_from_public_key(record.announcer), record.branch)] = record
    out = []
    for name, head in proposed.items():
        peer, _, branch = name.partition("/")
        msg = signed.get((peer, branch))
        if msg is not None and msg.head == head:
            author, message, when = b58encode(msg.announcer), msg.message, msg.time_ms
        else:
            try:
                commit = history.load_commit(head)
                author, message, when = b58encode(commit.author), commit.message, commit.time_ms
            except FednodeError:
                author, message, when = "?", "(head commit not in the store)", 0
        out.append(Proposal(display_ref(refs.PROPOSALS + name, names), peer, author, branch, head, message, when))
    return sorted(out, key=lambda p: -p.time_ms)
