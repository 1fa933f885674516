"""Limits on what a peer can make a daemon do: per-peer heads query rate, no store writes per
query (signed answers are cached), a cap on what one fetch may store; and the token buckets."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import trio
from daemon_harness import DaemonProc, daemons, make_home, network_config, open_nodes, wait_for
from helpers import model_arrays

from fednode.daemon.ratelimit import TokenBuckets
from fednode.daemon.service import HEADS_BURST, HEADS_RATE
from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_buckets_burst_refill_and_bounded_memory() -> None:
    clock = Clock()
    tb = TokenBuckets(rate=2.0, burst=3.0, max_keys=2, clock=clock)
    assert [tb.take("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back
    assert tb.take("a") and not tb.take("a")
    assert tb.take("b")  # another key has its own bucket
    clock.now += 100
    assert [tb.take("a") for _ in range(4)] == [True, True, True, False]  # never more than the burst
    tb.take("c")  # a third key: the least recently used one ("b") is forgotten
    assert set(tb._buckets) == {"a", "c"}


def test_pacing_spends_past_empty_and_says_how_long_to_wait() -> None:
    clock = Clock()
    tb = TokenBuckets(rate=100.0, burst=200.0, clock=clock)
    assert tb.pace("a", 150) == 0  # within the burst: at once
    assert tb.pace("a", 150) == pytest.approx(1.0)  # 100 tokens short: a second at 100 a second
    assert tb.pace("b", 10) == 0  # another key has its own bucket
    clock.now += 1.0  # the wait is over: the debt is paid, nothing saved
    assert tb.pace("a", 100) == pytest.approx(1.0)
    clock.now += 1000
    assert tb.pace("a", 300) == pytest.approx(1.0)  # never more saved than the burst


async def _hammer(addr: str, repo_id: bytes, queries: int) -> list[str]:
    """One real py-libp2p host (Noise, yamux) asking ``queries`` heads queries back to back."""
    import multiaddr
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from fednode.daemon import wire
    from fednode.daemon.host import build_host
    from protocol import messages as m

    host = build_host(create_new_key_pair())
    outcomes = []
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        with trio.fail_after(30):
            await host.connect(info)
            for _ in range(queries):
                try:  # a refusal is a reset: during protocol negotiation or right after it
                    stream = await host.new_stream(info.peer_id, [TProtocol(m.HEADS_PROTOCOL)])
                    await wire.write_frame(stream, m.encode_heads_query(repo_id))
                    reply = m.HeadsReply.decode(await wire.read_frame(stream, 1 << 20, timeout=5))
                    outcomes.append("answered" if reply.heads else "empty")
                except Exception:  # StreamFailure, FrameError: reset by the daemon
                    outcomes.append("refused")
    return outcomes


def _own_seq(node, repo_id: bytes) -> bytes | None:
    with node.store.read() as txn:
        return txn.kv_get("net", b"own/" + repo_id)


@pytest.mark.trio
async def test_heads_queries_are_rate_limited_and_write_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path, "a")
    (node,) = open_nodes(home)
    try:
        info, _ = node.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        a = DaemonProc(home)
        with daemons(a):
            a.start()
            first = await _hammer(a.addr, info.repo_id, 1)
            seq = _own_seq(node, info.repo_id)
            assert first == ["answered"] and seq is not None
            start = time.monotonic()
            outcomes = await _hammer(a.addr, info.repo_id, 3 * int(HEADS_BURST))
            elapsed = time.monotonic() - start
            answered = outcomes.count("answered")
            # a new peer gets its burst, then what refills while it asks (HEADS_RATE a second)
            assert HEADS_BURST - 1 <= answered <= HEADS_BURST + HEADS_RATE * elapsed + 1, (answered, elapsed)
            assert outcomes.count("refused") == len(outcomes) - answered >= 1
            assert a.metrics()["refused_streams"]["rate_limited"] == outcomes.count("refused")
            assert _own_seq(node, info.repo_id) == seq  # answers were cached: no new seq, no store write
    finally:
        node.close()


def test_a_clone_larger_than_max_fetch_bytes_is_refused_once_and_forgotten(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "ab"]
    na, nb = open_nodes(*homes)
    try:
        rng = np.random.default_rng(0)
        info, _ = na.history.create_repo("big", ArraySource({"w": ("F32", rng.standard_normal(500_000)
                                                                   .astype(np.float32))}), visibility="public")  # 2 MB
        network_config(homes[1], max_fetch_bytes=1000000)
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        with daemons(a, b):
            b.start()
            wait_for(lambda: b.api("GET", "/status")["peers"] == 1, 10, "B to connect to A")
            err = b.api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 30}, expect=404)["error"]
            assert "larger than [network] max_fetch_bytes" in err
            events = [e for e in b.log_events() if e["event"] in ("fetch_refused", "fetch_incomplete")]
            assert [e["event"] for e in events] == ["fetch_incomplete", "fetch_refused"]  # one attempt, no retry
            assert events[1]["reason"] == "too_large" and 0 < events[1]["stored"] <= 1_000_000
            assert b.metrics()["rejected"]["fetch_too_large"] == 1
            with nb.store.read() as txn:
                assert txn.kv_items("net", b"fetch/") == []  # not resumed at the next start
                assert txn.list_repos() == {}
    finally:
        for n in (na, nb):
            n.close()


class Blacklist:
    """Stands in for py-libp2p's Pubsub blacklist (a set); the real one is exercised by the hostile test."""

    def __init__(self) -> None:
        self.peers: set = set()

    def add_to_blacklist(self, peer) -> None:
        self.peers.add(peer)

    def remove_from_blacklist(self, peer) -> None:
        self.peers.discard(peer)

    def is_peer_blacklisted(self, peer) -> bool:
        return peer in self.peers


