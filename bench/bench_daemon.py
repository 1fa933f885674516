"""Daemon benchmarks on 127.0.0.1 with real ``fednode daemon`` processes.

1. Pull throughput: clone of a repository whose genesis holds ``--mib`` MiB of weights
   (block exchange + verification + LMDB writes), against a raw py-libp2p stream of the same
   size between two hosts built like the daemon's (Noise + yamux) in two processes, like two
   daemons (no hashing, no storage); prints the ratio with PASS/MISS against 0.7x, with fsync
   on and off (medians of ``--runs``). The one-process stream (both ends on one core, slower)
   is printed for reference. Also prints the CPU seconds both daemons used during the clone
   and the floor that puts under a pull on this machine's cores.
2. Gossip propagation: ``--nodes`` daemons in a sparse mesh (each bootstraps to two earlier
   ones); the owner pushes ``--commits`` commits; per commit and node, the time from the push
   request until the commit block is in that node's store. Reports p50/p99. Then one more
   commit, 5 s later: the time until every node's main branch points at it (weights fetched
   and verified, not only the envelope). With ``--visibility both``: once private, once public,
   and the two p50/p99 side by side.

In both, the cloner and the gossip nodes are members (the owner signs them in through the
daemon's POST /members, whatever the visibility, so both runs do the same work apart from the
privacy), and measuring starts only once each is admitted: the membership holds it and, when the
owner keeps a repository key (sealed gossip), it holds the owner's latest key epoch.

3. Kubo fetching tensor states (off by default): ``--kubo-states``: a real Kubo (kubo-python)
   fetches, from a running daemon, the state CIDs of two ``--mib`` MiB float32 tensors of one
   commit, one stored as a snapshot and one as an xor delta (generated on demand, stateblocks.py),
   then the delta state again (served from the daemon's cache), each from a fresh Kubo. Prints
   seconds, MiB/s and the daemon's rebuild time (what delays a delta state's first byte).

4. Soak (off by default): ``--soak 300 --soak-nodes 30``: that many daemons for that many
   seconds under a steady commit load (``--soak-members`` committers, one commit every
   ``--soak-interval`` s); prints liveness, peers, missing deliveries, p50/p99, RSS, log
   warnings/errors and HEALTHY/UNHEALTHY. Loopback only; every process is stopped at the end.

    .venv/bin/python bench/bench_daemon.py --mib 64 --nodes 10 --commits 20
    .venv/bin/python bench/bench_daemon.py --skip-pull --skip-gossip --soak 300 --soak-nodes 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from solders.keypair import Keypair

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fednode.history import repo_id_text  # noqa: E402
from fednode.node import Node, init_home, open_node  # noqa: E402
from fednode.storage.keyring import Keyring  # noqa: E402
from fednode.storage.netstate import NetState  # noqa: E402
from fednode.tensors.modelio import ArraySource  # noqa: E402
from protocol.multiformats import CID, b58encode  # noqa: E402

FEDNODE = [str(ROOT / ".venv" / "bin" / "fednode")]


class Proc:
    def __init__(self, home: Path, bootstrap: list[str]) -> None:
        args = [*FEDNODE, "--home", str(home), "daemon", "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0",
                "--log-file", str(home / "daemon.log")]
        for b in bootstrap:
            args += ["--bootstrap", b]
        self.home = home
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.info = json.loads((home / "daemon.json").read_text())
                if self.info["pid"] == self.proc.pid:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon {home} did not start")
            time.sleep(0.05)
        self.token = (home / "api.token").read_text().strip()
        # one client per daemon: a fresh httpx client costs ~100 ms (SSL context), which is
        # the bench's overhead, not the daemon's
        self.client = httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=300)

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        r = self.client.request(method, f"http://127.0.0.1:{self.info['api_port']}{path}", json=body)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_home(tmp: Path, name: str) -> Path:
    key = tmp / f"{name}.json"
    key.write_text(Keypair().to_json())
    init_home(tmp / name, key)
    return tmp / name


TARGET_RATIO = 0.7  # issue 4 item 8: pull >= 0.7x a raw libp2p stream of the same bytes
PRIVATE_TARGET = 1.10  # issue 13: a private repository's pull at most 10% slower than a public one's
ADMIT_TIMEOUT_S = 60.0


def _address(home: Path) -> str:
    with open_node(home) as node:
        return node.identity.address


def _admit(proc: Proc, owner: Node, name: str, repo_id: bytes, addresses: list[str]) -> None:
    """The owner's daemon signs ``addresses`` in as members (POST /members); the bench waits until
    the owner's store holds that membership: what a member's reads are checked against."""
    proc.api("POST", "/members", {"repo": name, "members": addresses})
    _wait(lambda: _members(owner, repo_id) >= set(addresses), "the owner's membership")


def _members(node: Node, repo_id: bytes) -> set[str]:
    ms = NetState(node.store).membership(repo_id)
    return set() if ms is None else {b58encode(k) for k in ms.members}


def _wait_admitted(owner: Node, nodes: list[Node], repo_id: bytes) -> None:
    """Every node knows itself a member and, when the owner keeps a repository key (sealed
    gossip), holds the owner's latest epoch: the members' own view, before anything is timed."""
    for node in nodes:
        _wait(lambda n=node: n.identity.address in _members(n, repo_id),
              f"{node.identity.address} to see itself admitted")
    owner_key = Keyring(owner.store).latest(repo_id)
    if owner_key is not None:
        for node in nodes:
            _wait(lambda n=node: (Keyring(n.store).latest(repo_id) or (-1,))[0] >= owner_key[0],
                  f"{node.identity.address} to hold the repository key (epoch {owner_key[0]})")


def _wait(pred, what: str) -> None:
    deadline = time.monotonic() + ADMIT_TIMEOUT_S
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {ADMIT_TIMEOUT_S:.0f} s waiting for {what}")
        time.sleep(0.05)


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system  # its threads included


def _pull_once(tmp: Path, tag: str, mib: int, fsync: bool,
               visibility: str) -> tuple[float, float, dict, tuple[float, float]]:  # fmt: skip
    """One clone of a ``mib`` MiB genesis of a ``visibility`` repository between two fresh
    daemons, the cloner a member; (seconds, fetch seconds, metrics, CPU seconds of the serving and
    of the fetching daemon during the clone)."""
    a_home, b_home = make_home(tmp, f"pa{tag}"), make_home(tmp, f"pb{tag}")
    for home in (a_home, b_home):
        cfg = home / "config.toml"
        cfg.write_text(cfg.read_text().replace("fsync = true", f"fsync = {str(fsync).lower()}"))
    rng = np.random.default_rng(0)
    weights = {"w": ("F32", rng.standard_normal(mib * 1024 * 1024 // 4, dtype=np.float32))}
    with open_node(a_home) as node:
        info, _ = node.history.create_repo("big", ArraySource(weights), visibility=visibility)
    cloner = _address(b_home)
    procs = [Proc(a_home, [])]
    try:
        procs.append(Proc(b_home, [procs[0].info["addrs"][0]]))
        with open_node(a_home) as owner:
            _admit(procs[0], owner, "big", info.repo_id, [cloner])
        time.sleep(1.0)
        procs[1].api("GET", "/status")  # warm the HTTP client
        cpu0 = [_cpu(p.proc.pid) for p in procs]
        t0 = time.perf_counter()
        procs[1].api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 300})
        dt = time.perf_counter() - t0
        cpu = [_cpu(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        m = procs[1].api("GET", "/status")["metrics"]
        return dt, m["fetch_seconds"], m, (cpu[0], cpu[1])
    finally:
        for p in procs:
            p.stop()


def bench_pull(tmp: Path, mib: int, runs: int, visibilities: list[str]) -> list[str]:
    """Clone (end to end: heads exchange, block fetch, hash checks, LMDB writes, verify of the
    genesis) vs a raw Noise+yamux stream of the same bytes between two hosts on this machine.
    Medians of ``runs`` each; fsync on (the default) and off; per visibility, the visibilities
    taking turns at going first so that warm-up favours neither."""
    mb = mib * 1.048576
    raws = [raw_stream(mib, two_processes=True) for _ in range(runs)]
    raw = statistics.median(r[0] for r in raws)
    raw_cpu = statistics.median(r[1] for r in raws)
    raw_one = statistics.median(raw_stream(mib, two_processes=False)[0] for _ in range(runs))
    lines = [f"raw py-libp2p stream {mib} MiB (noise+yamux, 2 processes: the baseline)  {mb / raw:6.2f} s "
             f"{raw:7.1f} MB/s  (median of {runs}; CPU of sender + receiver {raw_cpu:.2f} s)",
             f"raw py-libp2p stream {mib} MiB (2 hosts in 1 process, one core; info)  {mb / raw_one:6.2f} s "
             f"{raw_one:7.1f} MB/s"]
    for fsync in (True, False):
        res: dict[str, list] = {v: [] for v in visibilities}
        for k in range(runs):  # turns continue across the fsync settings: each goes first as often
            for v in (visibilities if (k + runs * fsync) % 2 == 0 else visibilities[::-1]):
                res[v].append(_pull_once(tmp, f"{int(fsync)}{k}{v}", mib, fsync, v))
        for v in visibilities:
            lines += _pull_lines(res[v], mib, fsync, v, raw, raw_one)
        if len(visibilities) == 2:
            dt = {v: statistics.median(r[0] for r in res[v]) for v in visibilities}
            # CPU seconds of both daemons: less swayed than wall time by other work on the machine
            cpu = {v: statistics.median(sum(r[3]) for r in res[v]) for v in visibilities}
            ratio = dt["private"] / dt["public"]
            lines.append(f"  private/public pull time (fsync {'on' if fsync else 'off'}) = {ratio:.3f}x  "
                         f"{'PASS' if ratio <= PRIVATE_TARGET else 'MISS'} (target <= {PRIVATE_TARGET}x: "
                         f"private at most 10% slower; medians {dt['private']:.2f} s vs {dt['public']:.2f} s); "
                         f"CPU of both daemons {cpu['private']:.2f} s vs {cpu['public']:.2f} s = "
                         f"{cpu['private'] / cpu['public']:.3f}x")
    return lines


def _pull_lines(res: list, mib: int, fsync: bool, visibility: str, raw: float, raw_one: float) -> list[str]:
    """The report of one visibility's pulls with one fsync setting (medians)."""
    mb = mib * 1.048576
    cores = os.cpu_count() or 1
    dt = statistics.median(r[0] for r in res)
    fetch = statistics.median(r[1] for r in res)
    serve_cpu = statistics.median(r[3][0] for r in res)
    fetch_cpu = statistics.median(r[3][1] for r in res)
    ratio = (mb / dt) / raw
    # the CPU a pull needs, spread perfectly over every core, bounds it from below
    floor = (serve_cpu + fetch_cpu) / cores
    on = "on" if fsync else "off"
    return [f"pull (clone) {mib} MiB {visibility}, fsync {on:3}: {dt:6.2f} s {mb / dt:7.1f} MB/s "
            f"(block fetch+hash+store alone {fetch:.2f} s = {mb / fetch:.0f} MB/s; runs "
            f"{', '.join(f'{r[0]:.2f}' for r in res)} s; {res[0][2]['blocks_in']} blocks)",
            f"  CPU: serving daemon {serve_cpu:.2f} s + fetching daemon {fetch_cpu:.2f} s; on {cores} cores "
            f"no pull can take less than {floor:.2f} s, a ceiling of {(mb / floor) / raw:.2f}x",
            f"  ratio pull/raw ({visibility}, fsync {on}) = {ratio:.2f}x  "
            f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'} (target >= {TARGET_RATIO}x; "
            f"vs the one-process stream {(mb / dt) / raw_one:.2f}x)"]


