"""The daemon's incremental verification, in process: ``Applier.apply`` on a real store, no network."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from helpers import fixed_identity, model_arrays, perturb

from fednode.daemon.apply import Applier
from fednode.daemon.validate import Validator
from fednode.history import History
from fednode.identity import Identity
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR


def fake_daemon(history: History) -> SimpleNamespace:
    """What ``Applier`` uses of a Daemon's parts (``apply`` below builds it from them)."""
    state = NetState(history.store)

    async def run_reading(fn):
        return await trio.to_thread.run_sync(fn)

    # the applying node is a peer of the announcers, never one of them (its own announcements are ignored)
    return SimpleNamespace(node=SimpleNamespace(history=history, store=history.store, identity=Identity.generate()),
                           state=state,
                           validator=Validator(history.store, state), metrics=SimpleNamespace(rejected=Counter()),
                           nursery=SimpleNamespace(start_soon=lambda *args: None),
                           fetcher=SimpleNamespace(run_reading=run_reading), penalize=lambda peer, reason: None,
                           spawn=lambda *args, **kw: None)


async def apply(d: SimpleNamespace, repo_id: bytes, raw: bytes) -> None:
    """``Applier.apply`` over the fake daemon's parts as they are now (a test may swap one)."""
    penalizer = SimpleNamespace(penalize=lambda peer, reason: d.penalize(peer, reason))
    provides = SimpleNamespace(provide_new_soon=lambda: None, provide_all_soon=lambda: None)
    applier = Applier(d.node.history, d.node.identity.public_key, d.state, d.validator, d.metrics, d.fetcher,
                      penalizer, provides)
    await applier.apply(repo_id, raw)


def announce(ident: Identity, repo_id: bytes, head: CID, seq: int) -> bytes:
    ann = m.HeadAnnouncement(repo_id, "main", head, seq, seq, ident.public_key)
    return dataclasses.replace(ann, sig=ident.sign(ann.signing_hash())).encode()


def main_head(history: History, repo_id: bytes) -> CID:
    with history.store.read() as txn:
        return CID.from_bytes(txn.get_ref(repo_id, "heads/main"))


def fetched_commits(tmp_path: Path, n: int) -> tuple[Identity, Store, History, bytes, CID, list[CID]]:
    """An owner's repository with ``n`` commits after its genesis, main put back at the genesis:
    as if the commits had just been fetched and not applied yet."""
    owner = fixed_identity()
    store = Store(tmp_path / "store")
    history = History(store, owner)
    info, created = history.create_repo("m", ArraySource(model_arrays(0)))
    commits = [history.commit(info, ArraySource(perturb(model_arrays(0), k)), f"c{k}").cid for k in range(1, n + 1)]
    with store.write() as txn:
        txn.set_ref(info.repo_id, "heads/main", bytes(created.cid))
    return owner, store, history, info.repo_id, created.cid, commits


def test_apply_records_verified_commits_persistently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, store, history, rid, genesis, (c1, c2) = fetched_commits(tmp_path, 2)
    d = fake_daemon(history)
    assert not d.state.is_verified(rid, genesis)

    trio.run(apply, d, rid, announce(owner, rid, c1, 1))
    assert main_head(history, rid) == c1
    assert d.state.is_verified(rid, genesis) and d.state.is_verified(rid, c1)
    assert not d.state.is_verified(rid, c2)

    # a failed verification records nothing, not even the good commits it walked (c2)
    bad = dataclasses.replace(history.load_commit(c2), message="not what c2's author signed")
    bad_cid = CID.hash(DAG_CBOR, bad.encode())
    with store.write() as txn:
        txn.put_block(bad_cid, bad.encode())
    trio.run(apply, d, rid, announce(owner, rid, bad_cid, 2))
    assert d.metrics.rejected["verify_failed"] == 1 and main_head(history, rid) == c1
    assert not d.state.is_verified(rid, c2) and not d.state.is_verified(rid, bad_cid)
    store.close()

    # the record survives a restart, and a later head is verified on top of it: only c2 is checked
    store = Store(tmp_path / "store")
    history = History(store, owner)
    d = fake_daemon(history)
    assert d.state.is_verified(rid, genesis) and d.state.is_verified(rid, c1)
    assert not d.state.is_verified(bytes(32), c1)  # a verdict holds for the repository it was checked in
    checked: list[CID] = []
    check_commit = history.check_commit

    def counting(cid: CID, *args, **kw) -> list[str]:
        checked.append(cid)
        return check_commit(cid, *args, **kw)

    monkeypatch.setattr(history, "check_commit", counting)
    trio.run(apply, d, rid, announce(owner, rid, c2, 3))
    assert checked == [c2] and main_head(history, rid) == c2 and d.state.is_verified(rid, c2)
    store.close()


def test_an_owners_fast_forward_is_in_the_branch_reflog(tmp_path: Path) -> None:
    """Every branch move is in the reflog, whoever moves it: the daemon taking an owner's head too."""
    owner, store, history, rid, genesis, (c1,) = fetched_commits(tmp_path, 1)
    with store.read() as txn:
        before = txn.reflog(rid, "main")

    trio.run(apply, fake_daemon(history), rid, announce(owner, rid, c1, 1))
    assert main_head(history, rid) == c1
    with store.read() as txn:
        after = txn.reflog(rid, "main")
    assert len(after) == len(before) + 1
    assert after[0]["old"] == str(genesis) and after[0]["new"] == str(c1) and "c1" in after[0]["reason"]
    store.close()


def test_an_older_head_verified_while_a_newer_one_lands_leaves_no_remote_ref(tmp_path: Path) -> None:
    """Fetches end out of order: the job of announcement 1 is still verifying when announcement 2
    arrives and its job moves main past it. Job 1 then finds main no longer a fast-forward away; it
    must see that it was superseded, not record ``remotes/<owner>/main`` (CI once saw such a ref)."""
    owner, store, history, rid, _, (c1, c2) = fetched_commits(tmp_path, 2)
    d = fake_daemon(history)
    ann1, ann2 = announce(owner, rid, c1, 1), announce(owner, rid, c2, 2)
    assert d.state.record(m.decode(ann1))  # accepted when it arrived, as the validator does
    plain = d.fetcher.run_reading
    interleaved = []

    async def newer_lands_meanwhile(fn):
        if not interleaved:  # job 1's verification: announcement 2 arrives and its job completes
            interleaved.append(True)
            assert d.state.record(m.decode(ann2))
            await apply(d, rid, ann2)
            assert main_head(history, rid) == c2
        return await plain(fn)

    d.fetcher = SimpleNamespace(run_reading=newer_lands_meanwhile)
    trio.run(apply, d, rid, ann1)
    assert interleaved and main_head(history, rid) == c2
    with store.read() as txn:
        assert txn.list_refs(rid, "remotes/") == {}
    store.close()
