"""Files that appear whole or not at all: written beside their final path, then fsynced and renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fednode.errors import FednodeError


def check_writable(path: Path) -> Path:
    """``path`` resolved (through a symbolic link, whose target is what gets written), refused in one
    line if ``atomic_file`` could not write it: its directory missing or not writable, or a directory.
    For commands that would otherwise do long work (a fetch) before finding out."""
    target = path.resolve()
    if target.is_dir():
        raise FednodeError(f"{path} is a directory")
    if not target.parent.is_dir():
        raise FednodeError(f"cannot write {path}: no directory {target.parent}")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise FednodeError(f"cannot write {path}: {target.parent} is not writable")
    return target


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file in the same directory, fsynced and
    renamed onto ``path`` when the block ends, removed if it raises (``path`` is never half written).
    A symbolic link at ``path`` is written through (its target replaced), and the directory is
    fsynced after the rename so that the new file survives a power loss."""
    target = path.resolve()
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a directory we may write but not open: the rename stands, only its durability is weaker
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
