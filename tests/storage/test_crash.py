"""Crash safety: SIGKILL a committing process at random moments; the store must stay consistent.

After every kill: ``fednode fsck`` passes, the branch head is the old head or the one new commit
the killed process was making (never anything else), log works and a further commit works.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from helpers import ROOT, run_fednode, write_model

from cli.app import main as cli_main
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource
from fednode.workflows.verify import verify
from protocol.multiformats import CID

KILLS = 15
SEED = 20240611

DRIVER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from pathlib import Path
    from fednode.tensors.modelio import ArraySource
    from fednode.node import open_node

    home, run, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    node = open_node(home)
    h = node.history
    info = h.repo("crash")
    head = h.branch_head(info, "main")
    state = {n: (e.dtype, a.reshape(e.shape)) for n, (e, a) in h.state(head).items()}
    rng = np.random.default_rng(abs(hash(run)) % 2**32)
    assert not h.zk.enabled  # commitments off (see the test): a commit is the store's work alone
    print("ready", flush=True)
    for i in range(count):
        state = {n: (d, (a + rng.standard_normal(a.shape).astype(a.dtype) * a.dtype.type(1e-3)).astype(a.dtype))
                 for n, (d, a) in state.items()}
        t0 = time.perf_counter()
        result = h.commit(info, ArraySource(state), f"crash {run}-{i}")
        print("committed", result.cid, time.perf_counter() - t0, flush=True)
    node.close()
    """
)


def read_lines(proc: subprocess.Popen, until: str | None, deadline: float) -> list[str]:
    """Lines from proc.stdout until one starts with ``until`` (or EOF), bounded by ``deadline``."""
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                return lines
            if not line.endswith("\n"):  # torn by a SIGKILL mid-write: it was never printed whole
                continue
            lines.append(line.strip())
            if until and line.startswith(until):
                return lines
    finally:
        sel.close()
    raise AssertionError(f"timed out waiting for {until!r}; got {lines}")


def start_driver(script: Path, home: Path, run: str, count: int) -> subprocess.Popen:
    # small write batches: a kill can land between tensor batches and before the final transaction
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0", "FEDNODE_BATCH_BYTES": "262144"}
    return subprocess.Popen([sys.executable, str(script), str(home), run, str(count)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def check_consistent(home: Path, old_head: CID, run: str, printed: list[CID]) -> CID:
    """fsck passes and the head is the last commit we know of, or the one commit after it."""
    runner = CliRunner()
    fsck = runner.invoke(cli_main, ["--home", str(home), "fsck"], catch_exceptions=False)
    assert fsck.exit_code == 0, fsck.output + fsck.stderr
    log = runner.invoke(cli_main, ["--home", str(home), "log", "crash", "--json"], catch_exceptions=False)
    assert log.exit_code == 0, log.stderr
    known = [old_head, *printed]
    with open_node(home) as node:
        h = node.history
        info = h.repo("crash")
        head = h.branch_head(info, "main")
        if head != known[-1]:
            commit = h.load_commit(head)
            assert commit.parents == (known[-1],), "branch moved to an unexpected commit"
            assert commit.message == f"crash {run}-{len(printed)}"
        assert json.loads(log.stdout)[0]["cid"] == str(head)
        assert verify(h, info, head).problems == []
    return head


def test_sigkill_during_commits(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    home = tmp_path / "home"
    run_fednode(home, "init")
    # Crash safety of the store and the branch move is what this tests: the commitment (computed
    # before anything is written) would only make each of the ~20 processes slower.
    config = home / "config.toml"
    config.write_text(config.read_text().replace("commitments = true", "commitments = false"))
    model_rng = np.random.default_rng(1)
    arrays = {"big.weight": ("F32", model_rng.standard_normal((512, 1024)).astype(np.float32)),
              "small.bias": ("F32", model_rng.standard_normal(1024).astype(np.float32))}
    with open_node(home) as node:
        node.history.create_repo("crash", ArraySource(arrays), snapshot_interval=3)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)

    # measure a commit (unkilled run)
    proc = start_driver(script, home, "measure", 2)
    try:
        lines = read_lines(proc, None, time.monotonic() + 60)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
    done = [line.split() for line in lines if line.startswith("committed")]
    assert len(done) == 2
    duration = max(float(d[2]) for d in done)
    with open_node(home) as node:
        head = node.history.branch_head(node.history.repo("crash"), "main")
    assert head == CID.parse(done[-1][1])

    moved = stayed = 0
    for k in range(KILLS):
        run = f"k{k}"
        proc = start_driver(script, home, run, 50)
        try:
            read_lines(proc, "ready", time.monotonic() + 30)
            time.sleep(rng.uniform(0, 3 * duration))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            rest = read_lines(proc, None, time.monotonic() + 10)
        finally:
            stop(proc)
        printed = [CID.parse(line.split()[1]) for line in rest if line.startswith("committed")]
        new_head = check_consistent(home, head, run, printed)
        if new_head == (printed[-1] if printed else head):
            stayed += 1
        else:
            moved += 1
        head = new_head
    assert moved + stayed == KILLS
    print(f"commit {duration:.3f} s; head moved past the last printed commit in {moved} of {KILLS} kills")

    # the repository is usable afterwards: a further commit, log and fsck through the real CLI
    state = {}
    with open_node(home) as node:
        state = {n: (e.dtype, a.reshape(e.shape)) for n, (e, a) in node.history.state(head).items()}
    state["small.bias"] = ("F32", state["small.bias"][1] + np.float32(0.5))
    model = write_model(tmp_path / "after.safetensors", state)
    result = json.loads(run_fednode(home, "commit", "crash", "--from", model, "-m", "after", "--json").stdout)
    assert result["parents"] == [str(head)]
    assert json.loads(run_fednode(home, "log", "crash", "-n", "1", "--json").stdout)[0]["cid"] == result["cid"]
    run_fednode(home, "fsck")
    gc = json.loads(run_fednode(home, "gc", "--json").stdout)
    assert gc["blocks_removed"] >= 0
    run_fednode(home, "fsck")