RAW_PROTOCOL = "/fednode-bench/raw/1"


def _raw_host_imports():
    import multiaddr
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol

    from fednode.daemon.host import build_host

    return multiaddr, trio, create_new_key_pair, TProtocol, build_host


def _sink(total: int, done):
    """Stream handler: read ``total`` bytes, answer one byte (``k``: all of them), set ``done``."""

    async def handler(stream) -> None:
        got = 0
        while got < total:
            chunk = await stream.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        await stream.write(b"k" if got == total else b"x")
        done.set()

    return handler


def raw_sink(total: int) -> None:
    """``--raw-sink N``: a host like the daemon's (Noise, yamux) that prints its address, reads N
    bytes from the first stream and answers one byte: the receiving end of the raw baseline."""
    multiaddr, trio, create_new_key_pair, TProtocol, build_host = _raw_host_imports()

    async def main() -> None:
        host = build_host(create_new_key_pair())
        done = trio.Event()
        host.set_stream_handler(TProtocol(RAW_PROTOCOL), _sink(total, done))
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            print(str(host.get_addrs()[0]), flush=True)
            with trio.fail_after(300):
                await done.wait()
            await trio.sleep(0.5)  # let the ack leave before the host closes

    trio.run(main)


def raw_stream(mib: int, two_processes: bool) -> tuple[float, float]:
    """MB/s and CPU seconds (both ends; 0 with ``two_processes`` off) of one raw stream of
    ``mib`` MiB (Noise + yamux hosts built like the daemon's, written in
    Noise-message-sized pieces like the daemon's block server, no hashing, no storage), timed
    from the first write until the receiver's one-byte ack. ``two_processes``: the receiver runs
    in its own process, as a fetching daemon does (the fair baseline); otherwise both hosts
    share this process and one core."""
    multiaddr, trio, create_new_key_pair, TProtocol, build_host = _raw_host_imports()
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from fednode.daemon.wire import WRITE_PIECE

    total = mib * 1024 * 1024
    payload = memoryview(os.urandom(total))
    result: dict[str, float] = {"cpu": 0.0}

    async def send(host, addr: str, sink_pid: int | None = None) -> None:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [TProtocol(RAW_PROTOCOL)])
        cpu0 = _cpu(os.getpid()) + _cpu(sink_pid) if sink_pid else 0.0
        t0 = time.perf_counter()
        for off in range(0, total, WRITE_PIECE):
            await stream.write(payload[off:off + WRITE_PIECE])
        ack = await stream.read(1)
        result["dt"] = time.perf_counter() - t0
        if sink_pid:
            result["cpu"] = _cpu(os.getpid()) + _cpu(sink_pid) - cpu0
        if ack != b"k":
            raise RuntimeError(f"raw sink got the wrong byte count (ack {ack!r})")
        await stream.close()

    async def main() -> None:
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        b = build_host(create_new_key_pair())
        if two_processes:
            sink = subprocess.Popen([sys.executable, __file__, "--raw-sink", str(total)], stdout=subprocess.PIPE,
                                    text=True)
            try:
                addr = sink.stdout.readline().strip()
                async with b.run(listen):
                    with trio.fail_after(300):
                        await send(b, addr, sink.pid)
                sink.wait(30)
            finally:
                if sink.poll() is None:
                    sink.kill()
                    sink.wait()
            return
        a = build_host(create_new_key_pair())
        done = trio.Event()
        a.set_stream_handler(TProtocol(RAW_PROTOCOL), _sink(total, done))
        async with a.run(listen), b.run(listen):
            with trio.fail_after(300):
                await send(b, str(a.get_addrs()[0]))
                await done.wait()

    trio.run(main)
    return total / result["dt"] / 1e6, result["cpu"]