def test_stored_bans_are_restored_until_they_expire(tmp_path: Path) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    from fednode.daemon.bans import Bans
    from fednode.daemon.metrics import Metrics
    from fednode.storage.netstate import NetState
    from fednode.storage.store import Store

    live, old = (ID.from_pubkey(create_new_key_pair().public_key) for _ in range(2))
    with Store(tmp_path / "s", sync=False) as store:
        # only the ban bookkeeping: a real store, a stand-in blacklist (no host, no tasks: nobody is banned here)
        state, blacklist = NetState(store), Blacklist()
        bans = Bans(state, Metrics(), None, None)  # type: ignore[arg-type]
        state.put_ban(str(live), time.time() + 3600, "bad_signature")
        state.put_ban(str(old), time.time() - 1, "malformed")
        state.put_ban("not a peer id", time.time() + 3600, "x")
        bans.start(blacklist)  # restores the stored bans
        assert blacklist.peers == {live}
        assert set(state.bans()) == {str(live)}  # the expired and the malformed entries are gone


async def test_the_event_loop_watchdog_counts_a_blocked_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from fednode.daemon import service
    from fednode.daemon.metrics import Metrics

    logged: list[tuple[str, dict]] = []
    monkeypatch.setattr(service, "log", lambda event, level="info", **kw: logged.append((event, kw)))
    monkeypatch.setattr(service, "STALL_SECONDS", 0.3)
    fake = SimpleNamespace(metrics=Metrics())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.Daemon._watch_loop, fake)
        await trio.sleep(0.6)  # a healthy loop: no stall
        assert fake.metrics.loop_stalls == 0 and fake.metrics.loop_lag_max < 0.3
        time.sleep(0.8)  # blocks the trio thread, as a slow synchronous call would
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert fake.metrics.loop_stalls == 1 and fake.metrics.loop_lag_max >= 0.5
    assert logged and logged[0][0] == "event_loop_stalled" and logged[0][1]["seconds"] >= 0.5
    assert "fednode_loop_stalls_total 1" in fake.metrics.prometheus(0)


def test_strikes_are_forgotten_after_an_hour_and_at_most_max_tracked_peers_are_kept(tmp_path: Path) -> None:
    """A peer is banned for ban_threshold strikes within STRIKE_MEMORY_SECONDS of each other (an honest
    peer's rare lapses do not add up over months), and strikes of at most MAX_TRACKED peers are kept
    (each new peer id with one strike added an entry that stayed until a restart)."""
    from types import SimpleNamespace

    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    from fednode.daemon.bans import MAX_TRACKED, STRIKE_MEMORY_SECONDS, Bans
    from fednode.daemon.metrics import Metrics
    from fednode.storage.netstate import NetState
    from fednode.storage.store import Store

    peer = ID.from_pubkey(create_new_key_pair().public_key)
    me = ID.from_pubkey(create_new_key_pair().public_key)
    with Store(tmp_path / "s", sync=False) as store:
        blacklist, started = Blacklist(), []
        bans = Bans(NetState(store), Metrics(), SimpleNamespace(get_id=lambda: me),  # type: ignore[arg-type]
                    SimpleNamespace(start_soon=lambda *a: started.append(a)), threshold=3)  # type: ignore[arg-type]
        bans.start(blacklist)
        clock = Clock()
        bans.clock = clock
        for _ in range(2):
            bans.penalize(peer, "malformed")
        clock.now += STRIKE_MEMORY_SECONDS + 1  # an hour later: the two are forgiven
        for _ in range(2):
            bans.penalize(peer, "malformed")
        assert not bans.is_banned(peer) and bans.invalid[str(peer)][0] == 2
        bans.penalize(peer, "malformed")  # the third within the hour
        assert bans.is_banned(peer) and str(peer) not in bans.invalid and len(started) == 1
        others = [ID.from_pubkey(create_new_key_pair().public_key) for _ in range(MAX_TRACKED + 10)]
        for other in others:
            bans.penalize(other, "malformed")
        assert len(bans.invalid) == MAX_TRACKED
        assert str(others[-1]) in bans.invalid and str(others[0]) not in bans.invalid


def test_at_most_max_bans_are_stored_the_soonest_to_end_lifted_first(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every stored ban is restored each sync round and listed in /status, and a peer id costs an
    attacker nothing: past MAX_BANS, the ban that ends soonest is lifted to make room."""
    from types import SimpleNamespace

    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    from fednode.daemon import bans as bansmod
    from fednode.daemon.bans import Bans
    from fednode.daemon.metrics import Metrics
    from fednode.storage.netstate import NetState
    from fednode.storage.store import Store

    monkeypatch.setattr(bansmod, "MAX_BANS", 3)
    me = ID.from_pubkey(create_new_key_pair().public_key)
    peers = [ID.from_pubkey(create_new_key_pair().public_key) for _ in range(5)]
    with Store(tmp_path / "s", sync=False) as store:
        state, blacklist = NetState(store), Blacklist()
        bans = Bans(state, Metrics(), SimpleNamespace(get_id=lambda: me),  # type: ignore[arg-type]
                    SimpleNamespace(start_soon=lambda *a: None), threshold=1)  # type: ignore[arg-type]
        bans.start(blacklist)
        state.put_ban(str(peers[0]), time.time() + 10, "malformed")  # ends first
        state.put_ban(str(peers[1]), time.time() + 10_000, "malformed")
        bans.restore()
        for peer in peers[2:]:
            bans.penalize(peer, "malformed")
        assert set(state.bans()) == {str(p) for p in peers[2:]}  # the two stored ones made room, soonest first
        assert blacklist.peers == set(peers[2:])
