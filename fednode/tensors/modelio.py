"""Reading and writing model files: safetensors (streamed), sharded safetensors checkpoints
(a Hugging Face index and its shards) and PyTorch state_dicts, optionally cast to another float dtype.

The safetensors reader parses the header itself and reads tensor bytes with
``pread`` in bounded pieces, so committing a model never holds a second copy
of the file in memory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fednode import safejson
from fednode.errors import FednodeError, first_line
from fednode.lazy import lazy_import
from protocol.objects import DTYPES, Sized

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")

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
        view = out.data.cast("B")
        pos = 0
        for chunk in self.chunks(name):
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return out

    def close(self) -> None:
        pass


MAX_NAME = 1024  # what a weights manifest accepts (protocol.objects)
MAX_DIM = 1 << 62
HEADER_DEPTH = 8  # a safetensors header nests 3 deep: {name: {"shape": [...]}}


def _uint(v: object) -> bool:
    return type(v) is int and 0 <= v < MAX_DIM  # exactly an int: JSON true is not 1


def _entry(name: str, spec: object, data_size: int, bad: str) -> tuple[TensorInfo, tuple[int, int]]:
    if not 0 < len(name) <= MAX_NAME:
        raise FednodeError(f"{bad}: tensor names are 1..{MAX_NAME} characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FednodeError(f"{bad}: a tensor name is not valid UTF-8") from None
    shown = repr(name[:64])
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise FednodeError(f"{bad}: malformed entry for {shown}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if type(dtype) is not str or dtype not in DTYPES:
        raise FednodeError(f"{bad}: tensor {shown} has an unsupported dtype")
    if not isinstance(shape, list) or len(shape) > 16 or not all(type(d) is int and d >= 0 for d in shape):
        raise FednodeError(f"{bad}: tensor {shown} has a malformed shape")
    # Even with a zero dimension, the other dimensions' product must fit numpy's int64 sizes.
    if math.prod(max(d, 1) for d in shape) * DTYPES[dtype][1] >= MAX_DIM:
        raise FednodeError(f"{bad}: tensor {shown} is too large")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_uint(o) for o in offsets):
        raise FednodeError(f"{bad}: tensor {shown} has inconsistent offsets (not two integers)")
    info = TensorInfo(name, dtype, tuple(shape))
    begin, end = offsets
    if not begin <= end <= data_size or end - begin != info.nbytes:
        raise FednodeError(f"{bad}: tensor {shown} has inconsistent offsets")
    return info, (begin, end)


def parse_header(raw: bytes, data_size: int, path: str) -> tuple[dict, dict[str, tuple[TensorInfo, tuple[int, int]]]]:
    """(metadata, name -> (info, (begin, end))) of a safetensors JSON header whose data section holds
    ``data_size`` bytes. Any malformed header raises FednodeError with one line naming ``path``."""
    bad = f"{path} is not a safetensors file"
    try:  # the depth first, on the UTF-8 text that is parsed: see safejson (a deep nest can crash json)
        text = safejson.text(raw)
        if safejson.depth(text) > HEADER_DEPTH:
            raise FednodeError(f"{bad}: header nested too deeply")
        header = json.loads(text)
    except ValueError:  # invalid JSON or UTF-8, integers of more than 4300 digits
        raise FednodeError(bad) from None
    if not isinstance(header, dict):
        raise FednodeError(bad)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise FednodeError(f"{bad}: __metadata__ must be a map")
    tensors = {name: _entry(name, spec, data_size, bad) for name, spec in header.items()}
    spans = sorted(span for _, span in tensors.values())
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
        raise FednodeError(f"{bad}: overlapping tensors")
    if not tensors:
        raise FednodeError(f"{path} holds no tensors")
    return metadata, dict(sorted(tensors.items()))


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
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 <= header_len <= min(MAX_HEADER, size - 8):
            raise FednodeError(f"{self.path} is not a safetensors file")
        raw = os.pread(self._fd, header_len, 8)
        self._base = 8 + header_len
        self.metadata, tensors = parse_header(raw, size - self._base, str(self.path))
        self.tensors = {name: info for name, (info, _) in tensors.items()}
        self._offsets = {name: span for name, (_, span) in tensors.items()}

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
        yield self._arrays[name].data.cast("B")

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


MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
INDEX_FILE = "model.safetensors.index.json"
MAX_INDEX = 64 * 1024 * 1024
CASTS = ("F64", "F32", "F16", "BF16")
ACCEPTED = ("a .safetensors file, a PyTorch .pt/.pth/.bin state_dict, or a directory with "
            f"{INDEX_FILE} and its shards")


def _read_weight_map(index: Path) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name -> shard file name in the index's directory), checked."""
    bad = f"{index} is not a sharded safetensors index"
    try:
        with index.open("rb") as f:
            raw = f.read(MAX_INDEX + 1)
    except OSError as exc:
        raise FednodeError(f"cannot read {index}: {exc.strerror}") from None
    if len(raw) > MAX_INDEX:
        raise FednodeError(f"{bad}: larger than {MAX_INDEX} bytes")
    try:
        data = safejson.loads(raw, max_depth=HEADER_DEPTH)
    except ValueError:
        raise FednodeError(f"{bad}: not valid JSON") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FednodeError(f"{bad}: no weight_map of tensor names to shard files")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or "/" in shard or "\\" in shard or shard in (".", ".."):
            raise FednodeError(f"{bad}: tensor {name[:64]!r} names the shard {str(shard)[:64]!r} "
                               "(a file name in the same directory)")
    return weight_map


