"""Who may commit to a repository: its owner and the members it signed.

The owner is the genesis author until the repository is bound to an NFT; from then on it is the
NFT's holder as the chain last recorded it, which the daemon's ownership task keeps in the store
(``NetState.controller``): read here, never fetched from the chain (workflows do not use the chain).

Two lists say it: the membership the owner signs and the daemon gossips (validators accept commits
only from its members) and the on-chain allowlist (the program anchors only members' commits).
The rules here are checked before the daemon or the chain is asked to change anything: a push
from a non-member is refused before anything is published, only the owner changes the lists, and
a change applies to both lists or to neither. The store is read here, never written: the signed
list is published through the daemon (``publish`` below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fednode.errors import FednodeError
from protocol.multiformats import FormatError, b58decode, b58encode

if TYPE_CHECKING:
    from fednode.history import RepoInfo
    from fednode.node import Node


def owner(node: Node, repo: RepoInfo) -> bytes:
    """The repository owner's public key: the recorded holder of its NFT, else its genesis author."""
    from fednode.storage.netstate import NetState

    ctl = NetState(node.store).controller(repo.repo_id)
    return ctl.holder if ctl is not None else node.history.load_commit(repo.genesis).author


def owner_title(node: Node, repo: RepoInfo) -> str:
    """How errors name the owner: "the holder of its NFT" or "its genesis author"."""
    from fednode.storage.netstate import NetState

    return "the holder of its NFT" if NetState(node.store).controller(repo.repo_id) else "its genesis author"


def network_members(node: Node, repo_id: bytes) -> tuple[list[bytes], bool]:
    """(members besides the owner, public) of the latest signed membership this node holds;
    ([], False) when it holds none."""
    from fednode.storage.netstate import NetState

    msg = NetState(node.store).membership(repo_id)
    return (list(msg.members), bool(msg.public)) if msg else ([], False)


def check_member(node: Node, repo: RepoInfo) -> None:
    """Refuse when this node may not commit to ``repo``: it is neither the owner nor a member."""
    me, controller = node.identity.public_key, owner(node, repo)
    members, _ = network_members(node, repo.repo_id)
    if me != controller and me not in members:
        raise FednodeError(f"you are not a member of {repo.name}; ask the owner ({b58encode(controller)}): "
                           f"fednode members add {node.identity.address} -r {repo.name} "
                           f"(or offer your branch with 'fednode propose')")


def check_owner(node: Node, repo: RepoInfo) -> None:
    """Refuse when this node is not ``repo``'s owner: only the owner changes its members."""
    if owner(node, repo) != node.identity.public_key:
        raise FednodeError(f"only the repository owner ({owner_title(node, repo)}, "
                           f"{b58encode(owner(node, repo))}) changes its members")


def parse_addresses(texts: tuple[str, ...] | list[str]) -> list[bytes]:
    """Base58 wallet addresses as 32-byte public keys; the first invalid one is refused."""
    keys = []
    for text in texts:
        try:
            raw = b58decode(text)
        except FormatError:
            raw = b""
        if len(raw) != 32:
            raise FednodeError(f"invalid address {text!r}: expected a base58 wallet address")
        keys.append(raw)
    return keys


def changed_members(current: list[bytes], addresses: list[bytes], add: bool) -> list[bytes]:
    """The member list after adding (or removing) ``addresses``, sorted."""
    return sorted(set(current) | set(addresses)) if add else sorted(set(current) - set(addresses))


@dataclass(frozen=True)
class MemberChange:
    """What ``members add|remove`` is to do, every precondition checked."""

    add: bool
    addresses: list[bytes]  # as given, validated
    members: list[bytes]  # the network membership afterwards, sorted
    public: bool  # the network membership's public flag afterwards
    network_changes: bool  # whether the signed membership must be published again


def plan_change(node: Node, repo: RepoInfo, addresses: tuple[str, ...] | list[str], add: bool,
                public: bool | None) -> MemberChange:
    """Check that this node owns ``repo`` and the addresses are valid; what adding (or removing) them
    and setting ``public`` (None: unchanged) does to the network membership."""
    check_owner(node, repo)
    keys = parse_addresses(addresses)
    if node.identity.public_key in keys:
        raise FednodeError("the owner is implicitly a member: leave its address out")
    current, was_public = network_members(node, repo.repo_id)
    wanted = changed_members(current, keys, add)
    now_public = was_public if public is None else public
    inherited = not signed_by(node, repo.repo_id, node.identity.public_key)  # a new NFT holder signs its own
    return MemberChange(add, keys, wanted, now_public,
                        wanted != sorted(current) or now_public != was_public or inherited)


def signed_by(node: Node, repo_id: bytes, key: bytes) -> bool:
    """Whether the latest membership this node holds is ``key``'s (True when it holds none: nothing
    inherited). False after a sale, until the new holder has signed one of its own."""
    from fednode.storage.netstate import NetState

    msg = NetState(node.store).membership(repo_id)
    return msg is None or msg.announcer == key


def unchanged_text(change: MemberChange) -> str:
    return f"{len(change.addresses)} address(es) already {'members' if change.add else 'absent'}"
