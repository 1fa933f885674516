"""Repositories that require update proofs (issue 15 item 4; docs/zk.md "Repositories that require proofs").

Through the in-process CLI on a real store, with real keys (the session's n = 8 folder) and snarkjs
proofs: ``repo create --require-proof KEYDIR --norm-bound B`` fixes the policy in the genesis; every
update is committed on the policy's grid and proven; verify, show and merge check the proofs; what
cannot be proven (over the bound or the range, off the grid, no keys, another key, a lossy encoding,
commitments off) is refused in one line and nothing is stored; a commit forged without a proof is
reported by verify and refused by merge; train rounds its weights onto the grid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, home_state, write_model

from fednode.history import History
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource
from fednode.zk import policy as zpol
from fednode.zk import update_proof as up

STEP = 2.0**-14  # the policy's grid for B = 1 and 16-bit keys: 2^14 <= 2^15 - 1 < 2^15
W0 = np.array([[0.5, -0.25, 0.125], [1.0, 0.75, -0.5]], dtype=np.float32)
B0 = np.array([0.1, -0.2], dtype=np.float32)


def _model(path: Path, dw: float | np.ndarray = 0.0, db: float = 0.0, w0: np.ndarray = W0) -> Path:
    return write_model(path, {"w": ("F32", (w0 + np.asarray(dw, dtype=np.float64)).astype(np.float32)),
                              "b": ("F32", (B0 + np.float32(db)).astype(np.float32))})


@pytest.fixture
def proven_repo(cli, home: Path, tmp_path: Path, zk_policy_keys: Path) -> Path:
    """A public repository that requires proofs, L2 bound 1.0, keys in [zk] keys."""
    created = json.loads(cli("repo", "create", "r", "--from", _model(tmp_path / "m0.safetensors"), "--public",
                             "--require-proof", zk_policy_keys, "--norm-bound", "1.0", "--json").stdout)
    key_id = up.VerifyingKey.decode((zk_policy_keys / "update.vk").read_bytes()).key_id().hex()
    rkey_id = up.VerifyingKey.decode((zk_policy_keys / "remainder" / "update.vk").read_bytes()).key_id().hex()
    assert created["require_proof"] == {"key": key_id, "norm_bound": 1.0, "grid_bits": 14,
                                        "bound2": 1 << 28, "coordinate_bound": 2.0, "remainder_key": rkey_id}
    config = home / "config.toml"
    keys_line = f'commitments = true\nkeys = "{zk_policy_keys}"'
    config.write_text(config.read_text().replace("commitments = true", keys_line))
    return tmp_path


def _head(home: Path, branch: str = "main"):
    with open_node(home) as node:
        repo = node.history.repo("r")
        cid = node.history.branch_head(repo, branch)
        return repo, cid, node.history.load_commit(cid)


def test_updates_are_proven_and_checked(cli, home: Path, proven_repo: Path, zk_policy_keys: Path) -> None:
    text = cli("repo", "create", "t", "--from", _model(proven_repo / "t.safetensors"), "--require-proof",
               zk_policy_keys, "--norm-bound", "0.5").stdout
    assert "updates must be proven: key " in text and "L2 norm at most 0.5, each value within 1 (grid 2**-15)" in text
    cli("repo", "use", "r")
    cli("commit", "--from", _model(proven_repo / "m1.safetensors", dw=7 * STEP, db=-3 * STEP), "-m", "one")
    repo, cid, commit = _head(home)
    policy = zpol.policy_of(repo.settings)
    assert policy is not None and zpol.check_update(policy, commit) is None
    zk = commit.info["zk"]
    assert zk["grid"] == {"w": 14, "b": 14} and len(zk["proof"]) == up.PROOF_BYTES
    shown = json.loads(cli("show", "HEAD", "--json").stdout)
    assert shown["proof"] == f"valid (key {policy.key_id.hex()[:16]})"
    assert f"proof: valid (key {policy.key_id.hex()[:16]})" in cli("show", "HEAD").stdout
    assert "proof:" not in cli("show", "HEAD~1").stdout  # the genesis needs none
    cli("verify", "HEAD")
    # a merge of two proven updates (exempt from update proofs: checked by their relation and, the keys
    # folder holding remainder keys, by its remainder proof; tests/workflows/test_zk_merge_proof.py) verifies
    cli("branch", "dev", "HEAD~1")
    cli("switch", "dev")
    cli("commit", "--from", _model(proven_repo / "m2.safetensors", dw=-5 * STEP), "-m", "two")
    cli("switch", "main")
    cli("merge", "dev", "--weights", "equal")
    merge = _head(home)[2]
    # on the policy's grid, so the merge carries C(d) and C(r), checked against the proven inputs' commitments
    assert merge.kind == "merge" and merge.info["merge"]["grid"] == {"b": 14, "w": 14}
    assert set(merge.info["zk"]) >= {"commitment", "remainder", "proof"}
    assert zpol.check_update(policy, merge) is None and "\nproof:" not in cli("show", "HEAD").stdout
    cli("verify", "HEAD")
    # a revert to the genesis is an update from the merge: on the grid, proven like any other
    cli("revert", str(repo.genesis))
    revert = _head(home)[2]
    assert revert.kind == "revert" and zpol.check_update(policy, revert) is None
    cli("verify", "HEAD")


@pytest.mark.parametrize(("dw", "needle"), [
    (0.5, "the update's l2 norm 1.22474 exceeds the repository's bound 1"),
    ([[2.5, 0, 0], [0, 0, 0]], "tensor 'w' changes by 2.5, over the repository's per-coordinate bound 2"),
    (1e-7, "tensor 'w': its change is not on the repository's grid 2**-14"),
])
def test_what_cannot_be_proven_is_refused(cli, home: Path, proven_repo: Path, dw, needle: str) -> None:
    before = home_state(home)
    bad = cli("commit", "--from", _model(proven_repo / "bad.safetensors", dw=dw), "-m", "bad", ok=False)
    assert_one_line_error(bad.stderr, needle, "nothing was stored")
    assert home_state(home) == before


def test_keys_and_settings_that_cannot_prove(cli, home: Path, proven_repo: Path, zk_policy_keys: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(proven_repo / "m1.safetensors", dw=STEP)
    config = home / "config.toml"
    with_keys = config.read_text()
    config.write_text(with_keys.replace(f'keys = "{zk_policy_keys}"', ""))
    before = home_state(home)
    assert_one_line_error(cli("commit", "--from", model, "-m", "x", ok=False).stderr,
                          "no proving keys are set: pass --zk-keys dir")
    other = proven_repo / "other-keys"  # a valid verifying key of another set-up: two G2 points swapped
    shutil.copytree(zk_policy_keys, other)
    vk = up.VerifyingKey.decode((other / "update.vk").read_bytes())
    (other / "update.vk").write_bytes(up.VerifyingKey(**{**vk.__dict__, "a2": vk.k1a2, "k1a2": vk.a2}).encode())
    assert_one_line_error(cli("commit", "--from", model, "-m", "x", "--zk-keys", other, ok=False).stderr,
                          "are not the repository's")
    monkeypatch.setenv("FEDNODE_ZK_KEYS", str(other))
    assert_one_line_error(cli("commit", "--from", model, "-m", "x", ok=False).stderr, "are not the repository's")
    assert_one_line_error(cli("commit", "--from", model, "-m", "x", "--encoding", "fp16", "--zk-keys",
                              zk_policy_keys, ok=False).stderr, "a lossy encoding (fp16) cannot be proven")
    config.write_text(with_keys.replace("commitments = true", "commitments = false"))
    assert_one_line_error(cli("commit", "--from", model, "-m", "x", ok=False).stderr,
                          "[zk] commitments = false")
    assert home_state(home) == before
    config.write_text(with_keys)
    monkeypatch.setenv("FEDNODE_ZK_KEYS", str(zk_policy_keys))  # $FEDNODE_ZK_KEYS comes before [zk] keys
    cli("commit", "--from", model, "-m", "x")
    assert len(_head(home)[2].info["zk"]["proof"]) == up.PROOF_BYTES


def test_a_forged_update_is_reported_by_verify_and_refused_by_merge(cli, home: Path, proven_repo: Path) -> None:
    cli("commit", "--from", _model(proven_repo / "m1.safetensors", dw=STEP), "-m", "proven")
    repo, main, _ = _head(home)
    cli("branch", "dev", "HEAD~1")
    with open_node(home) as node:  # a plain History commits without the policy: no commitment, no proof
        forged = History(node.store, node.identity).commit(
            repo, ArraySource({"w": ("F32", W0 + np.float32(3 * STEP)), "b": ("F32", B0)}), "forged",
            branch="dev", info={"samples": 5})
    bad = cli("verify", "dev", ok=False)
    assert f"commit {forged.cid}: the repository requires update proofs: the commit carries no zk info" \
        in bad.stdout + bad.stderr
    before = home_state(home)
    refused = cli("merge", "dev", "--weights", "equal", ok=False)
    assert_one_line_error(refused.stderr, f"commit {str(forged.cid)[:16]}", "carries no zk info",
                          "nothing was merged")
    assert home_state(home) == before and _head(home)[1] == main
    cli("switch", "dev")  # a fast-forward brings the same commits in: refused too
    cli("branch", "ff", "HEAD~1")
    cli("switch", "ff")
    assert_one_line_error(cli("merge", "dev", ok=False).stderr, "carries no zk info", "nothing was merged")


def test_train_rounds_onto_the_grid(cli, home: Path, proven_repo: Path) -> None:
    script = proven_repo / "step.py"
    script.write_text("import sys\nfrom safetensors.numpy import load_file, save_file\n"
                      "t = load_file(sys.argv[1])\nt['w'] = t['w'] + 1.234567e-3\nsave_file(t, sys.argv[2])\n")
    cli("train", "--script", script, "--quiet")
    repo, cid, commit = _head(home)
    with open_node(home) as node:
        w = node.history.tensor_array(cid, "w").view(np.float32)
    steps = (w.astype(np.float64) - W0.reshape(-1)) / STEP
    assert np.array_equal(steps, np.rint(1.234567e-3 / STEP) * np.ones(6))  # exactly on the grid, rounded
    policy = zpol.policy_of(repo.settings)
    assert policy is not None and zpol.check_update(policy, commit) is None
    cli("verify", "HEAD")


def test_bad_create_input_is_one_line_and_creates_nothing(cli, home: Path, tmp_path: Path,
                                                          zk_policy_keys: Path) -> None:
    model = _model(tmp_path / "m.safetensors")
    big = write_model(tmp_path / "big.safetensors", {"w": ("F32", np.zeros(9, dtype=np.float32))})
    cases = [
        (["--from", model, "--require-proof", zk_policy_keys], "go together"),
        (["--from", model, "--norm-bound", "1"], "go together"),
        (["--from", model, "--require-proof", zk_policy_keys, "--norm-bound", "-1"], "positive number"),
        (["--from", model, "--require-proof", zk_policy_keys, "--norm-bound", "nan"], "positive number"),
        (["--from", model, "--require-proof", tmp_path / "nowhere", "--norm-bound", "1"], "no update-proof keys"),
        (["--from", model, "--require-proof", model, "--norm-bound", "1"], "no update-proof keys"),
        (["--from", big, "--require-proof", zk_policy_keys, "--norm-bound", "1"], "9 parameters"),
        (["--from", model, "--require-proof", zk_policy_keys, "--norm-bound", "1e-300"], "below one step"),
    ]
    before = home_state(home)
    for args, needle in cases:
        assert_one_line_error(cli("repo", "create", "x", *args, ok=False).stderr, needle)
    assert home_state(home) == before


def test_a_private_repository_blinds_and_its_publish_decision_is_proven(cli, home: Path, proven_repo: Path,
                                                                         zk_policy_keys: Path) -> None:
    cli("repo", "create", "p", "--from", _model(proven_repo / "p0.safetensors"), "--require-proof", zk_policy_keys,
        "--norm-bound", "1.0")
    cli("commit", "--from", _model(proven_repo / "p1.safetensors", dw=-4 * STEP), "-m", "blinded")
    with open_node(home) as node:
        repo = node.history.repo("p")
        update = node.history.load_commit(node.history.branch_head(repo, "main"))
    assert len(update.info["zk"]["blinding"]) == 32  # private: a uniform blinding, proven all the same
    cli("repo", "publish", "--yes", "--no-chain")
    with open_node(home) as node:
        repo = node.history.repo("p")
        decision = node.history.load_commit(node.history.branch_head(repo, "main"))
    policy = zpol.policy_of(repo.settings)
    assert decision.info["visibility"] == "public" and policy is not None
    assert zpol.check_update(policy, decision) is None  # the unchanged state's delta, proven again
    cli("verify", "HEAD")
