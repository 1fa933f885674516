"""Issue 15 items 1-2: every update commit and every merge carries a Pedersen commitment (docs/zk.md).

Through the CLI (in process, real LMDB, the native MSM backend): a commit's commitment equals pedersen
over its exact delta from the round base; a FedAvg merge of three updates satisfies
``sum w_k C_k = W C(d) + C(r)``, and verify names a wrong weight, a swapped remainder, an altered input
commitment and a tampered C(d); a median merge carries C(d) alone; an input on another round base makes
the merge carry "none"; a private repository's blindings keep the relation; the generator table is
cached on disk, reused by another process, and a corrupted cache is rebuilt, never trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import model_arrays, perturb, run_fednode, write_model

from fednode.history import objstore, refstore
from fednode.node import ZK_CACHE_ENV, open_node
from fednode.storage import zkcache
from fednode.tensors import fixedpoint
from fednode.workflows import commitments
from fednode.zk import merge_check, pedersen
from fednode.zk.curve import INFINITY, R
from fednode.zk.generators import DEFAULT_SEED
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES, Commit

SAMPLES = (30, 50, 70)


def _info(home: Path, rev: str) -> tuple[CID, Commit]:
    with open_node(home) as node:
        repo = node.current_repo()
        assert repo is not None
        _, cid = node.history.resolve(rev, repo)
        return cid, node.history.load_commit(cid)


def _three_updates(cli: Any, tmp_path: Path, visibility: str = "--public") -> dict[str, np.ndarray]:
    base = model_arrays(1)
    flags = [visibility] if visibility else []
    cli("repo", "create", "r", "--from", write_model(tmp_path / "base.safetensors", base), *flags)
    for i, samples in enumerate(SAMPLES):
        cli("branch", f"h{i}", "main")
        model = write_model(tmp_path / f"h{i}.safetensors", perturb(base, 10 + i))
        cli("commit", "--from", model, "-m", f"train h{i}", "-b", f"h{i}", "--samples", samples)
    return {n: a for n, (_, a) in base.items()}


def _expected_commitment(base: dict[str, tuple[str, np.ndarray]], new: dict[str, tuple[str, np.ndarray]],
                         grid: dict[str, int], blinding: int = 0) -> bytes:
    values = []
    for name in sorted(base):
        dtype, b = base[name]
        bits = grid[name] if dtype in FLOAT_DTYPES else 0
        q = fixedpoint.encode_delta(b.reshape(-1), new[name][1].reshape(-1), dtype, bits)
        assert q is not None
        values.append(q)
    return pedersen.commit(np.concatenate(values), blinding)


def test_a_commit_carries_the_commitment_to_its_delta_from_the_round_base(cli: Any, tmp_path: Path, home: Path) -> None:
    base = model_arrays(1)
    cli("repo", "create", "r", "--public", "--from", write_model(tmp_path / "b.safetensors", base))
    first, second = perturb(base, 2), perturb(perturb(base, 2), 3)
    cli("commit", "--from", write_model(tmp_path / "1.safetensors", first), "-m", "one")
    cli("commit", "--from", write_model(tmp_path / "2.safetensors", second), "-m", "two")
    genesis, _ = _info(home, "main~2")
    cid, commit = _info(home, "main")
    zk = commit.info["zk"]
    assert zk["v"] == 1 and zk["base"] == genesis and "blinding" not in zk  # public: blinding 0
    grid = {n: fixedpoint.choose_grid(a.reshape(-1), [second[n][1].reshape(-1)], d, 24)
            for n, (d, a) in base.items() if d in FLOAT_DTYPES}
    assert zk["grid"] == grid
    # the delta from the round base (genesis), not from the parent
    assert zk["commitment"] == _expected_commitment(base, second, grid)
    assert zk["commitment"] != _expected_commitment(first, second, grid)
    shown = cli("show", "HEAD").output
    assert f"zk      {zk['commitment'].hex()[:16]}..." in shown
    assert "commitment" in cli("show", "HEAD", "--json").output
    assert json.loads(cli("verify", "main", "--json").output)["problems"] == []
    # a revert is an update too: back to "one", the same delta from the same round base, the same commitment
    _, one = _info(home, "main~1")
    cli("revert", "main~1")
    _, reverted = _info(home, "main")
    assert reverted.kind == "revert" and reverted.info["zk"] == one.info["zk"]
    # a lossy encoding commits nothing it cannot know (the stored state), and says so
    cli("commit", "--from", write_model(tmp_path / "3.safetensors", perturb(base, 4)), "-m", "lossy",
        "--encoding", "fp16")
    assert "lossy encoding fp16" in _info(home, "main")[1].info["zk"]["none"]
    assert "zk      none: lossy encoding fp16" in cli("show", "HEAD").output
    assert json.loads(cli("verify", "main", "--json").output)["problems"] == []


def _merge(cli: Any, *extra: str) -> None:
    cli("merge", "h0", "h1", "h2", *extra)


def test_fedavg_merge_satisfies_the_relation_and_verifies(cli: Any, tmp_path: Path, home: Path) -> None:
    _three_updates(cli, tmp_path)
    _merge(cli)
    cid, merge = _info(home, "main")
    zk, record = merge.info["zk"], merge.info["merge"]
    assert set(zk) == {"v", "base", "grid", "commitment", "remainder"}, zk
    assert zk["grid"] == record["grid"] and zk["base"] == record["base"]
    inputs = [_info(home, str(c))[1].info["zk"]["commitment"] for c in record["inputs"]]
    weights = record["weights"]
    assert sorted(weights) == sorted(SAMPLES)
    assert merge_check.check_linear_merge(inputs, weights, zk["commitment"], zk["remainder"])
    assert not merge_check.check_linear_merge(inputs, [w + 1 for w in weights], zk["commitment"], zk["remainder"])
    out = cli("verify", "main", "--json").output
    assert json.loads(out)["problems"] == [], out


# ---- tampering: commits forged with the node's own key, then `fednode verify` --------------------


def _forge(home: Path, cid: CID, change: Any, swap: dict[CID, CID] | None = None, branch: str | None = None) -> CID:
    """Re-sign ``cid`` with ``change(info)`` applied (and parents/inputs renamed by ``swap``) as a new commit,
    stored and, with ``branch``, made its head."""
    swap = swap or {}
    with open_node(home) as node:
        repo = node.current_repo()
        assert repo is not None
        with node.store.read() as txn:
            old = objstore.load_commit(txn, cid)
            manifest = objstore.load_manifest(txn, old.weights)
        info = json.loads(json.dumps(old.info, default=repr))  # a deep copy to edit (bytes/CIDs put back below)
        info = _restore(old.info, info)
        if "merge" in info:
            info["merge"]["inputs"] = [swap.get(c, c) for c in info["merge"]["inputs"]]
        change(info)
        parents = tuple(swap.get(p, p) for p in old.parents)
        with node.store.read() as txn:
            hashes = tuple(objstore.load_commit(txn, p).commit_hash() for p in parents)
        new = objstore.sign(node.identity, Commit(
            repo=old.repo, parents=parents, parent_hashes=hashes, kind=old.kind, weights=old.weights,
            author=old.author, time_ms=old.time_ms, message=old.message, metrics=old.metrics, info=info))
        with node.store.write() as txn:
            objstore.put_objects(txn, manifest, new)
            txn.index_commit(new.cid(), repo.repo_id, new.commit_hash())
            if branch is not None:
                refstore.set_branch(txn, repo.repo_id, branch, new.cid())
        return new.cid()


def _restore(orig: Any, copy: Any) -> Any:
    """``copy`` (JSON of ``orig``) as fresh containers holding ``orig``'s leaves."""
    if isinstance(orig, dict):
        return {k: _restore(v, copy[k]) for k, v in orig.items()}
    if isinstance(orig, list):
        return [_restore(v, c) for v, c in zip(orig, copy, strict=True)]
    return orig


