"""Issue 11 item 3: ``--weights samples`` counts every training sample once.

Three hospitals and the owner's own branch, three rounds; hospital 3 skips round 2, so in round 3
its branch does not contain the previous merges and the merge base moves back. Each merge's weights
must be the samples trained since the base on each input, never a merge's accumulated total, and no
sample may be counted in two rounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import fixed_identity, write_model

from fednode.errors import FednodeError
from fednode.history import History
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging
from fednode.workflows.verify import verify

SAMPLES = {  # (round, branch) -> samples trained that round
    (1, "main"): 50, (1, "h1"): 100, (1, "h2"): 200, (1, "h3"): 300,
    (2, "main"): 60, (2, "h1"): 110, (2, "h2"): 210,  # h3 skips round 2
    (3, "main"): 70, (3, "h1"): 120, (3, "h2"): 220, (3, "h3"): 330,
}


def _arrays(seed: int) -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {"w": ("F32", rng.standard_normal((8, 4)).astype(np.float32)),
            "b": ("F32", rng.standard_normal(4).astype(np.float32))}


@pytest.fixture
def history(tmp_path: Path):
    store = Store(tmp_path / "store")
    try:
        yield History(store, fixed_identity())
    finally:
        store.close()


def _train(history: History, repo, branch: str, samples: int, seed: int, declared: bool = False):
    """A training step on ``branch``: recorded like ``train`` does, or declared like ``commit --samples``."""
    head = history.tensor_array(history.branch_head(repo, branch), "w")
    rng = np.random.default_rng(seed)
    arrays = {"w": ("F32", (head + rng.normal(0, 1e-2, head.shape)).astype(np.float32).reshape(8, 4)),
              "b": ("F32", rng.standard_normal(4).astype(np.float32))}
    info = {"samples": samples} if declared else {"training": {"samples": samples, "epochs": 1}}
    return history.commit(repo, ArraySource(arrays), f"train {branch}", branch=branch, info=info).cid


@pytest.mark.parametrize("declare_h2", [False, True], ids=["train", "h2-declares"])
def test_three_rounds_count_each_sample_once(history: History, declare_h2: bool) -> None:
    repo, _ = history.create_repo("fed", ArraySource(_arrays(0)))
    for h in ("h1", "h2", "h3"):
        history.create_branch(repo, h, repo.genesis)
    trained_total = 0
    recorded_total = 0
    for rnd in (1, 2, 3):
        expected = {}
        if rnd > 1:  # h1, h2 start from the previous merge; h3 never pulls
            for branch in ("h1", "h2"):
                assert merging.merge(history, repo, ["main"], into=branch).fast_forward is not None
        for branch in ("main", "h1", "h2", "h3"):
            if (rnd, branch) not in SAMPLES:
                continue  # h3 skips round 2: its branch keeps its round 1 commit
            samples = SAMPLES[(rnd, branch)]
            cid = _train(history, repo, branch, samples, seed=rnd * 10 + len(expected),
                         declared=declare_h2 and branch == "h2")
            expected[cid] = samples
            trained_total += samples
        outcome = merging.merge(history, repo, ["h1", "h2", "h3"], into="main")
        got = dict(zip(outcome.inputs, outcome.weights, strict=True))
        assert got == expected, (rnd, got, expected)  # the owner's branch is one of the inputs
        record = outcome.result.commit.info["merge"]
        assert record["weights"] == [expected[c] for c in record["inputs"]]
        assert record["samples"] == sum(expected.values())
        recorded_total += record["samples"]
        if rnd == 3:  # h3 did not contain the round 1 merge: the base moved back to its round 1 commit
            assert outcome.base == history.load_commit(history.branch_head(repo, "h3")).parents[0]
            assert len(outcome.inputs) == 4
    assert recorded_total == trained_total == sum(SAMPLES.values())  # no sample counted twice across rounds
    assert verify(history, repo, history.branch_head(repo, "main")).problems == []


def test_a_merge_total_is_never_added_on_top_of_its_inputs(history: History) -> None:
    """A hospital that merged a peer itself: the peer merge's samples are its inputs', once each."""
    repo, _ = history.create_repo("fed", ArraySource(_arrays(1)))
    for h in ("h1", "h2", "h3"):
        history.create_branch(repo, h, repo.genesis)
    c1 = _train(history, repo, "h1", 40, 1)
    c2 = _train(history, repo, "h2", 25, 2)
    c3 = _train(history, repo, "h3", 7, 3)
    peer = merging.merge(history, repo, ["h2"], into="h1")  # h1 = merge(c1, c2), records samples 65
    assert peer.result.commit.info["merge"]["samples"] == 65
    outcome = merging.merge(history, repo, ["h1", "h3"], into="main")
    got = dict(zip(outcome.inputs, outcome.weights, strict=True))
    assert got == {peer.result.cid: 65, c3: 7}, got  # not 65 + 65
    assert c1 != c2


def test_input_without_samples_is_refused_and_nothing_is_stored(history: History) -> None:
    repo, _ = history.create_repo("fed", ArraySource(_arrays(2)))
    for h in ("h1", "h2"):
        history.create_branch(repo, h, repo.genesis)
    _train(history, repo, "h1", 30, 1)
    history.commit(repo, ArraySource(_arrays(9)), "hand-made update", branch="h2")  # declares nothing
    head = history.branch_head(repo, "main")
    with pytest.raises(FednodeError, match=r"input h2 \(.*\) declares no training samples since the merge base") as exc:
        merging.merge(history, repo, ["h1", "h2"], into="main")
    message = str(exc.value)
    assert "\n" not in message and "--weights equal" in message and "commit --samples" in message
    assert history.branch_head(repo, "main") == head
    outcome = merging.merge(history, repo, ["h1", "h2"], into="main", weighting="equal")
    assert outcome.weights == (1, 1)


def test_cli_commit_samples_declares_them_and_rejects_bad_values(cli, tmp_path: Path) -> None:
    genesis = write_model(tmp_path / "g.safetensors", _arrays(3))
    cli("repo", "create", "fed", "--from", genesis)
    for i, branch in enumerate(("h1", "h2")):
        cli("branch", branch, "main")
        update = write_model(tmp_path / f"{branch}.safetensors", _arrays(10 + i))
        shown = json.loads(cli("commit", "--from", update, "-m", "local", "-b", branch, "--samples", 40 + i,
                               "--json").output)
        assert shown["info"]["samples"] == 40 + i
    before = json.loads(cli("log", "fed", "h1", "--json").output)
    update = write_model(tmp_path / "bad.safetensors", _arrays(20))
    for bad in ("0", "-3", "abc", "2.5"):
        res = cli("commit", "--from", update, "-m", "x", "-b", "h1", "--samples", bad, ok=False)
        assert res.exit_code != 0
        text = res.stderr.strip()
        assert "--samples must be a positive integer" in text and len(text.splitlines()) == 1, text
    assert json.loads(cli("log", "fed", "h1", "--json").output) == before  # nothing stored
    merged = json.loads(cli("merge", "h1", "h2", "--weights", "samples", "--json").output)
    record = merged["info"]["merge"]
    assert sorted(record["weights"]) == [40, 41] and record["samples"] == 81
