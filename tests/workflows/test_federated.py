"""Issue 3: local training, DP, update encodings, exact merges, verify and review, on real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fixed_identity, store_state
from safetensors.torch import load_file, save_file

from fednode.errors import FednodeError
from fednode.examples import cancer_torch
from fednode.examples.cancer_data import site_split
from fednode.examples.cancer_data import test_set as global_test_set
from fednode.history import History
from fednode.storage.store import Store
from fednode.strategies import fedavg
from fednode.tensors import native
from fednode.tensors.modelio import ArraySource, SafetensorsFile
from fednode.workflows import merging
from fednode.workflows.checkout import checkout
from fednode.workflows.committing import train
from fednode.workflows.review import review
from fednode.workflows.training import DPConfig
from fednode.workflows.verify import verify

EXAMPLES = Path(__file__).resolve().parents[2] / "fednode" / "examples"
TORCH_SCRIPT = EXAMPLES / "cancer_torch.py"
NUMPY_SCRIPT = EXAMPLES / "cancer_numpy.py"


@pytest.fixture
def site(monkeypatch):
    def set_site(n: int) -> None:
        monkeypatch.setenv("FEDNODE_SITE", str(n))

    set_site(1)
    return set_site


def genesis_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "genesis.safetensors"
    save_file({k: v.contiguous() for k, v in cancer_torch.model().state_dict().items()}, str(path))
    return path


@pytest.fixture
def cancer(tmp_path: Path):
    store = Store(tmp_path / "store")
    history = History(store, fixed_identity())
    source = SafetensorsFile(genesis_file(tmp_path))
    repo, _ = history.create_repo("cancer", source)
    source.close()
    yield history, repo
    store.close()


def accuracy(history: History, cid, tmp_path: Path) -> float:
    path = tmp_path / "eval.safetensors"
    checkout(history, cid, path)
    model = cancer_torch.model()
    model.load_state_dict(load_file(str(path)))
    x, y = global_test_set()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_five_rounds_of_fedavg_beat_every_local_model(cancer, site, tmp_path: Path) -> None:
    """3 hospitals, non-IID; 5 rounds of local training + exact FedAvg merges."""
    history, repo = cancer
    for s in (1, 2, 3):
        history.create_branch(repo, f"hospital-{s}", repo.genesis)
    for rnd in range(5):
        for s in (1, 2, 3):
            site(s)
            if rnd:
                outcome = merging.merge(history, repo, ["main"], into=f"hospital-{s}")
                assert outcome.fast_forward == history.branch_head(repo, "main")
            train(history, repo, TORCH_SCRIPT, f"hospital-{s}", epochs=5, seed=rnd, quiet=True)
        outcome = merging.merge(history, repo, ["hospital-1", "hospital-2", "hospital-3"], into="main")
        assert outcome.weights == tuple(
            history.load_commit(c).info["training"]["samples"] for c in outcome.inputs
        )
    merged = accuracy(history, history.branch_head(repo, "main"), tmp_path)
    local = []
    for s in (1, 2, 3):
        site(s)
        history.create_branch(repo, f"local-{s}", repo.genesis)
        train(history, repo, TORCH_SCRIPT, f"local-{s}", epochs=25, quiet=True)
        local.append(accuracy(history, history.branch_head(repo, f"local-{s}"), tmp_path))
    assert merged >= 0.93, merged
    assert all(merged > a for a in local), (merged, local)
    assert verify(history, repo, history.branch_head(repo, "main")).problems == []


def test_train_records_metrics_and_no_training_data(cancer, site) -> None:
    history, repo = cancer
    result, trained = train(history, repo, TORCH_SCRIPT, epochs=2, quiet=True)
    commit = result.commit
    assert set(commit.metrics) >= {"loss", "accuracy", "train_loss"}
    assert 0.0 <= commit.metrics["accuracy"] <= 1.0
    training = commit.info["training"]
    x, _, _, _ = site_split(1)
    assert training["samples"] == len(x) and training["epochs"] == 2 and training["duration_s"] > 0
    # no slice of the private training data appears in any stored block
    probe = x[:4].tobytes()
    with history.store.read() as txn:
        for cid in txn.iter_block_cids():
            assert probe not in txn.get_block(cid)


def test_framework_free_executable_trains_the_same_repository(cancer, site) -> None:
    history, repo = cancer
    result, trained = train(history, repo, NUMPY_SCRIPT, epochs=3, quiet=True)
    assert trained.framework == "executable"
    assert result.commit.info["training"]["framework"] == "executable"
    assert result.commit.info["training"]["samples"] == len(site_split(1)[0])
    assert "accuracy" in result.commit.metrics
    # the update really changed the weights
    assert any(e.encoding != "same" for e in history.load_manifest(result.commit.weights).tensors.values())


def test_failing_executable_stores_nothing(cancer, tmp_path: Path) -> None:
    history, repo = cancer
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\necho 'out of memory' >&2\nexit 3\n")
    bad.chmod(0o755)
    before = store_state(history.store)
    with pytest.raises(FednodeError, match="exit code 3: out of memory"):
        train(history, repo, bad, quiet=True)
    assert store_state(history.store) == before


def test_dp_sgd_records_spent_epsilon(cancer, site) -> None:
    history, repo = cancer
    result, trained = train(history, repo, TORCH_SCRIPT, epochs=2, dp=DPConfig(3.0), quiet=True)
    dp = result.commit.info["training"]["dp"]
    assert 0 < dp["epsilon"] <= 3.0 + 0.05
    assert dp["target_epsilon"] == 3.0 and dp["delta"] == 1e-5 and dp["max_grad_norm"] == 1.0


@pytest.mark.parametrize("encoding", ["fixed", "fp16", "int8", "topk"])
def test_update_encodings_round_trip_deterministically(cancer, tmp_path: Path, encoding: str) -> None:
    history, repo = cancer
    base = history.state(repo.genesis)
    rng = np.random.default_rng(0)
    new = {n: (e.dtype, (a + rng.normal(0, 0.01, a.size).astype(np.float32)).reshape(e.shape))
           for n, (e, a) in base.items()}
    result = history.commit(repo, ArraySource(new), encoding, encoding=encoding, topk_fraction=0.25)
    manifest = history.load_manifest(result.commit.weights)
    assert {e.encoding for e in manifest.tensors.values()} == {encoding}
    state = history.state(result.cid)
    for name, (entry, arr) in state.items():
        err = np.abs(arr.astype(np.float64) - new[name][1].reshape(-1))
        if encoding == "fixed":
            assert err.max() <= 2.0**-24
        elif encoding == "fp16":
            assert err.max() <= 1e-4
        elif encoding == "int8":
            assert err.max() <= np.abs(new[name][1] - base[name][1].reshape(entry.shape)).max() / 127
        else:
            assert manifest.tensors[name].k == int(np.ceil(entry.numel * 0.25))
            changed = (arr != base[name][1]).sum()
            assert changed <= manifest.tensors[name].k
    # two checkouts give identical bytes
    checkout(history, result.cid, tmp_path / "a.safetensors")
    checkout(history, result.cid, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert verify(history, repo, result.cid).problems == []


def test_zstd_compresses_sparse_updates(cancer) -> None:
    history, repo = cancer
    base = history.state(repo.genesis)
    new = {}
    for n, (e, a) in base.items():
        b = a.copy()
        b[:1] += 0.5  # one changed value per tensor: a very compressible delta
        new[n] = (e.dtype, b.reshape(e.shape))
    result = history.commit(repo, ArraySource(new), "sparse")
    entries = history.load_manifest(result.commit.weights).tensors.values()
    big = [e for e in entries if e.numel >= 64]
    assert big and all(e.compression == "zstd" and e.size < e.payload_size / 4 for e in big)
    state = history.state(result.cid)
    for n, (_, a) in state.items():
        assert a.tobytes() == new[n][1].reshape(-1).tobytes()


def _three_updates(history: History, repo, seed: int = 0, scale: float = 0.01) -> list[str]:
    base = history.state(repo.genesis)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(3):
        branch = f"u{i}"
        history.create_branch(repo, branch, repo.genesis)
        new = {n: (e.dtype, (a + rng.normal(0, scale, a.size).astype(np.float32)).reshape(e.shape))
               for n, (e, a) in base.items()}
        history.commit(repo, ArraySource(new), branch, branch=branch, info={"training": {"samples": 10 * (i + 1)}})
        names.append(branch)
    return names


def test_merge_is_exact_and_verify_recomputes_it(cancer) -> None:
    history, repo = cancer
    branches = _three_updates(history, repo)
    outcome = merging.merge(history, repo, branches)
    assert list(outcome.inputs) == sorted(outcome.inputs, key=str)
    assert outcome.weights == tuple(history.load_commit(c).info["training"]["samples"] for c in outcome.inputs)
    assert sorted(outcome.weights) == [10, 20, 30]
    base = history.state(repo.genesis)
    merged = history.state(outcome.result.cid)
    grid = outcome.result.commit.info["merge"]["grid"]  # each float tensor's recorded grid 2**-bits
    for name, (_, arr) in merged.items():
        deltas = [np.rint((history.tensor_array(c, name).astype(np.float64) - base[name][1]) * 2.0**grid[name])
                  for c in outcome.inputs]
        num = sum(int(w) * d.astype(np.int64).astype(object) for w, d in zip(outcome.weights, deltas, strict=True))
        den = sum(outcome.weights)
        expected_q = np.array([merging.strategies.round_div(v, den) for v in num], dtype=np.float64)  # half-even
        expected = (base[name][1].astype(np.float64) + expected_q * 2.0**-grid[name]).astype(np.float32)
        assert arr.tobytes() == expected.tobytes(), name
    record = outcome.result.commit.info["merge"]
    assert record["strategy"] == {"name": "fedavg"} and record["weighting"] == "samples"
    assert verify(history, repo, outcome.result.cid).problems == []


def test_fused_and_generic_merge_paths_agree(cancer, monkeypatch) -> None:
    """The merge takes FedAvg's fused float32 kernel; recomputing it with numpy only gives the same bytes."""
    history, repo = cancer
    calls = []
    real = fedavg.weighted_mean_f32_states
    monkeypatch.setattr(fedavg, "weighted_mean_f32_states", lambda *a: calls.append(1) or real(*a))
    outcome = merging.merge(history, repo, _three_updates(history, repo, seed=5))
    assert calls, "the merge did not take the fused path"
    fused = history.state(outcome.result.cid)
    monkeypatch.setattr(native, "kernels", lambda: None)
    generic = merging.recompute(history, repo, outcome.result.commit)
    as_bytes = {n: a.reshape(-1).tobytes() for n, (_, a) in generic.items()}
    assert {n: a.reshape(-1).tobytes() for n, (_, a) in fused.items()} == as_bytes
    assert verify(history, repo, outcome.result.cid).problems == []


