"""Tensor states: rebuilding a commit's tensors along their delta chains, and encoding a new
commit's tensors against its parent's (snapshots, exact XOR deltas, or a lossy encoding asked for)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.history import objstore
from fednode.lazy import lazy_import
from fednode.storage.files import BlockSink, read_array, read_file
from fednode.storage.store import Store, Txn
from fednode.tensors import encodings, fixedpoint
from fednode.tensors.modelio import ModelSource, TensorInfo, np_dtype
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES, Manifest, TensorEntry
from protocol.unixfs import add_bytes

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")


@dataclass(frozen=True)
class TensorError:
    """How far a lossy encoding moved one tensor from the bytes it was given (float64 terms).

    ``max_rel`` is the largest |stored - given| / |given| over the elements; inf when a given 0
    comes back non-zero."""

    max_abs: float
    max_rel: float


def tensor_error(stored: np.ndarray, given: np.ndarray, dtype: str) -> TensorError:
    """Max absolute and relative error of ``stored`` against ``given`` (same dtype, finite values)."""
    if given.size == 0 or np.array_equal(stored.view(np.uint8), given.view(np.uint8)):
        return TensorError(0.0, 0.0)
    x, y = fixedpoint.to_f64(given, dtype), fixedpoint.to_f64(stored, dtype)
    diff = np.abs(y - x)
    mag = np.abs(x)
    nonzero = mag > 0
    rel = float(np.max(diff[nonzero] / mag[nonzero], initial=0.0))
    if (diff[~nonzero] > 0).any():
        rel = float("inf")
    return TensorError(float(diff.max()), rel)


def tensor_bytes(arr: np.ndarray) -> memoryview:
    """A tensor's bytes, without a copy."""
    return arr.data.cast("B")


def state_cid(arr: np.ndarray) -> CID:
    """The state CID of a tensor: its bytes as a UnixFS file (hashed only, nothing stored)."""
    return add_bytes(cast(bytes, tensor_bytes(arr)))  # add_bytes reads any buffer


# --- reconstruct ------------------------------------------------------------------------------------


def tensor_array(txn: Txn, commit_cid: CID, name: str) -> np.ndarray:
    """One tensor of a commit's state, rebuilt exactly (flat, safetensors dtype): its last snapshot,
    then each delta after it."""
    chain: list[TensorEntry] = []
    cid = commit_cid
    while True:
        commit = objstore.load_commit(txn, cid)
        entry = objstore.load_manifest(txn, commit.weights).tensors.get(name)
        if entry is None:
            raise NotFound(f"commit {cid} has no tensor {name!r}")
        chain.append(entry)
        if entry.encoding == "raw":
            break
        if not commit.parents:
            raise Corrupt(f"tensor {name!r} in {cid} has a delta but no parent")
        cid = commit.parents[0]
    snapshot = chain.pop()
    arr = read_array(txn, _data(snapshot), snapshot.size, np_dtype(snapshot.dtype))
    for entry in reversed(chain):
        if (entry.dtype, entry.shape) != (snapshot.dtype, snapshot.shape):
            raise Corrupt(f"tensor {name!r} changes dtype or shape along a delta chain")
        if entry.encoding != "same":
            blob = read_file(txn, _data(entry), entry.size)
            if entry.compression == "zstd":
                blob = encodings.decompress(blob, entry.payload_size)
            arr = encodings.apply(arr, blob, entry)
    return arr


def _data(entry: TensorEntry) -> CID:
    """The root of an entry's stored bytes (every encoding but ``same`` has one: the decoder checks)."""
    if entry.cid is None:
        raise Corrupt(f"a {entry.encoding!r} tensor entry without data")
    return entry.cid


# --- encode -----------------------------------------------------------------------------------------


def check_compatible(parent: Manifest, source: ModelSource) -> None:
    """A new commit holds the parent's tensors, each with the same dtype and shape."""
    missing = sorted(set(parent.tensors) - set(source.tensors))
    extra = sorted(set(source.tensors) - set(parent.tensors))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{'...' if len(extra) > 3 else ''}")
        raise FednodeError(f"tensor names do not match the parent: {'; '.join(parts)}")
    for name, info in source.tensors.items():
        old = parent.tensors[name]
        if (old.dtype, old.shape) != (info.dtype, info.shape):
            raise FednodeError(
                f"tensor {name!r} is {info.dtype}{list(info.shape)} but the parent has "
                f"{old.dtype}{list(old.shape)}"
            )


