"""Update encodings: how one tensor's change from its parent is stored.

A registry of named, documented encodings (``NAMES``). The default, ``xor``, is
lossless: it stores the bitwise XOR of the tensor's little-endian bytes with its
parent's, so ``apply`` rebuilds every bit (NaN payloads, -0.0, subnormals, any
magnitude, any dtype). The others are lossy and only used when chosen; every
decoder uses only correctly rounded float64 operations, so reconstruction is
deterministic on any machine: they trade exactness of the *update* for size,
never determinism of the *state*.

=========  ===========================================================  ==========
name       payload                                                      lossy
=========  ===========================================================  ==========
xor        new XOR parent bytes, grouped by byte significance            no
fixed      integers on the grid 2**-scale_bits, narrowest of 8..64 bits  yes (floats)
fp16       the change as IEEE float16                                    yes
int8       round(change / scale) in int8, scale = max|change| / 127      yes
topk       the k largest changes: uint32 indices + fixed-grid integers   yes
=========  ===========================================================  ==========

``xor`` byte grouping: for an element size s, the payload is byte 0 of every
element, then byte 1 of every element, ..., then byte s-1 (ZipNN's "byte
grouping", arXiv 2411.05239). A small update leaves the sign/exponent bytes of
the XOR almost all zero, which zstd then stores in a few bytes. Integer tensors
use ``xor`` (or exact ``fixed`` integers when a lossy encoding is chosen).

Merges do not depend on how an input was encoded: they work on exact integer
deltas between reconstructed states (``fednode.workflows.merging``). Payloads may be
compressed with zstd (``compress``), kept only when it saves at least 1/8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

from fednode.errors import Corrupt, FednodeError
from fednode.lazy import lazy_import
from fednode.tensors import fixedpoint
from protocol.objects import FLOAT_DTYPES, TensorEntry

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")

ZSTD_LEVEL = 3
DEFAULT = "xor"
LOSSY = ("fixed", "fp16", "int8", "topk")
NAMES = (DEFAULT, *LOSSY)
DEFAULT_TOPK_FRACTION = 0.01


@dataclass(frozen=True)
class Encoded:
    payload: bytes
    fields: dict  # encoding-specific TensorEntry fields (int_bits, scale_bits, scale, k)


def byte_planes(data: bytes | memoryview, itemsize: int) -> bytes:
    """Byte k of every element together, for k = 0 .. itemsize-1 (little-endian significance)."""
    flat = np.frombuffer(data, dtype=np.uint8)
    if itemsize == 1:
        return flat.tobytes()
    return flat.reshape(-1, itemsize).T.tobytes()


def from_byte_planes(data: bytes | memoryview, itemsize: int) -> np.ndarray:
    """Inverse of ``byte_planes``: the elements' bytes back in order (a fresh uint8 array)."""
    flat = np.frombuffer(data, dtype=np.uint8)
    if itemsize == 1:
        return flat.copy()
    return np.ascontiguousarray(flat.reshape(itemsize, -1).T).reshape(-1)


