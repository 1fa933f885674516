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


def _peer_ids(n: int) -> list[str]:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    return [str(ID.from_pubkey(create_new_key_pair().public_key)) for _ in range(n)]


def test_stored_peer_addresses_are_bounded(tmp_path: Path) -> None:
    """A peer chooses the addresses it advertises (identify allows 1,000; a DHT record any number):
    at most MAX_PEER_ADDRS are stored, none naming another peer, none over MAX_ADDR_CHARS; a new
    peer is not stored past the limit; rows an older version stored are read with the same bounds."""
    from fednode.storage.netstate import MAX_ADDR_CHARS, MAX_PEER_ADDRS
    from fednode.storage.store import Store
    from protocol.dagcbor import encode

    me, other, third = _peer_ids(3)
    addrs = [f"/ip4/127.0.0.1/tcp/{4000 + i}" for i in range(1000)]
    store = Store(tmp_path / "s", sync=False)
    try:
        state = NetState(store)
        odd = [f"/ip4/10.0.0.1/tcp/1/p2p/{other}", "/dns4/" + "x" * MAX_ADDR_CHARS + "/tcp/1",
               f"/ip4/10.0.0.2/tcp/1/p2p/{me}"]
        assert state.put_peer(me, odd + addrs, limit=2)
        assert state.peers() == {me: [odd[2], *addrs[:MAX_PEER_ADDRS - 1]]}
        assert not state.put_peer(other, [f"/ip4/10.0.0.1/tcp/1/p2p/{third}"], limit=2)  # nothing left
        assert state.put_peer(other, addrs[:1], limit=2)
        assert not state.put_peer(third, addrs[:1], limit=2)  # two stored: a third is not
        assert state.put_peer(me, addrs[5:6], limit=2)  # a stored one is updated
        with store.write() as txn:  # as a version without the bounds stored it
            txn.kv_put(DB, b"peer/" + third.encode(), encode(addrs))
        assert state.peers()[third] == addrs[:MAX_PEER_ADDRS] and state.peers()[me] == addrs[5:6]
    finally:
        store.close()


def test_a_connect_round_parses_only_the_addresses_of_peers_due(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The connect loop runs every 0.25 s over every stored peer: it parsed each stored address each
    time (208 us each; 256 peers of 1,000 addresses were ~53 s a round). Now a round reads peer ids
    from the keys and leaves the parsing to the dials it starts."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from fednode.daemon import host as hostmod
    from fednode.daemon.metrics import Metrics
    from fednode.daemon.peers import Peers
    from fednode.daemon.redial import MAX_STORED_PEERS
    from fednode.storage.store import Store

    parsed: list[str] = []
    real_parse = hostmod.parse_addrs
    monkeypatch.setattr(hostmod, "parse_addrs", lambda a: parsed.extend(a) or real_parse(a))
    spawned: list[tuple[str, list[str]]] = []

    class Record:  # the daemon's task spawner, recording instead of dialling
        def spawn(self, where, fn, *args) -> None:  # type: ignore[no-untyped-def]
            spawned.append((args[1], args[2]))

    class NoBans:
        def is_banned(self, peer: object) -> bool:
            return False

    store = Store(tmp_path / "s", sync=False)
    try:
        state = NetState(store)
        ids = _peer_ids(20)
        for i, pid in enumerate(ids):
            state.put_peer(pid, [f"/ip4/127.0.0.1/tcp/{5000 + i}", f"/ip4/127.0.0.2/tcp/{5000 + i}"],
                           limit=MAX_STORED_PEERS)
        boot = _peer_ids(1)[0]
        peers = Peers(hostmod.build_host(create_new_key_pair()), state, NoBans(), Metrics(), Record(),  # type: ignore[arg-type]
                      [f"/ip4/127.0.0.1/tcp/4999/p2p/{boot}", "/not/an/address"], False, lambda p: None)
        redial = Redial()
        peers._connect_round(redial)  # every peer is due: one dial each, both of its addresses
        assert sorted(p for p, _ in spawned) == sorted([*ids, boot])
        assert dict(spawned)[ids[3]] == [f"/ip4/127.0.0.{i}/tcp/5003/p2p/{ids[3]}" for i in (1, 2)]
        assert len(parsed) == 2  # the bootstrap addresses, once each; stored ones are parsed by the dials
        spawned.clear()
        for _ in range(3):
            peers._connect_round(redial)  # all still dialling: nothing due, nothing parsed
        assert spawned == [] and len(parsed) == 2
        for pid in [*ids, boot]:
            redial.dialing.discard(pid)
            redial.failed(pid)
        peers._connect_round(redial)  # backing off: nothing due
        assert spawned == [] and len(parsed) == 2
    finally:
        store.close()
