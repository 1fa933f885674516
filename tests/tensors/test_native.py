"""The compiled FedAvg kernel: built here, exact, byte-identical to the numpy path, and refused
when its cache directory is not private."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fednode.strategies import exact
from fednode.tensors import fixedpoint, native

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
WIDTHS = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def reference(deltas, weights):
    den = sum(weights)
    return [round(Fraction(sum(w * int(d[j]) for d, w in zip(deltas, weights, strict=True)), den))
            for j in range(deltas[0].size)]


def numpy_path(deltas, weights, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", lambda: None)
        return exact.weighted_mean(deltas, weights)


def test_kernel_builds_and_loads_here():
    lib = native.kernels()
    assert lib is not None, "zig cc (a dependency) should build the kernels on this machine"
    assert native.library_path().exists()
    assert lib.fednode_kernels_version() == native.VERSION


@st.composite
def mixed_inputs(draw):
    n = draw(st.integers(1, 6))
    size = draw(st.sampled_from([1, 7, native.BLOCK - 1, native.BLOCK + 3]))
    deltas = []
    for _ in range(n):
        width = draw(st.sampled_from(list(WIDTHS)))
        info = np.iinfo(WIDTHS[width])
        top = draw(st.sampled_from([3, 1000, 2**40, int(info.max)]))
        lo, hi = max(int(info.min), -top), min(int(info.max), top)
        seed = draw(st.integers(0, 2**32 - 1))
        arr = np.random.default_rng(seed).integers(lo, hi, size, endpoint=True, dtype=WIDTHS[width])
        if draw(st.booleans()):  # extremes: INT_MIN magnitudes and the overflow fallback
            arr[: min(size, 5)] = info.min if draw(st.booleans()) else info.max
        deltas.append(arr)
    weights = draw(st.lists(st.sampled_from([1, 2, 3, 7, 64, 2**20 + 1, 2**40]), min_size=n, max_size=n))
    return deltas, weights


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mixed_inputs())
def test_native_equals_numpy_and_reference(case, monkeypatch):
    deltas, weights = case
    assert native.kernels() is not None
    got = exact.weighted_mean(deltas, weights)
    assert got.tobytes() == numpy_path(deltas, weights, monkeypatch).tobytes()
    if deltas[0].size <= 7:  # the Fraction reference is slow; the numpy path is checked against it elsewhere
        assert got.tolist() == reference(deltas, weights)


@pytest.mark.parametrize("den", [2, 3, 4, 10, 2**33, 2**52 + 1])
def test_ties_round_to_even_on_both_signs(den, monkeypatch):
    # a / den = k + 1/2 for odd and even k, both signs, around the fast path's 2**52 limit
    half_steps = [1, 3, 5, 7, 2**20 + 1, 2**30 - 1]
    nums = [s * den // 2 for s in half_steps if (s * den) % 2 == 0] + [1, -1, den - 1, -(den - 1)]
    nums += [-x for x in nums] + [2**52 - 1, -(2**52 - 1), 2**52 + 1, -(2**52 + 1)]
    nums = [x for x in nums if abs(x) + den // 2 <= I64_MAX]
    small = [x for x in nums if abs(x) + den < 2**52]  # a block of these takes the fast division
    for values in (small, nums):
        # the sum itself is the numerator: weight 1 on the values, den - 1 on zeros
        arr = np.array(values, dtype=np.int64)
        zeros = np.zeros_like(arr)
        weights = [1, den - 1]
        got = exact.weighted_mean([arr, zeros], weights)
        assert got.tolist() == [round(Fraction(x, den)) for x in values]
        assert got.tobytes() == numpy_path([arr, zeros], weights, monkeypatch).tobytes()


def test_overflowing_blocks_are_computed_exactly():
    size = 3 * native.BLOCK + 5
    a = np.full(size, 2**62, dtype=np.int64)
    b = np.full(size, 2**62 - 1, dtype=np.int64)
    a[native.BLOCK: 2 * native.BLOCK] = 3  # the middle block fits int64; the others do not
    got = exact.weighted_mean([a, b], [3, 5])
    assert got[0] == round(Fraction(3 * 2**62 + 5 * (2**62 - 1), 8))
    assert got[native.BLOCK] == round(Fraction(9 + 5 * (2**62 - 1), 8))
    assert got[-1] == got[0]


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("FEDNODE_NATIVE", "0")
    native.reset()
    try:
        assert native.kernels() is None
        assert exact.weighted_mean([np.array([1, 2], np.int64), np.array([2, 5], np.int64)], [1, 1]).tolist() == [2, 4]
    finally:
        monkeypatch.delenv("FEDNODE_NATIVE")
        native.reset()


def test_shared_cache_directory_is_refused(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    monkeypatch.setenv("FEDNODE_NATIVE_CACHE", str(cache))
    native.reset()
    try:
        assert native.kernels() is None
        assert "writable by others" in caplog.text
        assert list(cache.iterdir()) == []  # nothing built or loaded from it
    finally:
        monkeypatch.delenv("FEDNODE_NATIVE_CACHE")
        native.reset()
    assert native.kernels() is not None


def test_a_cache_below_a_shared_parent_is_refused(tmp_path, monkeypatch, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)  # a group member could rename our directory away and put another there
    monkeypatch.setenv("FEDNODE_NATIVE_CACHE", str(shared / "mine"))
    native.reset()
    try:
        assert native.kernels() is None
        assert f"{shared} is writable by others" in caplog.text
        assert list((shared / "mine").iterdir()) == []
        shared.chmod(0o1775)  # sticky, like /tmp: others cannot rename what is ours
        native.reset()
        assert native.kernels() is not None
    finally:
        monkeypatch.delenv("FEDNODE_NATIVE_CACHE")
        native.reset()


def test_private_cache_directory_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDNODE_NATIVE_CACHE", str(tmp_path / "fresh"))
    native.reset()
    try:
        lib = native.kernels()
        assert lib is not None
        assert native.library_path().parent == tmp_path / "fresh"
        assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
        assert [p.suffix for p in (tmp_path / "fresh").iterdir()] == [".so"]  # no temp files left
    finally:
        monkeypatch.delenv("FEDNODE_NATIVE_CACHE")
        native.reset()


def test_exact_multiples_where_the_float_estimate_falls_short(monkeypatch):
    # floor(a * (1/den)) is one below a / den for these exact multiples (found by search):
    # the kernel's correction step must fix every one of them
    cases = [(4177471822287024, 30453), (2783470131878154, 341151), (-3293946200456134, 857351952227),
             (-2439573660701694, 99), (-887762321681688, 7052673438)]
    for a, den in cases:
        assert a % den == 0 and np.floor(np.float64(a) * (1.0 / den)) < a // den
        arr = np.array([a, a - 1, a + 1], dtype=np.int64)
        zeros = np.zeros_like(arr)
        got = exact.weighted_mean([arr, zeros], [1, den - 1])
        assert got.tolist() == [round(Fraction(int(x), den)) for x in arr]
        assert got.tobytes() == numpy_path([arr, zeros], [1, den - 1], monkeypatch).tobytes()


def three_steps(base, states, weights, scale_bits, monkeypatch):
    """The reference for the fused float32 path: quantize, exact weighted mean, apply, done apart in numpy."""
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", lambda: None)
        deltas = [fixedpoint.encode_delta(base, s, "F32", scale_bits) for s in states]
        if any(d is None for d in deltas):  # NaN/Inf or beyond the grid, at any weight: refused
            return None
        return fixedpoint.apply_delta(base, exact.weighted_mean(deltas, weights), "F32", scale_bits)


@st.composite
def float_states(draw):
    n = draw(st.integers(1, 5))
    size = draw(st.sampled_from([1, 5, native.BLOCK + 7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e6]))
    base = rng.standard_normal(size).astype(np.float32)
    states = [(base + rng.normal(0, spread, size)).astype(np.float32) for _ in range(n)]
    if draw(st.booleans()):  # exact ties and subnormal-scale changes
        states[0][: min(size, 3)] = base[: min(size, 3)] + np.float32(2.0**-25)
    weights = draw(st.lists(st.sampled_from([0, 1, 3, 500, 2**30]), min_size=n, max_size=n))
    if sum(weights) == 0:
        weights[0] = 1
    return base, states, weights, draw(st.sampled_from([8, 24, 40]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=float_states())
def test_fused_float32_fedavg_equals_the_three_steps(case, monkeypatch):
    base, states, weights, scale_bits = case
    fused = exact.weighted_mean_f32_states(base, states, weights, scale_bits)
    expected = three_steps(base, states, weights, scale_bits, monkeypatch)
    if expected is None or 0 in weights:  # zero weights: the generic path decides (it checks every input)
        assert fused is None
    else:
        assert fused is not None and fused.tobytes() == expected.tobytes()


def test_fused_path_overflow_blocks_and_refusals(monkeypatch):
    size = 2 * native.BLOCK + 3
    base = np.zeros(size, dtype=np.float32)
    big = np.full(size, 2.0**37, dtype=np.float32)  # 2**61 grid steps at scale 2**24
    big[native.BLOCK:] = 1.5
    states, weights = [big, big.copy()], [3, 4]  # 7 * 2**61 overflows int64 in the first block only
    fused = exact.weighted_mean_f32_states(base, states, weights, 24)
    assert fused.tobytes() == three_steps(base, states, weights, 24, monkeypatch).tobytes()
    assert fused[0] == np.float32(2.0**37) and fused[-1] == np.float32(1.5)
    for bad in (np.nan, np.inf, 2.0**39):  # NaN, Inf, beyond 2**62 grid steps: the generic path decides
        s = big.copy()
        s[-1] = bad
        assert exact.weighted_mean_f32_states(base, [s, big], weights, 24) is None



def test_zero_weights_and_deltas_beyond_the_grid_go_to_the_generic_path():
    size = native.BLOCK + 7
    base = np.zeros(size, dtype=np.float32)
    good = np.ones(size, dtype=np.float32)
    bad = good.copy()
    bad[3] = np.nan
    # at weight 0 the fused path would skip ``bad``; the generic path (the one a node without the
    # kernel runs) refuses it, so the fused path must hand such a merge over
    assert exact.weighted_mean_f32_states(base, [good, bad], [1, 0], 24) is None
    assert exact.weighted_mean_f32_states(base, [good, good], [1, 0], 24) is None
    # 5e6 * 2**40 grid steps is beyond 2**62 (found by hypothesis: the fallback block must refuse it too)
    big = np.full(size, 5e6, dtype=np.float32)
    assert exact.weighted_mean_f32_states(base, [big, big], [1, 1], 40) is None
    assert exact.weighted_mean_f32_states(base, [good, good], [1, 1], 40) is not None


@pytest.mark.parametrize("den", [2, 3, 6, 1000, 2**20, 3 * 2**22, 2**24 + 1, 2**25 - 2, 2**25 - 1, 2**25])
def test_fused_division_at_ties_and_near_ties_up_to_2_to_49(den, monkeypatch):
    # the fused path divides in double: round_half_even(a / den) as rint of the correctly rounded
    # quotient; with weights (1, den - 1), a = q1 + (den - 1) q2 is congruent to q1 - q2 mod den, so
    # q1 = q2 + den // 2 + c puts a / den on a tie (c = 0, even den) or one 1/den from one; |a| ~ 2**49
    rng = np.random.default_rng(den)
    q2 = rng.integers(-(2**23), 2**23, 3 * native.BLOCK)
    q1 = q2 + den // 2 + rng.integers(-1, 2, q2.size)
    keep = np.abs(q1) <= 2**24  # integers float32 holds exactly (scale 2**0: the grid step is 1)
    q1, q2 = q1[keep], q2[keep]
    base = np.zeros(q1.size, dtype=np.float32)
    states, weights = [q1.astype(np.float32), q2.astype(np.float32)], [1, den - 1]
    fused = exact.weighted_mean_f32_states(base, states, weights, 0)
    assert fused is not None
    expected = [round(Fraction(int(a) + (den - 1) * int(b), den)) for a, b in zip(q1, q2, strict=True)]
    assert fused.astype(np.float64).tolist() == [float(e) for e in expected]
    assert fused.tobytes() == three_steps(base, states, weights, 0, monkeypatch).tobytes()


@pytest.mark.parametrize("den", [3, 4, 1000])
def test_fused_path_writes_plus_zero_where_the_integer_path_does(den, monkeypatch):
    # a / den in (-0.5, 0) rounds to a negative zero in double; the integer path's 0 is +0, and
    # -0.0 + 0.0 is +0.0 where -0.0 + -0.0 would stay -0.0
    size = native.BLOCK + 5
    base = np.full(size, -0.0, dtype=np.float32)
    states, weights = [np.full(size, -1.0, dtype=np.float32), base.copy()], [1, den - 1]
    fused = exact.weighted_mean_f32_states(base, states, weights, 0)
    assert fused is not None and not np.signbit(fused).any()
    assert fused.tobytes() == three_steps(base, states, weights, 0, monkeypatch).tobytes()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4099])
def test_absmax_kernel_equals_numpy(size):
    lib = native.kernels()
    rng = np.random.default_rng(size)
    arr = (rng.standard_normal(size) * 10.0 ** rng.integers(-40, 30, size)).astype(np.float32)
    if size:
        arr[rng.integers(0, size)] = -np.float32(3e38)  # the largest magnitude, negative
    expected = float(np.max(np.abs(arr))) if size else 0.0
    assert native.absmax_f32(lib, arr) == expected
    assert fixedpoint.max_abs(arr, "F32") == expected
    for bad in (np.nan, np.inf, -np.inf):
        if size:
            spoiled = arr.copy()
            spoiled[-1] = bad
            assert native.absmax_f32(lib, spoiled) is None  # numpy's path skips the non-finite value
            finite = np.abs(spoiled[np.isfinite(spoiled)])
            assert fixedpoint.max_abs(spoiled, "F32") == (float(finite.max()) if finite.size else 0.0)
