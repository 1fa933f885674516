"""Remainder proofs on FedAvg merges in a repository whose policy names a remainder key (``rvk``; issue 15
item 2; docs/zk.md "Remainder proofs on merges"). Through the in-process CLI on a real store with the
session's keys (``zk_policy_keys``: update keys n = 8, remainder keys n = 8, K = 13) and snarkjs: ``repo
create --require-proof`` records ``rvk``; a FedAvg merge is proven with the merger's keys (``show``
"remainder proof: valid", ``verify`` says the rounding is proven); a merge stripped of its proof is
reported by verify and refused by the gossip validator; missing or foreign keys and a total weight over
the keys' range are refused in one line with nothing stored; a median merge needs no proof."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, home_state, write_model

from fednode.daemon.validate import BAD_PROOF, Validator
from fednode.history import History, objstore
from fednode.node import open_node
from fednode.storage.netstate import NetState
from fednode.zk import policy as zpol
from fednode.zk import update_proof as up
from protocol import messages as m

STEP = 2.0**-14  # the policy's grid for B = 1 and 16-bit keys
W0 = np.array([[0.5, -0.25, 0.125], [1.0, 0.75, -0.5]], dtype=np.float32)
B0 = np.array([0.1, -0.2], dtype=np.float32)
NONE_MSG = "the repository requires remainder proofs on FedAvg merges: the merge carries none"


def _model(path: Path, dw: float = 0.0, db: float = 0.0) -> Path:
    return write_model(path, {"w": ("F32", (W0 + np.float32(dw)).astype(np.float32)),
                              "b": ("F32", (B0 + np.float32(db)).astype(np.float32))})


def _rkey(keys: Path) -> str:
    return up.VerifyingKey.decode((keys / "remainder" / "update.vk").read_bytes()).key_id().hex()


@pytest.fixture
def rounds(cli, home: Path, tmp_path: Path, zk_policy_keys: Path) -> Path:
    """A public repository requiring proofs (remainder keys in the folder: rvk recorded), keys in [zk]
    keys, and two proven updates: main (one step) and dev (from the genesis), 3000 samples each."""
    created = json.loads(cli("repo", "create", "r", "--from", _model(tmp_path / "m0.safetensors"), "--public",
                             "--require-proof", zk_policy_keys, "--norm-bound", "1.0", "--json").stdout)
    assert created["require_proof"]["remainder_key"] == _rkey(zk_policy_keys)
    config = home / "config.toml"
    config.write_text(config.read_text().replace("commitments = true",
                                                 f'commitments = true\nkeys = "{zk_policy_keys}"'))
    cli("commit", "--from", _model(tmp_path / "m1.safetensors", dw=7 * STEP, db=-3 * STEP), "-m", "one",
        "--samples", "3000")
    cli("branch", "dev", "HEAD~1")
    cli("switch", "dev")
    cli("commit", "--from", _model(tmp_path / "m2.safetensors", dw=-4 * STEP), "-m", "two", "--samples", "3000")
    cli("switch", "main")
    return tmp_path


def _head(home: Path, branch: str = "main"):
    with open_node(home) as node:
        repo = node.history.repo("r")
        cid = node.history.branch_head(repo, branch)
        return repo, cid, node.history.load_commit(cid)


def test_a_fedavg_merge_is_proven_and_a_stripped_one_is_reported(cli, home: Path, rounds: Path,
                                                                   zk_policy_keys: Path) -> None:
    cli("merge", "dev", "--weights", "equal")
    repo, cid, merge = _head(home)
    policy = zpol.policy_of(repo.settings)
    assert policy is not None and policy.remainder_key_id is not None
    zk = merge.info["zk"]
    assert merge.kind == "merge" and len(zk["proof"]) == up.PROOF_BYTES and "remainder" in zk
    assert zpol.check_merge(policy, merge) is None and zpol.merge_total(merge) == 2
    # the rounding: d = round(S / W) with ties to even: w moved by 7 and -4 steps, S = 3, W = 2: d = 2, r = -1
    up.verify(policy.remainder_vk, zk["proof"], zk["remainder"], zpol.proof_hash(merge), 2)  # type: ignore[arg-type]
    line = f"remainder proof: valid (key {policy.remainder_key_id.hex()[:16]})"
    assert line in cli("show", "HEAD").stdout.splitlines()
    assert json.loads(cli("show", "HEAD", "--json").stdout)["proof"] == line
    assert "4 commits ok (1 FedAvg merge: rounding proven by the remainder proof)" in cli("verify", "HEAD").stdout
    assert json.loads(cli("verify", "HEAD", "--json").stdout)["rounding_proven"] == 1

    # the same merge without its proof (a plain History signs what it is given): verify and gossip refuse it
    cli("branch", "forged", "HEAD~1")
    bare = {k: v for k, v in zk.items() if k != "proof"}
    with open_node(home) as node:
        state = node.history.state(cid)
        from fednode.tensors.modelio import ArraySource

        source = ArraySource({n: (e.dtype, a.reshape(e.shape)) for n, (e, a) in state.items()})
        forged = History(node.store, node.identity).commit(
            repo, source, "forged", branch="forged", kind="merge", extra_parents=merge.parents[1:],
            info={**merge.info, "zk": bare}, exact=True).commit
        moved = objstore.sign(node.identity, dataclasses.replace(
            forged, info={**forged.info, "zk": {**bare, "proof": zk["proof"]}}, sig=b""))  # another commit's proof
        validator = Validator(node.store, NetState(node.store))
        assert validator.validate(m.CommitEnvelope(merge.encode()).encode(), repo.repo_id, from_self=True).ok
        for bad in (forged, moved):
            verdict = validator.validate(m.CommitEnvelope(bad.encode()).encode(), repo.repo_id, from_self=True)
            assert verdict.reason == BAD_PROOF
    assert zpol.check_merge(policy, forged) == NONE_MSG
    assert "Groth16 proof fails" in (zpol.check_merge(policy, moved) or "")
    shown = cli("show", "forged").stdout
    assert f"remainder proof: {NONE_MSG}" in shown.splitlines()
    bad = cli("verify", "forged", ok=False)
    assert f"commit {forged.cid()}: {NONE_MSG}" in bad.stdout + bad.stderr
    # a later merge taking the unproven merge's branch as an input is refused before computing anything
    cli("branch", "next", "forged~1")
    cli("switch", "next")
    before = home_state(home)
    assert_one_line_error(cli("merge", "forged", "--weights", "equal", ok=False).stderr, NONE_MSG,
                          "nothing was merged")
    assert home_state(home) == before


def test_what_cannot_be_proven_is_refused_and_a_median_merge_needs_no_proof(cli, home: Path, rounds: Path,
                                                                              zk_policy_keys: Path) -> None:
    before = home_state(home)
    # W = 6000 samples: over the keys' 2^12
    assert_one_line_error(cli("merge", "dev", ok=False).stderr, "the merge cannot be proven",
                          "total weight 6000 is outside these remainder keys' [0, 2^12)", "nothing was merged")
    no_remainder = rounds / "keys-only"
    shutil.copytree(zk_policy_keys, no_remainder, ignore=shutil.ignore_patterns("remainder"))
    assert_one_line_error(cli("merge", "dev", "--weights", "equal", "--zk-keys", no_remainder, ok=False).stderr,
                          f"no remainder-proof keys in {no_remainder / 'remainder'}", "nothing was merged")
    foreign = rounds / "foreign"
    shutil.copytree(zk_policy_keys, foreign)
    rvk = up.VerifyingKey.decode((foreign / "remainder" / "update.vk").read_bytes())
    (foreign / "remainder" / "update.vk").write_bytes(dataclasses.replace(rvk, a2=rvk.k1a2).encode())
    assert_one_line_error(cli("merge", "dev", "--weights", "equal", "--zk-keys", foreign, ok=False).stderr,
                          "are not the repository's (key", "nothing was merged")
    config = home / "config.toml"
    config.write_text(config.read_text().replace(f'keys = "{zk_policy_keys}"', ""))
    assert_one_line_error(cli("merge", "dev", "--weights", "equal", ok=False).stderr,
                          "requires remainder proofs on fedavg merges and no proving keys are set",
                          "nothing was merged")
    assert home_state(home) == before
    # a median carries C(d) alone (no C(r), not linear): no remainder proof and no keys needed
    cli("merge", "dev", "--weights", "equal", "--strategy", "median", "--param", "min_inputs=1")
    _, _, merge = _head(home)
    assert "commitment" in merge.info["zk"] and "remainder" not in merge.info["zk"]
    assert "proof" not in merge.info["zk"] and "proof" not in cli("show", "HEAD").stdout
    out = cli("verify", "HEAD").stdout
    assert "commits ok" in out and "rounding proven" not in out


def test_keys_without_remainder_keys_record_no_rvk(cli, tmp_path: Path, zk_policy_keys: Path) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(zk_policy_keys, keys, ignore=shutil.ignore_patterns("remainder"))
    created = json.loads(cli("repo", "create", "r", "--from", _model(tmp_path / "m0.safetensors"),
                             "--require-proof", keys, "--norm-bound", "1.0", "--json").stdout)
    assert created["require_proof"]["remainder_key"] is None
    text = cli("repo", "create", "t", "--from", _model(tmp_path / "m0.safetensors"), "--require-proof",
               zk_policy_keys, "--norm-bound", "1.0").stdout
    assert f"FedAvg merges must prove their rounding: remainder key {_rkey(zk_policy_keys)[:16]}, " \
           "total weight below 2^12" in text


def test_zk_setup_refuses_a_remainder_width_before_any_work(cli, home: Path) -> None:
    """(The keys themselves: tests/cli/test_zk_setup_cli.py, which makes update and remainder keys.)"""
    bad = cli("zk", "setup", "-n", "2", "--remainder-bits", "2", ok=False)
    assert_one_line_error(bad.stderr, "remainder-proof circuits take 1 <= n <= 1048576 values of 3..64 bits")
    assert not (home / "zk" / "update-n2-k16").exists()