def _problems(cli: Any, rev: str = "main") -> list[str]:
    result = cli("verify", rev, "--json", ok=False)
    assert result.exit_code == 1, result.output
    report, _ = json.JSONDecoder().raw_decode(result.output)  # the JSON report, then the error line
    return list(report["problems"])


@pytest.fixture
def merged(cli: Any, tmp_path: Path, home: Path) -> CID:
    _three_updates(cli, tmp_path)
    _merge(cli)
    return _info(home, "main")[0]


def test_verify_detects_a_wrong_weight(cli: Any, home: Path, merged: CID) -> None:
    def change(info: dict[str, Any]) -> None:
        info["merge"]["weights"][0] += 1
    _forge(home, merged, change, branch="main")
    problems = _problems(cli)
    assert any("merge commitment relation fails" in p for p in problems), problems


def test_verify_detects_a_swapped_remainder(cli: Any, home: Path, merged: CID) -> None:
    def change(info: dict[str, Any]) -> None:
        zk = info["zk"]
        zk["remainder"] = pedersen.add(zk["remainder"], pedersen.commit([1]))
    _forge(home, merged, change, branch="main")
    problems = _problems(cli)
    assert any("merge commitment relation fails" in p for p in problems), problems
    assert any("remainder commitment mismatch" in p for p in problems), problems

    def swap(info: dict[str, Any]) -> None:  # C(d) and C(r) trade places
        zk = info["zk"]
        zk["commitment"], zk["remainder"] = zk["remainder"], zk["commitment"]
    _forge(home, merged, swap, branch="main")
    problems = _problems(cli)
    assert any("merge commitment relation fails" in p for p in problems), problems
    assert any("remainder commitment mismatch" in p for p in problems), problems


