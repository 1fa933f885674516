"""Schemas of the two history objects, weights manifests and commits (DAG-CBOR).

A commit's *commit hash* is what the author's Ed25519 signature covers and what
the chain anchors (so the on-chain Ed25519 precompile can check the very signature
stored in the commit)::

    commit_hash = sha256("fednode/commit/v1" || author[32] || kind[1] || n_parents[1]
                         || parent commit hashes[32 each] || sha256(DAG-CBOR body without sig))

The author, kind and parents sit outside the body digest on purpose: the on-chain
program recomputes the hash from them, so nobody can anchor (or register, for a
genesis) a commit under another author or with other parents. The body repeats
them (``parent_hashes`` next to the parent CIDs), so the hash is a function of the
commit alone. The commit's CID is the hash of the whole signed block. The
repository id is the commit hash of its genesis commit.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from protocol import dagcbor
from protocol.multiformats import CID, DAG_CBOR, DAG_PB, RAW, FormatError

COMMIT_TYPE = "fednode/commit"
WEIGHTS_TYPE = "fednode/weights"
VERSION = 1
KINDS = ("init", "update", "merge", "revert")
# a genesis records its repository's visibility; one without (made before visibility existed) is public
VISIBILITIES = ("private", "public")
DELTA_ENCODINGS = ("xor", "fixed", "fp16", "int8", "topk")
ENCODINGS = ("raw", "same", *DELTA_ENCODINGS)
MAX_MESSAGE = 64 * 1024
# a manifest or commit block at most: bitswap's largest block (2 MiB), which every IPFS node exchanges;
# ours (the block exchange, CARs) take up to 4 MiB, Kubo and Helia refuse more than 2
MAX_OBJECT_BYTES = 2 * 1024 * 1024

# safetensors dtype name -> (numpy dtype string, itemsize); BF16 has no numpy dtype.
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INT_DTYPES = ("I64", "I32", "I16", "I8", "U8")


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise FormatError(what)


def _is_int(v: Any) -> bool:
    """Exactly an int: True and 1.0 compare equal to 1 but are other values (and other blocks)."""
    return type(v) is int


def _is_uint64(v: Any) -> bool:
    return type(v) is int and 0 <= v < 1 << 64


def _is_str(v: Any, most: int) -> bool:
    return type(v) is str and 0 < len(v) <= most


MAX_NBYTES = 1 << 62  # a tensor's declared bytes: far above any real model, far below int64 overflow


class Sized:
    """numel / nbytes of anything with ``dtype`` (safetensors name) and ``shape``."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype][1]


