"""Issue 11 item 4: robust strategies are robust by default, and review flags an outsized update
without any merge history. Real LMDB stores, real merges, real verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import model_arrays, perturb, write_model

from fednode import strategies
from fednode.errors import FednodeError
from fednode.history import History
from fednode.identity import Identity
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging
from fednode.workflows.review import review
from fednode.workflows.verify import verify

FLOATS = ("layer1.weight", "layer1.bias", "layer2.weight")
ATTACKS = {"scale100": lambda d: 100.0 * d, "offset50": lambda d: d + 50.0}


@pytest.fixture
def repo(tmp_path: Path):
    store = Store(tmp_path / "store")
    history = History(store, Identity.generate())
    info, _ = history.create_repo("m", ArraySource(model_arrays(0)))
    yield history, info
    store.close()


def contributors(history: History, info, n: int, attack: str | None) -> tuple[list[str], dict[str, np.ndarray]]:
    """``n`` branches from genesis with honest small updates; the last one poisoned by ``attack``.
    Returns the branch names and each float tensor's honest deltas stacked (inputs x values)."""
    base = model_arrays(0)
    names, honest = [], {t: [] for t in FLOATS}
    for i in range(n):
        arrays = perturb(base, seed=100 + i)
        poisoned = attack is not None and i == n - 1
        for t in FLOATS:
            delta = arrays[t][1].astype(np.float64) - base[t][1].astype(np.float64)
            if poisoned:
                arrays[t] = ("F32", (base[t][1] + ATTACKS[attack](delta)).astype(np.float32))
            else:
                honest[t].append(delta.reshape(-1))
        name = f"p{i}" if poisoned else f"h{i}"
        history.create_branch(info, name, info.genesis)
        history.commit(info, ArraySource(arrays), name, branch=name)
        names.append(name)
    return names, {t: np.stack(v) for t, v in honest.items()}


def merged_deltas(history: History, cid, genesis) -> dict[str, np.ndarray]:
    after, before = history.state(cid), history.state(genesis)
    return {t: after[t][1].astype(np.float64) - before[t][1].astype(np.float64) for t in FLOATS}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("n", [3, 5, 8])
def test_default_trimmed_mean_stays_within_the_honest_range(repo, n: int, attack: str) -> None:
    """Bound: with one poisoned input and the default trim of 1 per side, every merged coordinate
    lies within the honest inputs' [min, max] for that coordinate (so within their spread of the
    honest mean). The old default (trim_fraction=0.1 alone: nothing trimmed below 10 inputs) is a
    plain mean, pulled off by the poisoned input by (poison - honest) / n."""
    history, info = repo
    names, honest = contributors(history, info, n, attack)
    new = merging.merge(history, info, names, strategy_name="trimmed-mean", weighting="equal")
    record = new.result.commit.info["merge"]
    assert record["strategy"] == {"name": "trimmed-mean", "trim_fraction": 0.1, "min_trim": 1}
    assert record["plan"] == {"trim": 1}
    got = merged_deltas(history, new.result.cid, info.genesis)
    tol = 2.0**-20  # merged values are stored as float32 near 1: a few ulps
    for t in FLOATS:
        lo, hi = honest[t].min(axis=0), honest[t].max(axis=0)
        assert np.all(got[t].reshape(-1) >= lo - tol) and np.all(got[t].reshape(-1) <= hi + tol), t
        assert np.abs(got[t].reshape(-1) - honest[t].mean(axis=0)).max() <= 0.05  # honest spread: eps 0.01
    assert verify(history, info, new.result.cid).problems == []

    history.create_branch(info, "old", info.genesis)
    old = merging.merge(history, info, names, into="old", strategy_name="trimmed-mean",
                        params={"min_trim": 0}, weighting="equal")
    assert old.result.commit.info["merge"]["plan"] == {"trim": 0}
    off = merged_deltas(history, old.result.cid, info.genesis)
    assert max(np.abs(off[t].reshape(-1) - honest[t].mean(axis=0)).max() for t in FLOATS) > 0.2
    assert verify(history, info, old.result.cid).problems == []


def test_too_few_inputs_are_refused_naming_the_parameter(repo) -> None:
    history, info = repo
    names, _ = contributors(history, info, 4, None)
    head = history.branch_head(info, "main")
    with pytest.raises(FednodeError, match="min_trim=1 .* at least 3 inputs, got 2") as exc:
        merging.merge(history, info, names[:2], strategy_name="trimmed-mean", weighting="equal")
    assert "\n" not in str(exc.value)
    with pytest.raises(FednodeError, match="median needs min_inputs=3 inputs .* got 2"):
        merging.merge(history, info, names[:2], strategy_name="median", weighting="equal")
    for strategy in ("krum", "multi-krum"):  # byzantine=1 needs 5 inputs: refused with the way out
        with pytest.raises(FednodeError, match="byzantine=1 needs at least 5 inputs, got 4 .*byzantine=0"):
            merging.merge(history, info, names, strategy_name=strategy, weighting="equal")
    for strategy in ("krum", "multi-krum"):  # "the most tolerated" is none on 4: multi-krum would keep all 4
        with pytest.raises(FednodeError, match="byzantine=None tolerates 0 .* min_byzantine=1"):
            merging.merge(history, info, names, strategy_name=strategy, params={"byzantine": None},
                          weighting="equal")
    assert history.branch_head(info, "main") == head  # nothing stored