def test_verify_detects_a_tampered_merge_commitment(cli: Any, home: Path, merged: CID) -> None:
    def change(info: dict[str, Any]) -> None:  # C(d+e) with C(r-We): the relation still holds
        zk, total = info["zk"], sum(info["merge"]["weights"])
        e = pedersen.commit([1])
        zk["commitment"] = pedersen.add(zk["commitment"], e)
        zk["remainder"] = pedersen.add(zk["remainder"], pedersen.scale(e, -total))
    _forge(home, merged, change, branch="main")
    problems = _problems(cli)
    assert not any("relation fails" in p for p in problems), problems
    assert any("merge commitment mismatch" in p for p in problems), problems


def test_verify_detects_an_altered_input_commitment(cli: Any, home: Path, merged: CID) -> None:
    _, merge = _info(home, "main")
    victim = merge.info["merge"]["inputs"][0]

    def alter(info: dict[str, Any]) -> None:
        info["zk"]["commitment"] = pedersen.add(info["zk"]["commitment"], pedersen.commit([1]))
    forged_input = _forge(home, victim, alter)
    _forge(home, merged, lambda info: None, swap={victim: forged_input}, branch="main")
    problems = _problems(cli)
    assert any(f"commit {forged_input}: commitment mismatch" in p for p in problems), problems
    assert any("merge commitment relation fails" in p for p in problems), problems


@pytest.mark.parametrize("strategy", [("median",), ("krum", "--param", "byzantine=0", "--param", "min_byzantine=0")],
                         ids=["median", "krum"])
def test_a_median_merge_carries_its_commitment_alone(cli: Any, tmp_path: Path, home: Path,
                                                     strategy: tuple[str, ...]) -> None:
    _three_updates(cli, tmp_path)
    _merge(cli, "--strategy", *strategy)
    _, merge = _info(home, "main")
    zk = merge.info["zk"]
    assert set(zk) == {"v", "base", "grid", "commitment"} and zk["commitment"] != INFINITY
    assert json.loads(cli("verify", "main", "--json").output)["problems"] == []
    _forge(home, _info(home, "main")[0], lambda info: info["zk"].update(commitment=pedersen.commit([1])),
           branch="main")
    assert any("merge commitment mismatch" in p for p in _problems(cli))
    _forge(home, _info(home, "main")[0], lambda info: info["zk"].update(remainder=pedersen.commit([1])),
           branch="main")
    assert any(f"a remainder commitment on a {strategy[0]} merge" in p for p in _problems(cli))


