"""Reading and writing model files: safetensors (streamed) and PyTorch state_dicts.

The safetensors reader parses the header itself and reads tensor bytes with
``pread`` in bounded pieces, so committing a model never holds a second copy
of the file in memory.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fednode.errors import FednodeError
from protocol.objects import DTYPES, Sized

MAX_HEADER = 100 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo(Sized):
    name: str
    dtype: str
    shape: tuple[int, ...]


def np_dtype(dtype: str) -> np.dtype:
    return np.dtype(DTYPES[dtype][0])


class ModelSource:
    """A set of named tensors that can be read piecewise."""

    tensors: dict[str, TensorInfo]

    def chunks(self, name: str) -> Iterator[memoryview]:
        raise NotImplementedError

    def array(self, name: str) -> np.ndarray:
        """The tensor as a flat little-endian array (BF16 as uint16 bit patterns)."""
        info = self.tensors[name]
        out = np.empty(info.numel, dtype=np_dtype(info.dtype))
        view = memoryview(out).cast("B")
        pos = 0
        for chunk in self.chunks(name):
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return out

    def close(self) -> None:
        pass


class SafetensorsFile(ModelSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise FednodeError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            self._parse()
        except FednodeError:
            os.close(self._fd)
            raise

    def _parse(self) -> None:
        bad = f"{self.path} is not a safetensors file"
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise FednodeError(bad)
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_HEADER, size - 8):
            raise FednodeError(bad)
        try:
            header = json.loads(os.pread(self._fd, header_len, 8))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FednodeError(bad) from None
        if not isinstance(header, dict):
            raise FednodeError(bad)
        self.metadata = header.pop("__metadata__", {}) or {}
        self._base = 8 + header_len
        self.tensors = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        spans = []
        for name, spec in header.items():
            try:
                dtype, shape, (begin, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
                ok = all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= begin <= end
                ok = ok and isinstance(begin, int) and isinstance(end, int)
            except (TypeError, KeyError, ValueError):
                raise FednodeError(f"{bad}: malformed entry for {name!r}") from None
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise FednodeError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
            info = TensorInfo(name, dtype, shape)
            if not ok or end - begin != info.nbytes or self._base + end > size:
                raise FednodeError(f"{bad}: tensor {name!r} has inconsistent offsets")
            self.tensors[name] = info
            self._offsets[name] = (begin, end)
            spans.append((begin, end))
        spans.sort()
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
            raise FednodeError(f"{bad}: overlapping tensors")
        if not self.tensors:
            raise FednodeError(f"{self.path} holds no tensors")
        self.tensors = dict(sorted(self.tensors.items()))

    def chunks(self, name: str, chunk: int = READ_CHUNK) -> Iterator[memoryview]:
        begin, end = self._offsets[name]
        pos = self._base + begin
        stop = self._base + end
        while pos < stop:
            data = os.pread(self._fd, min(chunk, stop - pos), pos)
            if not data:
                raise FednodeError(f"{self.path} was truncated while reading")
            pos += len(data)
            yield memoryview(data)

    def close(self) -> None:
        os.close(self._fd)


class ArraySource(ModelSource):
    """Tensors already in memory (numpy arrays in safetensors dtype encoding)."""

    def __init__(self, arrays: dict[str, tuple[str, np.ndarray]]) -> None:
        self._arrays = {}
        self.tensors = {}
        for name, (dtype, arr) in sorted(arrays.items()):
            flat = np.ascontiguousarray(arr).reshape(-1).view(np_dtype(dtype))
            self._arrays[name] = flat
            self.tensors[name] = TensorInfo(name, dtype, tuple(arr.shape))

    def chunks(self, name: str) -> Iterator[memoryview]:
        yield memoryview(self._arrays[name]).cast("B")

    def array(self, name: str) -> np.ndarray:
        return self._arrays[name]


_TORCH_TO_ST = {
    "torch.float64": "F64",
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int16": "I16",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
}


def state_dict_source(state_dict: dict) -> ArraySource:
    """Wrap a PyTorch state_dict (tensors only) without copying more than once."""
    import torch

    arrays: dict[str, tuple[str, np.ndarray]] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise FednodeError(f"state_dict entry {name!r} is not a tensor")
        dtype = _TORCH_TO_ST.get(str(tensor.dtype))
        if dtype is None:
            raise FednodeError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        t = tensor.detach().cpu().contiguous()
        if dtype == "BF16":
            t = t.view(torch.int16)
        arrays[name] = (dtype, t.numpy().view(np_dtype(dtype)).reshape(tuple(tensor.shape)))
    if not arrays:
        raise FednodeError("the state_dict holds no tensors")
    return ArraySource(arrays)


def open_model(path: Path) -> ModelSource:
    """Open a .safetensors file, or a PyTorch .pt/.pth/.bin state_dict."""
    if not path.exists():
        raise FednodeError(f"no such file: {path}")
    if path.suffix in (".pt", ".pth", ".bin"):
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files
            raise FednodeError(f"{path} is not a PyTorch state_dict: {str(exc).splitlines()[0]}") from None
        if not isinstance(obj, dict):
            raise FednodeError(f"{path} is not a PyTorch state_dict")
        return state_dict_source(obj)
    return SafetensorsFile(path)


def write_safetensors(
    out: BinaryIO,
    tensors: list[tuple[TensorInfo, Iterator[bytes | memoryview]]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream tensors into a safetensors file in the given order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    pos = 0
    for info, _ in tensors:
        header[info.name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [pos, pos + info.nbytes]}
        pos += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    out.write(struct.pack("<Q", len(raw)) + raw)
    for info, chunks in tensors:
        written = 0
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
        if written != info.nbytes:
            raise FednodeError(f"tensor {info.name!r}: wrote {written} bytes, expected {info.nbytes}")


def to_torch_state_dict(arrays: dict[str, tuple[str, tuple[int, ...], np.ndarray]]) -> dict:
    import torch

    out = {}
    for name, (dtype, shape, arr) in arrays.items():
        if dtype == "BF16":
            t = torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(arr.copy())
        out[name] = t.reshape(shape)
    return out
