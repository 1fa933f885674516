"""FedAvg merge benchmark (issues 3 and 11), ratios measured in one run.

8 updates x 10M float32 parameters (10 tensors of 1M):
- Flower's ``flwr.server.strategy.aggregate.aggregate`` on the float32 arrays;
- what ``fednode merge`` runs per float32 tensor (``strategies.fused_merge``): choose the tensor's
  grid (rule 2, from the base's magnitude), then quantize, exact FedAvg and apply, fused in one C
  pass over the float32 states split across the machine's cores (``FedAvg.merge_states``),
  checked byte-equal to the three steps done apart on that grid;
- fednode's exact FedAvg (``fednode.strategies``) on int64 deltas on the repository grid (2**-24)
  and on those deltas as a commit stores them (narrowed);
- one numpy pass over all inputs (one add of each int64 delta into an accumulator): the
  machine's memory speed, printed beside each ratio.
Peak extra memory is measured with tracemalloc (numpy reports its buffers to it).

Flower is only a bench dependency: ``make bench`` installs it into .venv-bench.
Usage: python bench/bench_merge.py [--params 10e6] [--inputs 8] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import ratio_line  # noqa: E402

from fednode import strategies  # noqa: E402
from fednode.strategies import exact  # noqa: E402
from fednode.tensors import fixedpoint  # noqa: E402

SCALE_BITS = 24


def timed(fn, repeat: int = 7) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def timed_pair(f, g, repeat: int = 7) -> tuple[float, float, object, object]:
    """Best times of ``f`` and ``g`` run alternately, so that a change of load hits both alike."""
    best_f = best_g = float("inf")
    out_f = out_g = None
    for _ in range(repeat):
        for which in (0, 1):
            start = time.perf_counter()
            out = (f, g)[which]()
            took = time.perf_counter() - start
            if which == 0:
                best_f, out_f = min(best_f, took), out
            else:
                best_g, out_g = min(best_g, took), out
    return best_f, best_g, out_f, out_g


def peak_extra(fn) -> int:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=float, default=10e6)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    repeat = args.repeat
    n_tensors = 10
    numel = int(args.params) // n_tensors
    rng = np.random.default_rng(0)
    base = [rng.standard_normal(numel, dtype=np.float32) for _ in range(n_tensors)]
    updates = [[(b + rng.normal(0, 1e-2, numel)).astype(np.float32) for b in base] for _ in range(args.inputs)]
    samples = [int(s) for s in rng.integers(50, 500, args.inputs)]
    deltas = [[fixedpoint.encode_delta(b, u, "F32", SCALE_BITS) for b, u in zip(base, upd, strict=True)]
              for upd in updates]
    stored = [[d.astype(f"<i{fixedpoint.int_bits_for(d) // 8}") for d in upd] for upd in deltas]
    fedavg = strategies.create("fedavg")
    model_bytes_f32 = n_tensors * numel * 4
    model_bytes_i64 = n_tensors * numel * 8

    def ours_int() -> list[np.ndarray]:
        return [fedavg.aggregate([d[t] for d in deltas], samples) for t in range(n_tensors)]

    def ours_stored() -> list[np.ndarray]:
        return [fedavg.aggregate([d[t] for d in stored], samples) for t in range(n_tensors)]

    plan = fedavg.plan(samples)

    def ours_float() -> list[tuple[int, np.ndarray]]:  # what `fednode merge` runs per float32 tensor
        return [strategies.fused_merge(fedavg, plan, base[t], [u[t] for u in updates], "F32", None, SCALE_BITS)
                for t in range(n_tensors)]

    def ours_float_steps(grid: list[int]) -> list[np.ndarray]:  # the same bytes, step by step
        out = []
        for t in range(n_tensors):
            q = [fixedpoint.encode_delta(base[t], u[t], "F32", grid[t]) for u in updates]
            out.append(fixedpoint.apply_delta(base[t], fedavg.aggregate(q, samples), "F32", grid[t]))
        return out

    def one_pass() -> None:
        for t in range(n_tensors):
            acc = np.zeros(numel, dtype=np.int64)
            for d in deltas:
                np.add(acc, d[t], out=acc)

    load = os.getloadavg()[0]
    lines = [f"FedAvg of {args.inputs} updates x {n_tensors * numel / 1e6:.0f}M float32 parameters; "
             f"{exact.THREADS} thread(s); load average {load:.2f} at start"]
    t_int, merged = timed(ours_int, repeat)
    t_stored, merged_stored = timed(ours_stored, repeat)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(merged, merged_stored, strict=True))
    width = stored[0][0].dtype.itemsize * 8
    t_float, fused = timed(ours_float, repeat)
    assert all(f is not None for f in fused), "the fused float32 path did not run (native kernels unavailable?)"
    grid = [bits for bits, _ in fused]
    merged_float = [out for _, out in fused]
    t_steps, merged_steps = timed(lambda: ours_float_steps(grid), repeat=1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(merged_float, merged_steps, strict=True))
    t_pass, _ = timed(one_pass, repeat)
    memory = f"one numpy pass {t_pass:.3f} s"
    try:
        from flwr.server.strategy.aggregate import aggregate
    except ImportError:
        aggregate = None
    if aggregate is not None:
        results = [(upd, s) for upd, s in zip(updates, samples, strict=True)]
        t_flwr, t_float, flwr_out, _ = timed_pair(lambda: aggregate(results), ours_float, repeat)  # alternately
        # same math in floats: Flower's float32 mean against ours (float32-rounded exact mean on a finer grid)
        gap = max(float(np.max(np.abs(o.astype(np.float64) - f))) for o, f in zip(merged_float, flwr_out, strict=True))
        lines.append(f"Flower aggregate {t_flwr:.3f} s; fednode merge path (grid + fused exact FedAvg) {t_float:.3f} s "
                     f"({t_steps:.3f} s step by step, same bytes); exact FedAvg on int64 deltas {t_int:.3f} s; "
                     f"{memory}")
        lines.append(f"grid bits chosen: {sorted(set(grid))}; largest difference from Flower's float32 result: "
                     f"{gap:.3g}")
        lines.append(f"fednode exact FedAvg on the deltas as stored (int{width}): {t_stored:.3f} s, same bytes")
        lines.append(ratio_line("speed-up vs Flower (what fednode merge runs)", t_flwr / t_float, ">= 1.5",
                                t_flwr / t_float >= 1.5, f"Flower {t_flwr:.3f} s, ours {t_float:.3f} s, {memory}"))
        lines.append(ratio_line(f"speed-up vs Flower (exact FedAvg, stored int{width} deltas)", t_flwr / t_stored,
                                "info", True, memory))
        lines.append(ratio_line("speed-up vs Flower (exact FedAvg, int64 deltas)", t_flwr / t_int, "info", True,
                                memory))
    else:
        lines.append("flwr not installed (make bench installs it into .venv-bench): Flower ratio not measured")
        lines.append(f"fednode merge path {t_float:.3f} s; exact FedAvg on int64 deltas {t_int:.3f} s; {memory}")
    lines.append(ratio_line("fednode FedAvg (int64) time / one numpy pass over the int64 inputs", t_int / t_pass,
                            "<= 3", t_int / t_pass <= 3))
    extra = peak_extra(ours_int) - model_bytes_i64  # the merged output itself is one model
    lines.append(ratio_line("peak memory beyond inputs and output / one model (int64)",
                            max(extra, 0) / model_bytes_i64, "<= 2", extra <= 2 * model_bytes_i64))
    lines.append(f"(one model: {model_bytes_f32 / 1e6:.0f} MB float32, {model_bytes_i64 / 1e6:.0f} MB as int64 deltas)")
    for line in lines:
        print(line, flush=True)


if __name__ == "__main__":
    main()
