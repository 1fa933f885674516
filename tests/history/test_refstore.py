"""Refs in the store: every branch write is logged in that branch's reflog, in the format stores
written before the history named its reflogs (key: repo id + branch + NUL + sequence number);
nothing else is logged, and the store itself knows no ref layout."""

from __future__ import annotations

import json
import struct

from helpers import model_arrays, perturb

from fednode.history import History, refs, refstore
from fednode.tensors.modelio import ArraySource
from fednode.workflows import refops


def test_branch_moves_are_logged_in_the_stored_format(history: History) -> None:
    arrays = model_arrays(0)
    info, created = history.create_repo("m", ArraySource(arrays))
    second = history.commit(info, ArraySource(perturb(arrays, 1)), "second").cid
    history.create_branch(info, "side", created.cid)
    history.create_tag(info, "v1", second)
    refops.move_branch(history, info, "main", created.cid, reason="reset: back")
    with history.store.read() as txn:
        raw = txn.kv_items("reflog", info.repo_id + b"main\0")
        side = txn.reflog(info.repo_id, "side")
        tag_log = txn.reflog(info.repo_id, "v1")
    keys = [key[len(info.repo_id + b"main\0"):] for key, _ in raw]
    assert keys == [struct.pack(">Q", n) for n in range(3)]  # created, commit, reset
    moves = [json.loads(value) for _, value in raw]
    assert [m["new"] for m in moves] == [str(created.cid), str(second), str(created.cid)]
    assert moves[0]["old"] is None and moves[2]["reason"] == "reset: back"
    assert [m["new"] for m in side] == [str(created.cid)] and tag_log == []
    assert history.resolve("main@{1}", info)[1] == second
    history.delete_branch(info, "side")
    with history.store.read() as txn:
        assert txn.reflog(info.repo_id, "side")[0] | {"time_ms": 0} == {
            "time_ms": 0, "old": str(created.cid), "new": None, "reason": "branch deleted"}


def test_a_ref_written_without_a_reflog_logs_nothing(history: History) -> None:
    info, created = history.create_repo("m", ArraySource(model_arrays(0)))
    with history.store.write() as txn:
        txn.set_ref(info.repo_id, refs.remote("peer", "main"), bytes(created.cid))
        txn.set_ref(info.repo_id, refs.branch("quiet"), bytes(created.cid))  # no reflog named
        refstore.set_branch(txn, info.repo_id, "logged", created.cid)
    with history.store.read() as txn:
        assert txn.reflog(info.repo_id, "quiet") == []
        assert txn.reflog(info.repo_id, "peer/main") == []
        assert len(txn.reflog(info.repo_id, "logged")) == 1
