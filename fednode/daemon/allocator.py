"""The C allocator's thresholds for a daemon that moves megabytes of blocks a second.

Serving a fetch, the daemon allocates and frees the same few sizes over and over: 256 KiB blocks
read from the store, a bitswap message (512 KiB of blocks now, 1 MiB when the figures below were
measured), its encrypted frames, a daemon-protocol write of up to 1 MiB. glibc's malloc serves chunks
over its mmap threshold (128 KiB at start, raised to the largest such chunk freed, at most 32 MiB)
with fresh mappings, and gives back the top of its heap once more than the trim threshold (twice
the mmap threshold) lies free there. Here a message and its blocks (3 MiB with 1 MiB messages) freed together cross
that line every time, so every message came back as new pages: page faults and zeroing in
whatever touched them first. Measured serving a 64 MiB file to Kubo (2026-12-05, this 2-core VM):
building messages took 35-38 ms of CPU and reading blocks 16-30 ms; with the thresholds below,
7 ms and 9-12 ms, and the daemon's CPU per fetch went from 0.33-0.37 s to 0.25-0.29 s. That CPU
counts: the fetching Kubo uses more than one core, so it is what our serving takes from it.

``tune()`` fixes the mmap threshold at MMAP_THRESHOLD (chunks under it come from the heap) and
lets TRIM_THRESHOLD bytes lie free at the heap's top before giving them back: a daemon holds at
most that much freed memory more than before. Not glibc (musl, macOS): nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger("fednode.allocator")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20  # over any message (4 MiB) or block (2 MiB) the daemon moves
TRIM_THRESHOLD = 64 << 20  # glibc's own most (twice its 32 MiB dynamic mmap ceiling)


def tune() -> bool:
    """Set glibc malloc's thresholds (module docstring); False where there is no glibc ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt may mean other things
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        logger.warning("malloc thresholds not set (mallopt refused them)")
    return ok
