"""Fair serving (issue 10, item 5): per-peer shares of the serving slots, idle streams closed and
penalized; against a real daemon, an attacker process holding 32 idle block streams renewed
continually, 500 streams at once and a 100 MB length prefix, while an honest process fetches.

Run as a script it IS the attacker or the honest peer: ``python test_daemon_fairness.py MODE
TARGET_ADDR [CID ...]`` with MODE ``idle`` (32 idle streams, renewed), ``flood`` (500 streams at
once, a 100 MB length prefix on blocks and on heads, 4 idle heads queries) or ``honest`` (40 block
requests for the CIDs, timed). Each prints ``ready``, waits for a line on stdin, then prints one
JSON line of what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import multiaddr
import numpy as np
import trio
from daemon_harness import DaemonProc, daemons, make_home, network_config, open_nodes, wait_for
from helpers import ROOT, script_env
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from test_daemon_bomb import StatusProbe
from test_daemon_liar import _leaves

from fednode.daemon import wire
from fednode.daemon.fairness import IDLE, FairServing
from fednode.daemon.host import build_host
from fednode.tensors.modelio import ArraySource
from protocol import messages as m
from protocol.multiformats import CID, encode_varint


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_peer_holds_at_most_its_share() -> None:
    fair = FairServing(slots=8, per_peer=3)
    assert [fair.admit("a") for _ in range(4)] == [None, None, None, "peer_busy"]  # type: ignore[arg-type]
    assert [fair.admit(p) for p in "bbbcc"] == [None, None, None, None, None]  # type: ignore[arg-type]
    assert fair.admit("d") == "busy" and fair.in_use == 8  # type: ignore[arg-type]
    fair.release("a")  # type: ignore[arg-type]
    assert fair.admit("a") is None and fair.admit("d") == "busy"  # type: ignore[arg-type]
    for p in "aaabbbcc":
        fair.release(p)  # type: ignore[arg-type]
    assert fair.in_use == 0 and not fair.held  # nothing remembered of peers no longer served


def test_idle_streams_are_forgiven_a_few_times_then_penalized() -> None:
    clock = Clock()
    penalties: list[tuple[str, str]] = []
    fair = FairServing(slots=32, penalize=lambda p, r: penalties.append((p, r)), clock=clock)  # type: ignore[arg-type]
    assert [fair.misbehaved("a", IDLE) for _ in range(6)] == [False] * 4 + [True] * 2  # type: ignore[arg-type]
    assert penalties == [("a", IDLE)] * 2
    assert not fair.misbehaved("b", IDLE)  # type: ignore[arg-type] # another peer has its own allowance
    clock.now += 10  # one more forgiven after a while
    assert not fair.misbehaved("a", IDLE) and fair.misbehaved("a", IDLE)  # type: ignore[arg-type]
    assert fair.misbehaved("c", "oversize_request")  # type: ignore[arg-type] # a bad request: at once
    assert penalties[-1] == ("c", "oversize_request")


def _spawn(mode: str, target: str, *cids: str) -> subprocess.Popen:
    # stderr to a file, not a pipe: py-libp2p logs every refused stream, and a pipe nobody reads
    # fills (64 KiB) and blocks the peer mid-test
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        env=script_env(), args=[sys.executable, __file__, mode, target, *cids], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err, text=True)
    proc.err = err  # type: ignore[attr-defined]
    line = proc.stdout.readline().strip()
    assert line == "ready", _stderr(proc)
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    """The end of what ``proc`` wrote to stderr (for assertion messages)."""
    err = proc.err  # type: ignore[attr-defined]
    err.flush()
    err.seek(0)
    return err.read()[-3000:]


def _result(proc: subprocess.Popen, timeout: float = 60) -> dict:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, _stderr(proc)
    proc.wait(timeout=timeout)
    return json.loads(line)


def _stop(*procs: subprocess.Popen | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_an_idle_stream_attacker_cannot_starve_honest_fetches(tmp_path: Path) -> None:
    home = make_home(tmp_path, "v")
    (node,) = open_nodes(home)
    try:
        _, created = node.history.create_repo("m", ArraySource({"w": ("F32", np.ones(9 * 65536, np.float32))}),
                                              visibility="public")
        cids = [*_leaves(node, created.cid)[:2], created.cid]  # leaves of zeros: 2 distinct blocks
    finally:
        node.close()
    # a high threshold: the attacker stays (penalized) through the honest fetches, then is banned
    network_config(home, ban_threshold=25)
    v = DaemonProc(home)
    honest = attacker = flood = None
    with daemons(v):
        v.start()
        try:
            honest = _spawn("honest", v.addr, *map(str, cids))
            attacker = _spawn("idle", v.addr)
            with StatusProbe(v) as probe:
                attacker.stdin.write("go\n")
                attacker.stdin.flush()
                assert attacker.stdout.readline().strip() == "holding", _stderr(attacker)
                seen = _result(honest)
                lat = sorted(seen["latencies"])
                p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                metrics = v.metrics()
                print(f"honest: {len(lat)} of 40 served, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
                      f"victim refused {metrics['refused_streams']}, penalties {metrics['penalties']}")
                assert seen["failures"] == [] and len(lat) == 40
                assert p99 < 2.0
                wait_for(lambda: len(v.api("GET", "/status")["bans"]) == 1, 40, "the attacker to be banned")
                seen_attacker = _result(attacker)
                ban = v.api("GET", "/status")["bans"][seen_attacker["peer_id"]]
                assert ban["reason"] == IDLE
                print(f"attacker: {seen_attacker}")
                assert seen_attacker["opened"] > 64  # it did renew its 32 streams, again and again
                assert v.metrics()["refused_streams"]["peer_busy"] > 0  # what it opened beyond its share
                assert probe.worst < 1.0, probe.worst

                before = v.metrics()["refused_streams"]
                flood = _spawn("flood", v.addr)  # a new identity: 500 streams at once, 100 MB prefixes
                seen_flood = _result(flood)
                print(f"flood: {seen_flood}; slowest /status {probe.worst * 1000:.0f} ms of {probe.count}")
                assert seen_flood["opened"] >= 6 and seen_flood["prefix_reset"] == 2
                assert probe.worst < 1.0, probe.worst
            after = v.metrics()["refused_streams"]
            assert after["oversize_request"] == 2  # one on each protocol
            assert after[IDLE] - before[IDLE] >= 6 + 4  # its share of the 500, then the 4 heads queries
            assert after["peer_busy"] - before["peer_busy"] >= 400  # the rest of the 500, refused at once
            assert v.proc.poll() is None
        finally:
            _stop(honest, attacker, flood)


# --- the peers, as scripts -------------------------------------------------------------------------


BLOCKS, HEADS = TProtocol(m.BLOCKS_PROTOCOL), TProtocol(m.HEADS_PROTOCOL)


async def _go() -> None:
    """Wait for the test's line on stdin."""
    await trio.to_thread.run_sync(sys.stdin.readline)