class ShardedSource(ModelSource):
    """A Hugging Face sharded checkpoint: ``model.safetensors.index.json`` (``weight_map``: tensor
    name -> shard file) beside its shards. Every tensor must be in exactly one shard, the one the
    index names, and every shard's tensor must be in the index."""

    def __init__(self, index: Path) -> None:
        self.path = index
        weight_map = _read_weight_map(index)
        self._shards: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        try:
            self._open_shards(index, weight_map)
            self._check_no_tensor_in_two_shards(index)
            self._place_tensors(index, weight_map)
        except BaseException:
            self.close()
            raise
        self.tensors = {name: self._where[name].tensors[name] for name in sorted(self._where)}

    def _open_shards(self, index: Path, weight_map: dict[str, str]) -> None:
        for shard in sorted(set(weight_map.values())):
            file = index.parent / shard
            if not file.is_file():
                raise FednodeError(f"{index} names the shard {shard}, which is missing")
            self._shards[shard] = SafetensorsFile(file)

    def _check_no_tensor_in_two_shards(self, index: Path) -> None:
        seen: dict[str, str] = {}
        for shard, source in self._shards.items():
            for name in source.tensors:
                if name in seen:
                    raise FednodeError(f"tensor {name[:64]!r} is in two shards of {index.parent}: "
                                       f"{seen[name]} and {shard}")
                seen[name] = shard

    def _place_tensors(self, index: Path, weight_map: dict[str, str]) -> None:
        """Each shard's tensors where the index puts them, and every tensor the index lists found."""
        for shard, source in self._shards.items():
            for name in source.tensors:
                if weight_map.get(name) != shard:
                    where = weight_map.get(name)
                    raise FednodeError(
                        f"shard {shard} holds tensor {name[:64]!r} but {index.name} "
                        + (f"puts it in {where}" if where else "does not list it"))
                self._where[name] = source
        missing = sorted(set(weight_map) - set(self._where))
        if missing:
            raise FednodeError(f"{index.name} lists tensor {missing[0][:64]!r}, which is not in "
                               f"{weight_map[missing[0]]}" + (f" (and {len(missing) - 1} more)"
                                                              if len(missing) > 1 else ""))

    def chunks(self, name: str) -> Iterator[memoryview]:
        return self._where[name].chunks(name)

    def close(self) -> None:
        for source in self._shards.values():
            source.close()
        self._shards = {}


