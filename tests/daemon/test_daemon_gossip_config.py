"""Gossip as configured: the heartbeat stays at 1 s past py-libp2p's adaptation point; inbound
connections announce to the DHT; repositories created while the daemon runs are followed at once;
a node never records its own announcements as a remote of itself."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from daemon_harness import DaemonProc, daemons, make_home, open_nodes, ref, wait_for
from helpers import model_arrays, perturb, run_fednode, write_model

from fednode.daemon import host as hostmod
from fednode.daemon.service import Daemon
from fednode.history import parse_repo_id, repo_id_text
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource
from protocol import messages as m

HEALTH_PERIOD = 30  # py-libp2p 0.8.1 gossipsub._update_network_health re-scores (and adapts) every 30 s


async def test_heartbeat_stays_at_the_configured_interval_past_the_adaptation_period(tmp_path: Path) -> None:
    """A real Daemon whose router believes 30 s have passed since its last health check: with
    adaptive gossip on (py-libp2p's default), the next heartbeat scores a lone node's mesh as poor
    health and stretches the beat to 30 s; ours keeps beating every second. Backdating the router's
    clock of its last check stands in for 30 s of wall time."""
    node = open_node(make_home(tmp_path, "a"))
    try:
        node.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        d = Daemon(node, ["/ip4/127.0.0.1/tcp/0"], [])
        async with trio.open_nursery() as nursery:
            await nursery.start(d.run)
            router = d.pubsub.router
            assert router.mesh  # subscribed to the repository's topic: there is a mesh to score
            beats: list[float] = []
            shift = router.mcache.shift

            def counted_shift() -> None:  # the heartbeat shifts the message cache once per beat
                beats.append(trio.current_time())
                shift()

            router.mcache.shift = counted_shift
            router.last_health_update -= HEALTH_PERIOD + 1
            await trio.sleep(3.5)
            assert router.heartbeat_interval == hostmod.HEARTBEAT_S
            assert len(beats) >= 2, f"{len(beats)} heartbeats in 3.5 s"  # adapted: 1, then one per 30 s
            assert max(b - a for a, b in zip(beats, beats[1:], strict=False)) < 2 * hostmod.HEARTBEAT_S
            nursery.cancel_scope.cancel()
    finally:
        node.close()


def _provided(proc: DaemonProc, what: str) -> bool:
    return any(e["event"] == "dht_provided" and e["ok"] and e["what"] == what for e in proc.log_events())


def test_a_node_that_is_only_dialled_provides_its_repository(tmp_path: Path) -> None:
    """A dials nobody; B dials A, C dials B. C finds A as the repository's provider through B."""
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    try:
        info, genesis = na.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        a = DaemonProc(homes[0])
        b = DaemonProc(homes[1])
        c = DaemonProc(homes[2])
        with daemons(a, b, c):
            a.start()
            b.bootstrap = (a.addr,)
            b.start()
            wait_for(lambda: _provided(a, f"repo {repo_id_text(info.repo_id)}"), 10, "A to provide its repository")
            c.bootstrap = (b.addr,)
            c.start()
            wait_for(lambda: c.api("GET", "/status")["peers"] >= 1, 10, "C to connect to B")
            assert a.peer_id not in {p["peer_id"] for p in c.api("GET", "/peers")}
            body = {"cid": str(genesis.cid)}
            providers = wait_for(lambda: {p["peer_id"] for p in c.api("POST", "/providers", body)} or None,
                                 10, "C to find a provider")
            assert providers == {a.peer_id}
            assert not any(e["event"] == "peer_connected" for e in a.log_events())  # A never dialled
    finally:
        for n in (na, nb, nc):
            n.close()


def test_a_repository_created_while_the_daemon_runs_is_followed_at_once(tmp_path: Path) -> None:
    """A and B are connected only through a DHT node C. A's operator creates a repository with
    the CLI while A runs: A subscribes to its topic and provides it, so B clones it through the DHT."""
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    for n in (na, nb, nc):
        n.close()  # the CLI and the daemons open the stores themselves
    c = DaemonProc(homes[2])
    a = DaemonProc(homes[0])
    b = DaemonProc(homes[1])
    with daemons(a, b, c):
        c.start()
        a.bootstrap = b.bootstrap = (c.addr,)
        a.start()
        b.start()
        wait_for(lambda: b.api("GET", "/status")["peers"] >= 1, 10, "B to connect to C")
        model = write_model(tmp_path / "model.safetensors", perturb(model_arrays(0), 1))
        out = run_fednode(homes[0], "repo", "create", "late", "--public", "--from", str(model), "--json").stdout
        created = json.loads(out)
        topic = m.topic_for(parse_repo_id(created["id"]) or b"")
        wait_for(lambda: topic in a.api("GET", "/status")["topics"], 3, "A to subscribe to the new repository")
        res = b.api("POST", "/clone", {"repo": created["id"], "timeout": 20})
        assert res["refs"]["heads/main"] == created["genesis"]


def test_own_announcements_relayed_back_never_become_a_remote_of_ourselves(tmp_path: Path) -> None:
    """P cloned O's repository and keeps O's announcement of the genesis. O commits on, then pulls
    from P: P hands O its own, now stale, announcement. It must not become remotes/<O>/main."""
    homes = [make_home(tmp_path, n) for n in "op"]
    no, np_ = open_nodes(*homes)
    try:
        info, genesis = no.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        rid = repo_id_text(info.repo_id)
        o = DaemonProc(homes[0])
        p = DaemonProc(homes[1])
        with daemons(o, p):
            o.start()
            p.bootstrap = (o.addr,)
            p.start()
            assert p.api("POST", "/clone", {"repo": rid, "timeout": 20})["refs"]["heads/main"] == str(genesis.cid)
            c1 = no.history.commit(no.history.repo("m"), ArraySource(perturb(model_arrays(0), 1)), "o: on")
            res = o.api("POST", "/pull", {"repo": rid, "timeout": 20})
            assert res["errors"] == [] and res["fetched"] + res["pending"] == 0, res  # nothing to fetch
            assert ref(no, info.repo_id, "heads/main") == c1.cid
            assert not [k for k in res["refs"] if k.startswith(f"remotes/{o.peer_id}/")], res["refs"]
            assert ref(no, info.repo_id, f"remotes/{o.peer_id}/main") is None
    finally:
        no.close()
        np_.close()
