"""Three real daemons on 127.0.0.1: clone, member commits, owner fast-forwards, restart catch-up."""

from __future__ import annotations

import json
import time
from pathlib import Path

from daemon_harness import DaemonProc, daemons, has_block, make_home, network_config, open_nodes, ref, wait_for
from helpers import model_arrays, perturb, run_fednode

from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource
from fednode.workflows.fsck import fsck
from fednode.workflows.verify import verify
from protocol import messages


def test_three_nodes_clone_commit_propagate_and_catch_up(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    try:
        v0 = model_arrays(0)
        info, genesis = na.history.create_repo("mnist", ArraySource(v0), visibility="public")
        rid = info.repo_id
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        c = DaemonProc(homes[2], (a.addr,))
        with daemons(a, b, c):
            b.start()
            c.start()
            # clone on B (API) and C (CLI) by repo id (their bootstrap points at A)
            res = b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 20})
            assert res["name"] == "mnist" and res["refs"]["heads/main"] == str(genesis.cid)
            res = json.loads(run_fednode(homes[2], "clone", repo_id_text(rid), "--json").stdout)
            assert res["name"] == "mnist" and res["refs"]["heads/main"] == str(genesis.cid)
            log = json.loads(run_fednode(homes[2], "log", "--json").stdout)  # clone selected the repo
            assert [e["cid"] for e in log] == [str(genesis.cid)]
            for node in (nb, nc):
                assert node.history.repo("mnist").repo_id == rid
                assert not fsck(node.history).problems
            # the owner makes B a member; the signed membership reaches B and C by gossip
            a.api("POST", "/members", {"repo": "mnist", "members": [nb.identity.address]})
            for node in (nb, nc):
                wait_for(lambda n=node: _member_count(n, rid) == 1, 10, "membership to arrive")

            # a commit on B (a member) reaches A and C within 2 s
            v1 = perturb(v0, 1)
            r1 = nb.history.commit(nb.history.repo("mnist"), ArraySource(v1), "b: epoch 1")
            t0 = time.monotonic()
            b.api("POST", "/push", {"repo": "mnist"})
            for node in (na, nc):
                wait_for(lambda n=node: has_block(n, r1.cid), 2.0, "B's commit to propagate")
            latency = time.monotonic() - t0
            # ... and once all its blocks are fetched and verified it is a remote-tracking ref, not main
            for node in (na, nc):
                wait_for(lambda n=node: ref(n, rid, f"remotes/{b.peer_id}/main") == r1.cid, 10, "remote ref")
                assert ref(node, rid, "heads/main") == genesis.cid  # only the owner moves branches
                assert not verify(node.history, node.history.repo("mnist"), r1.cid).problems
            print(f"member commit propagation (push -> stored on A and C): {latency * 1000:.0f} ms")

            # the owner merges B's work by committing on top of it and pushing: B and C fast-forward
            with na.store.write() as txn:
                txn.set_ref(rid, "heads/main", bytes(r1.cid))
            r2 = na.history.commit(na.history.repo("mnist"), ArraySource(perturb(v1, 2)), "a: epoch 2")
            a.api("POST", "/push", {"repo": "mnist"})
            for node in (nb, nc):
                wait_for(lambda n=node: ref(n, rid, "heads/main") == r2.cid, 10, "fast-forward of main")

            # C goes away; A commits; C restarts and catches up from its peers
            assert c.stop() == 0
            assert not (homes[2] / "daemon.json").exists()
            r3 = na.history.commit(na.history.repo("mnist"), ArraySource(perturb(v1, 3)), "a: epoch 3")
            unconfirmed = a.api("POST", "/push", {"repo": "mnist", "confirm": False})  # no ack asked: benches
            assert unconfirmed["accepted_by"] is None and unconfirmed["pushed"][0]["head"] == str(r3.cid)
            wait_for(lambda: ref(nb, rid, "heads/main") == r3.cid, 10, "B to get epoch 3")
            assert ref(nc, rid, "heads/main") == r2.cid
            c.start()
            wait_for(lambda: ref(nc, rid, "heads/main") == r3.cid, 15, "C to catch up after restart")
            pulled = json.loads(run_fednode(homes[2], "pull", "mnist", "--json").stdout)  # the CLI path
            assert pulled["refs"]["heads/main"] == str(r3.cid) and not pulled["errors"]
            assert not fsck(nc.history).problems
            # C is no member: its merge proposal is refused while the repository is private,
            # accepted (and fetched into proposals/<C>/main on A) once the owner makes it public
            rc = nc.history.commit(nc.history.repo("mnist"), ArraySource(perturb(v1, 9)), "c: an idea")
            refused = c.api("POST", "/propose", {"repo": "mnist", "message": "take mine"}, expect=403)
            assert "not_member" in refused["error"]
            a.api("POST", "/members", {"repo": "mnist", "members": [nb.identity.address], "public": True})
            wait_for(lambda: _membership(nc, rid).public, 10, "public membership to reach C")
            c.api("POST", "/propose", {"repo": "mnist", "message": "take mine"})
            wait_for(lambda: ref(na, rid, f"proposals/{c.peer_id}/main") == rc.cid, 10, "proposal on A")
            assert ref(na, rid, "heads/main") == r3.cid
            assert a.metrics()["published"]["head"] == 2 and b.metrics()["accepted"]["head"] >= 2
            # nothing was rejected on the honest path
            for d in (a, b, c):
                assert not {k: v for k, v in d.metrics()["rejected"].items() if k not in ("duplicate", "replay")}
    finally:
        for n in (na, nb, nc):
            n.close()


def _membership(node, rid: bytes) -> messages.Membership | None:
    with node.store.read() as txn:
        raw = txn.kv_get("net", b"members/" + rid)
    return messages.decode(raw) if raw else None


def _member_count(node, rid: bytes) -> int:
    ms = _membership(node, rid)
    return -1 if ms is None else len(ms.members)


def test_anti_entropy_brings_unpushed_commits(tmp_path: Path) -> None:
    """No push, no pull: the periodic heads exchange alone moves B's branch to A's new head."""
    homes = [make_home(tmp_path, n) for n in "ab"]
    network_config(homes[1], sync_interval=1.0)
    na, nb = open_nodes(*homes)
    try:
        info, genesis = na.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        with daemons(a, b):
            b.start()
            b.api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 20})
            r1 = na.history.commit(na.history.repo("m"), ArraySource(perturb(model_arrays(0), 1)), "quiet")
            assert ref(nb, info.repo_id, "heads/main") == genesis.cid
            wait_for(lambda: ref(nb, info.repo_id, "heads/main") == r1.cid, 10, "anti-entropy")
            # later rounds find nothing new: no fetch (nor verification) is started again
            time.sleep(0.5)
            done = b.metrics()["fetches_done"]
            time.sleep(2.5)
            assert b.metrics()["fetches_done"] == done
    finally:
        for n in (na, nb):
            n.close()