def bench_gossip(tmp: Path, nodes: int, commits: int, visibility: str,
                 keep_logs: Path | None = None) -> tuple[list[str], tuple[float, float]]:  # fmt: skip
    """Gossip to ``nodes`` daemons of a ``visibility`` repository whose every node is a member;
    the report and (p50, p99) in ms."""
    from fednode.daemon.process import DAEMON_FILE  # noqa: F401 - same layout as the daemon writes

    homes = [make_home(tmp, f"g{visibility}{i}") for i in range(nodes)]
    addresses = [_address(h) for h in homes[1:]]
    rng = np.random.default_rng(1)
    base = {"w": ("F32", rng.standard_normal(4096).astype(np.float32))}
    owner = open_node(homes[0])
    info, _ = owner.history.create_repo("g", ArraySource(base), visibility=visibility)
    procs: list[Proc] = []
    stores = []
    try:
        procs.append(Proc(homes[0], []))
        _admit(procs[0], owner, "g", info.repo_id, addresses)
        for i in range(1, nodes):
            boots = [procs[j].info["addrs"][0] for j in sorted({max(0, i - 1), max(0, i - 2)})]
            procs.append(Proc(homes[i], boots))
        time.sleep(2.0)
        for p in procs[1:]:
            p.api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 60})
        stores = [open_node(h) for h in homes[1:]]
        _wait_admitted(owner, stores, info.repo_id)
        time.sleep(3.0)  # let GossipSub meshes form (1 s heartbeats)
        lat: list[float] = []
        missed = 0
        for k in range(commits):
            arr = base["w"][1] + np.float32(0.001 * (k + 1))
            res = owner.history.commit(owner.history.repo("g"), ArraySource({"w": ("F32", arr)}), f"c{k}")
            t0 = time.perf_counter()
            procs[0].api("POST", "/push", {"repo": "g", "confirm": False})  # time gossip, not the ack
            pending = {i: s for i, s in enumerate(stores)}
            deadline = t0 + 10
            while pending and time.perf_counter() < deadline:
                for i, s in list(pending.items()):
                    if _has(s, res.cid):
                        lat.append(time.perf_counter() - t0)
                        del pending[i]
                time.sleep(0.002)
            missed += len(pending)
        lat.sort()
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
        lines = [f"gossip propagation, {visibility}, {nodes} daemons, {commits} commits: p50 {p50:.0f} ms  "
                 f"p99 {p99:.0f} ms  max {lat[-1] * 1000:.0f} ms  missed {missed}/{commits * (nodes - 1)}"]
        lines.append(_weights_propagation(owner, procs[0], stores, info.repo_id, base["w"][1]))
        metrics = [p.api("GET", "/status")["metrics"] for p in procs]
        refused = Counter(procs[0].api("GET", "/status")["metrics"]["refused_streams"])
        return lines + [f"  fetch attempts on the {nodes - 1} receivers: {sum(m['fetches_done'] for m in metrics[1:])} "
                        f"complete, {sum(m['fetches_failed'] for m in metrics[1:])} incomplete (each retried); "
                        f"streams the owner refused: {dict(refused) or 'none'}"], (p50, p99)
    finally:
        for s in stores:
            s.close()
        owner.close()
        for p in procs:
            p.stop()
        if keep_logs is not None:  # the daemons' JSON logs, to see where a slow propagation spent its time
            keep_logs.mkdir(parents=True, exist_ok=True)
            for i, home in enumerate(homes):
                if (home / "daemon.log").exists():
                    shutil.copy(home / "daemon.log", keep_logs / f"node{i}.log")


