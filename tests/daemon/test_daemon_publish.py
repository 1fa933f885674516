"""The owner's decision to make a private repository public travels like any commit: a member's
node that pulls it verifies it and sees the repository public; a forged decision by a member is
rejected and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from daemon_harness import DaemonProc, daemons, make_home, open_nodes, ref, wait_for
from helpers import model_arrays, perturb, run_fednode

from fednode.history import objstore, refs, refstore, repo_id_text
from fednode.node import Node
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, Manifest, TensorEntry


def _forge_publish(node: Node, name: str) -> CID:
    """A publish decision signed by ``node`` (not the owner) on its own main: no tensor changed."""
    history = node.history
    info = history.repo(name)
    head = history.branch_head(info, "main")
    parent = history.load_commit(head)
    manifest = Manifest({n: TensorEntry(e.dtype, e.shape, "same", e.depth + 1, state=e.state)
                         for n, e in history.load_manifest(parent.weights).tensors.items()})
    commit = objstore.sign(node.identity, Commit(
        repo=info.repo_id, parents=(head,), parent_hashes=(parent.commit_hash(),), kind="update",
        weights=CID.hash(DAG_CBOR, manifest.encode()), author=node.identity.public_key,
        time_ms=parent.time_ms + 1, message="make the repository public", metrics={},
        info={"visibility": "public"}))
    with node.store.write() as txn:
        objstore.put_objects(txn, manifest, commit)
        refstore.set_branch(txn, info.repo_id, "main", commit.cid())
        txn.index_commit(commit.cid(), info.repo_id, commit.commit_hash())
    return commit.cid()


def test_a_published_repository_becomes_public_on_a_members_node(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in ("owner", "member", "forger")]
    na, nb, nc = open_nodes(*homes)
    try:
        v0 = model_arrays(0)
        info, genesis = na.history.create_repo("m", ArraySource(v0))  # private: the default
        rid = info.repo_id
        na.history.commit(info, ArraySource(perturb(v0, 1)), "one")
        a = DaemonProc(homes[0]).start()
        b, c = DaemonProc(homes[1], (a.addr,)), DaemonProc(homes[2], (a.addr,))
        with daemons(a, b, c):
            # B and C may read (members); C will try to publish in the owner's place
            a.api("POST", "/members", {"repo": "m", "members": [nb.identity.address, nc.identity.address]})
            for d, node in ((b, nb), (c, nc)):
                d.start()
                d.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
                wait_for(lambda n=node: ref(n, rid, "heads/main") == na.history.branch_head(info, "main"), 20,
                         "the clone to hold the owner's main")
            assert nb.history.visibility(rid) == "private"
            # a member's forged decision: A fetches it, rejects it, stays private
            forged = _forge_publish(nc, "m")
            c.api("POST", "/push", {"repo": "m", "confirm": False})
            wait_for(lambda: a.metrics()["rejected"].get("verify_failed", 0) >= 1, 20, "A to reject C's forgery")
            assert na.history.visibility(rid) == "private" and ref(na, rid, refs.PUBLISHED) is None
            assert ref(na, rid, f"remotes/{c.peer_id}/main") != forged
            assert ref(nb, rid, refs.PUBLISHED) is None
            # the owner's decision reaches B, which verifies it and sees the repository public
            published = na.history.publish(info)
            assert na.history.visibility(rid) == "public"
            a.api("POST", "/push", {"repo": "m", "confirm": False})
            pulled = json.loads(run_fednode(homes[1], "pull", "m", "--json").stdout)  # B pulls
            assert pulled["refs"]["heads/main"] == str(published.cid), pulled
            wait_for(lambda: ref(nb, rid, refs.PUBLISHED) == published.cid, 10, "B to record the decision")
            assert nb.history.visibility(rid) == "public"
            wait_for(lambda: ref(nb, rid, "heads/main") == published.cid, 10, "B's main to fast-forward")
            assert published.cid != genesis.cid
            assert b.metrics()["rejected"].get("verify_failed", 0) == 0 or ref(nb, rid, refs.PUBLISHED) != forged
    finally:
        for n in (na, nb, nc):
            n.close()
