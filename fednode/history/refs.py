"""The ref layout: the one place that knows how refs are named in the store.

A repository's refs, like git's, are names pointing at commits (or, for ``HEAD``, at a branch):

- ``heads/<branch>``: local branches; ``HEAD`` holds the current branch's name.
- ``tags/<tag>``: tags.
- ``remotes/<peer id>/<branch>``: heads other peers announced that we hold but did not take.
- ``proposals/<peer id>/<branch>``: merge proposals peers sent.

Everything else (the history, the workflows, the daemon) builds and parses ref names through
these functions and never spells a prefix itself. Pure: no store, no history.
"""

from __future__ import annotations

HEAD = "HEAD"
BRANCHES = "heads/"
TAGS = "tags/"
REMOTES = "remotes/"
PROPOSALS = "proposals/"
PEER_PREFIXES = (REMOTES, PROPOSALS)  # refs named after a peer: <prefix><peer>/<branch>


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
