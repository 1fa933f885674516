"""``checkout``: write a commit's state to a model file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fednode.errors import FednodeError
from fednode.history import History
from fednode.history.states import tensor_bytes
from fednode.tensors.modelio import TensorInfo, to_torch_state_dict, write_safetensors
from protocol.multiformats import CID

CHECKOUT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
CHECKOUT_FILE = "model.safetensors"


def checkout_path(out: str | Path) -> Path:
    """Where ``checkout --out`` writes: ``DIR/`` (a trailing slash) or an existing directory means
    DIR/model.safetensors; a file name must end in .safetensors, .pt, .pth or .bin (never guessed).
    Refuses a path that cannot become a new file before any work is done."""
    text = str(out)
    path = Path(text)
    if text.endswith(("/", "\\")) or path.is_dir():
        if path.exists() and not path.is_dir():
            raise FednodeError(f"cannot write into {text}: it is not a directory")
        path = path / CHECKOUT_FILE
    elif path.suffix.lower() not in CHECKOUT_SUFFIXES:
        raise FednodeError(f"cannot write {path}: unknown model file type {path.suffix or '(no extension)'!r}; "
                           "use .safetensors, .pt, .pth or .bin, or DIR/ for DIR/model.safetensors")
    if path.is_dir():
        raise FednodeError(f"cannot write {path}: it is a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FednodeError(f"cannot write {path}: {parent} is not a directory")
            break
    return path


def checkout(history: History, cid: CID, out: Path) -> int:
    """Write a commit's state to ``out`` (.safetensors, or .pt/.pth/.bin for a state_dict).

    Written to a temporary file and renamed, so a crash never leaves half a model.
    Tensors are rebuilt one at a time (peak memory ~ the largest tensor).
    """
    with history.store.read() as txn:
        manifest = history.load_manifest(history.load_commit(cid, txn).weights, txn)
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.suffix.lower() in (".pt", ".pth", ".bin"):
            import torch

            arrays = {
                name: (e.dtype, e.shape, history.tensor_array(cid, name)) for name, e in manifest.tensors.items()
            }
            torch.save(to_torch_state_dict(arrays), tmp)
        else:

            def chunks(name: str) -> Iterator[bytes | memoryview]:
                yield tensor_bytes(history.tensor_array(cid, name))

            infos = [(TensorInfo(n, e.dtype, e.shape), chunks(n)) for n, e in manifest.tensors.items()]
            with open(tmp, "wb") as fh:
                write_safetensors(fh, infos, {"fednode.commit": str(cid)})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out.stat().st_size
