"""Daemon benchmarks on 127.0.0.1 with real ``fednode daemon`` processes.

1. Pull throughput: clone of a repository whose genesis holds ``--mib`` MiB of weights
   (block exchange + verification + LMDB writes), against a raw py-libp2p stream of the same
   size (Noise + yamux, two hosts in one process, no hashing, no storage).
2. Gossip propagation: ``--nodes`` daemons in a sparse mesh (each bootstraps to two earlier
   ones); the owner pushes ``--commits`` commits; per commit and node, the time from the push
   request until the commit block is in that node's store. Reports p50/p99.

    .venv/bin/python bench/bench_daemon.py --mib 64 --nodes 10 --commits 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from solders.keypair import Keypair

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fednode.history import repo_id_text  # noqa: E402
from fednode.modelio import ArraySource  # noqa: E402
from fednode.node import init_home, open_node  # noqa: E402
from protocol.multiformats import CID  # noqa: E402

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

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        r = httpx.request(method, f"http://127.0.0.1:{self.info['api_port']}{path}", json=body,
                          headers={"Authorization": f"Bearer {self.token}"}, timeout=300)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
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


def bench_pull(tmp: Path, mib: int) -> list[str]:
    a_home, b_home = make_home(tmp, "pa"), make_home(tmp, "pb")
    rng = np.random.default_rng(0)
    weights = {"w": ("F32", rng.standard_normal(mib * 1024 * 1024 // 4, dtype=np.float32))}
    with open_node(a_home) as node:
        info, _ = node.history.create_repo("big", ArraySource(weights))
    procs = [Proc(a_home, [])]
    try:
        procs.append(Proc(b_home, [procs[0].info["addrs"][0]]))
        time.sleep(1.0)
        t0 = time.perf_counter()
        procs[1].api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 300})
        dt = time.perf_counter() - t0
        m = procs[1].api("GET", "/status")["metrics"]
        raw = raw_stream_mbps(mib)
        fetch = m["fetch_seconds"]
        return [f"clone {mib} MiB (fetch+verify+store)   {dt:7.2f} s  {mib * 1.048576 / dt:7.1f} MB/s "
                f"({m['blocks_in']} blocks; block fetch+hash+store alone {fetch:.2f} s = "
                f"{mib * 1.048576 / fetch:.0f} MB/s)",
                f"raw py-libp2p stream {mib} MiB (noise+yamux)   {raw:7.1f} MB/s"]
    finally:
        for p in procs:
            p.stop()


def raw_stream_mbps(mib: int) -> float:
    import multiaddr
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from fednode.daemon.host import build_host

    total = mib * 1024 * 1024
    result: dict[str, float] = {}

    async def main() -> None:
        a, b = build_host(create_new_key_pair()), build_host(create_new_key_pair())
        done = trio.Event()

        async def sink(stream) -> None:  # noqa: ANN001
            got = 0
            while got < total:
                chunk = await stream.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
            result["got"] = got
            done.set()

        a.set_stream_handler(TProtocol("/bench/1"), sink)
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        async with a.run(listen), b.run(listen):
            await b.connect(info_from_p2p_addr(a.get_addrs()[0]))
            stream = await b.new_stream(a.get_id(), [TProtocol("/bench/1")])
            payload = os.urandom(1 << 20)
            t0 = time.perf_counter()
            for _ in range(mib):
                await stream.write(payload)
            await done.wait()
            result["dt"] = time.perf_counter() - t0
            await stream.close()

    trio.run(main)
    return total / result["dt"] / 1e6


def bench_gossip(tmp: Path, nodes: int, commits: int) -> list[str]:
    from fednode.daemon.main import DAEMON_FILE  # noqa: F401 - same layout as the daemon writes

    homes = [make_home(tmp, f"g{i}") for i in range(nodes)]
    rng = np.random.default_rng(1)
    base = {"w": ("F32", rng.standard_normal(4096).astype(np.float32))}
    owner = open_node(homes[0])
    info, _ = owner.history.create_repo("g", ArraySource(base))
    procs: list[Proc] = []
    stores = []
    try:
        procs.append(Proc(homes[0], []))
        for i in range(1, nodes):
            boots = [procs[j].info["addrs"][0] for j in sorted({max(0, i - 1), max(0, i - 2)})]
            procs.append(Proc(homes[i], boots))
        time.sleep(2.0)
        for p in procs[1:]:
            p.api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 60})
        time.sleep(3.0)  # let GossipSub meshes form (1 s heartbeats)
        stores = [open_node(h) for h in homes[1:]]
        lat: list[float] = []
        missed = 0
        for k in range(commits):
            arr = base["w"][1] + np.float32(0.001 * (k + 1))
            res = owner.history.commit(owner.history.repo("g"), ArraySource({"w": ("F32", arr)}), f"c{k}")
            t0 = time.perf_counter()
            procs[0].api("POST", "/push", {"repo": "g"})
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
        return [f"gossip propagation, {nodes} daemons, {commits} commits: p50 {p50:.0f} ms  p99 {p99:.0f} ms  "
                f"max {lat[-1] * 1000:.0f} ms  missed {missed}/{commits * (nodes - 1)}"]
    finally:
        for s in stores:
            s.close()
        owner.close()
        for p in procs:
            p.stop()


def _has(node, cid: CID) -> bool:  # noqa: ANN001
    with node.store.read() as txn:
        return txn.has_block(cid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--skip-pull", action="store_true")
    parser.add_argument("--skip-gossip", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        if not args.skip_pull:
            lines += bench_pull(Path(tmp), args.mib)
        if not args.skip_gossip:
            lines += bench_gossip(Path(tmp), args.nodes, args.commits)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
