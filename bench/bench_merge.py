"""FedAvg merge benchmark (issue 3), ratios measured in one run.

8 updates x 10M float32 parameters (10 tensors of 1M):
- Flower's ``flwr.server.strategy.aggregate.aggregate`` on the float32 arrays;
- fednode's exact FedAvg (``fednode.strategies``) on the same updates as they are
  merged: int64 deltas on the repository grid (2**-24);
- fednode from the very same float32 arrays: quantize, exact FedAvg, apply, fused in one C
  pass (``FedAvg.merge_states``, what ``fednode merge`` runs), checked byte-equal to the
  three steps done apart;
- one numpy pass over all inputs (one add per input into an accumulator).
Peak extra memory is measured with tracemalloc (numpy reports its buffers to it).

Flower is only a bench dependency: ``make bench`` installs it into .venv-bench.
Usage: python bench/bench_merge.py [--params 10e6] [--inputs 8]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import ratio_line  # noqa: E402

from fednode import fixedpoint, strategies  # noqa: E402

SCALE_BITS = 24


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


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
    args = parser.parse_args()
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

    def ours_float() -> list[np.ndarray]:  # what `fednode merge` runs per float32 tensor
        return [fedavg.merge_states(base[t], [u[t] for u in updates], plan, "F32", SCALE_BITS)
                for t in range(n_tensors)]

    def ours_float_steps() -> list[np.ndarray]:  # the same bytes, step by step
        out = []
        for t in range(n_tensors):
            q = [fixedpoint.encode_delta(base[t], u[t], "F32", SCALE_BITS) for u in updates]
            out.append(fixedpoint.apply_delta(base[t], fedavg.aggregate(q, samples), "F32", SCALE_BITS))
        return out

    def one_pass() -> None:
        for t in range(n_tensors):
            acc = np.zeros(numel, dtype=np.int64)
            for d in deltas:
                np.add(acc, d[t], out=acc)

    lines = [f"FedAvg of {args.inputs} updates x {n_tensors * numel / 1e6:.0f}M float32 parameters"]
    t_int, merged = timed(ours_int)
    t_stored, merged_stored = timed(ours_stored)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(merged, merged_stored, strict=True))
    width = stored[0][0].dtype.itemsize * 8
    t_float, merged_float = timed(ours_float)
    assert merged_float[0] is not None, "the fused float32 path did not run (native kernels unavailable?)"
    t_steps, merged_steps = timed(ours_float_steps, repeat=1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(merged_float, merged_steps, strict=True))
    t_pass, _ = timed(one_pass)
    try:
        from flwr.server.strategy.aggregate import aggregate
    except ImportError:
        aggregate = None
    if aggregate is not None:
        results = [(upd, s) for upd, s in zip(updates, samples, strict=True)]
        t_flwr, flwr_out = timed(lambda: aggregate(results))
        # same math in floats: Flower's mean should be within one grid step of ours (+ float32 rounding)
        ours_f = [b.astype(np.float64) + m * 2.0**-SCALE_BITS for b, m in zip(base, merged, strict=True)]
        gap = max(float(np.max(np.abs(o - f))) for o, f in zip(ours_f, flwr_out, strict=True))
        lines.append(f"Flower aggregate {t_flwr:.3f} s; fednode exact FedAvg on int64 deltas {t_int:.3f} s; "
                     f"from the same float32 arrays {t_float:.3f} s (fused; {t_steps:.3f} s step by step, "
                     f"same bytes); one numpy pass {t_pass:.3f} s")
        lines.append(f"largest difference from Flower's float result: {gap:.3g} (grid step {2.0**-SCALE_BITS:.3g})")
        lines.append(f"fednode exact FedAvg on the deltas as stored (int{width}): {t_stored:.3f} s, same bytes")
        lines.append(ratio_line(f"speed-up vs Flower (exact FedAvg, stored int{width} deltas)", t_flwr / t_stored,
                                ">= 1.5", t_flwr / t_stored >= 1.5))
        lines.append(ratio_line("speed-up vs Flower (exact FedAvg, int64 deltas)", t_flwr / t_int, "info", True))
        lines.append(ratio_line("speed-up vs Flower (from the same float32 arrays, fused)", t_flwr / t_float,
                                ">= 1.5", t_flwr / t_float >= 1.5))
    else:
        lines.append("flwr not installed (make bench installs it into .venv-bench): Flower ratio not measured")
        lines.append(f"fednode exact FedAvg {t_int:.3f} s; end to end {t_float:.3f} s; one numpy pass {t_pass:.3f} s")
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
