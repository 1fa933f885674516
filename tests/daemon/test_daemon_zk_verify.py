"""A fetched head whose commitment does not match its weights is refused like any failed verification
(issue 15 items 1-2), in process: ``Applier.apply`` on a real store with the node's ``ZkHistory``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio
from helpers import fixed_identity, model_arrays, perturb
from test_daemon_verify import announce, apply, fake_daemon, main_head

from fednode.history import objstore
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows.commitments import ZkHistory, ZkSettings
from fednode.zk import pedersen
from protocol.multiformats import CID, DAG_CBOR


def test_a_head_with_a_forged_commitment_is_refused(tmp_path: Path) -> None:
    owner = fixed_identity()
    store = Store(tmp_path / "store")
    history = ZkHistory(store, owner, ZkSettings(cache_dir=tmp_path / "zk"))
    try:
        info, _ = history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        rid = info.repo_id
        c1 = history.commit(info, ArraySource(perturb(model_arrays(0), 1)), "c1").cid
        c2 = history.commit(info, ArraySource(perturb(model_arrays(0), 2)), "c2").cid
        genuine = history.load_commit(c2)
        assert "commitment" in genuine.info["zk"]
        zk = {**genuine.info["zk"], "commitment": pedersen.add(genuine.info["zk"]["commitment"], pedersen.commit([1]))}
        forged = objstore.sign(owner, dataclasses.replace(genuine, info={**genuine.info, "zk": zk}, sig=b""))
        forged_cid = CID.hash(DAG_CBOR, forged.encode())
        with store.write() as txn:  # as if c2 and the forgery had just been fetched: main still at c1
            txn.put_block(forged_cid, forged.encode())
            txn.set_ref(rid, "heads/main", bytes(c1))
        d = fake_daemon(history)
        penalized: list[str] = []
        d.penalize = lambda peer, reason: penalized.append(reason)

        trio.run(apply, d, rid, announce(owner, rid, forged_cid, 1))
        assert d.metrics.rejected["verify_failed"] == 1 and penalized == ["verify_failed"]
        assert main_head(history, rid) == c1 and not d.state.is_verified(rid, forged_cid)

        trio.run(apply, d, rid, announce(owner, rid, c2, 2))  # the genuine commit, same weights, is taken
        assert main_head(history, rid) == c2 and d.state.is_verified(rid, c2)
    finally:
        store.close()