def test_verify_uses_the_recorded_parameters(repo) -> None:
    """A merge recorded before min_trim existed ({"trim_fraction": 0.1}: no trim on 5 inputs) still
    verifies; a record whose parameters do not produce the stored state fails."""
    history, info = repo
    names, _ = contributors(history, info, 5, "scale100")
    heads = [history.branch_head(info, b) for b in names]
    inputs = tuple(sorted(heads, key=str))
    legacy = strategies.from_description({"name": "trimmed-mean", "trim_fraction": 0.1})
    assert legacy.describe()["min_trim"] == 0

    def commit_merge(branch: str, strategy, recorded: dict):
        history.create_branch(info, branch, info.genesis)
        merged, plan = merging.compute_merge(history, info, info.genesis, inputs, (1,) * 5, strategy)
        record = {"strategy": recorded, "base": info.genesis, "inputs": list(inputs), "weights": [1] * 5,
                  "weighting": "equal", "plan": plan.record, "samples": 0}
        return history.commit(info, ArraySource(merged), "merge", branch=branch, kind="merge",
                              extra_parents=tuple(inputs), info={"merge": record}, exact=True).cid

    ok = commit_merge("legacy", legacy, {"name": "trimmed-mean", "trim_fraction": 0.1})
    assert verify(history, info, ok).problems == []
    forged = commit_merge("forged", strategies.get("trimmed-mean"),
                          {"name": "trimmed-mean", "trim_fraction": 0.1, "min_trim": 0})
    assert verify(history, info, forged).problems != []


@pytest.mark.parametrize("n", [3, 5, 8])
def test_review_flags_the_poisoned_update_without_merge_history(repo, n: int) -> None:
    history, info = repo
    names, _ = contributors(history, info, n, "scale100")
    main = history.branch_head(info, "main")
    for name in names:
        result = review(history, info, history.branch_head(info, name), main)
        assert result.peers == n - 1 and result.history_median_l2 is None
        flagged = any("other open update" in f for f in result.flags)
        assert flagged == name.startswith("p"), (name, result.flags)


def test_review_compares_with_proposals_and_the_base_norm(repo) -> None:
    history, info = repo
    base = model_arrays(0)
    main = history.branch_head(info, "main")
    history.create_branch(info, "big", main)
    huge = {k: (d, a + 50.0 if d == "F32" else a) for k, (d, a) in base.items()}
    big = history.commit(info, ArraySource(huge), "big", branch="big").cid
    alone = review(history, info, big, main)  # no peers, no history: only the base's norm to go by
    assert alone.peers == 0 and any("base model's norm" in f for f in alone.flags)
    history.delete_branch(info, "big")
    with history.store.write() as txn:  # the daemon records a peer's proposal like this
        txn.set_ref(info.repo_id, "proposals/peerA/main", bytes(big))
    history.create_branch(info, "h", main)
    honest = history.commit(info, ArraySource(perturb(base, seed=7)), "honest", branch="h").cid
    result = review(history, info, honest, main)
    assert result.peers == 1 and result.flags == []  # compared with the proposal, and not flagged
    into_h = review(history, info, big, honest)  # the target moved past the base: its own update is a peer
    assert into_h.peers == 1 and any("other open update" in f for f in into_h.flags)


def test_cli_merge_and_review_defaults(cli, tmp_path: Path) -> None:
    base = model_arrays(0)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "g.safetensors", base))
    for i, name in enumerate(["h0", "h1", "h2", "h3", "p4"]):
        arrays = perturb(base, seed=100 + i)
        if name == "p4":
            arrays = {k: (d, base[k][1] + 100 * (a - base[k][1]) if d == "F32" else a) for k, (d, a) in arrays.items()}
        cli("branch", name, "main")
        cli("commit", "--from", write_model(tmp_path / f"{name}.safetensors", arrays), "-m", name, "-b", name)
    shown = json.loads(cli("review", "p4", "--json").output)
    assert any("other open update" in f for f in shown["flags"]) and shown["peers"] == 4
    assert "FLAG" in cli("review", "p4").output
    assert "no anomalies found" in cli("review", "h1").output
    bad = cli("merge", "h0", "h1", "--strategy", "trimmed-mean", "--weights", "equal", ok=False)
    assert bad.exit_code != 0 and "min_trim" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    merged = json.loads(cli("merge", "h0", "h1", "h2", "h3", "p4", "--strategy", "trimmed-mean",
                            "--weights", "equal", "--json").output)
    assert merged["info"]["merge"]["plan"] == {"trim": 1}
    assert "verify: 7 commits ok" in cli("verify", "main").output
    assert "min_trim" in cli("merge", "--help").output and "flags" in cli("review", "--help").output
