"""Pedersen commitments (issue 15 items 1-2): commitment time per size, and the merge check.

    python bench/bench_zk_commit.py [--quick]

Targets: a commitment to 1M parameters <= 1.5 s (mcl backend); the FedAvg merge check over 8
inputs (``sum w_k C_k == W C(d) + C(r)``) <= 5 ms. Values as the merge grid gives them: int16
deltas (16-bit-ish); full-width int64 values for comparison. Each timing is repeated: best and
median are printed (a CI run may share the CPUs). The generators are derived once per process
(hash-to-curve, one square root per try): that one-time cost is printed separately.
Exits 1 if a target is missed. --quick: 10k and 100k only.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from fednode.zk import generators as gens
from fednode.zk import mcl
from fednode.zk import merge_check as mc
from fednode.zk import pedersen as pd

TARGET_1M_S = 1.5
TARGET_MERGE_MS = 5.0


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return min(runs), statistics.median(runs)


def main() -> int:
    quick = "--quick" in sys.argv
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    rng = np.random.default_rng(15)
    be = pd.backend("mcl")
    ok = True
    t = time.perf_counter()
    be.generators(max(sizes), gens.DEFAULT_SEED)
    derive = time.perf_counter() - t
    each_us = derive / max(sizes) * 1e6
    print(f"generators: {max(sizes):,} derived in {derive:.1f} s ({each_us:.0f} us each, once per process)")
    ref_n = 20
    ref_values = rng.integers(-(1 << 15), 1 << 15, ref_n).tolist()
    ref_best, _ = timed(lambda: pd.commit(ref_values, backend_name="reference"), 2)
    print(f"py_ecc reference: {ref_n} values in {ref_best * 1e3:.0f} ms ({ref_best / ref_n * 1e3:.1f} ms a value)")
    print(f"{'size':>10} {'values':>8} {'threads':>7} {'best s':>8} {'median s':>9} {'vs py_ecc':>10}")
    for n in sizes:
        grid = rng.normal(0, 6000, n).clip(-32768, 32767).astype(np.int16)
        wide = rng.integers(-(1 << 62), 1 << 62, n)
        repeats = 3 if n >= 1_000_000 else 5
        for label, values in (("int16", grid), ("int64", wide)):
            if label == "int64" and n >= 1_000_000 and quick:
                continue
            for threads in sorted({1, mcl.THREADS}):
                be.threads = threads  # type: ignore[attr-defined]
                best, median = timed(partial(pd.commit, values), repeats)
                ratio = ref_best / ref_n * n / best
                print(f"{n:>10,} {label:>8} {threads:>7} {best:>8.3f} {median:>9.3f} {ratio:>9.0f}x")
                if n == 1_000_000 and label == "int16" and threads == mcl.THREADS:
                    hit = best <= TARGET_1M_S
                    ok &= hit
                    print(f"  target: 1M parameters <= {TARGET_1M_S} s: best {best:.3f} s "
                          f"({best / TARGET_1M_S:.2f} of target) {'met' if hit else 'MISSED'}")
    be.threads = mcl.THREADS  # type: ignore[attr-defined]

    k, n = 8, 1000
    qs = [rng.integers(-(1 << 15), 1 << 15, n) for _ in range(k)]
    ws = [int(w) for w in rng.integers(1, 5000, k)]
    bs = [int(b) for b in rng.integers(1, 1 << 62, k)]
    cs = [pd.commit(q, b) for q, b in zip(qs, bs, strict=True)]
    d, r = mc.fedavg_delta(qs, ws)
    c_d, c_r = mc.merge_commitments(d, r, *mc.split_blinding(bs, ws))
    assert mc.check_linear_merge(cs, ws, c_d, c_r)
    best, median = timed(lambda: mc.check_linear_merge(cs, ws, c_d, c_r), 50)
    hit = best * 1e3 <= TARGET_MERGE_MS
    ok &= hit
    print(f"merge check, {k} inputs: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms; "
          f"target <= {TARGET_MERGE_MS} ms ({best * 1e3 / TARGET_MERGE_MS:.2f} of target) {'met' if hit else 'MISSED'}")
    best_ref, _ = timed(lambda: mc.check_linear_merge(cs, ws, c_d, c_r, backend_name="reference"), 2)
    print(f"merge check with py_ecc: {best_ref * 1e3:.0f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
