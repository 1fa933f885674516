"""What a commitment adds to one commit (issue 15 items 1-2): a model of N parameters (default 10^6,
float32) committed in a fresh node home, each step in its own process like separate `fednode commit`s:

1. commitments off ([zk] commitments = false): the commit alone;
2. commitments on, no generator cache yet: derives N generators, writes <home>/zk/generators-*.bin;
3. commitments on, the cache on disk: loads it and checks every point (on the curve) and a few derivations.

Prints each commit's wall time, the commitment's share and the ratios; the load average with them.
Usage: python bench/bench_zk_cache.py [--params N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time
import numpy as np
from pathlib import Path
from fednode.node import init_home, open_node
from fednode.tensors.modelio import ArraySource
home, n, step = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
base = rng.standard_normal(n).astype(np.float32)
if step == "init":
    init_home(home)
    with open_node(home) as node:
        node.create_repo("bench", ArraySource({"w": ("F32", base)}), visibility="public")
    sys.exit(0)
if step == "off":
    text = (home / "config.toml").read_text().replace("commitments = true", "commitments = false")
    (home / "config.toml").write_text(text)
new = (base + rng.standard_normal(n).astype(np.float32) * 1e-3).astype(np.float32)
with open_node(home) as node:
    repo = node.repo("bench")
    t = time.perf_counter()
    result = node.history.commit(repo, ArraySource({"w": ("F32", new)}), step)
    took = time.perf_counter() - t
    zk = result.commit.info.get("zk")
    assert (zk is None) == (step == "off"), zk
    assert zk is None or "commitment" in zk, zk
if step == "off":
    (home / "config.toml").write_text(text.replace("commitments = false", "commitments = true"))
print(f"{took:.3f}")
"""


def run(home: Path, n: int, step: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(home), str(n), step], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{step}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return float(out.stdout.strip().splitlines()[-1]) if step != "init" else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=1_000_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-zk-cache-"))
    try:
        home = tmp / "home"
        run(home, args.params, "init")
        off = run(home, args.params, "off")
        first = run(home, args.params, "first")
        cache = next((home / "zk").glob("generators-*.bin"))
        cached = run(home, args.params, "cached")
        print(f"{args.params} parameters (F32), load {os.getloadavg()[0]:.2f}")
        print(f"  commit, commitments off:             {off:7.2f} s")
        print(f"  commit, first (derive + write cache): {first:7.2f} s  (+{first - off:.2f} s, {first / off:.1f}x)")
        print(f"  commit, cached ({cache.stat().st_size >> 20} MiB table):     {cached:7.2f} s  "
              f"(+{cached - off:.2f} s, {cached / off:.1f}x); cache saves {first - cached:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
