"""Issue 15 item 7 in one run: every zero-knowledge benchmark, one after the other, then their verdicts.

    python bench/bench_zk_all.py [--sizes 10000,100000]

Runs, in this order and in separate processes (each measures on a machine the others have left):
``bench_zk_commit.py`` (Pedersen commitments up to 1M parameters and the merge check over 8 inputs in
Python), ``bench_zk_proof.py --sizes ...`` (set-up, proof time and size at 10k and 100k parameters,
1M extrapolated; verification in Python; the on-chain check's compute units) and ``bench_zk_chain.py``
(compute units of prove_commit, of a merge of 8 proven inputs and of prove_merge). Prints each
script's output as it comes, then every line that carries a verdict (PASS / MISS, met / MISSED), and exits 1 if any
script failed or any target was missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="update-proof sizes for bench_zk_proof.py")
    args = ap.parse_args()
    runs = [["bench_zk_commit.py"], ["bench_zk_proof.py", "--sizes", args.sizes], ["bench_zk_chain.py"]]
    verdicts, failed = [], []
    for cmd in runs:
        print(f"\n=== {' '.join(cmd)} ===", flush=True)
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(BENCH / cmd[0]), *cmd[1:]], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if any(word in line for word in ("PASS", "MISS", " met", "MISSED")):
                verdicts.append(f"{cmd[0]}: {line.strip()}")
        if proc.wait() != 0:
            failed.append(cmd[0])
        print(f"=== {cmd[0]}: {time.perf_counter() - t:.0f} s, exit status {proc.returncode} ===", flush=True)
    print("\nverdicts:")
    for line in verdicts:
        print(f"  {line}")
    missed = [v for v in verdicts if "MISS" in v]  # MISS and MISSED
    print(f"{len(verdicts)} verdicts, {len(missed)} missed; scripts failed: {', '.join(failed) or 'none'}")
    return 1 if missed or failed else 0


if __name__ == "__main__":
    sys.exit(main())
