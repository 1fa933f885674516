"""Git habits over the history's refs: moving a branch (reset, ``branch -f``) with a reflog,
short names for peers (``remote add``), and the merge proposals peers sent.

Every branch move is logged by the store itself (``Txn.set_ref``), whoever moves it: a commit,
a merge, a revert, the daemon fast-forwarding to an owner's head, a reset. This module only adds
the moves that rewrite where a branch points, and the names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from fednode.errors import FednodeError, NotFound
from fednode.history import REMOTE_PREFIXES, History, RepoInfo, check_name
from fednode.identity import peer_id_from_public_key
from protocol.multiformats import CID, FormatError, b58decode, b58encode

REMOTES_META = "remotes"  # meta key: JSON {name: peer id}
_REMOTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,39}$")
_ED25519_PEER_PREFIX = bytes([0x00, 36]) + b"\x08\x01\x12\x20"  # identity multihash of a libp2p Ed25519 key


# --- moving branches ------------------------------------------------------------------------------


def move_branch(history: History, repo: RepoInfo, branch: str, target: CID, reason: str,
                create: bool = False) -> CID | None:
    """Point ``branch`` at ``target`` (a commit of ``repo``); the old head goes to the reflog.
    Returns the old head (None when ``create`` made a new branch)."""
    check_name("branch", branch)
    history._check_in_repo(repo, target)
    with history.store.write() as txn:
        old = txn.get_ref(repo.repo_id, "heads/" + branch)
        if old is None and not create:
            raise NotFound(f"unknown branch {branch!r} in repository {repo.name}")
        txn.set_ref(repo.repo_id, "heads/" + branch, bytes(target), reason=reason)
    return CID.from_bytes(old) if old else None


def reflog(history: History, repo: RepoInfo, branch: str) -> list[dict]:
    """Moves of ``branch``, newest first (see ``Txn.reflog``)."""
    with history.store.read() as txn:
        entries = txn.reflog(repo.repo_id, branch)
        if not entries and txn.get_ref(repo.repo_id, "heads/" + branch) is None:
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
        raw = txn.get_meta(REMOTES_META)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(value, dict) else {}


def add_remote(history: History, name: str, peer: str) -> str:
    if not _REMOTE_NAME.match(name):
        raise FednodeError(f"invalid remote name {name!r}: a letter, then up to 39 letters, digits, '.', '_', '-'")
    peer_id = peer_id_of(peer)
    with history.store.write() as txn:
        raw = txn.get_meta(REMOTES_META)
        names = json.loads(raw) if raw else {}
        if name in names:
            raise FednodeError(f"remote {name!r} already exists (for {names[name]}); remove it first")
        taken = [n for n, p in names.items() if p == peer_id]
        if taken:
            raise FednodeError(f"peer {peer_id} is already named {taken[0]!r}")
        names[name] = peer_id
        txn.set_meta(REMOTES_META, json.dumps(names, sort_keys=True).encode())
    return peer_id


def remove_remote(history: History, name: str) -> str:
    with history.store.write() as txn:
        raw = txn.get_meta(REMOTES_META)
        names = json.loads(raw) if raw else {}
        if name not in names:
            raise NotFound(f"unknown remote {name!r} (see 'fednode remote list')")
        peer_id = names.pop(name)
        txn.set_meta(REMOTES_META, json.dumps(names, sort_keys=True).encode())
    return peer_id


def display_ref(ref: str, names: dict[str, str]) -> str:
    """``remotes/<peer id>/main`` as ``remotes/NAME/main`` when the peer has a name."""
    by_peer = {p: n for n, p in names.items()}
    for prefix in REMOTE_PREFIXES:
        if ref.startswith(prefix):
            peer, sep, rest = ref[len(prefix):].partition("/")
            if sep and peer in by_peer:
                return f"{prefix}{by_peer[peer]}/{rest}"
    return ref


def expand_ref(ref: str, names: dict[str, str]) -> str:
    """``remotes/NAME/main`` (or ``proposals/NAME/main``) as stored: with the peer id."""
    for prefix in REMOTE_PREFIXES:
        if ref.startswith(prefix):
            name, sep, rest = ref[len(prefix):].partition("/")
            if sep and name in names:
                return f"{prefix}{names[name]}/{rest}"
    return ref


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
    from protocol.messages import MergeProposal, decode

    names = remotes(history)
    signed: dict[tuple[str, str], MergeProposal] = {}
    with history.store.read() as txn:
        refs = txn.list_refs(repo.repo_id, "proposals/")
        for _, raw in txn.kv_items("net", b"prop/" + repo.repo_id):
            try:
                msg = decode(raw)
            except Exception:  # a damaged record: the ref still lists the proposal
                continue
            if isinstance(msg, MergeProposal):
                signed[(peer_id_from_public_key(msg.announcer), msg.branch)] = msg
    out = []
    for ref, raw in refs.items():
        peer, _, branch = ref[len("proposals/"):].partition("/")
        head = CID.from_bytes(raw)
        msg = signed.get((peer, branch))
        if msg is not None and msg.head == head:
            author, message, when = b58encode(msg.announcer), msg.message, msg.time_ms
        else:
            try:
                commit = history.load_commit(head)
                author, message, when = b58encode(commit.author), commit.message, commit.time_ms
            except FednodeError:
                author, message, when = "?", "(head commit not in the store)", 0
        out.append(Proposal(display_ref(ref, names), peer, author, branch, head, message, when))
    return sorted(out, key=lambda p: -p.time_ms)