def test_an_input_on_another_round_base_makes_the_merge_carry_none(cli: Any, tmp_path: Path, home: Path) -> None:
    base = model_arrays(1)
    _three_updates(cli, tmp_path)
    cli("merge", "h0", "h1")  # a round: main is now a merge
    cli("switch", "h2")
    cli("commit", "--from", write_model(tmp_path / "late.safetensors", perturb(perturb(base, 12), 40)), "-m", "late",
        "--samples", 9)
    cli("switch", "main")
    cli("commit", "--from", write_model(tmp_path / "m.safetensors", perturb(base, 41)), "-m", "next", "--samples", 5)
    cli("merge", "h2")
    _, merge = _info(home, "main")
    why = merge.info["zk"]["none"]
    assert "committed against another round base than the merge base" in why, why
    assert "none: input" in cli("show", "HEAD").output
    assert json.loads(cli("verify", "main", "--json").output)["problems"] == []


def test_private_repository_blindings_keep_the_relation(cli: Any, tmp_path: Path, home: Path) -> None:
    arrays = _three_updates(cli, tmp_path, visibility="")  # private: the default
    updates = [_info(home, f"h{i}")[1].info["zk"] for i in range(3)]
    assert all(0 < int.from_bytes(z["blinding"], "big") < R for z in updates)
    base = {n: (d, a) for n, (d, a) in model_arrays(1).items()}
    new = perturb(model_arrays(1), 10)
    assert updates[0]["commitment"] == _expected_commitment(base, new, updates[0]["grid"],
                                                            int.from_bytes(updates[0]["blinding"], "big"))
    assert updates[0]["commitment"] != _expected_commitment(base, new, updates[0]["grid"])  # hidden
    _merge(cli)
    _, merge = _info(home, "main")
    zk, record = merge.info["zk"], merge.info["merge"]
    assert int.from_bytes(zk["blinding"], "big") != 0
    inputs = [_info(home, str(c))[1].info["zk"]["commitment"] for c in record["inputs"]]
    assert merge_check.check_linear_merge(inputs, record["weights"], zk["commitment"], zk["remainder"])
    assert json.loads(cli("verify", "main", "--json").output)["problems"] == []
    assert arrays  # the base model was read


