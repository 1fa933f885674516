"""Helpers shared by the foundation tests: model files, CLI runners, store snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import forkserver
import numpy as np
from solders.keypair import Keypair

from fednode.identity import Identity
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource, write_safetensors
from protocol.multiformats import CID, DAG_PB, RAW
from protocol.unixfs import MAX_LINKS, Link, _unixfs_data, encode_node

ROOT = Path(__file__).resolve().parent.parent


def script_env() -> dict[str, str]:
    """The environment of a test file run as its own process (a hostile peer): the repository root first,
    so ``protocol`` and ``cli`` are the packages and not the test folders of those names, then tests/."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


FEDNODE_BIN = ROOT / ".venv" / "bin" / "fednode"
SEED = bytes(range(1, 33))


def fednode_cmd() -> list[str]:
    """The installed console script when present, else the module entry point."""
    if FEDNODE_BIN.exists():
        return [str(FEDNODE_BIN)]
    return [sys.executable, "-m", "cli"]


def copy_home(src: Path, dst: Path) -> None:
    """Copy a node's home keeping the LMDB data file sparse: its apparent size is the whole map (1 GiB),
    and a plain ``shutil.copytree`` writes every hole as zeros (about 1 GiB of disk per copy)."""
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)


def fixed_identity(seed: bytes = SEED) -> Identity:
    return Identity(Keypair.from_seed(seed))


# --- model files ---------------------------------------------------------------------------


GRID = 12  # test weights lie on the grid 2**-GRID, so deltas on the default 2**-24 grid are exact


def on_grid(x: np.ndarray, grid: int | None) -> np.ndarray:
    if grid is None:
        return x
    return (np.round(x.astype(np.float64) * 2.0**grid) / 2.0**grid).astype(x.dtype)


def model_arrays(seed: int = 0, scale: float = 1.0, grid: int | None = GRID) -> dict[str, tuple[str, np.ndarray]]:
    """A small model: a few float tensors of different shapes plus an integer one."""
    rng = np.random.default_rng(seed)
    return {
        "layer1.weight": ("F32", on_grid((rng.standard_normal((16, 8)) * scale).astype(np.float32), grid)),
        "layer1.bias": ("F32", on_grid((rng.standard_normal(16) * scale).astype(np.float32), grid)),
        "layer2.weight": ("F32", on_grid((rng.standard_normal((4, 16)) * scale).astype(np.float32), grid)),
        "steps": ("I64", rng.integers(-1000, 1000, size=(3,)).astype(np.int64)),
    }


def perturb(arrays: dict[str, tuple[str, np.ndarray]], seed: int, names: tuple[str, ...] | None = None,
            eps: float = 1e-2, grid: int | None = GRID) -> dict[str, tuple[str, np.ndarray]]:
    """A training-step-like change of the float tensors (all, or only ``names``), kept on the test grid."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, arr) in arrays.items():
        if dtype in ("F32", "F64", "F16") and (names is None or name in names):
            noise = rng.standard_normal(arr.shape) * eps
            arr = on_grid((arr.astype(np.float64) + noise).astype(arr.dtype), grid)
        out[name] = (dtype, arr.copy())
    return out


def write_model(path: Path, arrays: dict[str, tuple[str, np.ndarray]]) -> Path:
    """Write ``arrays`` (safetensors dtype name, numpy array; BF16 as uint16 bits) as .safetensors."""
    src = ArraySource(arrays)
    with open(path, "wb") as fh:
        write_safetensors(fh, [(info, src.chunks(name)) for name, info in src.tensors.items()])
    return path


def read_model(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Read a .safetensors file with the independent ``safetensors`` package (BF16 as uint16 bits)."""
    import torch
    from safetensors.torch import load_file

    out = {}
    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8"}
    for name, t in load_file(str(path)).items():
        dtype = names[t.dtype]
        if dtype == "BF16":
            t = t.view(torch.int16)
        arr = t.numpy()
        if dtype == "BF16":
            arr = arr.view(np.uint16)
        out[name] = (dtype, arr.copy())
    return out


def assert_same_arrays(a: dict[str, tuple[str, np.ndarray]], b: dict[str, tuple[str, np.ndarray]]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        (da, xa), (db, xb) = a[name], b[name]
        assert da == db, name
        assert xa.shape == xb.shape, name
        assert xa.tobytes() == xb.tobytes(), f"tensor {name} differs"


# --- store snapshots ("nothing stored") ---------------------------------------------------------


def store_state(store: Store) -> tuple[frozenset, frozenset, frozenset]:
    with store.read() as txn:
        blocks = frozenset(bytes(c) for c in txn.iter_block_cids())
        refs = frozenset(txn.all_refs())
        repos = frozenset(txn.list_repos().items())
    return blocks, refs, repos


def home_state(home: Path) -> tuple[frozenset, frozenset, frozenset]:
    store = Store(home / "store")
    try:
        return store_state(store)
    finally:
        store.close()


def store_fingerprint(home: Path) -> dict[str, str]:
    """Every LMDB database of a home's store (blocks, refs, meta, net, chain, outbox, reflog...):
    name -> a hash of all its entries, so "store unchanged" covers memberships and queues too."""
    import hashlib

    from fednode.storage.store import _DBS

    store = Store(home / "store")
    try:
        with store.read() as txn:
            out = {}
            for db in _DBS:
                digest = hashlib.sha256()
                for key, value in txn.kv_items(db):
                    digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(8, "big") + value)
                out[db] = digest.hexdigest()[:16]
            return out
    finally:
        store.close()


# --- CLI -----------------------------------------------------------------------------------------


def run_fednode(home: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command line in a process of its own with FEDNODE_HOME=home (forked from the warm
    interpreter of ``forkserver``: the same code as the console script, without its imports)."""
    env = {**os.environ, "FEDNODE_HOME": str(home), "COLUMNS": "200"}
    proc = forkserver.run([*map(str, args)], env, ROOT, timeout)
    if check:
        assert proc.returncode == 0, f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_cli_refuses(cli, home: Path, *args: object, needles: tuple[str, ...] = ()) -> str:
    """``cli(*args)`` (the conftest fixture) exits 1 with one error line holding ``needles`` and
    leaves the node home as it was; returns stderr."""
    before = home_state(home)
    result = cli(*args, ok=False)
    assert result.exit_code == 1, (args, result.output)
    assert_one_line_error(result.stderr, *needles)
    assert home_state(home) == before, f"{args} stored something"
    return result.stderr


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def dag_bomb(levels: int = 4, fanout: int = MAX_LINKS, leaf: bytes = b"\x00" * 1024,
             lie_at_root: int | None = None) -> tuple[CID, dict[CID, bytes]]:
    """A "DAG bomb": ``levels`` inner nodes, each linking ``fanout`` times to the same child, over one
    raw leaf; ``levels + 1`` blocks whose links expand to fanout**levels leaves. Sizes are declared
    consistently, unless ``lie_at_root`` gives the root's declared filesize (and matching blocksizes)."""
    blocks: dict[CID, bytes] = {}
    child = CID.hash(RAW, leaf)
    blocks[child] = leaf
    size = len(leaf)
    for level in range(levels):
        parts = [size] * fanout
        if lie_at_root is not None and level == levels - 1:
            parts = [lie_at_root // fanout] * (fanout - 1) + [lie_at_root - lie_at_root // fanout * (fanout - 1)]
        links = [Link(child, size, part) for part in parts]
        block = encode_node(links, _unixfs_data(sum(parts), parts))
        child = CID(1, DAG_PB, CID.hash(DAG_PB, block).digest)
        blocks[child] = block
        size *= fanout
    return child, blocks
