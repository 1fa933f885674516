"""Issue 11 item 2: each float tensor is merged on a grid that suits its magnitude (rule 2, recorded),
merges stay exact and re-verifiable, and merges recorded before grids were (rule 1) still verify."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import fixed_identity

from fednode.errors import FednodeError
from fednode.history import History
from fednode.storage.store import Store
from fednode.tensors import fixedpoint, native
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging
from fednode.workflows.verify import verify

MAGNITUDES = (1e-8, 1e-5, 1e-2, 1.0, 1e3)
WEIGHTS = (120, 77, 301)  # samples per hospital
REL = 2.0**-20


def _name(mag: float) -> str:
    return f"t{mag:.0e}"


def _base_arrays(rng: np.random.Generator, n: int = 5000) -> dict[str, tuple[str, np.ndarray]]:
    arrays = {}
    for mag in MAGNITUDES:
        x = mag * rng.uniform(0.5, 2.0, n) * rng.choice([-1.0, 1.0], n)
        arrays[_name(mag)] = ("F32", x.astype(np.float32).reshape(50, n // 50))
    arrays["bias_zero"] = ("F32", np.zeros(16, dtype=np.float32))
    arrays["steps"] = ("I64", np.arange(4, dtype=np.int64))
    return arrays


@pytest.fixture
def repo3(tmp_path: Path):
    """A repository at every magnitude and three hospitals that each trained once (declared samples)."""
    store = Store(tmp_path / "store")
    history = History(store, fixed_identity())
    rng = np.random.default_rng(11)
    base = _base_arrays(rng)
    repo, _ = history.create_repo("grid", ArraySource(base))
    for i, samples in enumerate(WEIGHTS):
        branch = f"h{i}"
        history.create_branch(repo, branch, repo.genesis)
        new = {}
        for name, (dtype, arr) in base.items():
            if dtype == "F32" and name != "bias_zero":
                arr = (arr * (1 + rng.normal(0, 1e-2, arr.shape))).astype(np.float32)
            elif name == "bias_zero":
                arr = rng.normal(0, 1e-6, arr.shape).astype(np.float32)
            new[name] = (dtype, arr)
        history.commit(repo, ArraySource(new), f"train {branch}", branch=branch,
                       info={"training": {"samples": samples}})
    yield history, repo
    store.close()


def _float64_mean(history: History, inputs, weights, name: str) -> np.ndarray:
    states = [history.tensor_array(c, name).astype(np.float64) for c in inputs]
    return sum(w * s for w, s in zip(weights, states, strict=True)) / sum(weights)


def test_fedavg_is_within_2e20_relative_at_every_magnitude_and_verifies(repo3) -> None:
    history, repo = repo3
    outcome = merging.merge(history, repo, ["h0", "h1", "h2"], into="main")
    assert sorted(outcome.weights) == sorted(WEIGHTS)
    record = outcome.result.commit.info["merge"]
    assert record["grid_rule"] == merging.GRID_RULE == 2
    assert set(record["grid"]) == {*(_name(m) for m in MAGNITUDES), "bias_zero"}  # float tensors only
    bits = [record["grid"][_name(m)] for m in MAGNITUDES]
    assert bits == sorted(bits, reverse=True) and bits[0] > 60 and bits[-1] < 40  # finer for smaller values
    merged = history.state(outcome.result.cid)
    for mag in MAGNITUDES:
        name = _name(mag)
        expected = _float64_mean(history, outcome.inputs, outcome.weights, name)
        got = merged[name][1].astype(np.float64)
        rel = np.max(np.abs(got - expected) / np.abs(expected))
        assert rel <= REL, (name, rel)
    # an all-zero base tensor gets the fixed fine grid: tiny updates survive
    assert record["grid"]["bias_zero"] == fixedpoint.ZERO_BASE_BITS
    expected = _float64_mean(history, outcome.inputs, outcome.weights, "bias_zero")
    assert np.max(np.abs(merged["bias_zero"][1] - expected)) <= 2.0**-20 * np.max(np.abs(expected))
    assert np.array_equal(merged["steps"][1], np.arange(4))
    assert verify(history, repo, outcome.result.cid).problems == []


def test_recompute_without_the_kernel_gives_the_same_bytes(repo3, monkeypatch) -> None:
    history, repo = repo3
    outcome = merging.merge(history, repo, ["h0", "h1", "h2"], into="main")
    assert outcome.result.commit.info["merge"]["grid"][_name(1e-8)] > 60  # rule 2, recorded
    monkeypatch.setattr(native, "kernels", lambda: None)
    generic = merging.recompute(history, repo, outcome.result.commit)
    stored = history.state(outcome.result.cid)
    for name, (_, arr) in generic.items():
        assert np.ascontiguousarray(arr).reshape(-1).tobytes() == stored[name][1].tobytes(), name
    assert merging.check_merge(history, repo, outcome.result.cid) == []


def test_equal_weights_and_robust_strategies_use_the_grid_too(repo3) -> None:
    history, repo = repo3
    outcome = merging.merge(history, repo, ["h0", "h1", "h2"], into="main", strategy_name="median",
                            weighting="equal")
    record = outcome.result.commit.info["merge"]
    assert record["grid"][_name(1e-8)] > 60
    merged = history.state(outcome.result.cid)
    states = np.stack([history.tensor_array(c, _name(1e-8)).astype(np.float64) for c in outcome.inputs])
    median = np.median(states, axis=0)
    assert np.max(np.abs(merged[_name(1e-8)][1] - median) / np.abs(median)) <= REL
    assert verify(history, repo, outcome.result.cid).problems == []


def _old_style_merge(history: History, repo, branches: list[str]):
    """A merge exactly as the previous version recorded it: repository grid, no grid in the record."""
    heads = [history.branch_head(repo, b) for b in branches]
    base = history.merge_base(heads)
    inputs = tuple(sorted(heads, key=str))
    weights = (1,) * len(inputs)
    strategy = merging.strategies.create("fedavg")
    merged, plan = merging.compute_merge(history, repo, base, inputs, weights, strategy)  # grid=None: rule 1
    record = {"strategy": strategy.describe(), "base": base, "inputs": list(inputs), "weights": list(weights),
              "weighting": "equal", "plan": plan.record, "samples": 0}
    result = history.commit(repo, ArraySource(merged), "old merge", branch=branches[0], kind="merge",
                            extra_parents=tuple(h for h in inputs if h != heads[0]), info={"merge": record},
                            expected_head=heads[0], exact=True)
    return result, merged


def test_an_old_style_merge_on_the_repository_grid_still_verifies(repo3) -> None:
    history, repo = repo3
    result, merged = _old_style_merge(history, repo, ["h0", "h1", "h2"])
    assert "grid" not in result.commit.info["merge"]
    tiny = merged[_name(1e-8)][1].astype(np.float64)
    base = history.tensor_array(repo.genesis, _name(1e-8)).astype(np.float64)
    assert np.max(np.abs(tiny.reshape(-1) - base)) <= 2.0**-25  # rule 1 loses 1e-8 updates (why rule 2)
    assert verify(history, repo, result.cid).problems == []


def test_a_forged_grid_is_detected(repo3) -> None:
    history, repo = repo3
    outcome = merging.merge(history, repo, ["h0", "h1", "h2"], into="main")
    record = dict(outcome.result.commit.info["merge"])
    state = history.state(outcome.result.cid)
    src = ArraySource({n: (e.dtype, a.reshape(e.shape)) for n, (e, a) in state.items()})
    cases = [
        ({**record, "grid": {**record["grid"], _name(1.0): record["grid"][_name(1.0)] - 20}},
         "does not match the recomputed merge"),
        ({**record, "grid": {k: v for k, v in record["grid"].items() if k != _name(1.0)}}, "no grid for"),
        ({**record, "grid": {**record["grid"], _name(1.0): 5000}}, "not an integer in"),
        ({**record, "grid_rule": 9}, "grid rule 9"),
    ]
    for i, (forged, message) in enumerate(cases):
        history.create_branch(repo, f"forged{i}", history.branch_head(repo, "h0"))
        bad = history.commit(repo, src, "forged", branch=f"forged{i}", kind="merge",
                             extra_parents=tuple(c for c in record["inputs"]
                                                 if c != history.branch_head(repo, "h0")),
                             info={"merge": forged})
        problems = merging.check_merge(history, repo, bad.cid)
        assert problems and message in problems[0], (message, problems)


def test_a_change_too_large_for_the_base_grid_widens_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    try:
        history = History(store, fixed_identity())
        repo, _ = history.create_repo("wide", ArraySource({"w": ("F32", np.full(64, 1e-8, np.float32))}))
        for i, value in enumerate((1e-8, 3e4)):  # 3e4 is ~2**51 times the base: no 2**62 steps on its grid
            history.create_branch(repo, f"b{i}", repo.genesis)
            history.commit(repo, ArraySource({"w": ("F32", np.full(64, value * (1 + i), np.float32))}), "u",
                           branch=f"b{i}", info={"training": {"samples": 10}})
        outcome = merging.merge(history, repo, ["b0", "b1"], into="main")
        assert outcome.result.commit.info["merge"]["grid"]["w"] == merging.grid_bits(6e4, 24)
        got = history.state(outcome.result.cid)["w"][1].astype(np.float64)
        expected = (np.float64(np.float32(1e-8)) + np.float64(np.float32(6e4))) / 2
        assert np.max(np.abs(got - expected) / expected) <= REL
        assert verify(history, repo, outcome.result.cid).problems == []
    finally:
        store.close()


def test_a_tensor_mixing_tiny_and_large_values_keeps_absolute_precision(tmp_path: Path) -> None:
    """The documented limit of a per-tensor grid: absolute error <= max|x| * 2**-40 per element."""
    store = Store(tmp_path / "store")
    try:
        history = History(store, fixed_identity())
        base = np.array([1e-8, 2e-8, 1e3, -1e3], dtype=np.float32)
        repo, _ = history.create_repo("mixed", ArraySource({"w": ("F32", base)}))
        for i in range(2):
            history.create_branch(repo, f"b{i}", repo.genesis)
            history.commit(repo, ArraySource({"w": ("F32", (base * (1 + 0.01 * (i + 1))).astype(np.float32))}),
                           "u", branch=f"b{i}", info={"training": {"samples": 5}})
        outcome = merging.merge(history, repo, ["b0", "b1"], into="main")
        assert outcome.result.commit.info["merge"]["grid"] == {"w": merging.grid_bits(1e3, 24)}  # the largest rules
        got = history.state(outcome.result.cid)["w"][1].astype(np.float64)
        expected = _float64_mean(history, outcome.inputs, outcome.weights, "w")
        assert np.max(np.abs(got - expected)) <= 1e3 * 2.0**-39
        assert np.max(np.abs(got[2:] - expected[2:]) / np.abs(expected[2:])) <= REL
        assert verify(history, repo, outcome.result.cid).problems == []
    finally:
        store.close()


def test_grid_rule_values() -> None:
    assert merging.grid_bits(1.0, 24) == 39  # 1.0 < 2**1
    assert merging.grid_bits(0.75, 24) == 40
    assert merging.grid_bits(1e3, 24) == 30
    assert merging.grid_bits(0.0, 24) == 24  # all zero: the repository grid
    assert merging.grid_bits(1e-300, 24) == merging.GRID_LIMIT
    with pytest.raises(FednodeError, match="grid rule 3"):
        merging.recorded_grid({"grid_rule": 3, "grid": {}})
    assert merging.recorded_grid({"strategy": {"name": "fedavg"}}) is None  # rule 1


def test_fused_kernel_keeps_signed_zeros_and_ties_like_the_three_steps(monkeypatch) -> None:
    """The fused kernel's double accumulation must give the integer path's bytes, -0.0 bases included."""
    from fednode.strategies import exact
    from fednode.tensors import fixedpoint

    rng = np.random.default_rng(3)
    size = 3 * native.BLOCK + 5
    base = rng.standard_normal(size).astype(np.float32)
    base[:64] = -0.0
    states = [base.copy() for _ in range(3)]
    states[0][:64] = -np.float32(2.0**-30)  # rounds to -0 grid steps at 2**-24
    states[1][64:96] = base[64:96] + np.float32(2.0**-25)  # exact half steps: ties
    states[2][96:] = base[96:] + rng.normal(0, 1e-3, size - 96).astype(np.float32)
    for weights in ([1, 0, 0], [1, 1, 1], [2, 1, 1], [3, 5, 500]):
        for bits in (24, 37):
            kept = [s for s, w in zip(states, weights, strict=True) if w]
            ws = [w for w in weights if w]
            fused = exact.weighted_mean_f32_states(base, kept, ws, bits)
            with monkeypatch.context() as m:
                m.setattr(native, "kernels", lambda: None)
                deltas = [fixedpoint.encode_delta(base, s, "F32", bits) for s in kept]
                expected = fixedpoint.apply_delta(base, exact.weighted_mean(deltas, ws), "F32", bits)
            assert native.kernels() is not None and fused is not None
            assert fused.tobytes() == expected.tobytes(), (weights, bits)
