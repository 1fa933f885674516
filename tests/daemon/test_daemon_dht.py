"""Discovery: clone by repository id through the Kademlia DHT; branch heads provided in the DHT
and used when a fetch loses its provider; peers found by mDNS."""

from __future__ import annotations

import threading
from pathlib import Path

from daemon_harness import DaemonProc, big_model, daemons, make_home, open_nodes, ref, wait_for
from helpers import model_arrays

from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource
from fednode.workflows.fsck import fsck


def test_clone_finds_the_owner_through_the_dht(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    try:
        info, genesis = na.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        rid = info.repo_id
        b = DaemonProc(homes[1]).start()  # a plain DHT node that knows nothing of the repository
        a = DaemonProc(homes[0], (b.addr,))
        c = DaemonProc(homes[2], (b.addr,))
        with daemons(a, b, c):
            a.start()
            wait_for(lambda: any(e["event"] == "dht_provided" and e["ok"] for e in a.log_events()), 15,
                     "A to provide its repository")
            c.start()
            wait_for(lambda: c.api("GET", "/status")["peers"] == 1, 10, "C to connect to B")
            assert a.peer_id not in {p["peer_id"] for p in c.api("GET", "/peers")}
            res = c.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
            assert res["refs"]["heads/main"] == str(genesis.cid)
            assert ref(nc, rid, "heads/main") == genesis.cid
            assert a.peer_id in {p["peer_id"] for p in c.api("GET", "/peers")}
            assert ref(nb, rid, "genesis") is None  # B only routed
    finally:
        for n in (na, nb, nc):
            n.close()


def _provided(proc: DaemonProc, what: str) -> bool:
    return any(e["event"] == "dht_provided" and e["ok"] and e["what"] == what for e in proc.log_events())


def test_heads_are_provided_and_a_fetch_finds_a_new_provider_in_the_dht(tmp_path: Path) -> None:
    """A and D hold the repository; C is connected to A and to a plain DHT node B, not to D. A is
    killed while it serves C: C looks the commit up in the DHT, dials D and finishes from it."""
    homes = [make_home(tmp_path, n) for n in "abcd"]
    na, nb, nc, nd = open_nodes(*homes)
    try:
        info, genesis = na.history.create_repo("big", ArraySource(big_model(0)), visibility="public")
        rid, head = info.repo_id, f"head {genesis.cid}"
        b = DaemonProc(homes[1]).start()
        a = DaemonProc(homes[0], (b.addr,), env={"FEDNODE_BLOCK_SERVE_DELAY": "0.05"})
        d = DaemonProc(homes[3], (b.addr,))
        c = DaemonProc(homes[2], (b.addr,))
        with daemons(a, b, c, d):
            a.start()
            wait_for(lambda: _provided(a, head), 15, "A to provide its branch head")
            d.start()
            d.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})  # found A by repo id
            wait_for(lambda: _provided(d, head), 15, "D to provide the head it now holds")
            found = wait_for(lambda: {p["peer_id"] for p in b.api("POST", "/providers", {"cid": str(genesis.cid)})}
                             >= {a.peer_id, d.peer_id} or None, 15, "the DHT to list A and D")
            assert found
            c.bootstrap = (b.addr, a.addr)
            c.start()
            wait_for(lambda: c.api("GET", "/status")["peers"] == 2, 10, "C to connect to A and B")
            assert d.peer_id not in {p["peer_id"] for p in c.api("GET", "/peers")}
            served = a.metrics()["blocks_out"]  # what A served D
            result: dict = {}
            thread = threading.Thread(target=lambda: result.update(
                c.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 60})))
            thread.start()
            wait_for(lambda: a.metrics()["blocks_out"] >= served + 4, 10, "A to start serving C", interval=0.01)
            a.kill()
            thread.join(timeout=90)
            assert result.get("refs", {}).get("heads/main") == str(genesis.cid), result
            assert not fsck(nc.history).problems
            lookups = [e for e in c.log_events() if e["event"] == "dht_providers"
                       and e["what"] == f"commit {genesis.cid}"]
            assert any(d.peer_id in e["found"] for e in lookups), lookups
            assert d.metrics()["blocks_out"] > 0
            assert ref(nb, rid, "genesis") is None  # B only routed
    finally:
        for n in (na, nb, nc, nd):
            n.close()


def test_mdns_peers_find_each_other_without_bootstrap(tmp_path: Path) -> None:
    a = DaemonProc(make_home(tmp_path, "a"), args=("--mdns",))
    b = DaemonProc(make_home(tmp_path, "b"), args=("--mdns",))
    with daemons(a, b):
        a.start()
        b.start()
        wait_for(lambda: b.peer_id in {p["peer_id"] for p in a.api("GET", "/peers")}
                 or a.peer_id in {p["peer_id"] for p in b.api("GET", "/peers")}, 20, "mDNS discovery", 0.2)