WEIGHTS_QUIET_S = 5.0  # after the burst above; fetch jobs of superseded commits may still be running


def _weights_propagation(owner, proc: Proc, stores: list, repo_id: bytes, arr: np.ndarray) -> str:
    """One more commit, WEIGHTS_QUIET_S after the burst: the time until each node's main branch points at it,
    i.e. its weights were fetched (through relays that fetch them too) and verified. The commit
    envelope alone (above) says nothing about the weights."""
    time.sleep(WEIGHTS_QUIET_S)
    res = owner.history.commit(owner.history.repo("g"), ArraySource({"w": ("F32", arr + np.float32(0.5))}), "w")
    t0 = time.perf_counter()
    proc.api("POST", "/push", {"repo": "g", "confirm": False})
    moved: list[float] = []
    pending = dict(enumerate(stores))
    while pending and time.perf_counter() < t0 + 30:
        for i, s in list(pending.items()):
            with s.store.read() as txn:
                head = txn.get_ref(repo_id, "heads/main")
            if head == bytes(res.cid):
                moved.append(time.perf_counter() - t0)
                del pending[i]
        time.sleep(0.005)
    moved.sort()
    remotes = 0  # the owner only fast-forwards main: a remotes/ ref here is a late, superseded announcement
    for s in stores:
        with s.store.read() as txn:
            remotes += len(txn.list_refs(repo_id, "remotes/"))
    what = f"  weights propagation (one commit {WEIGHTS_QUIET_S:.0f} s after the burst, heads moved)"
    if not moved:
        return f"{what}: none of {len(stores)} nodes within 30 s"
    return (f"{what}: p50 {statistics.median(moved) * 1000:.0f} ms  max {moved[-1] * 1000:.0f} ms  "
            f"on {len(moved)}/{len(stores)} nodes within 30 s; remotes/ refs recorded: {remotes}")


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _log_problems(home: Path, details: Counter) -> Counter:
    """Warnings and errors in one daemon's JSON log, by level:event; ``details`` gets
    event + error text (first 70 characters) for the report."""
    out: Counter = Counter()
    try:
        lines = (home / "daemon.log").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            out["error:unparsable_log_line"] += 1
            continue
        if rec.get("level") in ("warning", "error"):
            out[f"{rec['level']}:{rec.get('event')}"] += 1
            why = rec.get("cause") or rec.get("error", rec.get("reason", ""))  # the cause, when one is logged
            details[f"{rec.get('event')}: {str(why)[:70]}"] += 1
    return out