def test_merge_is_bit_identical_across_nodes(tmp_path: Path) -> None:
    """Two independent stores (different authors, times) merge the same inputs to the same bytes."""
    from fednode.identity import Identity

    states = []
    genesis = genesis_file(tmp_path)
    for i in range(2):
        store = Store(tmp_path / f"node{i}")
        history = History(store, Identity.generate())
        repo, _ = history.create_repo("cancer", SafetensorsFile(genesis))
        branches = _three_updates(history, repo)
        outcome = merging.merge(history, repo, branches, strategy_name="trimmed-mean", params={"trim": 1})
        states.append({n: a.tobytes() for n, (_, a) in history.state(outcome.result.cid).items()})
        store.close()
    assert states[0] == states[1]


def test_verify_detects_a_forged_merge(cancer) -> None:
    history, repo = cancer
    branches = _three_updates(history, repo)
    outcome = merging.merge(history, repo, branches, into="u0", weighting="equal")
    record = outcome.result.commit.info["merge"]
    # a merge commit that claims FedAvg with these inputs but carries other weights' result
    forged = dict(record, weights=[1, 1, 5])
    state = history.state(outcome.result.cid)
    src = ArraySource({n: (e.dtype, a.reshape(e.shape)) for n, (e, a) in state.items()})
    bad = history.commit(repo, src, "forged", branch="u1", kind="merge",
                         extra_parents=tuple(c for c in outcome.inputs if c != history.branch_head(repo, "u1")),
                         info={"merge": forged})
    problems = verify(history, repo, bad.cid).problems
    assert problems and "does not match the recomputed merge" in problems[0]