def snapshot(sink: BlockSink, info: TensorInfo, chunks: Iterator[bytes | memoryview]) -> TensorEntry:
    """A tensor stored whole (``raw``): its state CID is its data's root."""
    builder = sink.file()
    size = 0
    for chunk in chunks:
        builder.write(chunk)
        size += len(chunk)
    if size != info.nbytes:
        raise FednodeError(f"tensor {info.name!r}: read {size} bytes, expected {info.nbytes}")
    root = builder.finish()
    return TensorEntry(info.dtype, info.shape, "raw", 0, root.cid, size, state=root.cid)


@dataclass(frozen=True)
class EncodeOptions:
    """How a commit encodes its tensors (see ``History.commit``)."""

    encoding: str = encodings.DEFAULT
    exact: bool = False
    topk_fraction: float = encodings.DEFAULT_TOPK_FRACTION
    compress: bool = True


def encode_tensor(store: Store, sink: BlockSink, scale_bits: int, snapshot_interval: int, head: CID,
                  old: TensorEntry, info: TensorInfo, source: ModelSource,
                  options: EncodeOptions) -> tuple[TensorEntry, TensorError | None]:
    """One tensor's entry, and its error when a lossy encoding stored it (None: bit-exact by
    construction: a snapshot, an unchanged tensor, xor, or exact integers)."""
    new = source.array(info.name)
    lossy = options.encoding in encodings.LOSSY and info.dtype in FLOAT_DTYPES
    zero = TensorError(0.0, 0.0) if lossy else None
    new_state = state_cid(new)  # hash only: finds unchanged tensors cheaply
    depth = old.depth + 1
    if depth > snapshot_interval:
        return snapshot(sink, info, iter([tensor_bytes(new)])), zero
    if new_state == old.state:  # the very same bytes
        return TensorEntry(info.dtype, info.shape, "same", depth, state=old.state), zero
    if info.dtype == "BOOL":
        return snapshot(sink, info, iter([tensor_bytes(new)])), zero
    with store.read() as txn:
        parent = tensor_array(txn, head, info.name)
    if options.encoding == encodings.DEFAULT:
        return _store_xor(sink, info, depth, parent, new, new_state, options.compress), None
    encoded = encodings.encode(options.encoding, parent, new, info.dtype, scale_bits, options.topk_fraction)
    if encoded is None:  # NaN/Inf or out of range: keep the exact bytes instead
        return snapshot(sink, info, iter([tensor_bytes(new)])), zero
    kind = options.encoding if lossy else "fixed"  # integers under a lossy choice: exact integer deltas
    fields = encoded.fields
    probe = TensorEntry(info.dtype, info.shape, kind, depth, None, len(encoded.payload),
                        fields.get("int_bits", 0), fields.get("scale_bits", 0), "none",
                        fields.get("scale", 0.0), fields.get("k", 0))
    rebuilt = encodings.apply(parent, encoded.payload, probe)
    if options.exact and not np.array_equal(rebuilt.view(np.uint8), new.view(np.uint8)):
        return snapshot(sink, info, iter([tensor_bytes(new)])), zero
    err = tensor_error(rebuilt, new, info.dtype) if lossy else None
    if np.array_equal(rebuilt.view(np.uint8), parent.view(np.uint8)):
        return TensorEntry(info.dtype, info.shape, "same", depth, state=old.state), err
    exact_rebuild = np.array_equal(rebuilt.view(np.uint8), new.view(np.uint8))
    state = new_state if exact_rebuild else state_cid(rebuilt)
    blob, packed = encodings.compress(encoded.payload) if options.compress else (encoded.payload, False)
    builder = sink.file()
    builder.write(blob)
    root = builder.finish()
    entry = replace(probe, cid=root.cid, size=len(blob), compression="zstd" if packed else "none", state=state)
    return entry, err


def _store_xor(sink: BlockSink, info: TensorInfo, depth: int, parent: np.ndarray, new: np.ndarray,
               new_state: CID, compress: bool) -> TensorEntry:
    """The lossless delta: byte-grouped XOR against the parent, zstd when that saves 1/8. A delta
    no smaller than the tensor is stored as a snapshot instead (same bytes, shorter chain)."""
    encoded = encodings.encode("xor", parent, new, info.dtype, 0)
    if encoded is None:  # xor encodes any bytes; kept exact all the same
        return snapshot(sink, info, iter([tensor_bytes(new)]))
    blob, packed = encodings.compress(encoded.payload) if compress else (encoded.payload, False)
    if len(blob) >= info.nbytes:
        return snapshot(sink, info, iter([tensor_bytes(new)]))
    builder = sink.file()
    builder.write(blob)
    root = builder.finish()
    return TensorEntry(info.dtype, info.shape, "xor", depth, root.cid, len(blob),
                       compression="zstd" if packed else "none", state=new_state)
