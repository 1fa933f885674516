"""Gossip validation: what a message must satisfy before it is stored or forwarded.

``Validator.validate`` is pure: it reads the store and returns a ``Verdict`` (``reason`` None to
accept, else why not, counted in metrics), and changes nothing. What follows an acceptance (claiming
the seq against replays, storing the message) is the caller's, in one place: ``Gossip.accept`` and
``NetState.record``. Reasons in ``PENALIZED`` count against the forwarding peer (``Bans.penalize``);
``duplicate``, ``replay`` and ``unknown_repo`` can come from honest peers (late or redundant relays),
and ``not_member`` only counts when the forwarder signed the message itself (a relay may hold a
newer membership list than ours).

On a private repository's topic, ``validate_gossip`` first opens the sealed envelope with the key of
its epoch and validates the inner message as above. A node without that key (a non-member, a former
member after a new epoch) ignores it: ``sealed_unreadable``, never penalized, never forwarded; so is
a box sealed under an epoch older than our newest key (``sealed_stale``: after a removal, a member
that missed the new epoch must not keep writing for the removed member; it catches up with the key
message that heads replies carry).

Ownership is control (issue 14): ``owner`` is the repository's controller, ``NetState.owner``: the
holder of its NFT as the chain last recorded it (``daemon/ownership.py`` reads it), else the genesis
author. Membership and key messages are accepted from the controller only; for an NFT-bound
repository anyone else's are refused as ``not_holder`` (the former holder after a sale), which is not
penalized (a node whose record lags behind the chain would otherwise punish an honest new holder)
and asks the ownership task for an early reading of the chain (``on_not_owner``; so does a
``not_owner`` refusal: the repository may have been bound and sold since the last reading). Head
announcements of the controller move branches (``apply.py``). A membership the former holder signed
stays in force until the new holder signs one (it was accepted from whoever controlled the
repository then); the former holder itself is no longer a member unless that list names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fednode.errors import Corrupt, NotFound
from fednode.history import objstore, refstore
from fednode.identity import verify_signature
from fednode.logs import log
from fednode.sealing import SealError, unseal
from fednode.storage.keyring import Keyring
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, FormatError
from protocol.objects import Commit

if TYPE_CHECKING:
    from fednode.zk.policy import ZkPolicy

NOT_HOLDER = "not_holder"  # an NFT-bound repository's owner-only message from anyone but its holder
BAD_PROOF = "bad_proof"  # an update (or a FedAvg merge, with a remainder key) whose proof fails (policy.check)
PENALIZED = frozenset({"malformed", "oversize", "bad_signature", "wrong_repo", "not_member", "not_owner",
                       "bad_seal", BAD_PROOF})


@dataclass(frozen=True)
class Verdict:
    """A validator's judgement: ``reason`` None accepts ``msg`` (with its decoded ``commit`` for a
    commit envelope); otherwise ``reason`` says why not (for ``not_member``, ``signer`` says who signed)."""

    reason: str | None
    msg: m.Message | None = None
    commit: Commit | None = None
    signer: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class Validator:
    def __init__(self, store: Store, state: NetState, keyring: Keyring | None = None) -> None:
        self.store = store
        self.state = state
        self.keyring = keyring if keyring is not None else Keyring(store)
        # told the repository id when an owner-only message is refused (the ownership task reads the
        # chain early: our record may lag behind a binding or a sale); must not block
        self.on_not_owner: Callable[[bytes], None] | None = None
        self._policies: dict[bytes, ZkPolicy | str | None] = {}  # per genesis: fixed for good

    def policy(self, repo_id: bytes) -> ZkPolicy | str | None:
        """The repository's proof policy, None without one (or an unknown repository), or why it is
        malformed (then every update is refused: the genesis, which the repository id covers, says so)."""
        if repo_id not in self._policies:
            with self.store.read() as txn:
                genesis = refstore.genesis(txn, repo_id)
                settings = objstore.load_commit(txn, genesis).settings if genesis is not None else {}
            if "zk" not in settings:
                return None  # not cached: an unknown repository may arrive later
            from fednode.zk import policy as zpol
            from fednode.zk.curve import ZkError

            try:
                self._policies[repo_id] = zpol.policy_of(settings)
            except ZkError as exc:
                self._policies[repo_id] = f"malformed proof policy: {exc}"
        return self._policies[repo_id]

    def proof_problem(self, repo_id: bytes, commit: Commit) -> str | None:
        """Why ``commit`` fails its repository's proof policy (``policy.check``: an update's proof, a FedAvg
        merge's remainder proof where the policy names a remainder key), None if it meets it."""
        policy = self.policy(repo_id)
        if policy is None:
            return None
        from fednode.zk import policy as zpol

        if isinstance(policy, str):
            return None if commit.kind in zpol.EXEMPT_KINDS else policy
        return zpol.check(policy, commit)

    def _refused_proposal(self, msg: m.MergeProposal, members: set[bytes], public: bool) -> Verdict | None:
        """A proposal from a non-member of a private repository, or to merge a head we hold that fails
        the proof policy (a head we do not hold is checked when it arrives)."""
        if not public and msg.announcer not in members:
            return Verdict("not_member", signer=msg.announcer)
        if self.policy(msg.repo) is None:
            return None
        try:
            with self.store.read() as txn:
                commit = objstore.load_commit(txn, msg.head)
        except (NotFound, Corrupt):
            return None
        if (why := self.proof_problem(msg.repo, commit)) is None:
            return None
        log("gossip_bad_proof", "warning", repo=msg.repo.hex()[:16], commit=str(msg.head), reason=why)
        return Verdict(BAD_PROOF)

    def owner(self, repo_id: bytes) -> bytes | None:
        """The controller: the recorded NFT holder, else the genesis author; None for an unknown repository."""
        return self.state.owner(repo_id)

    def _refused_owner(self, repo_id: bytes) -> Verdict:
        """An owner-only message from someone else: the chain is read early (the sender may have
        bought the NFT since our last reading; the reading is rate-limited), and for a repository
        known to be bound the refusal is ``not_holder``, not penalized."""
        if self.on_not_owner is not None:
            self.on_not_owner(repo_id)
        return Verdict("not_owner" if self.state.controller(repo_id) is None else NOT_HOLDER)

    def members(self, repo_id: bytes) -> tuple[set[bytes], bool]:
        """(members, public): the owner alone unless the owner signed a membership object."""
        owner = self.owner(repo_id)
        if owner is None:
            return set(), False
        ms = self.state.membership(repo_id)
        if ms is None:
            return {owner}, False
        return {owner, *ms.members}, ms.public

    def validate_gossip(self, data: bytes, repo_id: bytes, from_self: bool, private: bool) -> Verdict:
        """Validate one message received on ``repo_id``'s topic (``private``: its opaque topic, where
        everything but membership and key messages is sealed); reads the store, writes nothing."""
        if not private:
            return self.validate(data, repo_id, from_self)
        if len(data) > m.MAX_SEALED_BYTES:
            return Verdict("oversize")
        try:
            outer = m.decode(data, implied_repo=repo_id)
        except (FormatError, ValueError):
            return Verdict("malformed")
        if isinstance(outer, m.Membership | m.RepoKeys):  # in the clear, its repo id put back
            return self.validate(outer.encode(), repo_id, from_self)
        if not isinstance(outer, m.Sealed):
            return Verdict("unsealed")
        held = self.keyring.epochs(repo_id)  # one read: a few keys per repository
        if held and outer.epoch < max(held):
            return Verdict("sealed_stale")
        key = held.get(outer.epoch)
        if key is None:
            return Verdict("sealed_unreadable")
        try:
            inner = unseal(key, outer.box, m.topic_for(repo_id, True).encode())
            kind = m.decode(inner).kind
        except (SealError, FormatError, ValueError):
            return Verdict("bad_seal")  # whoever sealed it holds the key: altered, or garbage sealed
        if kind not in m.INNER_KINDS:
            return Verdict("bad_seal")
        return self.validate(inner, repo_id, from_self)

    def validate(self, data: bytes, repo_id: bytes, from_self: bool, heads_reply: bool = False) -> Verdict:
        """Validate one message received on ``repo_id``'s topic; reads the store, writes nothing.

        A signed message whose seq is not newer than the last one accepted (``NetState.record``) is
        a ``replay``; in a heads reply (``heads_reply``) the latest accepted announcement passes again
        (applying it twice is idempotent), an older one does not.
        """
        if len(data) > m.MAX_GOSSIP_BYTES:
            return Verdict("oversize")
        try:
            msg = m.decode(data)
        except (FormatError, ValueError):
            return Verdict("malformed")
        if isinstance(msg, m.CommitEnvelope):
            return self._check_commit(msg, repo_id, from_self)
        if isinstance(msg, m.Sealed):  # only validate_gossip opens these
            return Verdict("malformed")
        if msg.repo != repo_id:
            return Verdict("wrong_repo")
        branch = getattr(msg, "branch", "")
        # before the signature: a replay (honest relays send many) costs a lookup, not two checks
        if not from_self and self._replayed(msg.kind, repo_id, msg.announcer, branch, msg.seq, heads_reply):
            return Verdict("replay")
        if not verify_signature(msg.announcer, msg.signing_hash(), msg.sig):
            return Verdict("bad_signature")
        owner = self.owner(repo_id)
        if owner is None:
            return Verdict("unknown_repo")
        members, public = self.members(repo_id)
        if isinstance(msg, m.Membership | m.RepoKeys):
            if msg.announcer != owner:
                return self._refused_owner(repo_id)
        elif isinstance(msg, m.MergeProposal):
            if (refused := self._refused_proposal(msg, members, public)) is not None:
                return refused
        elif msg.announcer not in members:
            return Verdict("not_member", signer=msg.announcer)
        return Verdict(None, msg)

    def _replayed(self, kind: str, repo_id: bytes, announcer: bytes, branch: str, seq: int, heads_reply: bool) -> bool:
        last = self.state.last_seq(kind, repo_id, announcer, branch)
        return last > seq or (last == seq and not heads_reply)

    def _check_commit(self, env: m.CommitEnvelope, repo_id: bytes, from_self: bool) -> Verdict:
        if not from_self:  # before decoding and the signature: honest relays send many copies
            with self.store.read() as txn:
                if txn.has_block(CID.hash(DAG_CBOR, env.block)):
                    return Verdict("duplicate")
        try:
            commit = Commit.decode(env.block)
        except (FormatError, ValueError):
            return Verdict("malformed")
        rid = commit.repo if commit.repo is not None else commit.commit_hash()
        if rid != repo_id:
            return Verdict("wrong_repo")
        if not verify_signature(commit.author, commit.commit_hash(), commit.sig):
            return Verdict("bad_signature")
        members, _ = self.members(repo_id)
        if not members:
            return Verdict("unknown_repo")
        if commit.author not in members:
            return Verdict("not_member", signer=commit.author)
        if (why := self.proof_problem(repo_id, commit)) is not None:
            log("gossip_bad_proof", "warning", repo=repo_id.hex()[:16], commit=str(commit.cid()), reason=why)
            return Verdict(BAD_PROOF)
        return Verdict(None, env, commit)