def test_merge_refuses_nan_and_incompatible_inputs(cancer) -> None:
    history, repo = cancer
    base = history.state(repo.genesis)
    history.create_branch(repo, "nan", repo.genesis)
    bad = {n: (e.dtype, a.reshape(e.shape).copy()) for n, (e, a) in base.items()}
    bad["0.bias"][1][0] = np.nan
    history.commit(repo, ArraySource(bad), "nan", branch="nan")
    history.create_branch(repo, "ok", repo.genesis)
    good = {n: (e.dtype, (a + 0.01).reshape(e.shape)) for n, (e, a) in base.items()}
    history.commit(repo, ArraySource(good), "ok", branch="ok")
    before = store_state(history.store)
    with pytest.raises(FednodeError, match="NaN/Inf"):
        merging.merge(history, repo, ["nan", "ok"], weighting="equal")
    with pytest.raises(FednodeError, match="unknown aggregation strategy"):
        merging.merge(history, repo, ["ok"], strategy_name="mean-of-vibes")
    # both named, in the merge's input order (by CID: either way round)
    either = r"inputs (ok \(\w+\), nan|nan \(\w+\), ok) \(\w+\) declare no training samples"
    with pytest.raises(FednodeError, match=either):
        merging.merge(history, repo, ["ok", "nan"])
    history.create_branch(repo, "ok2", repo.genesis)
    history.commit(repo, ArraySource({n: (d, a * 2) for n, (d, a) in good.items()}), "ok2", branch="ok2")
    before = store_state(history.store)
    with pytest.raises(FednodeError, match="needs at least"):
        merging.merge(history, repo, ["ok", "ok2"], strategy_name="krum", weighting="equal")
    assert store_state(history.store) == before