def bench_soak(tmp: Path, nodes: int, seconds: float, interval: float, members: int) -> list[str]:
    """``nodes`` daemons on 127.0.0.1 for ``seconds`` under a steady commit load: ``members``
    members (the owner first) take turns committing and pushing, one commit every ``interval``
    seconds. Reports liveness, peers, missing deliveries, propagation p50/p99, RSS, log problems.
    Bounded: every process is stopped at the end, whatever happens."""
    homes = [make_home(tmp, f"s{i}") for i in range(nodes)]
    rng = np.random.default_rng(2)
    base = rng.standard_normal(4096).astype(np.float32)
    owner = open_node(homes[0])
    info, _ = owner.history.create_repo("soak", ArraySource({"w": ("F32", base)}), visibility="public")
    rid = repo_id_text(info.repo_id)
    procs: list[Proc] = []
    stores: list[Node] = []
    try:
        t_start = time.monotonic()
        writers, store_of = _soak_start(homes, members, owner, rid, procs, stores)
        started = (f"soak: {nodes} daemons started and cloned in {time.monotonic() - t_start:.0f} s; "
                   f"{members} committers, one commit every {interval:g} s for {seconds:g} s")
        load = _soak_load(writers, members, procs, store_of, base, seconds, interval)
        return [started, *_soak_report(load, procs, homes)]
    finally:
        for s_ in stores:
            s_.close()
        owner.close()
        for p in procs:
            p.stop()


