"""The gossip validator on a real store (no network): membership, public proposals, replays."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from helpers import fixed_identity, model_arrays, perturb
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from fednode.daemon.gossip import Gossip
from fednode.daemon.validate import Validator
from fednode.history import History
from fednode.identity import Identity
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR


def _sign(ident: Identity, msg):
    return type(msg)(**{**msg.__dict__, "sig": ident.sign(msg.signing_hash())}).encode()


def test_membership_public_proposals_and_replays(tmp_path: Path) -> None:
    owner, member, stranger = fixed_identity(), Identity.generate(), Identity.generate()
    store = Store(tmp_path / "store")
    try:
        history = History(store, owner)
        info, _ = history.create_repo("m", ArraySource(model_arrays(0)))
        rid = info.repo_id
        state = NetState(store)
        v = Validator(store, state)
        assert v.owner(rid) == owner.public_key and v.members(rid) == ({owner.public_key}, False)

        def check(data: bytes, claim: bool = True) -> str | None:
            """Validate as gossip does, then (``claim``) record what was accepted as ``Gossip`` does;
            ``claim=False``: as a heads reply is validated, nothing recorded."""
            verdict = v.validate(data, rid, from_self=False, heads_reply=not claim)
            if claim and verdict.ok and not isinstance(verdict.msg, m.CommitEnvelope):
                assert state.record(verdict.msg)  # type: ignore[arg-type]
            return verdict.reason

        # commits: the owner's pass, anyone else's are refused until the owner lists them
        other = History(Store(tmp_path / "other"), member)
        try:
            oinfo, _ = other.create_repo("x", ArraySource(model_arrays(1)))
        finally:
            other.store.close()
        owner_commit = history.commit(info, ArraySource(perturb(model_arrays(0), 1)), "c1")
        env = m.CommitEnvelope(owner_commit.commit.encode()).encode()
        assert check(env) == "duplicate"  # already in this store
        assert v.validate(env, rid, from_self=True).ok
        head = CID.hash(DAG_CBOR, b"whatever")
        ann = m.HeadAnnouncement(rid, "main", head, 5, 1, member.public_key)
        assert check(_sign(member, ann)) == "not_member"
        assert check(_sign(stranger, ann)) == "bad_signature"  # signed by someone else than `from`
        members = m.Membership(rid, (member.public_key,), False, 1, 1, member.public_key)
        assert check(_sign(member, members)) == "not_owner"
        assert check(_sign(owner, m.Membership(rid, (member.public_key,), False, 1, 1, owner.public_key))) is None
        state.put_membership(m.decode(_sign(owner, m.Membership(rid, (member.public_key,), False, 1, 1,
                                                                owner.public_key))))
        assert v.members(rid) == ({owner.public_key, member.public_key}, False)
        assert v.validate(_sign(member, ann), rid, from_self=False).ok  # validating records nothing
        assert check(_sign(member, ann)) is None
        assert check(_sign(member, ann)) == "replay"  # same seq again
        assert check(_sign(member, m.HeadAnnouncement(rid, "main", head, 4, 1, member.public_key))) == "replay"
        # the heads exchange may re-apply the latest accepted announcement, never an older one
        assert check(_sign(member, ann), claim=False) is None
        assert check(_sign(member, m.HeadAnnouncement(rid, "main", head, 4, 1, member.public_key)),
                     claim=False) == "replay"
        # seqs are per branch: another branch starts its own sequence
        assert check(_sign(member, m.HeadAnnouncement(rid, "dev", head, 1, 1, member.public_key))) is None
        # proposals: members only, unless the owner made the repository public
        prop = m.MergeProposal(rid, "main", head, "pls", 1, 1, stranger.public_key)
        assert check(_sign(stranger, prop)) == "not_member"
        state.put_membership(m.decode(_sign(owner, m.Membership(rid, (member.public_key,), True, 2, 2,
                                                                owner.public_key))))
        assert check(_sign(stranger, prop)) is None
        # ... but a public repository still takes no commits or heads from strangers
        assert check(_sign(stranger, m.HeadAnnouncement(rid, "main", head, 9, 1, stranger.public_key))) \
            == "not_member"
        # wrong topic / unknown repository
        assert v.validate(_sign(member, ann), bytes(32), from_self=False).reason == "wrong_repo"
        foreign = m.HeadAnnouncement(oinfo.repo_id, "main", head, 1, 1, member.public_key)
        assert v.validate(_sign(member, foreign), oinfo.repo_id, from_self=False).reason == "unknown_repo"
    finally:
        store.close()


def test_gossip_accepts_one_of_two_copies_and_validating_writes_nothing(tmp_path: Path) -> None:
    """Two copies of one announcement (two forwarders, back to back as py-libp2p delivers them):
    the first is accepted, its seq claimed and its fetch scheduled; the second is a replay. The
    validation itself leaves the store as it was."""
    owner = fixed_identity()
    store = Store(tmp_path / "store")
    try:
        info, _ = History(store, owner).create_repo("m", ArraySource(model_arrays(0)))
        rid = info.repo_id
        state = NetState(store)
        scheduled: list[bytes] = []
        metrics = SimpleNamespace(rejected=Counter(), accepted=Counter(), published=Counter(), errors=Counter())
        gossip = Gossip(store, state, Validator(store, state), metrics, None,  # type: ignore[arg-type]
                        SimpleNamespace(penalize=lambda peer, reason: None),  # type: ignore[arg-type]
                        SimpleNamespace(schedule=lambda repo, root, providers, then: scheduled.append(then)))  # type: ignore[arg-type]
        gossip.start(None, ID.from_base58(Identity.generate().peer_id))  # type: ignore[arg-type]
        ann = m.HeadAnnouncement(rid, "main", CID.hash(DAG_CBOR, b"whatever"), 7, 1, owner.public_key)
        data = _sign(owner, ann)
        source = ID.from_base58(owner.peer_id)
        msg = rpc_pb2.Message(from_id=source.to_bytes(), data=data, seqno=b"1")
        with store.read() as txn:
            before = txn.kv_items("net", b"")
        assert gossip.validator.validate(data, rid, from_self=False).ok
        with store.read() as txn:
            assert txn.kv_items("net", b"") == before  # validating changed nothing
        validate = gossip.validator_for(rid)
        forwarders = [ID.from_base58(Identity.generate().peer_id) for _ in range(2)]
        assert [validate(f, msg) for f in forwarders] == [True, False]
        assert scheduled == [data] and metrics.rejected["replay"] == 1
        assert state.last_seq("head", rid, owner.public_key, "main") == 7
        assert state.announcements(rid) == [data]
    finally:
        store.close()


def test_a_forwarder_of_many_rejected_messages_is_read_no_more_for_a_while(tmp_path: Path) -> None:
    """Relayed messages signed by a stranger are rejected without a strike (the forwarder may be
    honest), but each costs signature checks and a log line: past REJECT_BURST rejections a
    forwarder's messages are dropped unread, until tokens come back at REJECT_RATE a second; other
    forwarders are not affected."""
    from fednode.daemon.gossip import REJECT_BURST, REJECT_RATE

    owner, stranger = fixed_identity(), Identity.generate()
    store = Store(tmp_path / "store")
    try:
        rid = History(store, owner).create_repo("m", ArraySource(model_arrays(0)))[0].repo_id
        state = NetState(store)
        metrics = SimpleNamespace(rejected=Counter(), accepted=Counter(), published=Counter(), errors=Counter())
        strikes: list[str] = []
        gossip = Gossip(store, state, Validator(store, state), metrics, None,  # type: ignore[arg-type]
                        SimpleNamespace(penalize=lambda peer, reason: strikes.append(reason)),  # type: ignore[arg-type]
                        SimpleNamespace(schedule=lambda *args: None))  # type: ignore[arg-type]
        gossip.start(None, ID.from_base58(Identity.generate().peer_id))  # type: ignore[arg-type]
        now = [0.0]
        gossip.rejections.clock = lambda: now[0]
        validate = gossip.validator_for(rid)
        flooder, other = (ID.from_base58(Identity.generate().peer_id) for _ in range(2))

        def announcement(signer: Identity, seq: int) -> rpc_pb2.Message:
            ann = m.HeadAnnouncement(rid, "main", CID.hash(DAG_CBOR, b"%d" % seq), seq, 1, signer.public_key)
            return rpc_pb2.Message(from_id=ID.from_base58(signer.peer_id).to_bytes(), data=_sign(signer, ann),
                                   seqno=b"%d" % seq)

        # replays (honest relays send many copies) spend nothing, and are caught before the signature
        assert validate(flooder, announcement(owner, 1))
        assert not any(validate(flooder, announcement(owner, 1)) for _ in range(3 * int(REJECT_BURST)))
        assert metrics.rejected["replay"] == 3 * REJECT_BURST and metrics.rejected["rate_limited"] == 0
        forged = rpc_pb2.Message(from_id=ID.from_base58(owner.peer_id).to_bytes(), seqno=b"x",
                                 data=m.HeadAnnouncement(rid, "main", CID.hash(DAG_CBOR, b"1"), 1, 1, owner.public_key,
                                                         b"\0" * 64).encode())
        assert not validate(other, forged) and metrics.rejected["replay"] == 3 * REJECT_BURST + 1  # no sig check
        metrics.rejected.clear()
        n = int(REJECT_BURST) + 50
        assert not any(validate(flooder, announcement(stranger, i)) for i in range(n))
        rejected = sum(v for k, v in metrics.rejected.items() if k != "rate_limited")
        assert rejected == REJECT_BURST and metrics.rejected["rate_limited"] == 50 and strikes == []
        assert not validate(flooder, announcement(owner, 2))  # even a good one, unread
        assert validate(other, announcement(owner, 3))  # another forwarder is read
        now[0] += 1 / REJECT_RATE  # one token back
        assert validate(flooder, announcement(owner, 4))
    finally:
        store.close()


def test_a_fetch_job_keeps_the_newest_announcement_of_each_branch_and_announcer() -> None:
    """A member re-announcing a head still being fetched grew the job's list of announcements to
    apply (and its net db record, rewritten each time) without bound: only the newest of each
    (kind, announcer, branch) is kept, in first-seen order."""
    from fednode.daemon.jobs import newest

    a, b = fixed_identity(), Identity.generate()
    rid = b"r" * 32
    head = CID.hash(DAG_CBOR, b"head")

    def ann(who: Identity, branch: str, seq: int) -> bytes:
        return _sign(who, m.HeadAnnouncement(rid, branch, head, seq, 1, who.public_key))

    def proposal(who: Identity, seq: int) -> bytes:
        return _sign(who, m.MergeProposal(rid, "main", head, "merge me", seq, 1, who.public_key))

    flood = [ann(a, "main", seq) for seq in range(1, 1000)]
    others = [ann(b, "main", 5), ann(a, "dev", 3), proposal(a, 7)]
    kept = newest([flood[0], *others, *flood[1:], ann(b, "main", 4), b"not a message", b"not a message"])
    assert kept == [flood[-1], *others, b"not a message"]  # anything else kept once, for apply to judge


def test_is_genesis_of_accepts_only_the_signed_init_commit_whose_hash_is_the_id(tmp_path: Path) -> None:
    """What a clone checks of the genesis a peer names (and a resumed clone of what it fetched)."""
    from dataclasses import replace

    from fednode.daemon.exchange import is_genesis_of

    owner = fixed_identity()
    store = Store(tmp_path / "store")
    try:
        history = History(store, owner)
        info, genesis = history.create_repo("m", ArraySource(model_arrays(0)))
        child = history.commit(info, ArraySource(perturb(model_arrays(0), 1)), "next").cid
        with store.read() as txn:
            block, child_block = txn.get_block(genesis.cid), txn.get_block(child)
            manifest = txn.get_block(history.load_commit(genesis.cid).weights)
        commit = history.load_commit(genesis.cid)
        unsigned = replace(commit, sig=bytes(64)).encode()
        assert is_genesis_of(info.repo_id, bytes(block))
        assert not is_genesis_of(b"x" * 32, bytes(block))  # another repository's genesis
        assert not any(is_genesis_of(info.repo_id, bytes(b)) for b in (child_block, manifest, b"\xa0", unsigned))
    finally:
        store.close()