def test_multi_krum_leaves_out_a_poisoned_update(cancer) -> None:
    history, repo = cancer
    base = history.state(repo.genesis)
    rng = np.random.default_rng(3)
    branches = []
    for i in range(6):
        history.create_branch(repo, f"c{i}", repo.genesis)
        scale = 5.0 if i == 4 else 0.01  # client 4 is poisoned
        new = {n: (e.dtype, (a + rng.normal(0, scale, a.size).astype(np.float32)).reshape(e.shape))
               for n, (e, a) in base.items()}
        history.commit(repo, ArraySource(new), f"c{i}", branch=f"c{i}")
        branches.append(f"c{i}")
    outcome = merging.merge(history, repo, branches, strategy_name="multi-krum", params={"byzantine": 1},
                            weighting="equal")
    poisoned = history.branch_head(repo, "c4")
    selected = outcome.result.commit.info["merge"]["plan"]["selected"]
    assert outcome.inputs.index(poisoned) not in selected
    assert verify(history, repo, outcome.result.cid).problems == []


def test_review_flags_outliers_and_nan(cancer, site) -> None:
    history, repo = cancer
    for i in range(4):  # a history of ordinary updates
        train(history, repo, TORCH_SCRIPT, epochs=1, seed=i, quiet=True)
    head = history.branch_head(repo, "main")
    base = history.state(head)
    history.create_branch(repo, "attack", head)
    boosted = {n: (e.dtype, (a * 50).reshape(e.shape)) for n, (e, a) in base.items()}
    history.commit(repo, ArraySource(boosted), "boosted", branch="attack")
    result = review(history, repo, history.branch_head(repo, "attack"), head, TORCH_SCRIPT)
    assert any("median update norm" in f for f in result.flags)
    assert set(result.before) >= {"loss", "accuracy"} and set(result.after) >= {"loss", "accuracy"}
    history.create_branch(repo, "nan", head)
    bad = {n: (e.dtype, a.reshape(e.shape).copy()) for n, (e, a) in base.items()}
    bad["2.bias"][1][0] = np.inf
    history.commit(repo, ArraySource(bad), "inf", branch="nan")
    result = review(history, repo, history.branch_head(repo, "nan"), head)
    assert any("NaN/Inf" in f for f in result.flags)


def test_cli_train_merge_review_show(cli, tmp_path: Path, site) -> None:
    cli("repo", "create", "cancer", "--from", genesis_file(tmp_path))
    for s in (1, 2):
        os.environ["FEDNODE_SITE"] = str(s)
        cli("branch", f"h{s}", "main")
        out = cli("train", "--script", TORCH_SCRIPT if s == 1 else NUMPY_SCRIPT, "-b", f"h{s}", "--epochs", "2",
                  "--quiet", "--encoding", "int8")
        assert "samples" in out.output
    shown = json.loads(cli("show", "h1", "--json").output)
    assert shown["compression_ratio"] > 1.0 and {t["encoding"] for t in shown["tensors"]} == {"int8"}
    rev = json.loads(cli("review", "h2", "--json").output)
    assert rev["update_l2"] > 0 and rev["flags"] == []
    merged = json.loads(cli("merge", "h1", "h2", "--json").output)
    assert merged["kind"] == "merge" and merged["info"]["merge"]["weighting"] == "samples"
    assert "verify: 4 commits ok" in cli("verify", "main").output
    res = cli("merge", "h1", "h2", "--strategy", "krum", ok=False)
    assert res.exit_code == 1 and "already up to date" in res.stderr