@dataclass(frozen=True)
class TensorEntry(Sized):
    """How one tensor of a commit's state is stored.

    raw:   ``cid`` is a UnixFS file of the tensor's little-endian bytes (a snapshot).
    xor:   lossless: the tensor's little-endian bytes XOR its first parent's, grouped by
           byte significance (byte 0 of every element, then byte 1, ...); ``nbytes`` long.
    fixed: the change from the first parent as little-endian signed integers of
           ``int_bits`` on the grid 2**-scale_bits (scale_bits 0 for integer tensors).
    fp16:  the change as little-endian float16.
    int8:  the change as int8 multiples of ``scale``.
    topk:  the ``k`` largest changes: k uint32 indices, then k integers of ``int_bits``
           on the grid 2**-scale_bits.
    same:  unchanged from the first parent; nothing stored.
    ``state`` is the UnixFS CID of the tensor's full little-endian bytes at this commit,
    whatever the encoding (for ``raw`` it is ``cid``): unchanged tensors keep it, anyone
    can check a reconstruction against it, and any IPFS node would give the same CID for
    the same bytes. It is kept as plain bytes, not a link: a delta's state is not stored.
    Delta payloads may be zstd-compressed (``compression``); ``size`` is then the
    stored (compressed) size. ``depth`` counts first-parent hops to the nearest snapshot.
    """

    dtype: str
    shape: tuple[int, ...]
    encoding: str
    depth: int = 0
    cid: CID | None = None
    size: int = 0
    int_bits: int = 0
    scale_bits: int = 0
    compression: str = "none"
    scale: float = 0.0
    k: int = 0
    state: CID | None = None

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "encoding": self.encoding,
            "depth": self.depth,
            "state": bytes(self.state) if self.state is not None else None,
        }
        if self.encoding != "same":
            obj["cid"] = self.cid
            obj["size"] = self.size
        if self.encoding in ("fixed", "topk"):
            obj["int_bits"] = self.int_bits
            obj["scale_bits"] = self.scale_bits
        if self.encoding == "int8":
            obj["scale"] = self.scale
        if self.encoding == "topk":
            obj["k"] = self.k
        if self.compression != "none":
            obj["compression"] = self.compression
        return obj

    @classmethod
    def from_obj(cls, obj: Any) -> TensorEntry:
        _require(isinstance(obj, dict), "tensor entry must be a map")
        enc = obj.get("encoding")
        _require(type(enc) is str and enc in ENCODINGS, "unknown tensor encoding")
        keys = {"dtype", "shape", "encoding", "depth", "state"}
        if enc != "same":
            keys |= {"cid", "size"}
        if enc in ("fixed", "topk"):
            keys |= {"int_bits", "scale_bits"}
        if enc == "int8":
            keys.add("scale")
        if enc == "topk":
            keys.add("k")
        if enc in DELTA_ENCODINGS and "compression" in obj:
            keys.add("compression")
        _require(set(obj) == keys, f"tensor entry fields must be {sorted(keys)}")
        _require(type(obj["dtype"]) is str and obj["dtype"] in DTYPES, "unknown dtype")
        shape = obj["shape"]
        _require(
            isinstance(shape, list) and len(shape) <= 16 and all(_is_uint64(d) for d in shape),
            "tensor shape must be a list of at most 16 non-negative integers",
        )
        # Declared sizes must stay in int64 (numpy, struct) even when a zero dimension hides a huge one.
        _require(math.prod(max(d, 1) for d in shape) * DTYPES[obj["dtype"]][1] <= MAX_NBYTES, "tensor too large")
        _require(_is_int(obj["depth"]) and obj["depth"] >= 0, "depth must be a non-negative int")
        _require(isinstance(obj["state"], bytes), "state must be the bytes of a UnixFS CID")
        state = CID.from_bytes(obj["state"])
        _require(state.version == 1 and state.codec in (RAW, DAG_PB), "state must be a UnixFS CIDv1")
        entry = cls(obj["dtype"], tuple(shape), enc, obj["depth"], state=state)
        if enc == "same":
            _require(entry.depth > 0, "an unchanged tensor cannot be a snapshot")
            return entry
        cid, size = obj["cid"], obj["size"]
        _require(isinstance(cid, CID) and cid.codec in (RAW, DAG_PB), "tensor cid must be a UnixFS CID")
        _require(_is_int(size) and 0 <= size <= MAX_NBYTES, "tensor size must be a non-negative int")
        if enc == "raw":
            _require(entry.depth == 0, "a snapshot has depth 0")
            _require(size == entry.nbytes, "snapshot size does not match dtype and shape")
            _require(state == cid, "a snapshot's state is its own CID")
            return cls(entry.dtype, entry.shape, enc, 0, cid, size, state=state)
        _require(entry.dtype != "BOOL", "bool tensors are stored as snapshots")
        # xor has no fields of its own: dtype and shape fix its payload (nbytes)
        _require(entry.depth > 0, "a delta cannot be a snapshot")
        compression = obj.get("compression", "none")
        # Absent means none: an explicit "none" would be a second encoding of the same entry.
        _require(compression == "zstd" if "compression" in obj else True, "compression must be \"zstd\" when present")
        int_bits = scale_bits = k = 0
        scale = 0.0
        if enc in ("fixed", "topk"):
            int_bits, scale_bits = obj["int_bits"], obj["scale_bits"]
            _require(_is_int(int_bits) and int_bits in (8, 16, 32, 64), "int_bits must be 8, 16, 32 or 64")
            _require(_is_int(scale_bits) and 0 <= scale_bits <= 60, "scale_bits must be in 0..60")
        if enc in ("fp16", "int8", "topk"):
            _require(entry.dtype in FLOAT_DTYPES, f"{enc} deltas are for float tensors")
        if enc == "int8":
            scale = obj["scale"]
            _require(isinstance(scale, float) and math.isfinite(scale) and scale > 0, "int8 scale must be > 0")
        if enc == "topk":
            k = obj["k"]
            _require(_is_int(k) and 0 <= k <= entry.numel and entry.numel < 1 << 32, "top-k count out of range")
        full = cls(entry.dtype, entry.shape, enc, entry.depth, cid, size, int_bits, scale_bits, compression, scale, k,
                   state)
        if compression == "none":
            _require(size == full.payload_size, "delta size does not match its shape and encoding")
        return full

    @property
    def payload_size(self) -> int:
        """Bytes of the uncompressed delta payload."""
        n = self.numel
        return {
            "xor": self.nbytes,
            "fixed": n * self.int_bits // 8,
            "fp16": n * 2,
            "int8": n,
            "topk": self.k * 4 + self.k * self.int_bits // 8,
        }.get(self.encoding, self.nbytes if self.encoding == "raw" else 0)


