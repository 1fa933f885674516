"""Fixed-point deltas: exact integer round trips, the quantization bound, determinism, BF16 conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fednode.tensors import fixedpoint

FLOAT_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(FLOAT_NP)), st.integers(0, 30), st.data())
def test_delta_bound_and_determinism(dtype: str, scale_bits: int, data: st.DataObject) -> None:
    np_dtype = FLOAT_NP[dtype]
    elems = st.floats(-1000, 1000, width=np.finfo(np_dtype).bits if dtype != "F64" else 64)
    parent = data.draw(hnp.arrays(np_dtype, st.integers(0, 40), elements=elems))
    new = data.draw(hnp.arrays(np_dtype, parent.shape, elements=elems))
    q = fixedpoint.encode_delta(parent, new, dtype, scale_bits)
    assert q is not None and q.dtype == np.int64
    rebuilt = fixedpoint.apply_delta(parent, q, dtype, scale_bits)
    assert rebuilt.dtype == parent.dtype
    x = parent.astype(np.float64) + q.astype(np.float64) * 2.0**-scale_bits
    # the integer delta is the nearest grid point; the rebuilt value is that sum rounded once to the dtype
    assert (np.abs(x - new.astype(np.float64)) <= 2.0 ** -(scale_bits + 1) * (1 + 1e-9)).all()
    assert rebuilt.tobytes() == x.astype(np_dtype).tobytes()
    assert fixedpoint.apply_delta(parent, q, dtype, scale_bits).tobytes() == rebuilt.tobytes()
    bits = fixedpoint.int_bits_for(q)
    assert np.array_equal(q.astype(f"<i{bits // 8}").astype(np.int64), q)


@given(hnp.arrays(np.int64, st.integers(0, 30)), hnp.arrays(np.int64, st.integers(0, 30)))
def test_integer_deltas_exact_with_wraparound(a: np.ndarray, b: np.ndarray) -> None:
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    q = fixedpoint.encode_delta(a, b, "I64", 0)
    assert np.array_equal(fixedpoint.apply_delta(a, q, "I64", 0), b)


@given(hnp.arrays(np.uint8, 20), hnp.arrays(np.uint8, 20))
def test_u8_deltas_exact(a: np.ndarray, b: np.ndarray) -> None:
    q = fixedpoint.encode_delta(a, b, "U8", 0)
    assert fixedpoint.int_bits_for(q) <= 16
    out = fixedpoint.apply_delta(a, q, "U8", 0)
    assert out.dtype == np.uint8 and np.array_equal(out, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_not_representable(bad: float) -> None:
    parent = np.zeros(4, np.float32)
    new = parent.copy()
    new[2] = bad
    assert fixedpoint.encode_delta(parent, new, "F32", 24) is None
    assert fixedpoint.encode_delta(new, parent, "F32", 24) is None


def test_out_of_range_change_is_not_representable() -> None:
    parent = np.zeros(2, np.float64)
    new = np.array([0.0, 2.0**40])
    assert fixedpoint.encode_delta(parent, new, "F64", 24) is None
    assert fixedpoint.encode_delta(parent, new, "F64", 20) is not None


def test_int_bits_for() -> None:
    assert fixedpoint.int_bits_for(np.array([], np.int64)) == 8
    assert fixedpoint.int_bits_for(np.array([-128, 127])) == 8
    assert fixedpoint.int_bits_for(np.array([128])) == 16
    assert fixedpoint.int_bits_for(np.array([-32769])) == 32
    assert fixedpoint.int_bits_for(np.array([2**31])) == 64


@settings(max_examples=50)
@given(hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(width=32, allow_nan=False)))
def test_bf16_conversion_matches_torch(x: np.ndarray) -> None:
    ours = fixedpoint.from_f64(x.astype(np.float64), "BF16")
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)
    back = fixedpoint.to_f64(ours, "BF16")
    assert np.array_equal(back, torch.from_numpy(x).to(torch.bfloat16).to(torch.float64).numpy())


def test_bf16_nan_stays_nan() -> None:
    out = fixedpoint.from_f64(np.array([np.nan, 1.0]), "BF16")
    assert np.isnan(fixedpoint.to_f64(out, "BF16")[0]) and fixedpoint.to_f64(out, "BF16")[1] == 1.0


def test_large_tensor_blocks_consistent() -> None:
    """Tensors larger than one BLOCK are processed in pieces with the same result."""
    rng = np.random.default_rng(0)
    n = fixedpoint.BLOCK + 12345
    parent = rng.standard_normal(n).astype(np.float32)
    new = (parent + rng.standard_normal(n).astype(np.float32) * 1e-3).astype(np.float32)
    q = fixedpoint.encode_delta(parent, new, "F32", 20)
    expected = np.rint((new.astype(np.float64) - parent.astype(np.float64)) * 2.0**20).astype(np.int64)
    assert np.array_equal(q, expected)
    rebuilt = fixedpoint.apply_delta(parent, q, "F32", 20)
    ref = (parent.astype(np.float64) + expected.astype(np.float64) * 2.0**-20).astype(np.float32)
    assert rebuilt.tobytes() == ref.tobytes()
