"""The ref layout: the one place that knows how refs are named in the store.

A repository's refs, like git's, are names pointing at commits (or, for ``HEAD``, at a branch):

- ``heads/<branch>``: local branches; ``HEAD`` holds the current branch's name.
- ``tags/<tag>``: tags.
- ``remotes/<peer id>/<branch>``: heads other peers announced that we hold but did not take.
- ``proposals/<peer id>/<branch>``: merge proposals peers sent.

Everything else (the history, the workflows, the daemon) builds and parses ref names through
these functions and never spells a prefix itself. Pure: no store, no history
(``refstore`` reads and writes them in a store transaction).
"""

from __future__ import annotations

import re

from fednode.errors import FednodeError

HEAD = "HEAD"
BRANCHES = "heads/"
TAGS = "tags/"
REMOTES = "remotes/"
PROPOSALS = "proposals/"
PEER_PREFIXES = (REMOTES, PROPOSALS)  # refs named after a peer: <prefix><peer>/<branch>
DEFAULT_BRANCH = "main"  # the branch a new repository starts with, HEAD on it
GENESIS = "genesis"  # a repository's first commit (its id is that commit's hash)
PUBLISHED = "published"  # the owner's signed commit that made a private repository public (absent: never)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid ``kind`` (branch, tag, repository) name, else FednodeError."""
    if not _NAME.match(name) or ".." in name or name.endswith("/") or name.endswith(".lock"):
        raise FednodeError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '-', '/'")
    return name


def branch(name: str) -> str:
    """The ref of local branch ``name``."""
    return BRANCHES + name


def tag(name: str) -> str:
    """The ref of tag ``name``."""
    return TAGS + name


def remote(peer: str, branch_name: str) -> str:
    """The ref of ``peer``'s announced head of ``branch_name``."""
    return f"{REMOTES}{peer}/{branch_name}"


def proposal(peer: str, branch_name: str) -> str:
    """The ref of ``peer``'s merge proposal of its ``branch_name``."""
    return f"{PROPOSALS}{peer}/{branch_name}"


def branch_name(ref: str) -> str | None:
    """``name`` for ``heads/name``; None for any other ref."""
    return ref[len(BRANCHES):] if ref.startswith(BRANCHES) else None


def is_peer_ref(ref: str) -> bool:
    """Whether ``ref`` names a peer's head or proposal (``remotes/...`` or ``proposals/...``)."""
    return ref.startswith(PEER_PREFIXES)


def split_peer_ref(ref: str) -> tuple[str, str, str] | None:
    """(prefix, peer, branch) of ``remotes/<peer>/<branch>`` or ``proposals/<peer>/<branch>``; None otherwise."""
    for prefix in PEER_PREFIXES:
        if ref.startswith(prefix):
            peer, sep, rest = ref[len(prefix):].partition("/")
            return (prefix, peer, rest) if sep and peer and rest else None
    return None


def display_ref(ref: str, names: dict[str, str]) -> str:
    """``remotes/<peer id>/main`` as ``remotes/NAME/main`` when ``names`` (name -> peer id) names the peer."""
    by_peer = {p: n for n, p in names.items()}
    for prefix in PEER_PREFIXES:
        if ref.startswith(prefix):
            peer, sep, rest = ref[len(prefix):].partition("/")
            if sep and peer in by_peer:
                return f"{prefix}{by_peer[peer]}/{rest}"
    return ref


def expand_ref(ref: str, names: dict[str, str]) -> str:
    """``remotes/NAME/main`` (or ``proposals/NAME/main``) as stored: with the peer id ``names`` gives NAME."""
    for prefix in PEER_PREFIXES:
        if ref.startswith(prefix):
            name, sep, rest = ref[len(prefix):].partition("/")
            if sep and name in names:
                return f"{prefix}{names[name]}/{rest}"
    return ref
