"""Real disk blocks for the store's data file ahead of LMDB's writes.

The store maps its (sparse) data file with ``writemap``: LMDB writes a page by storing into the
map, and on a full filesystem a store into a hole is a SIGBUS that kills the process with no
message. So the store allocates the file's blocks (``fallocate``) before a transaction can touch
them: a full disk becomes ENOSPC here, one ``DiskFull`` error before the bytes are written. Where
the filesystem has no ``fallocate``, the free space is compared instead (a best effort).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

from fednode.errors import FednodeError

STEP = 32 << 20  # allocate ahead by this much: one system call per 32 MiB written
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS)

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate64
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


class DiskFull(FednodeError):
    """Not enough free disk for a write; nothing was stored."""


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """Linux fallocate(2): 0 or the errno (no slow glibc emulation, unlike os.posix_fallocate)."""
    if length <= 0:
        return 0
    return 0 if _fallocate(fd, mode, offset, length) == 0 else ctypes.get_errno()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskReservation:
    """Keeps ``[0, allocated)`` of one file backed by disk blocks (never beyond the file's size).

    ``begin`` re-reads the watermark at the start of every write transaction: another process
    sharing the store may have released blocks since."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.allocated = 0
        self.supported = True
        self._lock = threading.Lock()  # the block-writer thread and the caller's thread both write

    def begin(self, used: int) -> None:
        """Start of a write transaction: LMDB's pages below ``used`` are all backed; find the first hole after."""
        with self._lock, self._open() as fd:
            try:
                self.allocated = os.lseek(fd, used, os.SEEK_HOLE)
            except OSError:  # no SEEK_HOLE here: assume nothing beyond ``used``
                self.allocated = used

    def _open(self) -> _Fd:
        return _Fd(os.open(self.file, os.O_RDWR | os.O_CLOEXEC))

    def ensure(self, end: int) -> None:
        """Back ``[0, end)`` with disk blocks, or raise DiskFull."""
        if end <= self.allocated:
            return
        with self._lock, self._open() as fd:
            size = os.fstat(fd).st_size
            end = min(end, size)  # LMDB never writes beyond the map (MapFullError first)
            if end <= self.allocated:
                return
            if self.supported:
                for target in (min(size, end + STEP), end):
                    err = fallocate(fd, 0, self.allocated, target - self.allocated)
                    if err == 0:
                        self.allocated = target
                        return
                    if err in _UNSUPPORTED:
                        self.supported = False
                        break
                    if err not in (errno.ENOSPC, errno.EDQUOT):
                        raise FednodeError(f"cannot allocate disk for {self.file}: {os.strerror(err)}")
            free = free_bytes(self.file.parent)
            if self.supported or end - self.allocated > free:
                raise DiskFull(f"not enough disk space for the store at {self.file.parent} "
                               f"({_mb(free)} free); nothing was stored")

    def release(self, start: int) -> None:
        """Give back the blocks of ``[start, allocated)`` (call only while holding the write lock:
        nothing there is in use, and no other writer can be using it)."""
        with self._lock, self._open() as fd:
            if self.supported and start < self.allocated and fallocate(fd, _PUNCH_HOLE, start,
                                                                       self.allocated - start) == 0:
                self.allocated = start


class _Fd(int):
    """A file descriptor that closes at the end of a ``with`` block."""

    def __enter__(self) -> int:
        return int(self)

    def __exit__(self, *exc: object) -> None:
        os.close(self)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
