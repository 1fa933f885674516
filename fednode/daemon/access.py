"""Read access: which peer may be served which block, and which repository's heads.

The rule (``may_read``): peer P may be served block B iff some repository holding B (the store's
block index, ``Txn.block_repos``) is public, or is private with P among its members (the owner: the
holder of its NFT once it is bound, else the genesis author; and the members of the latest signed
Membership accepted from whoever controlled it then: ``validate.py``), or B is
content of no repository (tagged ``PUBLIC``: ``ipfs add``/``get``). A block the index does not
know is served to nobody (fail closed). P's Ed25519 key is read off its peer id; a peer id of
another key type (Kubo's RSA, say) is no member. A refused block is answered as a block we do not
hold, so a non-member cannot even learn that we hold it.

``Reader`` applies it for one request (a want list, a bitswap message): each repository's
visibility and members are read once per request, then each block costs one index read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from libp2p.peer.id import ID

from fednode.history import repos
from fednode.storage.netstate import NetState
from fednode.storage.store import PUBLIC, Store
from protocol.multiformats import CID

# a peer id that embeds an Ed25519 key: identity multihash (0x00, 36 bytes) of the libp2p
# PublicKey protobuf {Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PEER_PREFIX = b"\x00\x24\x08\x01\x12\x20"
PRIVATE_HINT = "only its members can read it; ask its owner to run 'fednode members add {address}'"


def peer_key(peer: ID | bytes) -> bytes | None:
    """The Ed25519 public key a peer id embeds; None for any other kind of peer id."""
    raw = peer if isinstance(peer, bytes) else peer.to_bytes()
    if len(raw) == len(_ED25519_PEER_PREFIX) + 32 and raw.startswith(_ED25519_PEER_PREFIX):
        return raw[len(_ED25519_PEER_PREFIX):]
    return None


def may_read(holders: Iterable[bytes], key: bytes | None, visibility: Callable[[bytes], str | None],
             members: Callable[[bytes], frozenset[bytes]]) -> bool:
    """Whether a peer with Ed25519 key ``key`` (None: not an Ed25519 peer) may read a block held by
    ``holders`` (repository ids, ``PUBLIC``). Pure: ``visibility`` and ``members`` answer per repository
    ("public", "private", or None for one this node does not hold: no access through it)."""
    for repo_id in holders:
        if repo_id == PUBLIC:
            return True
        seen = visibility(repo_id)
        if seen == "public":
            return True
        if seen == "private" and key is not None and key in members(repo_id):
            return True
    return False


class Reader:
    """One request's view of the rule for one peer; repositories' settings are read once and cached."""

    def __init__(self, store: Store, peer: ID | bytes, asker: str | None = None) -> None:
        self.store = store
        self.key = peer_key(peer)
        self.asker = asker if asker is not None else str(peer)  # whom work done for this reader is charged to
        self._visibility: dict[bytes, str | None] = {}
        self._members: dict[bytes, frozenset[bytes]] = {}

    def visibility(self, repo_id: bytes) -> str | None:
        if repo_id not in self._visibility:
            with self.store.read() as txn:
                self._visibility[repo_id] = repos.visibility(txn, repo_id)
        return self._visibility[repo_id]

    def members(self, repo_id: bytes) -> frozenset[bytes]:
        """The owner (the NFT holder once the repository is bound, else the genesis author) and the
        members of the latest membership the validator accepted from whoever controlled it then."""
        if repo_id not in self._members:
            state = NetState(self.store)
            owner = state.owner(repo_id)
            if owner is None:  # not held, or a damaged genesis: nobody is its owner
                self._members[repo_id] = frozenset()
                return self._members[repo_id]
            self._members[repo_id] = frozenset({owner} | state.listed_members(repo_id, owner))
        return self._members[repo_id]

    def allows(self, holders: Iterable[bytes]) -> bool:
        return may_read(holders, self.key, self.visibility, self.members)

    def may_read_repo(self, repo_id: bytes) -> bool:
        """Whether this peer may read ``repo_id``'s heads: public, or private and a member."""
        return self.visibility(repo_id) != "private" or (self.key is not None and self.key in self.members(repo_id))

    def may_read_block(self, cid: CID) -> bool:
        """One index read: whether a stored block may be served to this peer."""
        with self.store.read() as txn:
            holders = txn.block_repos(cid)
        return self.allows(holders)
