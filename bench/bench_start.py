"""Start time of everyday commands against a bare interpreter, measured in one run (issue 11, item 14).

    python bench/bench_start.py [--repeat 7]

Each command runs as a user runs it (the ``fednode`` console script of this venv, a fresh process)
on a throwaway home holding one small repository. Printed: the best and median wall time of
``python -c pass`` and of ``fednode --version``, ``log``, ``show HEAD`` and ``status`` (no daemon
running), and each command's time above the bare interpreter. Target: every command <= 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import ratio_line, write_model  # noqa: E402

TARGET_S = 0.3
COMMANDS = {
    "fednode --version": ["--version"],
    "fednode log": ["log"],
    "fednode show HEAD": ["show", "HEAD"],
    "fednode status": ["status"],
}


def fednode_argv() -> list[str]:
    script = Path(sys.executable).with_name("fednode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def timed(argv: list[str], env: dict[str, str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[1:])} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    base = fednode_argv()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FEDNODE_HOME": str(Path(tmp) / "home")}
        write_model(Path(tmp) / "model.safetensors", 4, 1000)
        for step in (["init"], ["repo", "create", "bench", "--from", str(Path(tmp) / "model.safetensors")]):
            subprocess.run(base + step, env=env, check=True, capture_output=True)
        bare = timed([sys.executable, "-c", "pass"], env, args.repeat)
        print(f"{'python -c pass':58} best {min(bare):.3f} s   median {statistics.median(bare):.3f} s")
        missed = 0
        for label, argv in COMMANDS.items():
            times = timed(base + argv, env, args.repeat)
            best, median = min(times), statistics.median(times)
            print(f"{label:58} best {best:.3f} s   median {median:.3f} s   "
                  f"(+{median - statistics.median(bare):.3f} s over the interpreter)")
            ok = median <= TARGET_S
            missed += not ok
            print(ratio_line(f"  {label} median / target", median / TARGET_S, "<= 1.0", ok))
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