def xor_bytes(parent: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The bitwise XOR of two same-sized arrays' bytes (uint8)."""
    return np.bitwise_xor(np.ascontiguousarray(parent).view(np.uint8).reshape(-1),
                          np.ascontiguousarray(new).view(np.uint8).reshape(-1))


def _float_change(parent: np.ndarray, new: np.ndarray, dtype: str) -> np.ndarray | None:
    d = fixedpoint.to_f64(new, dtype) - fixedpoint.to_f64(parent, dtype)
    return d if np.isfinite(d).all() else None


def encode(name: str, parent: np.ndarray, new: np.ndarray, dtype: str, scale_bits: int,
           topk_fraction: float = DEFAULT_TOPK_FRACTION) -> Encoded | None:
    """Encode ``new`` relative to ``parent``; None when it must be a snapshot instead."""
    if name not in NAMES:
        raise FednodeError(f"unknown update encoding {name!r}; valid: {', '.join(NAMES)}")
    if name == "xor":
        if parent.nbytes != new.nbytes or parent.dtype.itemsize != new.dtype.itemsize:
            raise FednodeError("xor needs a parent of the same dtype and shape")
        return Encoded(byte_planes(xor_bytes(parent, new).data, new.dtype.itemsize), {})
    if name != "fixed" and dtype not in FLOAT_DTYPES:
        name = "fixed"  # lossy encodings make no sense for integer tensors
    if name == "fixed":
        sb = scale_bits if dtype in FLOAT_DTYPES else 0
        q = fixedpoint.encode_delta(parent, new, dtype, sb)
        if q is None:
            return None
        bits = fixedpoint.int_bits_for(q)
        return Encoded(q.astype(f"<i{bits // 8}").tobytes(), {"int_bits": bits, "scale_bits": sb})
    d = _float_change(parent, new, dtype)
    if d is None:
        return None
    if name == "fp16":
        h = d.astype("<f2")
        return None if not np.isfinite(h).all() else Encoded(h.tobytes(), {})
    if name == "int8":
        peak = float(np.abs(d).max(initial=0.0))
        scale = peak / 127.0 if peak > 0 else 1.0
        q = np.clip(np.rint(d / scale), -127, 127).astype("i1")
        return Encoded(q.tobytes(), {"scale": scale})
    if not 0 < topk_fraction <= 1:
        raise FednodeError("--topk-fraction must be in (0, 1]")
    if d.size >= 1 << 32:
        return None
    q = np.rint(d * float(2**scale_bits))
    if np.abs(q).max(initial=0.0) >= 2.0**62:
        return None
    q = q.astype(np.int64)
    k = max(1, int(np.ceil(d.size * topk_fraction))) if d.size else 0
    order = np.argsort(-np.abs(q), kind="stable")[:k]  # ties: lowest index first
    idx = np.sort(order).astype("<u4")
    vals = q[idx]
    bits = fixedpoint.int_bits_for(vals)
    return Encoded(idx.tobytes() + vals.astype(f"<i{bits // 8}").tobytes(),
                   {"k": int(k), "int_bits": bits, "scale_bits": scale_bits})


def apply(parent: np.ndarray, payload: bytes, entry: TensorEntry) -> np.ndarray:
    """Rebuild the tensor from its parent and the (decompressed) payload."""
    if len(payload) != entry.payload_size:
        raise Corrupt(f"{entry.encoding} payload has {len(payload)} bytes, expected {entry.payload_size}")
    if entry.encoding == "xor":
        if parent.nbytes != len(payload):
            raise Corrupt(f"xor payload has {len(payload)} bytes, the parent {parent.nbytes}")
        flat = np.bitwise_xor(np.ascontiguousarray(parent).view(np.uint8).reshape(-1),
                              from_byte_planes(payload, parent.dtype.itemsize))
        return flat.view(parent.dtype)
    if entry.encoding == "fixed":
        q = np.frombuffer(payload, dtype=f"<i{entry.int_bits // 8}")
        return fixedpoint.apply_delta(parent, q, entry.dtype, entry.scale_bits)
    x = fixedpoint.to_f64(parent, entry.dtype)
    if entry.encoding == "fp16":
        x = x + np.frombuffer(payload, dtype="<f2").astype(np.float64)
    elif entry.encoding == "int8":
        x = x + np.frombuffer(payload, dtype="i1").astype(np.float64) * entry.scale
    else:
        idx = np.frombuffer(payload[: entry.k * 4], dtype="<u4").astype(np.int64)
        vals = np.frombuffer(payload[entry.k * 4 :], dtype=f"<i{entry.int_bits // 8}")
        if entry.k and (idx.max() >= entry.numel or (np.diff(idx) <= 0).any()):
            raise Corrupt("top-k indices out of range or not strictly increasing")
        x = x.copy()
        x[idx] += vals.astype(np.float64) * float(2.0**-entry.scale_bits)
    return fixedpoint.from_f64(x, entry.dtype)


def compress(payload: bytes) -> tuple[bytes, bool]:
    """zstd-compress when it saves at least 1/8 of the bytes."""
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
    if len(packed) <= len(payload) - len(payload) // 8:
        return packed, True
    return payload, False


def decompress(blob: bytes, expected: int) -> bytes:
    try:
        out = zstandard.ZstdDecompressor().decompress(blob, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"zstd payload does not decompress: {exc}") from None
    if len(out) != expected:
        raise Corrupt(f"zstd payload decompresses to {len(out)} bytes, expected {expected}")
    return out
