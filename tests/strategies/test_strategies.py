"""Aggregation strategies: exact against Python-int / Fraction references, deterministic, well-guarded."""

from __future__ import annotations

import itertools
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fednode import strategies as S
from fednode.errors import FednodeError
from fednode.strategies import exact
from fednode.strategies.krum import pairwise_sq_distances, select
from fednode.tensors import native
from protocol import dagcbor

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
MEDIAN = S.create("median", min_inputs=1)  # any input count, as before min_inputs existed
WMEDIAN = S.create("median", weighted=True, min_inputs=1)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------- references (Python ints and Fractions only)


def ref_round(x: Fraction) -> int:
    return round(x)  # Fraction.__round__: nearest, ties to even


def columns(deltas):
    return list(zip(*[[int(v) for v in d.reshape(-1)] for d in deltas], strict=True))


def ref_fedavg(deltas, weights):
    total = sum(weights)
    return [
        ref_round(Fraction(sum(w * v for w, v in zip(weights, col, strict=True)), total)) for col in columns(deltas)
    ]


def ref_median_values(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else ref_round(Fraction(v[n // 2 - 1] + v[n // 2], 2))


def ref_median(deltas, weights, weighted=False):
    out = []
    for col in columns(deltas):
        if weighted:  # the median of the multiset where each value appears w times
            out.append(ref_median_values([v for v, w in zip(col, weights, strict=True) for _ in range(w)]))
        else:
            out.append(ref_median_values([v for v, w in zip(col, weights, strict=True) if w > 0]))
    return out


def ref_trimmed(deltas, weights, b):
    out = []
    for col in columns(deltas):
        v = sorted(x for x, w in zip(col, weights, strict=True) if w > 0)
        kept = v[b : len(v) - b]
        out.append(ref_round(Fraction(sum(kept), len(kept))))
    return out


def ref_distances(deltas):
    flat = [[int(v) for v in d.reshape(-1)] for d in deltas]
    return [[sum((a - b) ** 2 for a, b in zip(x, y, strict=True)) for y in flat] for x in flat]


def ref_multikrum(deltas, weights, f, m):
    dist = ref_distances(deltas)
    active = [i for i, w in enumerate(weights) if w > 0]
    closest = len(active) - f - 2
    score = {i: sum(sorted(dist[i][j] for j in active if j != i)[:closest]) for i in active}
    chosen = sorted(active, key=lambda i: (score[i], i))[:m]
    return chosen, ref_fedavg(deltas, [w if i in chosen else 0 for i, w in enumerate(weights)])


def as_list(arr):
    return [int(v) for v in arr.reshape(-1)]


# ---------------------------------------------------------------- input generators

small = st.integers(-50, 50)
huge = st.one_of(st.integers(I64_MIN, I64_MAX), st.sampled_from([I64_MIN, I64_MAX, I64_MIN + 1, 2**62, -(2**62)]))


@st.composite
def inputs(draw, min_n=1, max_n=6, weight_max=5, positive_weights=False):
    n = draw(st.integers(min_n, max_n))
    shape = draw(st.sampled_from([(0,), (1,), (7,), (3, 4), (2, 1, 5)]))
    size = int(np.prod(shape))
    values = draw(st.sampled_from(["small", "mixed", "huge"]))
    elem = {"small": small, "mixed": st.one_of(small, huge), "huge": huge}[values]
    deltas = [
        np.array(draw(st.lists(elem, min_size=size, max_size=size)), dtype=np.int64).reshape(shape) for _ in range(n)
    ]
    low = 1 if positive_weights else 0
    big_w = draw(st.booleans())
    wmax = 2**40 if big_w else weight_max
    weights = draw(st.lists(st.integers(low, wmax), min_size=n, max_size=n))
    if sum(weights) == 0:
        weights[draw(st.integers(0, n - 1))] = 1
    return deltas, weights


@pytest.fixture(params=["tiny-blocks", "default", "numpy"])
def blocks(request, monkeypatch):
    """Run each exactness test three times: with 3-element blocks split over threads (many blocks, mixed
    int64 / Python-int fallback blocks, the threaded path), with the library defaults (the C kernel
    where one applies), and with the numpy path only."""
    if request.param == "numpy":
        monkeypatch.setattr(native, "kernels", lambda: None)
    if request.param == "tiny-blocks":
        monkeypatch.setattr(exact, "BLOCK", 3)
        monkeypatch.setattr(exact, "PARALLEL_MIN", 4)
        monkeypatch.setattr(exact, "THREADS", 3)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("den", [1, 2, 3, 4, 7, 8, 10, 2**40, 2**40 + 1, 2**62, 2**63 - 1])
def test_round_div_array_matches_fraction_rounding(den):
    half = den // 2
    cand = [0, 1, -1, half, -half, half + 1, -half - 1, den, -den, 3 * den // 2, -3 * den // 2, 5, -5, 7, -7]
    cand += [I64_MAX - half, I64_MIN, I64_MIN + 1, 2**61, -(2**61)]
    num = sorted({c for c in cand if I64_MIN <= c <= I64_MAX - half})
    arr = np.array(num, dtype=np.int64)
    out = np.empty_like(arr)
    exact.round_div_array(arr.copy(), den, out, np.empty_like(arr))
    assert as_list(out) == [ref_round(Fraction(v, den)) for v in num]
    assert [exact.round_div(v, den) for v in num] == as_list(out)


def test_mean_of_two_extremes():
    vals = [I64_MIN, I64_MIN + 1, -3, -2, -1, 0, 1, 2, 3, I64_MAX - 1, I64_MAX]
    a, b = zip(*itertools.product(vals, vals), strict=True)
    got = exact.mean_of_two(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64))
    assert as_list(got) == [ref_round(Fraction(x + y, 2)) for x, y in zip(a, b, strict=True)]


@SETTINGS
@given(inputs())
def test_fedavg_exact(blocks, case):
    deltas, weights = case
    out = S.get("fedavg").aggregate(deltas, weights)
    assert out.dtype == np.int64 and out.shape == deltas[0].shape
    assert as_list(out) == ref_fedavg(deltas, weights)


@SETTINGS
@given(inputs(), st.booleans())
def test_median_exact(blocks, case, weighted):
    deltas, weights = case
    if weighted:
        weights = [min(w, 6) for w in weights]  # the reference expands each value w times
        if sum(weights) == 0:
            weights[0] = 1
    out = S.create("median", weighted=weighted, min_inputs=1).aggregate(deltas, weights)
    assert out.dtype == np.int64 and out.shape == deltas[0].shape
    assert as_list(out) == ref_median(deltas, weights, weighted)


@SETTINGS
@given(inputs(max_n=8), st.integers(0, 3))
def test_trimmed_mean_exact(blocks, case, trim):
    deltas, weights = case
    n = sum(1 for w in weights if w > 0)
    s = S.create("trimmed-mean", trim=trim)
    if 2 * trim >= n:
        with pytest.raises(ValueError, match="2\\*trim < n"):
            s.aggregate(deltas, weights)
        return
    out = s.aggregate(deltas, weights)
    assert as_list(out) == ref_trimmed(deltas, weights, trim)


@SETTINGS
@given(inputs(min_n=3, max_n=7), st.integers(0, 2), st.integers(1, 7))
def test_multikrum_exact(blocks, case, f, m):
    deltas, weights = case
    n = sum(1 for w in weights if w > 0)
    s = S.create("multi-krum", byzantine=f, m=m)
    if n < 2 * f + 3 or m > n:
        with pytest.raises(ValueError, match="krum"):
            s.aggregate(deltas, weights)
        return
    merged, plan = s.aggregate_model({"t": deltas}, weights)
    chosen, expected = ref_multikrum(deltas, weights, f, m)
    assert plan.record == {"byzantine": f, "selected": chosen}
    assert as_list(merged["t"]) == expected
    assert as_list(s.aggregate(deltas, weights)) == expected


@SETTINGS
@given(inputs(min_n=2, max_n=5))
def test_pairwise_distances_exact(blocks, case):
    deltas, _ = case
    got = pairwise_sq_distances(deltas)
    assert got.shape == (len(deltas),) * 2
    assert [[int(v) for v in row] for row in got] == ref_distances(deltas)


def test_pairwise_distances_extreme_values_many_blocks():
    rng = np.random.default_rng(7)
    size = exact.BLOCK * 2 + 5
    deltas = [rng.integers(I64_MIN, I64_MAX, size, dtype=np.int64, endpoint=True) for _ in range(3)]
    deltas.append(np.full(size, I64_MIN, dtype=np.int64))
    deltas.append(np.full(size, I64_MAX, dtype=np.int64))
    want = [[0] * 5 for _ in range(5)]
    lists = [d.tolist() for d in deltas]
    for i, j in itertools.combinations(range(5), 2):
        want[i][j] = want[j][i] = sum((a - b) ** 2 for a, b in zip(lists[i], lists[j], strict=True))
    assert pairwise_sq_distances(deltas).tolist() == want


# ---------------------------------------------------------------- relations between strategies


@SETTINGS
@given(inputs(positive_weights=True))
def test_trimmed_mean_without_trim_is_unweighted_fedavg(case):
    deltas, weights = case
    got = S.create("trimmed-mean", trim=0).aggregate(deltas, weights)
    assert got.tobytes() == S.get("fedavg").aggregate(deltas, [1] * len(deltas)).tobytes()
    no_trim = S.create("trimmed-mean", trim_fraction=0.0, min_trim=0)
    assert no_trim.aggregate(deltas, weights).tobytes() == got.tobytes()


@SETTINGS
@given(inputs(positive_weights=True))
def test_median_is_trimmed_mean_of_middle_and_unit_weighted_median(case):
    deltas, weights = case
    n = len(deltas)
    median = MEDIAN.aggregate(deltas, weights)
    assert median.tobytes() == S.create("trimmed-mean", trim=(n - 1) // 2).aggregate(deltas, weights).tobytes()
    assert median.tobytes() == WMEDIAN.aggregate(deltas, [3] * n).tobytes()


@SETTINGS
@given(inputs(min_n=2))
def test_zero_weight_excludes_an_input(case):
    deltas, weights = case
    if sum(w > 0 for w in weights) == len(weights):
        weights[0] = 0
    if sum(weights) == 0:
        weights[-1] = 1
    kept = [(d, w) for d, w in zip(deltas, weights, strict=True) if w > 0]
    for s in (S.get("fedavg"), MEDIAN, WMEDIAN, S.create("trimmed-mean", trim=0)):
        got = s.aggregate(deltas, weights)
        assert got.tobytes() == s.aggregate([d for d, _ in kept], [w for _, w in kept]).tobytes()


def test_krum_streamed_over_tensors_equals_one_concatenated_tensor():
    rng = np.random.default_rng(3)
    n = 7
    shapes = [(5, 4), (13,), (2, 3, 2)]
    tensors = {
        f"t{i}": [rng.integers(-1000, 1000, shape, dtype=np.int64) for _ in range(n)] for i, shape in enumerate(shapes)
    }
    tensors["t0"][4] += 10**6  # an outlier in one tensor only
    weights = [int(w) for w in rng.integers(1, 9, n)]
    for s in (S.create("krum", byzantine=2), S.create("multi-krum", byzantine=1, m=4)):
        merged, plan = s.aggregate_model(tensors, weights)
        whole = [np.concatenate([tensors[t][k].reshape(-1) for t in tensors]) for k in range(n)]
        assert plan == s.plan(weights, s.scan(whole))
        assert 4 not in plan.record["selected"]
        joined = s.aggregate(whole, weights)
        assert np.concatenate([merged[t].reshape(-1) for t in tensors]).tobytes() == joined.tobytes()


# ---------------------------------------------------------------- robustness and determinism


def test_krum_rejects_an_obvious_outlier():
    rng = np.random.default_rng(0)
    honest = [rng.integers(-100, 100, 50, dtype=np.int64) for _ in range(6)]
    outlier = np.full(50, 10**12, dtype=np.int64)
    for pos in range(7):
        deltas = honest[:pos] + [outlier] + honest[pos:]
        weights = [1000] * 7  # the outlier would dominate fedavg
        chosen = S.get("krum").plan(weights, pairwise_sq_distances(deltas)).record["selected"]
        assert chosen != [pos] and len(chosen) == 1
        out = S.get("krum").aggregate(deltas, weights)
        assert any(out.tobytes() == h.tobytes() for h in honest)  # krum returns one input, exactly
        multi, plan = S.get("multi-krum").aggregate_model({"w": deltas}, weights)
        assert sorted(plan.record["selected"]) == [i for i in range(7) if i != pos]
        assert as_list(multi["w"]) == ref_fedavg(honest, [1000] * 6)
        assert np.abs(S.get("fedavg").aggregate(deltas, weights)).min() > 10**11  # fedavg is not robust


def test_krum_ties_go_to_the_lowest_index():
    # four identical candidates: all scores tie, so the order of the inputs decides
    a = np.arange(6, dtype=np.int64)
    deltas = [a, a + 0, a + 0, a + 0, a + 1000]
    dist = pairwise_sq_distances(deltas)
    assert select(dist, 1, 1) == [0]
    assert select(dist, 1, 3) == [0, 1, 2]
    assert S.get("krum").plan([1] * 5, dist).record["selected"] == [0]
    assert S.create("krum", byzantine=0).plan([0, 1, 1, 1, 1], dist).record["selected"] == [1]  # weight 0: left out
    # the same inputs reordered: the lowest index among equal scores still wins
    order = [3, 4, 0, 2, 1]
    assert select(dist[np.ix_(order, order)], 1, 2) == [0, 2]


@SETTINGS
@given(inputs(), st.randoms(use_true_random=False))
def test_order_independent_strategies_give_identical_bytes(case, rnd):
    deltas, weights = case
    perm = list(range(len(deltas)))
    rnd.shuffle(perm)
    shuffled = [deltas[i] for i in perm], [weights[i] for i in perm]
    for s in (S.get("fedavg"), MEDIAN, WMEDIAN, S.create("trimmed-mean", trim=0)):
        assert s.aggregate(*shuffled).tobytes() == s.aggregate(deltas, weights).tobytes()


def test_threads_and_block_sizes_do_not_change_bytes(monkeypatch):
    rng = np.random.default_rng(11)
    deltas = [rng.integers(-(2**40), 2**40, 5000, dtype=np.int64) for _ in range(5)]
    deltas[2][100:200] = I64_MAX  # some blocks need the Python-int path
    weights = [3, 1, 4, 1, 5]
    strategies = [S.get(name) for name in S.STRATEGIES] + [WMEDIAN]
    baseline = [s.aggregate(deltas, weights).tobytes() for s in strategies]
    for block, threads in ((7, 1), (64, 3), (4096, 8)):
        monkeypatch.setattr(exact, "BLOCK", block)
        monkeypatch.setattr(exact, "PARALLEL_MIN", 100)
        monkeypatch.setattr(exact, "THREADS", threads)
        assert [s.aggregate(deltas, weights).tobytes() for s in strategies] == baseline


def test_overflow_guard_falls_back_to_exact_integers():
    big = 2**62 + 12345
    deltas = [np.array([big, -big, big, I64_MAX], dtype=np.int64), np.array([big, -big, -big, I64_MAX], dtype=np.int64)]
    weights = [3, 5]
    naive = (deltas[0] * 3 + deltas[1] * 5) // 8  # int64 wraps here
    expected = ref_fedavg(deltas, weights)
    assert as_list(naive) != expected
    assert as_list(S.get("fedavg").aggregate(deltas, weights)) == expected
    assert expected[:2] == [big, -big] and expected[3] == I64_MAX
    assert as_list(MEDIAN.aggregate(deltas, weights)) == ref_median(deltas, weights)


def test_inputs_are_not_modified():
    deltas = [np.array([1, 2, 3], dtype=np.int64), np.array([9, -2, 7], dtype=np.int64)]
    copies = [d.copy() for d in deltas]
    for s in (S.get("fedavg"), MEDIAN, S.create("trimmed-mean", min_trim=0)):
        s.aggregate(deltas, [2, 1])
    assert all(np.array_equal(a, b) for a, b in zip(deltas, copies, strict=True))


# ---------------------------------------------------------------- registry and descriptions


def test_registry_and_descriptions_round_trip():
    assert set(S.STRATEGIES) == {"fedavg", "median", "trimmed-mean", "krum", "multi-krum"}
    for name, s in S.STRATEGIES.items():
        assert S.get(name) is s and s.name == name
        assert S.from_description(s.describe()) == s
        title = s.paper.split(", ", 1)[1]
        assert title in " ".join(sys.modules[type(s).__module__].__doc__.split())  # cited in the module docstring
    for s in (
        S.create("trimmed-mean", trim=2),
        S.create("trimmed-mean", trim_fraction=0.25),
        WMEDIAN,
        S.create("krum", byzantine=None),
        S.create("multi-krum", byzantine=2, m=3),
    ):
        desc = s.describe()
        assert dagcbor.decode(dagcbor.encode(desc)) == desc  # can be stored in a merge commit
        assert S.from_description(desc) == s
    assert S.get("trimmed-mean").describe() == {"name": "trimmed-mean", "trim_fraction": 0.1, "min_trim": 1}
    assert S.get("multi-krum").describe() == {"name": "multi-krum", "byzantine": 1, "m": None}


def test_trim_fraction_is_exact_decimal():
    s = S.create("trimmed-mean", trim_fraction=0.29)
    assert s.trim_count(100) == 29  # float 0.29 * 100 would give 28.999999999999996
    fraction_only = S.create("trimmed-mean", min_trim=0)
    assert fraction_only.trim_count(10) == 1 and fraction_only.trim_count(9) == 0
    deltas = [np.array([v], dtype=np.int64) for v in range(10)]
    assert S.get("trimmed-mean").plan([1] * 10).record == {"trim": 1}
    assert as_list(S.get("trimmed-mean").aggregate(deltas, [1] * 10)) == [ref_round(Fraction(sum(range(1, 9)), 8))]


def test_krum_auto_byzantine():
    deltas = [np.array([v], dtype=np.int64) for v in (0, 1, 2, 3, 4, 5, 6, 100)]
    plan = S.create("krum", byzantine=None).plan([1] * 8, pairwise_sq_distances(deltas))
    assert plan.record["byzantine"] == 2


# ---------------------------------------------------------------- errors


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, FednodeError)
    return msg


A = np.zeros(3, dtype=np.int64)


@pytest.mark.parametrize(
    ("deltas", "weights", "message"),
    [
        ([], [], "empty list"),
        ([A, np.zeros(4, dtype=np.int64)], [1, 1], "shape"),
        ([A, np.zeros((3, 1), dtype=np.int64)], [1, 1], "shape"),
        ([A, np.zeros(3, dtype=np.float32)], [1, 1], "dtype"),
        ([A, np.zeros(3, dtype=np.uint32)], [1, 1], "dtype"),
        ([A, np.zeros(3, dtype=">i8")], [1, 1], "dtype"),
        ([A, [0, 0, 0]], [1, 1], "not a numpy array"),
        (A, [1], "list of numpy"),
        ([A, A], [1], "2 deltas"),
        ([A, A], [1, 1, 1], "2 deltas"),
        ([A, A], [1, -1], "negative"),
        ([A, A], [0, 0], "sum to zero"),
        ([A, A], [1, 1.5], "not an integer"),
        ([A, A], [True, 1], "not an integer"),
        ([A, A], [2**62, 2**62], "2\\*\\*63"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(deltas, weights, message):
    for name in S.STRATEGIES:
        with pytest.raises(ValueError, match=message) as exc:
            S.get(name).aggregate(deltas, weights)
        one_line(exc)


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=4, max_size=4), st.sampled_from(["i1", "i2", "i4"]))
def test_narrow_stored_deltas_give_the_int64_result(values, dtype):
    """Deltas as stored (int8/16/32) aggregate to the same bytes as their int64 widening, in every strategy."""
    info = np.iinfo(dtype)
    rows = [np.clip(np.array(values[i:] + values[:i], dtype=np.int64), info.min, info.max) for i in range(4)]
    rows.append(np.full(4, info.max, dtype=np.int64))  # extreme values: products overflow the narrow width
    weights = [3, 1, 2, 7, 5]
    for name in ("fedavg", "median", "trimmed-mean"):
        wide = S.get(name).aggregate(rows, weights)
        narrow = S.get(name).aggregate([r.astype(dtype) for r in rows], weights)
        assert narrow.dtype == np.int64 and narrow.tobytes() == wide.tobytes(), name


def test_bad_names_and_parameters():
    with pytest.raises(ValueError, match="valid: fedavg, median, trimmed-mean, krum, multi-krum") as exc:
        S.get("fedprox")
    one_line(exc)
    cases = [
        (lambda: S.create("fedavg", alpha=1), "takes parameters"),
        (lambda: S.create("trimmed-mean", trim_fraction=0.5), "trim_fraction"),
        (lambda: S.create("trimmed-mean", trim_fraction=float("nan")), "trim_fraction"),
        (lambda: S.create("trimmed-mean", trim=-1), "trim"),
        (lambda: S.create("krum", byzantine=-1), "byzantine"),
        (lambda: S.create("krum", m=2), "takes parameters"),
        (lambda: S.create("multi-krum", m=0), "m must be"),
        (lambda: S.create("median", weighted="yes"), "weighted"),
        (lambda: S.from_description({"byzantine": 1}), "name"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message) as exc:
            fn()
        one_line(exc)


def test_krum_plan_errors():
    deltas = [np.array([v], dtype=np.int64) for v in range(4)]
    krum = S.get("krum")
    for fn, message in [
        (lambda: krum.aggregate(deltas, [1] * 4), "at least 5 inputs, got 4"),
        (lambda: krum.plan([1] * 4), "distances of all tensors"),
        (lambda: krum.plan([1] * 5, pairwise_sq_distances(deltas)), "\\(5, 5\\)"),
        (lambda: krum.plan([1] * 2, np.array([[0, 1.5], [1.5, 0]])), "non-negative integers"),
        (lambda: krum.apply(deltas, S.Plan((1, 1))), "plan is for 2 inputs"),
        (lambda: S.Strategy.add_scans(np.zeros((2, 2)), np.zeros((3, 3))), "cannot add scans"),
        (lambda: S.create("multi-krum", m=9).aggregate(deltas + deltas, [1] * 8), "m=9"),
    ]:
        with pytest.raises(ValueError, match=message) as exc:
            fn()
        one_line(exc)


# ---------------------------------------------------------------- robust defaults (issue 11 item 4)


def test_default_trimmed_mean_trims_small_merges():
    s = S.get("trimmed-mean")
    assert [s.trim_count(n) for n in (3, 4, 5, 8, 19, 20, 30)] == [1, 1, 1, 1, 1, 2, 3]
    for n in (1, 2):
        with pytest.raises(ValueError, match="min_trim=1") as exc:
            s.trim_count(n)
        one_line(exc)
    poisoned = [np.array([v, -v], dtype=np.int64) for v in (10, 11, 12, 13)] + [np.array([10**15, -(10**15)])]
    assert as_list(s.aggregate(poisoned, [1] * 5)) == [12, -12]  # mean of 11, 12, 13: the outlier is gone
    fraction_only = S.create("trimmed-mean", min_trim=0)
    assert as_list(fraction_only.aggregate(poisoned, [1] * 5))[0] > 10**14  # what the old default gave
    with pytest.raises(ValueError, match="min_trim") as exc:
        S.create("trimmed-mean", min_trim=-1)
    one_line(exc)


def test_old_trimmed_mean_records_keep_their_rule():
    """A record written before min_trim existed meant the fraction alone; explicit counts are unchanged."""
    legacy = S.from_description({"name": "trimmed-mean", "trim_fraction": 0.1})
    assert legacy.describe() == {"name": "trimmed-mean", "trim_fraction": 0.1, "min_trim": 0}
    assert legacy.plan([1] * 5).record == {"trim": 0}
    assert S.from_description({"name": "trimmed-mean", "trim": 0}).plan([1] * 5).record == {"trim": 0}
    assert S.from_description(S.get("trimmed-mean").describe()).plan([1] * 5).record == {"trim": 1}


def test_median_refuses_fewer_than_three_inputs_by_default():
    deltas = [np.array([0], dtype=np.int64), np.array([10**15], dtype=np.int64)]
    with pytest.raises(ValueError, match="min_inputs=3") as exc:
        S.get("median").aggregate(deltas, [1, 1])  # the median of two is their mean: the outlier wins
    one_line(exc)
    three = [*deltas, np.array([2], dtype=np.int64)]
    assert as_list(S.get("median").aggregate(three, [1, 1, 1])) == [2]
    legacy = S.from_description({"name": "median", "weighted": False})  # recorded before min_inputs
    assert legacy.describe()["min_inputs"] == 1 and as_list(legacy.aggregate(deltas, [1, 1])) == [5 * 10**14]
    assert S.get("median").describe() == {"name": "median", "weighted": False, "min_inputs": 3}


def test_krum_auto_byzantine_tolerates_at_least_one():
    deltas = [np.array([v], dtype=np.int64) for v in (0, 1, 2, 10**12)]
    scan = pairwise_sq_distances(deltas)
    for name in ("krum", "multi-krum"):
        with pytest.raises(ValueError, match="min_byzantine=1") as exc:
            S.create(name, byzantine=None).plan([1] * 4, scan)
        one_line(exc)
    legacy = S.from_description({"name": "multi-krum", "byzantine": None, "m": None})  # before min_byzantine
    record = legacy.plan([1] * 4, scan).record
    assert record["byzantine"] == 0 and sorted(record["selected"]) == [0, 1, 2, 3]  # all kept: a plain mean
    five = [*deltas, np.array([3], dtype=np.int64)]
    plan = S.create("multi-krum", byzantine=None).plan([1] * 5, pairwise_sq_distances(five))
    assert plan.record["byzantine"] == 1 and 3 not in plan.record["selected"]
    assert S.get("krum").describe() == {"name": "krum", "byzantine": 1}  # a fixed count records no floor
