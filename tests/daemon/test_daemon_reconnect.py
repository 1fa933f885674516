"""Fast reconnection: when the node everyone bootstrapped from restarts on its port, every peer is
connected to it again within seconds (before: ~50 s, py-libp2p's 60 s negative dial cache and our
connect loop's backoff that never reset) and the next commit reaches everyone. Real daemons."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon_harness import DaemonProc, daemons, make_home, open_nodes, ref, wait_for
from helpers import model_arrays
from test_daemon_startup import FixedPortDaemon, free_port

from fednode.daemon.redial import REDIAL_MAX_S, REDIAL_MIN_S, Redial, dialable
from fednode.history import repo_id_text
from fednode.storage.netstate import DB, NetState
from fednode.tensors.modelio import ArraySource

RECONNECT_S = 5.0


@contextmanager
def star(homes: list[Path]) -> Iterator[tuple[FixedPortDaemon, DaemonProc, DaemonProc]]:
    """A on a fixed port (a restart keeps its address); B and C bootstrap from it. All stopped at the end."""
    a = FixedPortDaemon(homes[0], free_port())
    with daemons(a):
        a.start()
        boot = f"/ip4/127.0.0.1/tcp/{a.port}/p2p/{a.peer_id}"
        b, c = DaemonProc(homes[1], (boot,)), DaemonProc(homes[2], (boot,))
        with daemons(b, c):
            b.start()
            c.start()
            yield a, b, c


def connected(d: DaemonProc) -> set[str]:
    return {p["peer_id"] for p in d.api("GET", "/peers")}


def test_peers_reconnect_within_seconds_when_the_bootstrap_node_restarts(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    try:
        info, _ = na.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        rid = info.repo_id
        with star(homes) as (a, b, c):
            for d in (b, c):
                d.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
            wait_for(lambda: connected(a) >= {b.peer_id, c.peer_id}, 10, "B and C to connect to A")
            # A remembers the peers that dialled it, to redial them when it restarts
            wait_for(lambda: set(NetState(na.store).peers()) >= {b.peer_id, c.peer_id}, 5, "A to store B and C")
            time.sleep(2)  # long enough for a connect loop's backoff to have grown

            assert a.stop() == 0
            time.sleep(1)  # down for a moment: B and C notice and fail to redial
            a.start()
            restarted = time.monotonic()
            wait_for(lambda: connected(a) >= {b.peer_id, c.peer_id} and a.peer_id in connected(b)
                     and a.peer_id in connected(c), RECONNECT_S, "all peers to reconnect to the restarted A")
            print(f"reconnected {time.monotonic() - restarted:.2f} s after A was back")

            r1 = na.history.commit(na.history.repo("m"), ArraySource(model_arrays(1)), "after restart")
            a.api("POST", "/push", {"repo": "m"})
            wait_for(lambda: ref(nb, rid, "heads/main") == r1.cid and ref(nc, rid, "heads/main") == r1.cid,
                     10, "the commit to reach B and C")
    finally:
        for n in (na, nb, nc):
            n.close()


def test_peers_redial_a_restarted_node_that_forgot_them(tmp_path: Path) -> None:
    """Only B and C can restore the connections here: A restarts with no stored peers, after an
    outage during which their dials failed (py-libp2p then refused to dial A for 60 s)."""
    homes = [make_home(tmp_path, n) for n in "abc"]
    (na,) = open_nodes(homes[0])
    try:
        with star(homes) as (a, b, c):
            wait_for(lambda: connected(a) >= {b.peer_id, c.peer_id}, 10, "B and C to connect to A")
            assert a.stop() == 0
            with na.store.write() as txn:
                for key, _ in txn.kv_items(DB, b"peer/"):
                    txn.kv_delete(DB, key)
            time.sleep(3)  # several failed redials
            assert not NetState(na.store).peers()
            a.start()
            restarted = time.monotonic()
            wait_for(lambda: a.peer_id in connected(b) and a.peer_id in connected(c), RECONNECT_S,
                     "B and C to redial the restarted A")
            print(f"redialled {time.monotonic() - restarted:.2f} s after A was back")
            assert any(e["event"] == "dial_failed" for e in b.log_events())  # they did fail meanwhile
    finally:
        na.close()


def test_redial_backoff_doubles_to_a_cap_and_resets_on_any_connection() -> None:
    now = [0.0]
    r = Redial(clock=lambda: now[0])
    assert r.due("p")
    delays = []
    for _ in range(8):
        r.failed("p")
        start = now[0]
        while not r.due("p"):
            now[0] += 0.01
        delays.append(now[0] - start)
    assert 0.8 * REDIAL_MIN_S <= delays[0] <= 1.2 * REDIAL_MIN_S + 0.01
    assert delays[1] > delays[0] * 1.3 and max(delays) <= 1.2 * REDIAL_MAX_S + 0.01
    assert delays[-1] >= 0.8 * REDIAL_MAX_S
    r.failed("p")
    assert not r.due("p")
    r.seen({"p"})  # it dialled us: its backoff is gone
    r.seen(set())  # and when that connection drops, it is due at once
    assert r.due("p")
    r.failed("p")
    r.succeeded("p")
    assert r.due("p")
    r.dialing.add("p")
    assert not r.due("p")  # one dial at a time per peer


def test_unspecified_listen_addresses_are_not_stored_for_redialling() -> None:
    assert not dialable("/ip4/0.0.0.0/tcp/4001/p2p/12D3KooW") and not dialable("/ip6/::/tcp/4001")
    assert dialable("/ip4/127.0.0.1/tcp/4001") and dialable("/ip6/::1/tcp/4001")
