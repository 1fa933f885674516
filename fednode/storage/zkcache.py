"""Generator tables of Pedersen commitments kept on disk, one file per seed under a node's home.

Deriving 10^6 generators costs ~35-50 s, reading them back well under a second, so a node derives a
table once (``fednode.workflows.commitments`` fills and checks it; this module only stores bytes).

File ``<home>/zk/generators-<first 16 hex of sha256(seed)>.bin``, written whole or not at all
(temporary file, fsync, rename):

    magic "FNZKGEN1" | u32 row bytes | u64 rows | sha256(seed) | sha256(payload) | payload

Reading checks the length, the header and the payload's hash; a file that fails is reported (the
caller derives the table again and overwrites it), never used. The caller checks the points too:
a file is outside the store and anyone with write access to the home could have replaced it.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from fednode.atomic import atomic_file

MAGIC = b"FNZKGEN1"
_HEADER = struct.Struct("<8sIQ32s32s")


def cache_path(directory: Path, seed: bytes) -> Path:
    return directory / f"generators-{hashlib.sha256(seed).hexdigest()[:16]}.bin"


def read_table(path: Path, seed: bytes, row_bytes: int) -> tuple[bytes | None, str]:
    """``(payload, "")`` when ``path`` holds a whole table of ``seed`` with rows of ``row_bytes``;
    ``(None, why)`` when it is absent or fails a check."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "absent"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    if len(data) < _HEADER.size:
        return None, "truncated header"
    magic, width, rows, seed_hash, digest = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if magic != MAGIC or width != row_bytes or seed_hash != hashlib.sha256(seed).digest():
        return None, "not a generator table of this seed and format"
    if len(payload) != rows * row_bytes:
        return None, f"{len(payload)} payload bytes for {rows} rows"
    if hashlib.sha256(payload).digest() != digest:
        return None, "payload hash mismatch"
    return payload, ""


def write_table(path: Path, seed: bytes, row_bytes: int, payload: bytes | memoryview) -> None:
    """Write the table atomically (the directory is created 0700 when missing)."""
    size = len(payload)
    if size % row_bytes:
        raise ValueError(f"{size} bytes is not a whole number of {row_bytes}-byte rows")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    header = _HEADER.pack(MAGIC, row_bytes, size // row_bytes, hashlib.sha256(seed).digest(),
                          hashlib.sha256(payload).digest())
    with atomic_file(path) as out:
        out.write(header)
        out.write(payload)
