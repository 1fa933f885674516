"""Helpers shared by the benchmarks: synthetic models and a throwaway node."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def write_model(path: Path, n_tensors: int, numel: int, seed: int = 0, dtype: str = "F32") -> int:
    """A safetensors file of ``n_tensors`` float32 tensors, written tensor by tensor."""
    rng = np.random.default_rng(seed)
    header: dict[str, object] = {}
    pos = 0
    for i in range(n_tensors):
        header[f"layer{i:04d}.weight"] = {"dtype": dtype, "shape": [numel], "data_offsets": [pos, pos + numel * 4]}
        pos += numel * 4
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(n_tensors):
            fh.write(rng.standard_normal(numel, dtype=np.float32).tobytes())
    return pos


def ratio_line(name: str, value: float, target: str, ok: bool, note: str = "") -> str:
    line = f"{name:58} {value:10.3f}   target {target:10} {'PASS' if ok else 'MISS'}"
    return f"{line}   ({note})" if note else line