async def _honest(host: IHost, target: ID, cids: list[str], out: dict) -> None:
    """40 block requests, one at a time, each timed."""
    want = [CID.parse(c) for c in cids]
    out["latencies"], out["failures"] = [], []
    for i in range(40):
        cid = want[i % len(want)]
        start = time.monotonic()
        try:
            with trio.fail_after(10):
                stream = await host.new_stream(target, [BLOCKS])
                await wire.write_frame(stream, m.encode_want([cid]))
                frame = bytes(await wire.FrameReader(stream).read_frame(m.MAX_BLOCK_BYTES + 1))
                await stream.close()
            assert frame[:1] == b"\x01" and cid.verify(frame[1:]), "not the block"
            out["latencies"].append(time.monotonic() - start)
        except Exception as exc:  # a refusal (reset) or a timeout: a failed honest fetch
            out["failures"].append(f"{type(exc).__name__}: {exc}")
        await trio.sleep(0.05)


async def _idle(host: IHost, target: ID, out: dict, nursery: trio.Nursery) -> None:
    """32 streams that never send a request, each renewed every 2.5 s: the victim drops an idle
    one after 2 s, and resets at once those over our share. (Reading a stream the victim reset
    can wedge this py-libp2p host, so the attacker never reads.)"""
    out.update(opened=0, failed=0)
    holding = trio.Event()

    async def one() -> None:
        while True:
            try:
                with trio.fail_after(5):
                    stream = await host.new_stream(target, [BLOCKS])
            except Exception:
                out["failed"] += 1
                await trio.sleep(0.05)
                continue
            out["opened"] += 1
            if out["opened"] >= 32:
                holding.set()
            await trio.sleep(2.5)
            with trio.move_on_after(0.5):
                try:
                    await stream.reset()
                except Exception:
                    pass

    for _ in range(32):
        nursery.start_soon(one)
    await holding.wait()
    print("holding", flush=True)


async def _flood(host: IHost, target: ID, out: dict) -> None:
    """500 streams at once, a 100 MB length prefix on each protocol, then 4 idle heads queries."""
    out.update(opened=0, failed=0)

    async def one(protocol: TProtocol) -> None:
        try:
            with trio.fail_after(20):
                stream = await host.new_stream(target, [protocol])
                out["opened"] += 1
                await stream.read(1)
        except Exception:
            out["failed"] += 1

    async with trio.open_nursery() as n:
        for _ in range(500):
            n.start_soon(one, BLOCKS)
    out["prefix_reset"] = 0
    for protocol in (BLOCKS, HEADS):  # a 100 MB frame, announced, on each protocol
        for _ in range(10):  # the burst's streams may still count against us: a new one is refused (busy)
            stream = await host.new_stream(target, [protocol])
            try:
                await stream.write(encode_varint(100 << 20) + bytes(64 * 1024))
                break
            except Exception:
                await trio.sleep(0.5)
        else:
            continue  # never written: not counted as reset
        try:
            with trio.fail_after(10):
                out["prefix_reset"] += not await stream.read(1)
        except Exception:
            out["prefix_reset"] += 1
    async with trio.open_nursery() as n:  # idle heads queries: dropped after 2 s like block streams
        for _ in range(4):
            n.start_soon(one, HEADS)


async def _peer(mode: str, target: str, cids: list[str]) -> None:
    host = build_host(create_new_key_pair())
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    out: dict = {"peer_id": str(host.get_id())}
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(30):
            await host.connect(info)
        print("ready", flush=True)
        await _go()
        async with trio.open_nursery() as nursery:
            if mode == "honest":
                await _honest(host, info.peer_id, cids, out)
            elif mode == "flood":
                await _flood(host, info.peer_id, out)
            else:
                await _idle(host, info.peer_id, out, nursery)
                await _go()  # "report"
            print(json.dumps(out), flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(_peer, sys.argv[1], sys.argv[2], sys.argv[3:])
