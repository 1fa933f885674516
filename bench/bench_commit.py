"""Commit benchmarks (issue 2), each a ratio measured in one run.

1. Committing a 100M-parameter float32 model vs hashlib.sha256 over the same bytes.
2. Re-committing with 1% of the tensors changed: new bytes stored / model bytes.
3. Peak RSS of a process committing a 1 GB model / model size.

Usage: python bench/bench_commit.py [--params 100e6] [--big-gb 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import ratio_line, write_model  # noqa: E402

from fednode.history import History  # noqa: E402
from fednode.identity import Identity  # noqa: E402
from fednode.storage.store import Store  # noqa: E402
from fednode.tensors.modelio import SafetensorsFile  # noqa: E402


def sha256_file(path: Path) -> float:
    start = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return time.perf_counter() - start


def durable_write(path: Path, src: Path) -> float:
    """The disk's floor for a durable commit: copy the bytes to a new file and fdatasync it."""
    start = time.perf_counter()
    with open(src, "rb") as fin, open(path, "wb") as fout:
        while chunk := fin.read(4 << 20):
            fout.write(chunk)
        fout.flush()
        os.fdatasync(fout.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def settle(path: Path) -> None:
    """Write the benchmark's input, and whatever else is pending on this machine (e.g. a pip
    install just before), to disk first, so no timed run competes with that write-back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()


def _genesis_commit(path: Path, model: Path, sync: bool, keep: bool = False):
    """(seconds, history, repo, result) of one genesis commit of ``model`` into a fresh store."""
    history = History(Store(path, sync=sync), Identity.generate())
    start = time.perf_counter()
    repo, result = history.create_repo("bench", SafetensorsFile(model))
    elapsed = time.perf_counter() - start
    if not keep:
        history.store.close()
        shutil.rmtree(path)
    return elapsed, history, repo, result


def bench_commit_speed(tmp: Path, params: int) -> list[str]:
    model = tmp / "model.safetensors"
    n_tensors = 100
    size = write_model(model, n_tensors, params // n_tensors)
    settle(model)
    sha256_file(model)  # warm the page cache so both sides read from memory
    t_hash = min(sha256_file(model) for _ in range(3))
    t_floor = min(durable_write(tmp / "copy.bin", model) for _ in range(3))
    # best of 3 like the hash, each into a fresh store; a store is deleted before the next run
    # (its unsynced pages would otherwise be written back during it)
    t_nosync = min(_genesis_commit(tmp / "store-nosync", model, sync=False)[0] for _ in range(3))
    runs = [_genesis_commit(tmp / f"store-{i}", model, sync=True, keep=i == 2) for i in range(3)]
    t_commit = min(r[0] for r in runs)
    _, history, repo, result = runs[2]  # the last store is kept for the update commit below
    src = SafetensorsFile(model)
    lines = [
        f"model: {params / 1e6:.0f}M float32 parameters, {size / 1e6:.0f} MB, {n_tensors} tensors",
        f"sha256 {t_hash:.3f} s ({size / t_hash / 1e9:.2f} GB/s); genesis commit {t_commit:.3f} s",
        ratio_line("commit time / sha256 time (genesis, fsync'd: the default)", t_commit / t_hash, "<= 2.5",
                   t_commit / t_hash <= 2.5),
        # the same run's disk floor: how much of the durable commit's time the disk alone needs
        ratio_line("disk floor (copy + fdatasync) time / sha256 time", t_floor / t_hash, "info", True),
        ratio_line("durable commit time / disk floor time", t_commit / t_floor, "info", True),
        ratio_line("commit time / sha256 time (genesis, [store] fsync = false)", t_nosync / t_hash, "<= 2.5",
                   t_nosync / t_hash <= 2.5),
        f"disk floor: copying the same bytes to a file + fdatasync takes {t_floor:.3f} s (all times: best of 3)",
    ]
    # 1% of tensors changed
    import numpy as np

    from fednode.tensors.modelio import ArraySource

    arrays = {name: (info.dtype, src.array(name)) for name, info in src.tensors.items()}
    changed = max(1, n_tensors // 100)
    rng = np.random.default_rng(1)
    for name in list(arrays)[:changed]:
        dtype, arr = arrays[name]
        arrays[name] = (dtype, arr + rng.normal(0, 1e-3, arr.size).astype(np.float32))
    start = time.perf_counter()
    update = history.commit(repo, ArraySource(arrays), "1% changed")
    t_update = time.perf_counter() - start
    frac = update.new_bytes / size
    lines.append(f"update commit with {changed}/{n_tensors} tensors changed: {t_update:.3f} s, "
                 f"{update.new_bytes} new bytes")
    lines.append(ratio_line("new bytes / model bytes (1% of tensors changed)", frac, "<= 0.05", frac <= 0.05))
    lines.append(ratio_line("update commit time / sha256 time (informational)", t_update / t_hash, "-", True))
    history.store.close()
    src.close()
    return lines


# ru_maxrss survives exec on Linux (it would report the parent's peak): read VmHWM instead.
_HWM = """
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

CHILD = _HWM + """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from fednode.history import History
from fednode.identity import Identity
from fednode.tensors.modelio import SafetensorsFile
from fednode.storage.store import Store
h = History(Store(Path({store!r})), Identity.generate())
h.create_repo("big", SafetensorsFile(Path({model!r})))
print(_hwm())
"""

BASELINE = _HWM + """
import sys
sys.path.insert(0, {root!r})
import fednode.history, fednode.storage.store, numpy
print(_hwm())
"""


def bench_rss(tmp: Path, gigabytes: float) -> list[str]:
    model = tmp / "big.safetensors"
    numel = 16 * 1024 * 1024
    n_tensors = max(1, int(gigabytes * 1e9 / (numel * 4)))
    size = write_model(model, n_tensors, numel, seed=2)
    code = CHILD.format(root=str(ROOT), store=str(tmp / "bigstore"), model=str(model))
    peak = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    base = int(
        subprocess.run([sys.executable, "-c", BASELINE.format(root=str(ROOT))], check=True,
                       capture_output=True, text=True).stdout
    )
    return [
        f"1 GB model: {size / 1e9:.2f} GB in {n_tensors} tensors; peak RSS {peak / 1e6:.0f} MB "
        f"(interpreter + imports alone {base / 1e6:.0f} MB)",
        ratio_line("peak RSS while committing / model size", peak / size, "<= 1.5", peak / size <= 1.5),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=float, default=100e6)
    parser.add_argument("--big-gb", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fednode-bench-") as tmp:
        for line in bench_commit_speed(Path(tmp), int(args.params)):
            print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="fednode-bench-") as tmp:
        for line in bench_rss(Path(tmp), args.big_gb):
            print(line, flush=True)



if __name__ == "__main__":
    main()
