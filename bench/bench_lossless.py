"""Stored bytes per trained update, lossless (issue 11 item 1), one run.

Trains real updates with torch SGD, then commits each into a real History (LMDB store) with the
default ``xor`` encoding and compares what it stored against:

- raw: the update's dense bytes (what a snapshot stores),
- zstd(raw): zstd level 3 over those bytes,
- xor: fednode's default (bit-level XOR against the parent, byte-grouped, zstd level 3), as stored,
- zipnn: ZipNN 0.5.4 delta compression (XOR + byte grouping + Huffman/zstd), when importable,
- the lossy encodings fixed / fp16 / int8 for reference (they do not round-trip).

Updates: the bundled breast-cancer model (fednode/examples/cancer_torch.py, 530 parameters, one
epoch of its own SGD), and an MLP 784-512-256-10 (535k parameters) after 32 SGD steps (lr 0.01,
batch 64) and after 1 step, stored as F32, BF16 and F16. Every xor commit is checked bit for bit.

Usage: python bench/bench_lossless.py [--steps 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import fixed_identity  # noqa: E402

from fednode.history import History  # noqa: E402
from fednode.storage.store import Store  # noqa: E402
from fednode.tensors import encodings  # noqa: E402
from fednode.tensors.modelio import ArraySource  # noqa: E402
from protocol.objects import TensorEntry  # noqa: E402

TORCH_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
ZIPNN_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def arrays(model: torch.nn.Module, dtype: str) -> dict[str, tuple[str, np.ndarray]]:
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().to(TORCH_DTYPES[dtype]).contiguous()
        arr = t.view(torch.int16).numpy().view(np.uint16) if dtype == "BF16" else t.numpy()
        out[name] = (dtype, arr.copy())
    return out


def dense(a: dict[str, tuple[str, np.ndarray]]) -> bytes:
    return b"".join(arr.tobytes() for _, arr in a.values())


def zipnn_delta(before: dict, after: dict) -> int | None:
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    total = 0
    for name, (dtype, arr) in after.items():
        z = ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPES[dtype], delta_compressed_type="byte")
        new, old = arr.tobytes(), before[name][1].tobytes()
        packed = z.compress(new, delta_second_data=old)
        assert bytes(z.decompress(packed, delta_second_data=old)) == new
        total += len(packed)
    return total


def stored(history: History, before: dict, after: dict, encoding: str) -> int:
    """Bytes a commit of ``after`` on a repository of ``before`` stores for its tensors."""
    repo, _ = history.create_repo(f"r{time.perf_counter_ns()}", ArraySource(before))
    result = history.commit(repo, ArraySource(after), "update", encoding=encoding)
    tensors = history.load_manifest(result.commit.weights).tensors
    if encoding == "xor":
        for name, (_, arr) in after.items():
            assert history.tensor_array(result.cid, name).tobytes() == arr.tobytes(), name
    return sum(e.size for e in tensors.values())


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))


def sgd(model: torch.nn.Module, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64 * steps, 784, generator=gen)
    y = (x[:, :10].argmax(1) + (x[:, 10] > 1).long()) % 10  # a learnable target
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i * 64:(i + 1) * 64]), y[i * 64:(i + 1) * 64]).backward()
        opt.step()


def cancer_update() -> tuple[torch.nn.Module, torch.nn.Module]:
    from fednode.examples import cancer_torch

    torch.manual_seed(0)
    before = cancer_torch.model()
    after = cancer_torch.model()
    after.load_state_dict(before.state_dict())
    train, _ = cancer_torch.data()
    opt = cancer_torch.optimizer(after.parameters())
    for xb, yb in torch.utils.data.DataLoader(train, batch_size=cancer_torch.batch_size, shuffle=False):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(after(xb.float()), yb.long()).backward()
        opt.step()
    return before, after


def speed(before: dict, after: dict) -> tuple[float, float]:
    """MB/s of the xor encode (XOR, byte grouping, zstd) and decode (unzstd, ungroup, XOR)."""
    mb = sum(a.nbytes for _, a in after.values()) / 1e6
    entries, blobs = {}, {}
    t0 = time.perf_counter()
    for name, (dtype, arr) in after.items():
        payload = encodings.encode("xor", before[name][1], arr, dtype, 0).payload
        blobs[name], packed = encodings.compress(payload)
        entries[name] = TensorEntry(dtype, arr.shape, "xor", 1, size=len(blobs[name]),
                                    compression="zstd" if packed else "none")
    t1 = time.perf_counter()
    for name, (_, arr) in after.items():
        blob = blobs[name]
        if entries[name].compression == "zstd":
            blob = encodings.decompress(blob, arr.nbytes)
        out = encodings.apply(before[name][1].reshape(-1), blob, entries[name])
        assert out.tobytes() == arr.tobytes()
    t2 = time.perf_counter()
    return mb / (t1 - t0), mb / (t2 - t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = []
    b, a = cancer_update()
    cases.append(("cancer MLP, 1 epoch", "F32", b, a))
    base = mlp()
    for steps in (args.steps, 1):
        after = mlp()
        after.load_state_dict(base.state_dict())
        sgd(after, steps)
        for dtype in ("F32", "BF16", "F16"):
            cases.append((f"MLP 535k, {steps} SGD step(s)", dtype, base, after))
    header = f"{'update':28} {'dtype':5} {'raw':>9} {'zstd(raw)':>10} {'xor':>9} {'zipnn':>9} " \
             f"{'fixed*':>9} {'fp16*':>9} {'int8*':>9}   xor/raw xor/zstd"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        history = History(store, fixed_identity())
        try:
            for label, dtype, bm, am in cases:
                before, after = arrays(bm, dtype), arrays(am, dtype)
                raw = len(dense(after))
                zraw = len(zstandard.ZstdCompressor(level=3).compress(dense(after)))
                xor = stored(history, before, after, "xor")
                zn = zipnn_delta(before, after)
                lossy = [stored(history, before, after, e) for e in ("fixed", "fp16", "int8")]
                print(f"{label:28} {dtype:5} {raw:9d} {zraw:10d} {xor:9d} {zn if zn is not None else '-':>9} "
                      + " ".join(f"{n:9d}" for n in lossy) + f"   {xor / raw:7.3f} {xor / zraw:8.3f}")
            enc, dec = speed(arrays(cases[1][2], "F32"), arrays(cases[1][3], "F32"))
            print(f"xor speed on the 535k F32 MLP: encode {enc:.0f} MB/s, decode {dec:.0f} MB/s (one core)")
        finally:
            store.close()
    print("* lossy, for reference only: they do not return the trained bytes")


if __name__ == "__main__":
    main()
