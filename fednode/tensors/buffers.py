"""Output buffers for large merge results.

A merge writes each output tensor once, and on this kind of machine (a VM) the first touch of a
fresh 4 KiB page costs more than the merge arithmetic on it: 40 MB of new float32 outputs took
22-28 ms to fill page by page and 7 ms on 2 MiB pages. Transparent huge pages are usually granted
only where asked for (``madvise`` mode), and only for 2 MiB-aligned stretches; numpy asks for
arrays of 4 MiB and more but leaves their alignment to chance. So a large output gets an
anonymous mapping of its own, aligned and advised. Where huge pages are off, or off this
platform, it is an ordinary zero-filled mapping (or ``np.empty``).
"""

from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE = 1 << 21
HUGE_MIN = HUGE_PAGE  # smaller outputs would waste most of their one huge page


def empty(size: int, dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised, writable 1-D array of ``size`` elements; from 2 MiB on, backed by a mapping
    that starts on a 2 MiB boundary with huge pages requested (the mapping lives as long as the
    array, and at most one huge page of it is never used)."""
    dt = np.dtype(dtype)
    nbytes = size * dt.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_MIN or advice is None:
        return np.empty(size, dtype=dt)
    span = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    area = mmap.mmap(-1, span + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared memory gets no THP
    head = 0
    try:
        # the mapping's address is not exposed by mmap itself: numpy reads it
        head = -np.frombuffer(area, dtype=np.uint8, count=1).ctypes.data % HUGE_PAGE
        area.madvise(advice, head, span)
    except OSError:  # a kernel without transparent huge pages: the mapping still works
        pass
    return np.frombuffer(area, dtype=dt, count=size, offset=head)