def test_the_generator_cache_is_reused_and_a_corrupt_one_rebuilt(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv(ZK_CACHE_ENV)  # the per-home cache (the test run shares one otherwise)
    home = tmp_path / "home"
    run_fednode(home, "init")
    base = model_arrays(1)
    run_fednode(home, "repo", "create", "r", "--public", "--from", write_model(tmp_path / "b.safetensors", base))
    path = zkcache.cache_path(home / "zk", DEFAULT_SEED)
    assert not path.exists()
    for i in range(2):
        run_fednode(home, "commit", "--from", write_model(tmp_path / f"{i}.safetensors", perturb(base, i)), "-m", "x")
        assert path.exists()
        if i == 0:
            first = path.stat()
    again = path.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # read, not rewritten
    payload, why = zkcache.read_table(path, DEFAULT_SEED, commitments.ROW_BYTES)
    assert payload is not None and len(payload) >= 96 * 200, why

    def commit_after(corrupt: Any, name: str) -> str:
        corrupt()
        model = write_model(tmp_path / f"{name}.safetensors", perturb(base, sum(name.encode())))
        proc = run_fednode(home, "commit", "--from", model, "-m", name)
        fixed, _ = zkcache.read_table(path, DEFAULT_SEED, commitments.ROW_BYTES)
        assert fixed == payload  # derived again and rewritten
        return proc.stderr

    # a hash-consistent file whose point 7 is off the curve; one with two generators swapped (both on the
    # curve: caught by the derivations at positions 0 and n-1 and at random ones); a torn file
    off = bytearray(payload)
    off[7 * 96] ^= 1
    assert "is not on the curve" in commit_after(
        lambda: zkcache.write_table(path, DEFAULT_SEED, commitments.ROW_BYTES, bytes(off)), "off")
    rows = np.frombuffer(payload, dtype=np.uint64).reshape(-1, 12).copy()
    rows[[0, 1]] = rows[[1, 0]]
    assert "differs from its derivation" in commit_after(
        lambda: zkcache.write_table(path, DEFAULT_SEED, commitments.ROW_BYTES, rows.tobytes()), "swap")
    assert "payload" in commit_after(lambda: path.write_bytes(path.read_bytes()[:-5]), "torn")
    problems = json.loads(run_fednode(home, "verify", "main", "--json").stdout)["problems"]
    assert problems == []


def test_commitments_can_be_turned_off_for_a_node(cli: Any, tmp_path: Path, home: Path) -> None:
    config = home / "config.toml"
    assert "commitments = true" in config.read_text()
    base = model_arrays(1)
    cli("repo", "create", "r", "--public", "--from", write_model(tmp_path / "b.safetensors", base))
    # a verifier recomputes no commitment over more than its zk.max_parameters values (a peer's huge
    # commit must not make it derive generators without bound): a forged one passes there, not here
    cli("branch", "forged", "main")
    cli("commit", "--from", write_model(tmp_path / "0.safetensors", perturb(base, 1)), "-m", "zero", "-b", "forged")
    _forge(home, _info(home, "forged")[0], lambda info: info["zk"].update(commitment=pedersen.commit([1])),
           branch="forged")
    assert any("commitment mismatch" in p for p in _problems(cli, "forged"))
    config.write_text(config.read_text().replace("commitments = true", "commitments = true\nmax_parameters = 100"))
    assert json.loads(cli("verify", "forged", "--json").output)["problems"] == []
    config.write_text(config.read_text().replace("commitments = true\nmax_parameters = 100", "commitments = false"))
    cli("commit", "--from", write_model(tmp_path / "1.safetensors", perturb(base, 2)), "-m", "one")
    assert "zk" not in _info(home, "main")[1].info
    config.write_text(config.read_text().replace("commitments = false", "commitments = true\nmax_parameters = 100"))
    cli("commit", "--from", write_model(tmp_path / "2.safetensors", perturb(base, 3)), "-m", "two")
    assert _info(home, "main")[1].info["zk"]["none"] == "211 parameters, over zk.max_parameters (100)"
    config.write_text(config.read_text().replace("commitments = true", "commitments = false"))
    config.write_text(config.read_text().replace("commitments = false", "commitments = 3"))
    result = cli("log", ok=False)
    assert result.exit_code == 1 and "[zk] commitments must be true or false" in result.output


def test_a_zero_base_tensor_commits_on_the_fixed_grid_and_the_merge_is_checkable(cli: Any, tmp_path: Path,
                                                                                 home: Path) -> None:
    """An all-zero base tensor (a zero-initialised bias) gets rule 2's fixed grid (ZERO_BASE_BITS), so
    updates of different magnitudes commit on the grid the merge will use and the relation holds."""
    base = {**model_arrays(1), "bias": ("F32", np.zeros(8, dtype=np.float32))}
    cli("repo", "create", "r", "--public", "--from", write_model(tmp_path / "b.safetensors", base))
    for i, scale in enumerate((1e-3, 1e-1)):
        cli("branch", f"h{i}", "main")
        new = {**perturb(base, 10 + i), "bias": ("F32", np.full(8, scale, dtype=np.float32))}
        cli("commit", "--from", write_model(tmp_path / f"h{i}.safetensors", new), "-m", f"h{i}", "-b", f"h{i}")
    grids = [_info(home, f"h{i}")[1].info["zk"]["grid"]["bias"] for i in range(2)]
    assert grids == [fixedpoint.ZERO_BASE_BITS] * 2
    cli("merge", "h0", "h1", "--weights", "equal")
    zk = _info(home, "main")[1].info["zk"]
    assert "none" not in zk and len(zk["commitment"]) == 64 and len(zk["remainder"]) == 64
    assert json.loads(cli("verify", "main", "--json").output)["problems"] == []


def test_homes_share_the_table_named_by_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    shared = tmp_path / "shared"
    monkeypatch.setenv(ZK_CACHE_ENV, str(shared))
    for name in ("a", "b"):
        home = tmp_path / name
        run_fednode(home, "init")
        base = model_arrays(1)
        first, second = tmp_path / f"{name}.safetensors", tmp_path / f"{name}2.safetensors"
        run_fednode(home, "repo", "create", "r", "--public", "--from", write_model(first, base))
        run_fednode(home, "commit", "--from", write_model(second, perturb(base, 3)), "-m", "u")
        assert not (home / "zk").exists()
    assert zkcache.cache_path(shared, DEFAULT_SEED).stat().st_size > 0
