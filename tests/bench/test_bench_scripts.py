"""Every benchmark script still loads: its imports resolve after code moves (a bench is run by hand,
so nothing else would notice). Loading runs no benchmark: each script's work is under ``__main__``."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))


def test_there_are_benchmarks() -> None:
    assert {"bench_merge.py", "bench_commit.py", "bench_daemon.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_loads(script: str) -> None:
    code = ("import importlib.util, sys; sys.argv = ['x']; sys.path.insert(0, 'bench'); "
            f"spec = importlib.util.spec_from_file_location('bench_under_test', 'bench/{script}'); "
            "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_bench_daemon_compares_private_with_public() -> None:
    """The default ``--visibility both`` pulls a private and a public repository of the same size in one
    run (real daemons, the cloner signed in as a member) and prints their ratio against the target."""
    done = subprocess.run([sys.executable, "bench/bench_daemon.py", "--mib", "1", "--runs", "1", "--skip-gossip"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for visibility in ("private", "public"):
        for fsync in ("on ", "off"):
            assert f"pull (clone) 1 MiB {visibility}, fsync {fsync}:" in done.stdout, done.stdout
    ratios = re.findall(r"private/public pull time \(fsync (on|off)\) = \d+\.\d+x  (PASS|MISS)", done.stdout)
    assert [r[0] for r in ratios] == ["on", "off"], done.stdout


def test_bench_zk_proof_proves_verifies_and_extrapolates() -> None:
    """Two small sizes through the default path (fednode's own set-up, the native prover): each proof
    verifies in Python and in the on-chain program, and the three target sizes are extrapolated."""
    done = subprocess.run([sys.executable, "bench/bench_zk_proof.py", "--sizes", "8,16", "--link-sizes", "100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "set-up devsetup, prover native" in done.stdout, done.stdout
    assert len(re.findall(r"prove best +\d+\.\d+ s .* proof 384 B", done.stdout)) == 2, done.stdout
    assert len(re.findall(r"on chain \(programs/zkverify in LiteSVM\): \d+ CU \(target 200000 PASS\)",
                          done.stdout)) == 2, done.stdout
    assert [int(n) for n in re.findall(r"EXTRAPOLATED n= *(\d+):", done.stdout)] == [10_000, 100_000, 1_000_000]
