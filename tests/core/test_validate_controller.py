"""Ownership is control, node side (issue 14): once a controller record (the NFT holder the chain
recorded) exists, the validator, block access, the CLI-side checks and the key epochs follow the
holder, not the genesis author. Real store, real validator; the record is set directly here (the
chain reading is tests/daemon/test_ownership_refresh.py and tests/chain/test_nft_control.py)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import fixed_identity, model_arrays

from fednode.daemon.access import Reader
from fednode.daemon.routes import _repo_keys
from fednode.daemon.validate import NOT_HOLDER, PENALIZED, Validator
from fednode.errors import FednodeError
from fednode.history import History
from fednode.identity import Identity
from fednode.storage.keyring import Keyring
from fednode.storage.netstate import DB, Controller, NetState
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows import membership
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR

MINT = bytes([7]) * 32


def _sign(ident: Identity, msg: m.Membership | m.RepoKeys | m.HeadAnnouncement) -> bytes:
    return type(msg)(**{**msg.__dict__, "sig": ident.sign(msg.signing_hash())}).encode()


def _peer(ident: Identity) -> bytes:
    return b"\x00\x24\x08\x01\x12\x20" + ident.public_key  # its libp2p peer id


@pytest.fixture
def repo(tmp_path: Path):
    genesis_author = fixed_identity()
    store = Store(tmp_path / "store")
    history = History(store, genesis_author)
    info, _ = history.create_repo("sold", ArraySource(model_arrays(0)))  # private: the default
    yield SimpleNamespace(store=store, history=history, info=info, rid=info.repo_id, a=genesis_author)
    store.close()


def test_after_a_sale_the_holders_messages_are_accepted_and_the_former_owners_refused(repo) -> None:
    a, b, member = repo.a, Identity.generate(), Identity.generate()
    state, rid = NetState(repo.store), repo.rid
    refreshes: list[bytes] = []
    v = Validator(repo.store, state)
    v.on_not_owner = refreshes.append

    def check(ident: Identity, msg) -> str | None:
        verdict = v.validate(_sign(ident, msg), rid, from_self=False)
        if verdict.ok:
            assert state.record(verdict.msg)  # type: ignore[arg-type]
        return verdict.reason

    # before: the genesis author owns it; its membership is accepted, the buyer-to-be's refused
    assert check(a, m.Membership(rid, (member.public_key,), False, 1, 1, a.public_key)) is None
    assert check(b, m.Membership(rid, (), False, 1, 1, b.public_key)) == "not_owner"
    assert refreshes == [rid]  # the chain is read early: it may have been bound and sold since
    # the NFT changes hands (the ownership task records the holder the chain recorded)
    assert state.set_controller(rid, b.public_key, MINT, slot=50, sale_seq=1)
    assert state.controller(rid) == Controller(b.public_key, MINT, 50, 1)
    assert v.owner(rid) == b.public_key
    # the former owner's list stays in force until the holder signs one; the former owner is no member
    assert v.members(rid) == ({b.public_key, member.public_key}, False)
    assert check(a, m.Membership(rid, (), False, 2, 2, a.public_key)) == NOT_HOLDER
    assert check(a, m.RepoKeys(rid, 5, (), 3, 2, a.public_key)) == NOT_HOLDER
    assert refreshes == [rid] * 3 and NOT_HOLDER not in PENALIZED  # a lagging node must not punish
    head = CID.hash(DAG_CBOR, b"head")
    assert check(a, m.HeadAnnouncement(rid, "main", head, 9, 2, a.public_key)) == "not_member"
    # the holder's membership and key messages are accepted, and its list replaces the old one
    assert check(b, m.Membership(rid, (a.public_key,), False, 1, 3, b.public_key)) is None
    assert check(b, m.RepoKeys(rid, 1, (), 2, 3, b.public_key)) is None
    assert v.members(rid) == ({b.public_key, a.public_key}, False)  # it may list the former owner
    assert check(a, m.HeadAnnouncement(rid, "main", head, 10, 4, a.public_key)) is None  # now as a member


def test_controller_records_keep_the_newest_reading(repo) -> None:
    state, rid, b, c = NetState(repo.store), repo.rid, Identity.generate(), Identity.generate()
    assert state.controller(rid) is None and state.owner(rid) == repo.a.public_key
    assert state.set_controller(rid, b.public_key, MINT, 10, sale_seq=2)
    assert not state.set_controller(rid, b.public_key, MINT, 10, sale_seq=2)  # the same reading again
    assert not state.set_controller(rid, c.public_key, MINT, 9, sale_seq=1)  # a lagging RPC node's
    assert state.owner(rid) == b.public_key
    assert state.set_controller(rid, c.public_key, MINT, 20, sale_seq=3)
    assert state.owner(rid) == c.public_key
    with pytest.raises(FednodeError, match="32-byte"):
        state.set_controller(rid, b"short", MINT, 1)
    assert state.controller(rid) == Controller(c.public_key, MINT, 20, 3)  # nothing stored
    with repo.store.write() as txn:  # a damaged record reads as none (the next refresh rewrites it)
        txn.kv_put(DB, b"ctl/" + rid, b"\xff\x00")
    assert state.controller(rid) is None and state.owner(rid) == repo.a.public_key
    assert state.owner(bytes(32)) is None  # an unknown repository has no owner


def test_private_blocks_follow_the_holder(repo) -> None:
    a, b, member = repo.a, Identity.generate(), Identity.generate()
    state, rid = NetState(repo.store), repo.rid
    state.put_membership(m.decode(_sign(a, m.Membership(rid, (member.public_key,), False, 1, 1, a.public_key))))
    with repo.store.read() as txn:
        cid = CID.from_bytes(txn.get_ref(rid, "genesis"))
    def reads(ident: Identity) -> bool:
        return Reader(repo.store, _peer(ident)).may_read_block(cid)

    assert reads(a) and reads(member) and not reads(b)
    state.set_controller(rid, b.public_key, MINT, 5, 1)
    assert reads(b) and reads(member) and not reads(a)  # the former owner no longer reads it


def test_cli_side_checks_follow_the_recorded_holder(repo) -> None:
    b, member = Identity.generate(), Identity.generate()
    node_a = SimpleNamespace(store=repo.store, history=repo.history, identity=repo.a)
    node_b = SimpleNamespace(store=repo.store, history=repo.history, identity=b)
    membership.check_owner(node_a, repo.info)  # type: ignore[arg-type]
    NetState(repo.store).put_membership(m.decode(_sign(repo.a, m.Membership(  # type: ignore[arg-type]
        repo.rid, (member.public_key,), False, 1, 1, repo.a.public_key))))
    again = membership.plan_change(node_a, repo.info, [member.address], True, None)  # type: ignore[arg-type]
    assert not again.network_changes  # already a member: nothing to sign
    with pytest.raises(FednodeError, match="genesis author"):
        membership.check_owner(node_b, repo.info)  # type: ignore[arg-type]
    NetState(repo.store).set_controller(repo.rid, b.public_key, MINT, 5, 1)
    membership.check_owner(node_b, repo.info)  # type: ignore[arg-type]
    membership.check_member(node_b, repo.info)  # type: ignore[arg-type]
    with pytest.raises(FednodeError, match="holder of its NFT"):
        membership.check_owner(node_a, repo.info)  # type: ignore[arg-type]
    # the new holder re-signs the list it inherited, even when it names nobody new
    change = membership.plan_change(node_b, repo.info, [member.address], True, None)  # type: ignore[arg-type]
    assert change.network_changes and change.members == [member.public_key]
    with pytest.raises(FednodeError, match="not a member"):
        membership.check_member(node_a, repo.info)  # type: ignore[arg-type]


def test_a_new_holder_starts_a_key_epoch_above_the_former_holders(repo, tmp_path: Path) -> None:
    a, b, member = repo.a, Identity.generate(), Identity.generate()
    state, keyring, rid = NetState(repo.store), Keyring(repo.store), repo.rid
    for epoch in range(3):  # the former owner's epochs 0..2 (this node, a member, held them all)
        keyring.put(rid, epoch, bytes([epoch + 1]) * 32)
    state.put_keys_message(m.decode(_sign(a, m.RepoKeys(rid, 2, (), 1, 1, a.public_key))))  # type: ignore[arg-type]
    state.set_controller(rid, b.public_key, MINT, 5, 1)
    d = SimpleNamespace(state=state, keyring=keyring, node=SimpleNamespace(identity=b))
    now = int(time.time())
    msg, epoch, key = _repo_keys(d, rid, (member.public_key,))  # type: ignore[arg-type]
    assert now <= epoch <= now + 5  # above any epoch the former holder counted to, seen here or not
    assert msg.announcer == b.public_key and {k for k, _ in msg.wrapped} == {b.public_key, member.public_key}
    # once the holder's own key message is the latest, adding members keeps its epoch
    keyring.put(rid, epoch, key)
    state.put_keys_message(m.decode(_sign(b, msg)))  # type: ignore[arg-type]
    assert _repo_keys(d, rid, (member.public_key,))[1:] == (epoch, key)  # type: ignore[arg-type]
    # removing a member: the next epoch, counted
    state.put_membership(m.decode(_sign(b, m.Membership(rid, (member.public_key,), False, 1, 1, b.public_key))))  # type: ignore[arg-type]
    assert _repo_keys(d, rid, ())[1] == epoch + 1  # type: ignore[arg-type]
    # a former holder's key message numbered above the clock: the takeover goes above it
    state.put_keys_message(m.decode(_sign(a, m.RepoKeys(rid, 2 * now, (), 2, 2, a.public_key))))  # type: ignore[arg-type]
    assert _repo_keys(d, rid, (member.public_key,))[1] == 2 * now + 1  # type: ignore[arg-type]
    # a holder that holds no key and never saw a key message (not the genesis author): above the clock
    fresh = Store(tmp_path / "fresh")
    try:
        fresh_id = History(fresh, a).create_repo("sold", ArraySource(model_arrays(0)))[0].repo_id
        e = SimpleNamespace(state=NetState(fresh), keyring=Keyring(fresh), node=SimpleNamespace(identity=b))
        assert _repo_keys(e, fresh_id, ())[1] >= now  # type: ignore[arg-type]
        e.node.identity = a  # the genesis author's first epoch stays 0
        assert _repo_keys(e, fresh_id, ())[1] == 0  # type: ignore[arg-type]
    finally:
        fresh.close()


def test_a_keyless_new_holder_never_seals_under_epoch_zero(repo) -> None:
    """A new holder without a key gets a one-line refusal instead of a fresh epoch-0 key: the former
    holder's members hold epoch 0 under another key and would refuse its boxes as altered. Without a
    controller record (a plain owner) the first key is still made on demand."""
    from fednode.daemon.privacy import seal_message

    keyring = Keyring(repo.store)
    other = Store(repo.store.path.parent / "other")
    try:
        plain = Keyring(other)
        assert seal_message(plain, repo.rid, b"x", owner=True)  # made epoch 0 for a plain owner
        assert plain.latest(repo.rid) is not None and plain.latest(repo.rid)[0] == 0
    finally:
        other.close()
    NetState(repo.store).set_controller(repo.rid, fixed_identity(bytes(range(9, 41))).public_key, MINT, slot=3)
    with pytest.raises(FednodeError, match="no key for this private repository yet"):
        seal_message(keyring, repo.rid, b"x", owner=True)
    assert keyring.latest(repo.rid) is None  # nothing made


def test_one_forged_reading_does_not_pin_a_false_holder_for_good(repo) -> None:
    """An endpoint that lied once (a huge sale_seq) no longer outranks every honest reading after it:
    a lower sale_seq is taken as a lagging node's only within LAG_SLOTS of the stored slot."""
    from fednode.storage.netstate import LAG_SLOTS

    state, rid = NetState(repo.store), repo.rid
    honest, forger = Identity.generate(), Identity.generate()
    assert state.set_controller(rid, honest.public_key, MINT, 1000, sale_seq=3)
    assert state.set_controller(rid, forger.public_key, MINT, 1010, sale_seq=2**64 - 1)  # the lie
    assert not state.set_controller(rid, honest.public_key, MINT, 1020, sale_seq=4)  # could be a lagging node
    assert state.owner(rid) == forger.public_key
    assert state.set_controller(rid, honest.public_key, MINT, 1010 + LAG_SLOTS + 1, sale_seq=4)  # before: never
    assert state.owner(rid) == honest.public_key
    # a lie from the future: a stored slot far beyond the chain's slot now is no reading at all
    assert state.set_controller(rid, forger.public_key, MINT, 2**62, sale_seq=2**64 - 1)
    assert state.set_controller(rid, honest.public_key, MINT, 20_000, sale_seq=5)
    assert state.owner(rid) == honest.public_key