class CastSource(ModelSource):
    """``source`` with every float tensor converted to ``dtype`` (integer tensors unchanged).
    A value that the target dtype cannot hold (a finite value that would become infinite) is refused."""

    def __init__(self, source: ModelSource, dtype: str) -> None:
        if dtype not in CASTS:
            raise FednodeError(f"cannot cast to {dtype!r}: --cast takes {', '.join(CASTS)}")
        self._source = source
        self._dtype = dtype
        self.tensors = {name: TensorInfo(name, dtype, info.shape) if info.dtype in CASTS else info
                        for name, info in source.tensors.items()}

    def array(self, name: str) -> np.ndarray:
        from fednode.tensors import fixedpoint

        before = self._source.tensors[name].dtype
        arr = self._source.array(name)
        if before not in CASTS or before == self._dtype:
            return arr
        x = fixedpoint.to_f64(arr, before)
        with np.errstate(over="ignore"):  # an overflow is refused below, with the tensor's name
            out = fixedpoint.from_f64(x, self._dtype)
        if np.isinf(fixedpoint.to_f64(out, self._dtype)).sum() != np.isinf(x).sum():
            raise FednodeError(f"tensor {name[:64]!r} has values too large for {self._dtype}: "
                               "--cast would make them infinite")
        return out

    def chunks(self, name: str) -> Iterator[memoryview]:
        yield self.array(name).data.cast("B")

    def close(self) -> None:
        self._source.close()


def _checkpoint_dict(obj: object, path: Path, key: str | None) -> dict:
    """The state_dict inside a loaded PyTorch checkpoint: the file itself, or ``obj[key]``
    (``key`` may name nested maps with '/': ``model/ema``)."""
    import torch

    if not isinstance(obj, dict):
        raise FednodeError(f"{path} is not a PyTorch state_dict (it holds a {type(obj).__name__})")
    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, dict) or part not in obj:
                keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ""
                raise FednodeError(f"{path} has no {key!r} (--key) entry; its keys: {keys or 'none'}")
            obj = obj[part]
        if not isinstance(obj, dict):
            raise FednodeError(f"{path}: the entry {key!r} is a {type(obj).__name__}, not a state_dict")
        return obj
    others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        nested = [k for k in others if isinstance(obj[k], dict)
                  and any(isinstance(v, torch.Tensor) for v in obj[k].values())]
        keys = ", ".join(map(str, list(obj)[:8])) + (", ..." if len(obj) > 8 else "")
        if nested:
            raise FednodeError(f"{path} nests its state_dict (top-level keys: {keys}): "
                               f"pass --key {nested[0]} to say which one to use")
        raise FednodeError(f"{path} is not a plain state_dict: {others[0]!r} is not a tensor "
                           f"(top-level keys: {keys}); pass --key NAME for a nested one")
    return obj


def open_model(path: Path, key: str | None = None, cast: str | None = None) -> ModelSource:
    """Open a model: a .safetensors file, a PyTorch .pt/.pth/.bin checkpoint (a state_dict, or one
    nested under ``key``), or a Hugging Face sharded checkpoint (a directory holding
    model.safetensors.index.json, or that index itself). ``cast``: convert float tensors to that dtype.
    Any other file name is refused, never guessed."""
    if not path.exists():
        raise FednodeError(f"no such file: {path}")
    if cast is not None and cast.upper() not in CASTS:
        raise FednodeError(f"cannot cast to {cast!r}: --cast takes {', '.join(CASTS)}")
    torch_file = path.is_file() and path.suffix.lower() in TORCH_SUFFIXES
    if key is not None and not torch_file:
        raise FednodeError(f"--key is for PyTorch checkpoints (.pt/.pth/.bin), not {path}")
    source: ModelSource
    if path.is_dir():
        if (path / INDEX_FILE).is_file():
            source = ShardedSource(path / INDEX_FILE)
        elif (path / "model.safetensors").is_file():
            source = SafetensorsFile(path / "model.safetensors")
        else:
            raise FednodeError(f"{path} is a directory without {INDEX_FILE} or model.safetensors: "
                               f"give {ACCEPTED}")
    elif path.name.endswith(".safetensors.index.json"):
        source = ShardedSource(path)
    elif torch_file:
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files
            raise FednodeError(f"{path} is not a PyTorch state_dict: {first_line(exc)}") from None
        source = state_dict_source(_checkpoint_dict(obj, path, key))
    elif path.suffix.lower() == ".safetensors":
        source = SafetensorsFile(path)
    else:
        raise FednodeError(f"{path}: unknown model file type {path.suffix or '(no extension)'!r}; "
                           f"give {ACCEPTED}")
    return CastSource(source, cast.upper()) if cast is not None else source


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