def _soak_start(homes: list[Path], members: int, owner: Node, rid: str, procs: list[Proc],
                stores: list[Node]) -> tuple[list[Node], dict[int, Node]]:  # fmt: skip
    """A daemon per home (each bootstrapping to up to three earlier ones), the repository cloned on
    all but the owner's, the first ``members`` nodes made members. Returns the committing nodes and
    each node's store by index. ``procs`` and ``stores`` fill as things open, so the caller stops and
    closes them whatever happens."""
    nodes = len(homes)
    procs.append(Proc(homes[0], []))
    for i in range(1, nodes):
        boots = [procs[j].info["addrs"][0] for j in sorted({max(0, i - 1), max(0, i - 2), max(0, i // 2)})]
        procs.append(Proc(homes[i], boots))
    time.sleep(2.0)
    for p in procs[1:]:
        p.api("POST", "/clone", {"repo": rid, "timeout": 120})
    writers = [owner] + [open_node(h) for h in homes[1:members]]
    if members > 1:
        procs[0].api("POST", "/members", {"repo": "soak", "members": [w.identity.address for w in writers[1:]]})
    time.sleep(5.0)  # membership gossip + GossipSub meshes (1 s heartbeats)
    stores.extend([open_node(h) for h in homes[members:]] + writers[1:])
    store_of = {i: stores[i - members] for i in range(members, nodes)}
    store_of.update({i: writers[i] for i in range(1, members)})
    store_of[0] = owner
    return writers, store_of


@dataclass
class _SoakLoad:
    """What the steady commit load did, as the report needs it."""

    commits: int = 0
    push_errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds from push to arrival, per delivery
    # (commit no, node index) -> (cid, pushed at): deliveries not yet seen
    pending: dict[tuple[int, int], tuple[CID, float]] = field(default_factory=dict)
    worst_rss: dict[int, float] = field(default_factory=dict)  # MiB per node index


def _soak_load(writers: list[Node], members: int, procs: list[Proc], store_of: dict[int, Node],
               base: np.ndarray, seconds: float, interval: float) -> _SoakLoad:  # fmt: skip
    """One commit every ``interval`` s for ``seconds``, members in turn, each pushed by its own
    daemon; arrivals are timed as they land, and the last commits get 30 s of grace."""
    load = _SoakLoad()
    t_end = time.monotonic() + seconds
    next_commit = time.monotonic()
    while time.monotonic() < t_end:
        if time.monotonic() >= next_commit:
            _soak_commit(load, writers, members, procs, base)
            next_commit += interval
        _collect_deliveries(load, store_of)
        if load.commits % 10 == 0:
            for i, p in enumerate(procs):
                load.worst_rss[i] = max(load.worst_rss.get(i, 0.0), _rss_mib(p.proc.pid))
        time.sleep(0.02)
    grace = time.monotonic() + 30  # the last commits get 30 s to arrive
    while load.pending and time.monotonic() < grace:
        _collect_deliveries(load, store_of)
        time.sleep(0.05)
    return load


def _soak_commit(load: _SoakLoad, writers: list[Node], members: int, procs: list[Proc], base: np.ndarray) -> None:
    """The next member commits and its daemon pushes; every other node now awaits the commit."""
    w = load.commits % members
    node = writers[w]
    arr = base + np.float32(0.001 * (load.commits + 1))
    res = node.history.commit(node.history.repo("soak"), ArraySource({"w": ("F32", arr)}), f"c{load.commits}")
    t0 = time.monotonic()
    try:
        procs[w].api("POST", "/push", {"repo": "soak"})
    except Exception:
        load.push_errors += 1
    for i in range(len(procs)):
        if i != w:
            load.pending[(load.commits, i)] = (res.cid, t0)
    load.commits += 1


def _collect_deliveries(load: _SoakLoad, store_of: dict[int, Node]) -> None:
    for key, (cid, t0) in list(load.pending.items()):
        if _has(store_of[key[1]], cid):
            load.latencies.append(time.monotonic() - t0)
            del load.pending[key]


def _soak_report(load: _SoakLoad, procs: list[Proc], homes: list[Path]) -> list[str]:
    """Liveness, peers, deliveries and propagation times, RSS, log problems and the verdict."""
    nodes = len(procs)
    alive = [p.proc.poll() is None for p in procs]
    peers = []
    for p, ok in zip(procs, alive, strict=True):
        try:
            peers.append(p.api("GET", "/status")["peers"] if ok else -1)
        except Exception:
            peers.append(-1)
    rss = [_rss_mib(p.proc.pid) for p in procs]
    for i, r in enumerate(rss):
        load.worst_rss[i] = max(load.worst_rss.get(i, 0.0), r)
    problems: Counter = Counter()
    details: Counter = Counter()
    for h in homes:
        problems += _log_problems(h, details)
    errors = sum(v for k, v in problems.items() if k.startswith("error:"))
    lat = sorted(load.latencies)
    expected = load.commits * (nodes - 1)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
    ok = (all(alive) and min(peers) > 0 and not load.pending and errors == 0 and load.push_errors == 0)
    return [
        f"soak alive {sum(alive)}/{nodes}; peers per node min {min(peers)} median {statistics.median(peers):g} "
        f"max {max(peers)}",
        f"soak commits {load.commits} ({load.push_errors} push errors); deliveries {len(lat)}/{expected}, "
        f"missing {len(load.pending)}; propagation p50 {p50:.0f} ms p99 {p99:.0f} ms max "
        f"{(lat[-1] * 1000 if lat else float('nan')):.0f} ms",
        f"soak RSS per node now: median {statistics.median(rss):.0f} MiB max {max(rss):.0f} MiB; "
        f"peak seen {max(load.worst_rss.values()):.0f} MiB",
        f"soak log errors {errors}; warnings {sum(problems.values()) - errors} "
        f"({', '.join(f'{k} {v}' for k, v in problems.most_common(6)) or 'none'})",
        *(f"  {v:5d} x {k}" for k, v in details.most_common(6)),
        f"soak {'HEALTHY' if ok else 'UNHEALTHY'}",
    ]


def bench_kubo_states(tmp: Path, mib: int) -> list[str]:
    """Kubo fetches a snapshot-stored and a delta-stored state (module docstring, 3)."""
    import trio

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "daemon")]
    from test_bitswap_kubo import Kubo

    home = make_home(tmp, "states")
    rng = np.random.default_rng(0)
    n = mib * 1024 * 1024 // 4
    base = {"snap": ("F32", rng.standard_normal(n, dtype=np.float32)),
            "delta": ("F32", rng.standard_normal(n, dtype=np.float32))}
    changed = {"snap": base["snap"],  # unchanged: its state is the genesis snapshot's
               "delta": ("F32", base["delta"][1].copy())}
    changed["delta"][1][::100] += 1.0  # 1% of the values: an xor delta
    with open_node(home) as node:
        info, _ = node.history.create_repo("states", ArraySource(base), visibility="public")
        head = node.history.commit(info, ArraySource(changed), "one step").cid
        entries = node.history.load_manifest(node.history.load_commit(head).weights).tensors
    assert (entries["snap"].encoding, entries["delta"].encoding) == ("same", "xor")
    with open_node(home) as node, node.store.read() as txn:
        assert txn.has_block(entries["snap"].state) and not txn.has_block(entries["delta"].state)
    proc = Proc(home, [])
    lines = []

    async def fetch(kubo: Kubo, name: str, label: str) -> None:
        dest = tmp / f"{label}.bin"
        t0 = time.perf_counter()
        got = await kubo.call(600, op="download", cid=str(entries[name].state), dest=str(dest), timeout=550)
        dt = time.perf_counter() - t0
        assert got == {"rc": 0, "timeout": False} and dest.read_bytes() == changed[name][1].tobytes(), got
        lines.append(f"kubo fetch {label}: {mib} MiB in {dt:.2f} s ({mib / dt:.1f} MiB/s)")

    async def run() -> None:
        for name, label in (("snap", "snapshot-stored"), ("delta", "delta-stored, generated"),
                            ("delta", "delta-stored, from the cache")):
            kubo = Kubo(tmp / f"kubo-{len(lines)}")  # a fresh Kubo each time: it keeps what it fetched
            try:
                await kubo.start()
                assert (await kubo.call(20, op="connect", addr=proc.info["addrs"][0]))["rc"] == 0
                await fetch(kubo, name, label)
            finally:
                kubo.stop()

    try:
        trio.run(run)
    finally:
        proc.stop()
    events = [json.loads(line) for line in (home / "daemon.log").read_text().splitlines() if line.strip()]
    rebuilt = [e["seconds"] for e in events if e.get("event") == "state_generated"]
    lines.append(f"delta state rebuilt {len(rebuilt)} time(s), {rebuilt} s (before its first block goes out)")
    return lines


def _gossip_report(tmp: Path, nodes: int, commits: int, visibilities: list[str],
                   keep_logs: Path | None) -> list[str]:  # fmt: skip
    """The gossip bench per visibility (private first: a cold start would count against it), then
    private against public."""
    lines: list[str] = []
    stats = {}
    for v in visibilities:
        logs = keep_logs / v if keep_logs is not None and len(visibilities) > 1 else keep_logs
        got, stats[v] = bench_gossip(tmp, nodes, commits, v, logs)
        lines += got
    if len(visibilities) == 2:
        (p50, p99), (q50, q99) = stats["private"], stats["public"]
        lines.append(f"gossip private vs public, {nodes} daemons: p50 {p50:.0f} vs {q50:.0f} ms ({p50 / q50:.2f}x), "
                     f"p99 {p99:.0f} vs {q99:.0f} ms ({p99 / q99:.2f}x)")
    return lines


def _has(node, cid: CID) -> bool:
    with node.store.read() as txn:
        return txn.has_block(cid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="pull and raw-stream runs (medians reported)")
    parser.add_argument("--visibility", choices=("public", "private", "both"), default="both",
                        help="the repositories pulled and gossiped (both: private against public, one run)")
    parser.add_argument("--skip-pull", action="store_true")
    parser.add_argument("--skip-gossip", action="store_true")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR", help="copy daemon logs here")
    parser.add_argument("--kubo-states", action="store_true",
                        help="also time a real Kubo fetching a snapshot- and a delta-stored --mib MiB state")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                        help="also run a soak of --soak-nodes daemons for this long (default off)")
    parser.add_argument("--soak-nodes", type=int, default=30)
    parser.add_argument("--soak-interval", type=float, default=2.0, help="seconds between commits")
    parser.add_argument("--soak-members", type=int, default=3, help="committers (the owner + members)")
    parser.add_argument("--raw-sink", type=int, default=0, help=argparse.SUPPRESS)  # the baseline's receiver
    args = parser.parse_args()
    if args.raw_sink:
        raw_sink(args.raw_sink)
        return
    visibilities = ["private", "public"] if args.visibility == "both" else [args.visibility]
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        if not args.skip_pull:
            lines += bench_pull(Path(tmp), args.mib, args.runs, visibilities)
        if not args.skip_gossip:
            lines += _gossip_report(Path(tmp), args.nodes, args.commits, visibilities, args.keep_logs)
        if args.kubo_states:
            lines += bench_kubo_states(Path(tmp), args.mib)
        if args.soak:
            lines += bench_soak(Path(tmp), args.soak_nodes, args.soak, args.soak_interval, args.soak_members)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
