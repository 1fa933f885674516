"""Merge output buffers: large ones start on a 2 MiB boundary (huge pages), all are ordinary arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fednode.tensors import buffers


@pytest.mark.parametrize("size", [0, 1, 1000, buffers.HUGE_MIN // 4 - 1, buffers.HUGE_MIN // 4, 3_000_001])
def test_empty_is_a_writable_array_of_the_size_asked(size):
    arr = buffers.empty(size, np.float32)
    assert arr.shape == (size,) and arr.dtype == np.float32 and arr.flags.writeable and arr.flags.c_contiguous
    if size * 4 >= buffers.HUGE_MIN:
        assert arr.ctypes.data % buffers.HUGE_PAGE == 0
    arr[:] = np.arange(size, dtype=np.float32)
    assert arr[-1:].tolist() == ([float(size - 1)] if size else [])
    as_int = buffers.empty(size, np.int64)
    as_int[:] = -1
    assert as_int.sum() == -size


def test_the_mapping_outlives_the_function_that_made_it():
    views = [buffers.empty(1 << 20, np.float32)[10:20] for _ in range(3)]  # only slices are kept
    for i, v in enumerate(views):
        v[:] = i
    assert [float(v.sum()) for v in views] == [0.0, 10.0, 20.0]
