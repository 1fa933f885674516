"""Gossip in a repository that requires update proofs (issue 15 item 4): a peer's commit without a valid
proof, or a merge proposal of such a head, is refused as ``bad_proof`` and the forwarder is penalized,
on a real store with real keys and proofs (no network: ``Gossip``'s topic validator, as
``test_daemon_validate`` drives it); a fetched head without one fails the daemon's verification."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import trio
from helpers import fixed_identity
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from test_daemon_verify import announce, apply, fake_daemon, main_head

from fednode.daemon.gossip import Gossip
from fednode.daemon.validate import BAD_PROOF, PENALIZED, Validator
from fednode.history import objstore
from fednode.identity import Identity
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows import zkpolicy
from fednode.workflows.commitments import ZkHistory, ZkSettings
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR

W0 = np.array([[0.5, -0.25, 0.125], [1.0, 0.75, -0.5]], dtype=np.float32)
B0 = np.array([0.1, -0.2], dtype=np.float32)


def _model(dw: float) -> ArraySource:
    return ArraySource({"w": ("F32", (W0 + np.float32(dw)).astype(np.float32)), "b": ("F32", B0)})


def test_gossip_refuses_updates_without_a_valid_proof(tmp_path: Path, zk_policy_keys: Path) -> None:
    owner = fixed_identity()
    store = Store(tmp_path / "store")
    try:
        history = ZkHistory(store, owner, ZkSettings(cache_dir=tmp_path / "zk", keys=zk_policy_keys))
        entry, _ = zkpolicy.make_policy(zk_policy_keys, 1.0, _model(0.0))
        info, _ = history.create_repo("r", _model(0.0), visibility="public", zk_policy=entry)
        rid = info.repo_id
        genuine = history.commit(info, _model(2.0**-14), "proven").commit
        stripped = {k: v for k, v in genuine.info["zk"].items() if k != "proof"}
        unproven = objstore.sign(owner, dataclasses.replace(genuine, info={**genuine.info, "zk": stripped}, sig=b""))
        moved = objstore.sign(owner, dataclasses.replace(genuine, message="the proof of another commit", sig=b""))

        state = NetState(store)
        penalized: list[str] = []
        metrics = SimpleNamespace(rejected=Counter(), accepted=Counter(), published=Counter(), errors=Counter())
        gossip = Gossip(store, state, Validator(store, state), metrics, None,  # type: ignore[arg-type]
                        SimpleNamespace(penalize=lambda peer, reason: penalized.append(reason)),
                        SimpleNamespace(schedule=lambda *args: None))
        gossip.start(None, ID.from_base58(Identity.generate().peer_id))  # type: ignore[arg-type]
        validate = gossip.validator_for(rid)
        forwarder = ID.from_base58(Identity.generate().peer_id)

        def judged(data: bytes, seq: bytes) -> bool:
            return validate(forwarder, rpc_pb2.Message(from_id=ID.from_base58(owner.peer_id).to_bytes(), data=data,
                                                       seqno=seq))

        v = gossip.validator
        assert v.validate(m.CommitEnvelope(genuine.encode()).encode(), rid, from_self=True).ok
        assert v.validate(m.CommitEnvelope(unproven.encode()).encode(), rid, from_self=True).reason == BAD_PROOF
        assert not judged(m.CommitEnvelope(unproven.encode()).encode(), b"1")
        assert not judged(m.CommitEnvelope(moved.encode()).encode(), b"2")
        assert BAD_PROOF in PENALIZED and penalized == [BAD_PROOF, BAD_PROOF]
        assert metrics.rejected[BAD_PROOF] == 2

        # a proposal to merge a held head that fails the policy is refused too; a proven head's is not
        unproven_cid = CID.hash(DAG_CBOR, unproven.encode())
        with store.write() as txn:
            txn.put_block(unproven_cid, unproven.encode())
        for seq, (head, reason) in enumerate([(unproven_cid, BAD_PROOF), (genuine.cid(), None)], start=1):
            prop = m.MergeProposal(rid, "main", head, "merge me", seq, 1, owner.public_key)
            signed = dataclasses.replace(prop, sig=owner.sign(prop.signing_hash())).encode()
            assert v.validate(signed, rid, from_self=False).reason == reason
    finally:
        store.close()


def test_a_fetched_head_without_a_proof_is_refused(tmp_path: Path, zk_policy_keys: Path) -> None:
    """The daemon's verification of a fetched head (``Applier``) runs the policy's check too."""
    owner = fixed_identity()
    store = Store(tmp_path / "store")
    try:
        history = ZkHistory(store, owner, ZkSettings(cache_dir=tmp_path / "zk", keys=zk_policy_keys))
        entry, _ = zkpolicy.make_policy(zk_policy_keys, 1.0, _model(0.0))
        info, created = history.create_repo("r", _model(0.0), visibility="public", zk_policy=entry)
        rid = info.repo_id
        genuine = history.commit(info, _model(2.0**-14), "proven")
        stripped = {k: v for k, v in genuine.commit.info["zk"].items() if k != "proof"}
        unproven = objstore.sign(owner, dataclasses.replace(genuine.commit, info={**genuine.commit.info,
                                                                                  "zk": stripped}, sig=b""))
        unproven_cid = CID.hash(DAG_CBOR, unproven.encode())
        with store.write() as txn:  # as if both had just been fetched: main still at the genesis
            txn.put_block(unproven_cid, unproven.encode())
            txn.set_ref(rid, "heads/main", bytes(created.cid))
        d = fake_daemon(history)
        penalized: list[str] = []
        d.penalize = lambda peer, reason: penalized.append(reason)
        trio.run(apply, d, rid, announce(owner, rid, unproven_cid, 1))
        assert penalized == ["verify_failed"] and main_head(history, rid) == created.cid
        trio.run(apply, d, rid, announce(owner, rid, genuine.cid, 2))  # the proven commit, same weights
        assert main_head(history, rid) == genuine.cid and penalized == ["verify_failed"]
    finally:
        store.close()