@dataclass(frozen=True)
class Manifest:
    tensors: dict[str, TensorEntry]

    def to_obj(self) -> dict[str, Any]:
        return {
            "type": WEIGHTS_TYPE,
            "v": VERSION,
            "tensors": {name: e.to_obj() for name, e in self.tensors.items()},
        }

    def encode(self) -> bytes:
        return dagcbor.encode(self.to_obj())

    @classmethod
    def from_obj(cls, obj: Any) -> Manifest:
        _require(isinstance(obj, dict) and obj.get("type") == WEIGHTS_TYPE, "not a weights manifest")
        _require(_is_int(obj.get("v")) and obj["v"] == VERSION and set(obj) == {"type", "v", "tensors"},
                 "bad manifest fields")
        tensors = obj["tensors"]
        _require(isinstance(tensors, dict) and len(tensors) > 0, "a manifest holds at least one tensor")
        for name in tensors:
            _require(_is_str(name, 1024), "tensor names are 1..1024 characters")
        return cls({name: TensorEntry.from_obj(e) for name, e in sorted(tensors.items())})

    @classmethod
    def decode(cls, block: bytes) -> Manifest:
        return cls.from_obj(dagcbor.decode(block))


def _check_metrics(metrics: Any) -> dict[str, float]:
    _require(isinstance(metrics, dict), "metrics must be a map")
    for key, value in metrics.items():
        _require(_is_str(key, 128), "metric names are 1..128 characters")
        _require(type(value) is float and math.isfinite(value), f"metric {key!r} must be a finite float")
    return metrics


def _is_commit_link(v: Any) -> bool:
    return isinstance(v, CID) and v.codec == DAG_CBOR


def _check_settings(settings: Any) -> None:
    _require(isinstance(settings, dict), "a genesis commit records the repository settings")
    keys = set(settings)
    _require({"name", "scale_bits", "snapshot_interval"} <= keys
             <= {"name", "scale_bits", "snapshot_interval", "visibility", "zk"},
             "settings are name, scale_bits, snapshot_interval and (optional) visibility and zk")
    # zk: a proof policy (fednode.zk.policy decodes and checks it; a malformed one refuses every update)
    _require(isinstance(settings.get("zk", {}), dict), "settings.zk must be a map")
    _require(settings.get("visibility", "public") in VISIBILITIES,
             "settings.visibility must be 'private' or 'public'")
    _require(_is_str(settings["name"], 1024), "settings.name must be a string of 1..1024 characters")
    _require(_is_int(settings["scale_bits"]) and 0 <= settings["scale_bits"] <= 60,
             "settings.scale_bits must be an int in 0..60")
    _require(_is_int(settings["snapshot_interval"]) and 1 <= settings["snapshot_interval"] <= 1024,
             "settings.snapshot_interval must be an int in 1..1024")


