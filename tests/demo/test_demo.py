"""`make demo` as it runs: a devchain and three hospital daemons, three federated rounds, then
`verify --chain` on every node, an accuracy table, and every process stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

DEMO_TIMEOUT = 600  # a bound, not a speed goal: ~100 s alone, 257 s once in CI beside the other worker


def _group_members(pgid: int) -> list[int]:
    """Processes still alive in process group ``pgid`` (the demo's own session)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def test_make_demo_runs_the_network(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("FEDNODE_HOME", None)
    env.pop("FEDNODE_SITE", None)
    proc = subprocess.Popen([sys.executable, "-m", "fednode.demo"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    finally:
        if proc.poll() is None:  # the demo hung: stop its whole session so nothing outlives the test
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
    assert proc.returncode == 0, out[-4000:]

    # the network: a devchain and three daemons, each started and stopped with exit status 0
    started = dict(re.findall(r"started (\S+) \(pid (\d+)\)", out))
    assert set(started) == {"devchain", "hospital-1-daemon", "hospital-2-daemon", "hospital-3-daemon"}, out
    stopped = {name: rc for name, _, rc in re.findall(r"stopped (\S+) \(pid (\d+)\), exit status (-?\d+)", out)}
    assert stopped == dict.fromkeys(started, "0"), out[-3000:]
    ports = re.findall(r"hospital-\d: libp2p /ip4/127\.0\.0\.1/tcp/(\d+)/p2p/\S+, API 127\.0\.0\.1:(\d+)", out)
    assert len(ports) == 3 and len({p for pair in ports for p in pair}) == 6  # separate ports, loopback only

    # membership: network and chain; both members clone over libp2p
    assert "network: 2 member(s) besides the owner" in out and "chain: added 2 member(s)" in out
    assert len(re.findall(r"\[hospital-[23]\] \$ fednode clone ", out)) == 2

    # three rounds: each hospital trains, anchors its commit; members propose; the owner merges, anchors
    for rnd in (1, 2, 3):
        assert f"=== round {rnd}:" in out
    assert len(re.findall(r"\[hospital-\d\] \$ fednode train ", out)) == 9
    assert len(re.findall(r"\[hospital-[23]\] \$ fednode propose ", out)) == 6
    assert len(re.findall(r"\[hospital-1\] \$ fednode merge .*--strategy fedavg", out)) == 3
    assert len(re.findall(r"\[hospital-\d\] \$ fednode anchor ", out)) == 1 + 9 + 3

    # verify --chain passes on every node
    verified = re.findall(r"\[(hospital-\d)\] \$ fednode verify main --chain\n(verify --chain: \d+ commits ok)", out)
    assert sorted(h for h, _ in verified) == ["hospital-1", "hospital-2", "hospital-3"], out[-3000:]
    assert re.search(r"on chain: 13 commits of cancer anchored, main at \w+, nothing left queued", out), out[-3000:]

    # the accuracy table: one row per round, the federated model and each local-only model
    table = out[out.index("accuracy on the common held-out test set"):]
    rows = re.findall(r"^\s*(\d) \|\s+([01]\.\d{3}) \|\s+([01]\.\d{3}) \|\s+([01]\.\d{3}) \|\s+([01]\.\d{3})$",
                      table, re.M)
    assert [r[0] for r in rows] == ["1", "2", "3"], table
    federated, *local = map(float, rows[-1][1:])
    assert federated > max(local), table  # after 3 rounds the federated model beats every local-only one

    # nothing the demo started is left running
    assert _group_members(proc.pid) == []
    for pid in map(int, started.values()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        stat = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"-m\x00cli\x00" not in stat, f"pid {pid} still runs: {stat!r}"


def test_cancer_data_reads_the_same_table_as_scikit_learn() -> None:
    """The examples read scikit-learn's bundled CSV directly (no sklearn import per training process)."""
    from sklearn.datasets import load_breast_cancer

    from fednode.examples.cancer_data import load_breast_cancer as load_direct

    x, y = load_breast_cancer(return_X_y=True)
    x2, y2 = load_direct()
    assert x2.dtype == x.dtype and x2.tobytes() == x.tobytes() and y2.tolist() == y.tolist()
