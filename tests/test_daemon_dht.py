"""Discovery: clone by repository id through the Kademlia DHT; peers found by mDNS."""

from __future__ import annotations

from pathlib import Path

from helpers import model_arrays
from test_daemon_harness import DaemonProc, daemons, make_home, open_nodes, ref, wait_for

from fednode.history import repo_id_text
from fednode.modelio import ArraySource


def test_clone_finds_the_owner_through_the_dht(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    try:
        info, genesis = na.history.create_repo("m", ArraySource(model_arrays(0)))
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


def test_mdns_peers_find_each_other_without_bootstrap(tmp_path: Path) -> None:
    a = DaemonProc(make_home(tmp_path, "a"), args=("--mdns",))
    b = DaemonProc(make_home(tmp_path, "b"), args=("--mdns",))
    with daemons(a, b):
        a.start()
        b.start()
        wait_for(lambda: b.peer_id in {p["peer_id"] for p in a.api("GET", "/peers")}
                 or a.peer_id in {p["peer_id"] for p in b.api("GET", "/peers")}, 20, "mDNS discovery", 0.2)