def _check_training(training: Any) -> None:
    _require(isinstance(training, dict), "info.training must be a map")
    for key in ("samples", "epochs"):
        _require(key not in training or _is_uint64(training[key]), f"info.training.{key} must be a uint")
    _require(type(training.get("framework", "")) is str, "info.training.framework must be a string")
    _require(type(training.get("duration_s", 0)) in (int, float), "info.training.duration_s must be a number")
    _require("dp" not in training or isinstance(training["dp"], dict), "info.training.dp must be a map")


def _check_merge(record: Any) -> None:
    """The fields merging and anchoring read back from a merge record, when present."""
    _require(isinstance(record, dict), "info.merge must be a map")
    strategy = record.get("strategy", {"name": "-"})
    _require(isinstance(strategy, dict) and type(strategy.get("name")) is str, "info.merge.strategy needs a name")
    _require("base" not in record or _is_commit_link(record["base"]), "info.merge.base must be a commit link")
    inputs, weights = record.get("inputs", []), record.get("weights", [])
    _require(isinstance(inputs, list) and len(inputs) <= 64 and all(_is_commit_link(c) for c in inputs),
             "info.merge.inputs must be commit links")
    _require(isinstance(weights, list) and len(weights) <= 64 and all(_is_uint64(w) for w in weights),
             "info.merge.weights must be uints")
    _require("samples" not in record or _is_uint64(record["samples"]), "info.merge.samples must be a uint")
    _require("weighting" not in record or type(record["weighting"]) is str, "info.merge.weighting must be a string")
    _require("plan" not in record or isinstance(record["plan"], dict), "info.merge.plan must be a map")


def _check_info(kind: str, info: Any) -> None:
    """Kind-specific facts later code reads: each has its one type, so no reader meets another."""
    _require(isinstance(info, dict), "info must be a map")
    if kind == "init":
        _check_settings(info.get("settings"))
    if kind == "revert":
        revert = info.get("revert")
        _require(isinstance(revert, dict) and set(revert) == {"target"} and _is_commit_link(revert["target"]),
                 "a revert commit records its target commit")
    if "visibility" in info:  # the owner's decision to make a private repository public, for good
        _require(kind == "update" and info["visibility"] == "public",
                 "info.visibility is only 'public', on an update commit")
    if "training" in info:
        _check_training(info["training"])
    if "merge" in info:
        _check_merge(info["merge"])


COMMIT_HASH_DOMAIN = b"fednode/commit/v1"


def commit_hash_from(
    author: bytes, kind: str, parent_hashes: tuple[bytes, ...] | list[bytes], body_digest: bytes
) -> bytes:
    """The commit hash from its parts (the on-chain program computes the same)."""
    if len(author) != 32 or len(body_digest) != 32 or any(len(h) != 32 for h in parent_hashes):
        raise ValueError("author, parent hashes and body digest are 32 bytes each")
    head = COMMIT_HASH_DOMAIN + author + bytes([KINDS.index(kind), len(parent_hashes)])
    return hashlib.sha256(head + b"".join(parent_hashes) + body_digest).digest()


@dataclass(frozen=True)
class Commit:
    repo: bytes | None  # None only for a genesis (init) commit
    parents: tuple[CID, ...]
    kind: str
    weights: CID
    author: bytes
    time_ms: int
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # kind-specific: settings, training, merge, revert
    sig: bytes = b""
    parent_hashes: tuple[bytes, ...] = ()  # commit hashes of ``parents``, same order

    def body(self) -> dict[str, Any]:
        return {
            "type": COMMIT_TYPE,
            "v": VERSION,
            "repo": self.repo,
            "parents": list(self.parents),
            "parent_hashes": list(self.parent_hashes),
            "kind": self.kind,
            "weights": self.weights,
            "author": self.author,
            "time": self.time_ms,
            "message": self.message,
            "metrics": dict(self.metrics),
            "info": self.info,
        }

    def body_digest(self) -> bytes:
        return hashlib.sha256(dagcbor.encode(self.body())).digest()

    def commit_hash(self) -> bytes:
        """The 32 bytes the author signs and the chain anchors."""
        return commit_hash_from(self.author, self.kind, self.parent_hashes, self.body_digest())

    def encode(self) -> bytes:
        _require(len(self.sig) == 64, "commit is not signed")
        return dagcbor.encode({**self.body(), "sig": self.sig})

    def cid(self) -> CID:
        return CID.hash(DAG_CBOR, self.encode())

    @property
    def settings(self) -> dict[str, Any]:
        return self.info.get("settings", {})

    @classmethod
    def decode(cls, block: bytes) -> Commit:
        obj = dagcbor.decode(block)
        keys = {"type", "v", "repo", "parents", "parent_hashes", "kind", "weights", "author", "time", "message"}
        keys |= {"metrics", "info", "sig"}
        _require(isinstance(obj, dict) and obj.get("type") == COMMIT_TYPE, "not a commit")
        # v: exactly the int 1; a copy with true or 1.0 would hash (body() writes VERSION) and verify the
        # same, yet be another block with another CID: a malleated commit.
        _require(_is_int(obj.get("v")) and obj["v"] == VERSION and set(obj) == keys, "bad commit fields")
        kind = obj["kind"]
        _require(type(kind) is str and kind in KINDS, "unknown commit kind")
        parents = obj["parents"]
        _require(
            isinstance(parents, list) and all(isinstance(p, CID) and p.codec == DAG_CBOR for p in parents),
            "parents must be commit CIDs",
        )
        _require(len(set(parents)) == len(parents) and len(parents) <= 64, "duplicate or too many parents")
        parent_hashes = obj["parent_hashes"]
        _require(
            isinstance(parent_hashes, list) and len(parent_hashes) == len(parents)
            and all(isinstance(h, bytes) and len(h) == 32 for h in parent_hashes),
            "parent_hashes must be one 32-byte commit hash per parent",
        )
        if kind == "init":
            _require(obj["repo"] is None and not parents, "a genesis commit has no repo and no parents")
        else:
            _require(isinstance(obj["repo"], bytes) and len(obj["repo"]) == 32, "repo id must be 32 bytes")
            _require(len(parents) >= (2 if kind == "merge" else 1), f"a {kind} commit needs parents")
            if kind != "merge":
                _require(len(parents) == 1, f"a {kind} commit has one parent")
        _require(isinstance(obj["weights"], CID) and obj["weights"].codec == DAG_CBOR, "bad weights link")
        _require(isinstance(obj["author"], bytes) and len(obj["author"]) == 32, "author must be 32 bytes")
        _require(_is_uint64(obj["time"]), "time must be a non-negative int")
        _require(isinstance(obj["message"], str) and len(obj["message"]) <= MAX_MESSAGE, "bad message")
        _require(isinstance(obj["sig"], bytes) and len(obj["sig"]) == 64, "signature must be 64 bytes")
        _check_info(kind, obj["info"])
        return cls(
            repo=obj["repo"],
            parents=tuple(parents),
            kind=kind,
            weights=obj["weights"],
            author=obj["author"],
            time_ms=obj["time"],
            message=obj["message"],
            metrics=_check_metrics(obj["metrics"]),
            info=obj["info"],
            sig=obj["sig"],
            parent_hashes=tuple(parent_hashes),
        )
