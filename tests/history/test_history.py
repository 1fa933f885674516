"""History through the Python API: commits, deltas, snapshots, revisions, branches, merges, revert, gc."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_arrays, model_arrays, perturb, read_model, store_state

from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.history import History, RepoInfo
from fednode.tensors.modelio import ArraySource
from fednode.workflows import fsck as fsck_module
from fednode.workflows.checkout import checkout
from fednode.workflows.diff import diff
from fednode.workflows.fsck import fsck, gc, reachable_blocks
from fednode.workflows.revert import revert
from fednode.workflows.verify import verify
from protocol import dagcbor
from protocol.multiformats import CID, DAG_CBOR, RAW
from protocol.objects import Commit, Manifest
from protocol.unixfs import decode_node

Arrays = dict[str, tuple[str, np.ndarray]]


def make_repo(history: History, arrays: Arrays, name: str = "m", **kw) -> tuple[RepoInfo, CID]:
    info, result = history.create_repo(name, ArraySource(arrays), **kw)
    return info, result.cid


def state_arrays(history: History, cid: CID) -> Arrays:
    return {n: (e.dtype, arr.reshape(e.shape)) for n, (e, arr) in history.state(cid).items()}


def manifest_of(history: History, cid: CID) -> Manifest:
    return history.load_manifest(history.load_commit(cid).weights)


def test_genesis_is_exact_and_signed(history: History) -> None:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays)
    assert_same_arrays(state_arrays(history, genesis), arrays)
    commit = history.load_commit(genesis)
    assert commit.kind == "init" and commit.parents == () and commit.repo is None
    assert info.repo_id == commit.commit_hash()
    assert history.verify_commit_signature(commit)
    assert commit.settings == {"name": "m", "scale_bits": 24, "snapshot_interval": 8,
                               "visibility": "private"}
    assert all(e.encoding == "raw" and e.depth == 0 for e in manifest_of(history, genesis).tensors.values())
    assert [r.name for r in history.repos()] == ["m"]
    assert history.branches(info) == {"main": genesis}
    assert history.current_branch(info) == "main"


def test_repo_name_rules(history: History) -> None:
    arrays = model_arrays(0)
    make_repo(history, arrays)
    before = store_state(history.store)
    for bad in ["", "a b", "../x", "x/", "a:b", "-x", "x.lock"]:
        with pytest.raises(FednodeError):
            make_repo(history, arrays, name=bad)
    with pytest.raises(FednodeError, match="already exists"):
        make_repo(history, arrays)
    with pytest.raises(FednodeError, match="scale-bits"):
        make_repo(history, arrays, name="n", scale_bits=61)
    with pytest.raises(FednodeError, match="snapshot-interval"):
        make_repo(history, arrays, name="n", snapshot_interval=0)
    assert store_state(history.store) == before


def test_update_quantization_bound(history: History) -> None:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays, scale_bits=8)
    new = perturb(arrays, 1)
    result = history.commit(info, ArraySource(new), "step 1", encoding="fixed")  # lossy: only when chosen
    got = state_arrays(history, result.cid)
    worst = 0.0
    for name, (dtype, arr) in new.items():
        x = got[name][1]
        if dtype == "I64":
            assert np.array_equal(x, arr)
            continue
        err = np.abs(x.astype(np.float64) - arr.astype(np.float64))
        # half a grid step, plus one float32 rounding of the result
        assert (err <= 2.0**-9 + np.abs(arr) * 2.0**-24).all(), name
        worst = max(worst, float(err.max()))
    assert result.max_quantization_error == pytest.approx(worst) and worst > 0
    entries = manifest_of(history, result.cid).tensors
    assert {e.encoding for n, e in entries.items() if n != "steps"} == {"fixed"}
    assert entries["steps"].encoding == "same"
    assert all(e.scale_bits == 8 for e in entries.values() if e.encoding == "fixed")
    assert history.load_commit(result.cid).parents == (genesis,)


def test_exact_commit_is_bit_exact(history: History) -> None:
    arrays = model_arrays(0)
    info, _ = make_repo(history, arrays)
    on = perturb(arrays, 1)  # on the grid: exact deltas
    result = history.commit(info, ArraySource(on), "exact", exact=True, encoding="fixed")
    assert_same_arrays(state_arrays(history, result.cid), on)
    assert {e.encoding for e in manifest_of(history, result.cid).tensors.values()} == {"fixed", "same"}
    assert result.max_quantization_error == 0.0
    off = perturb(on, 2, grid=None)  # off the grid: snapshots where a delta would be lossy
    result = history.commit(info, ArraySource(off), "exact", exact=True, encoding="fixed")
    assert_same_arrays(state_arrays(history, result.cid), off)
    assert manifest_of(history, result.cid).tensors["layer1.weight"].encoding == "raw"


def test_unchanged_tensors_cost_no_bytes(history: History) -> None:
    arrays = model_arrays(0, scale=10)
    info, genesis = make_repo(history, arrays)
    same = history.commit(info, ArraySource(arrays), "no change")
    manifest = manifest_of(history, same.cid)
    assert {e.encoding for e in manifest.tensors.values()} == {"same"}
    commit_block = history.store.get_block(same.cid)
    manifest_block = history.store.get_block(history.load_commit(same.cid).weights)
    assert same.new_bytes == len(commit_block) + len(manifest_block)
    assert same.total_bytes == 0
    # one tensor changed: only that tensor's delta is stored
    one = perturb(arrays, 2, names=("layer1.bias",))
    result = history.commit(info, ArraySource(one), "bias only")
    entries = manifest_of(history, result.cid).tensors
    assert entries["layer1.bias"].encoding == "xor"  # the lossless default
    assert all(e.encoding == "same" for n, e in entries.items() if n != "layer1.bias")
    overhead = len(history.store.get_block(result.cid)) + len(
        history.store.get_block(history.load_commit(result.cid).weights))
    assert result.new_bytes == entries["layer1.bias"].size + overhead
    assert history.load_commit(result.cid).parents == (same.cid,)
    assert genesis != same.cid


@pytest.mark.parametrize("interval", [1, 3])
def test_snapshot_interval_bounds_delta_chains(history: History, interval: int) -> None:
    arrays = model_arrays(0)
    info, _ = make_repo(history, arrays, snapshot_interval=interval)
    current = arrays
    depths = []
    for step in range(2 * interval + 3):
        current = perturb(current, 100 + step, names=("layer1.weight",))
        result = history.commit(info, ArraySource(current), f"step {step}", exact=True)
        entries = manifest_of(history, result.cid).tensors
        assert all(e.depth <= interval for e in entries.values())
        depths.append(entries["layer1.weight"].depth)
        assert_same_arrays(state_arrays(history, result.cid), current)
    expected = [(i % (interval + 1)) for i in range(1, len(depths) + 1)]
    assert depths == expected
    # a depth-0 entry is a raw snapshot and an unchanged tensor keeps counting hops
    assert {manifest_of(history, history.branch_head(info, "main")).tensors["steps"].encoding} <= {"same", "raw"}


DTYPE_CASES = {
    "F32": lambda rng, shape: rng.standard_normal(shape).astype(np.float32),
    "F16": lambda rng, shape: rng.standard_normal(shape).astype(np.float16),
    "F64": lambda rng, shape: rng.standard_normal(shape),
    "BF16": lambda rng, shape: (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16),
    "I64": lambda rng, shape: rng.integers(-(2**62), 2**62, shape, dtype=np.int64),
    "I32": lambda rng, shape: rng.integers(-(2**31), 2**31 - 1, shape, dtype=np.int32),
    "U8": lambda rng, shape: rng.integers(0, 256, shape, dtype=np.uint8),
    "BOOL": lambda rng, shape: rng.integers(0, 2, shape).astype(bool),
}


@pytest.mark.parametrize("dtype", list(DTYPE_CASES))
def test_dtypes_round_trip(history: History, dtype: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    make = DTYPE_CASES[dtype]
    arrays = {"t": (dtype, make(rng, (5, 7))), "scalar": (dtype, make(rng, ())), "empty": (dtype, make(rng, (0, 3)))}
    info, genesis = make_repo(history, arrays)
    assert_same_arrays(state_arrays(history, genesis), arrays)
    states = [(genesis, arrays)]
    for step in range(3):
        new = {n: (d, make(rng, a.shape)) for n, (d, a) in arrays.items()}
        result = history.commit(info, ArraySource(new), f"s{step}", exact=True)
        assert_same_arrays(state_arrays(history, result.cid), new)
        states.append((result.cid, new))
    for cid, expected in states:  # older states are still exact
        assert_same_arrays(state_arrays(history, cid), expected)
    out = tmp_path / "out.safetensors"
    checkout(history, states[-1][0], out)
    assert_same_arrays(read_model(out), states[-1][1])


def test_integer_deltas_exact_without_exact_flag(history: History) -> None:
    rng = np.random.default_rng(4)
    arrays = {"i": ("I64", rng.integers(-(2**63), 2**63 - 1, 50, dtype=np.int64)),
              "b": ("I32", rng.integers(-5, 5, 50).astype(np.int32))}
    info, _ = make_repo(history, arrays)
    new = {"i": ("I64", rng.integers(-(2**63), 2**63 - 1, 50, dtype=np.int64)),
           "b": ("I32", arrays["b"][1] + np.int32(1))}
    result = history.commit(info, ArraySource(new), "ints", encoding="fixed")  # ints stay exact under a lossy choice
    assert_same_arrays(state_arrays(history, result.cid), new)
    entries = manifest_of(history, result.cid).tensors
    assert entries["b"].encoding == "fixed" and entries["b"].int_bits == 8
    assert entries["i"].int_bits == 64


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_updates_stored_as_exact_snapshots(history: History, bad: float) -> None:
    arrays = model_arrays(0)
    info, _ = make_repo(history, arrays)
    new = perturb(arrays, 1)
    w = new["layer1.weight"][1].copy()
    w[3, 2] = bad
    w.reshape(-1)[7] = -np.float32(np.nan) if np.isnan(bad) else w.reshape(-1)[7]
    new["layer1.weight"] = ("F32", w)
    # under a lossy encoding (the default xor stores NaN/Inf bit for bit as a delta: test_lossless.py)
    result = history.commit(info, ArraySource(new), "diverged", encoding="fixed")
    entry = manifest_of(history, result.cid).tensors["layer1.weight"]
    assert entry.encoding == "raw" and entry.depth == 0
    got = state_arrays(history, result.cid)["layer1.weight"][1]
    assert got.tobytes() == w.tobytes()
    # and back to finite values from a NaN parent: again an exact snapshot
    healed = perturb(arrays, 5)
    back = history.commit(info, ArraySource(healed), "healed", encoding="fixed")
    entry = manifest_of(history, back.cid).tensors["layer1.weight"]
    assert entry.encoding == "raw"
    assert state_arrays(history, back.cid)["layer1.weight"][1].tobytes() == healed["layer1.weight"][1].tobytes()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda a: {k: v for k, v in a.items() if k != "layer1.bias"}, "missing layer1.bias"),
        (lambda a: {**a, "extra": ("F32", np.zeros(2, np.float32))}, "unexpected extra"),
        (lambda a: {**a, "layer1.bias": ("F32", np.zeros(17, np.float32))}, "layer1.bias"),
        (lambda a: {**a, "layer1.bias": ("F64", a["layer1.bias"][1].astype(np.float64))}, "F64"),
        (lambda a: {**a, "layer1.weight": ("F32", a["layer1.weight"][1].reshape(8, 16))}, "[8, 16]"),
    ],
)
def test_incompatible_update_stores_nothing(history: History, change, needle: str) -> None:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays)
    before = store_state(history.store)
    with pytest.raises(FednodeError) as exc:
        history.commit(info, ArraySource(change(arrays)), "bad")
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert store_state(history.store) == before
    assert history.branch_head(info, "main") == genesis


def test_commit_requires_identity(history: History) -> None:
    info, _ = make_repo(history, model_arrays(0))
    anonymous = History(history.store, None)
    with pytest.raises(FednodeError, match="no identity"):
        anonymous.commit(info, ArraySource(model_arrays(1)), "x")


def test_expected_head_guard(history: History) -> None:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays)
    history.commit(info, ArraySource(perturb(arrays, 1)), "moved")
    before = store_state(history.store)
    with pytest.raises(FednodeError, match="moved"):
        history.commit(info, ArraySource(perturb(arrays, 2)), "stale", expected_head=genesis)
    assert store_state(history.store) == before


# --- revisions ---------------------------------------------------------------------------------


def linear(history: History, n: int = 4, **kw) -> tuple[RepoInfo, list[CID], list[Arrays]]:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays, **kw)
    cids, states = [genesis], [arrays]
    for i in range(n):
        arrays = perturb(arrays, 10 + i)
        cids.append(history.commit(info, ArraySource(arrays), f"c{i}", exact=True).cid)
        states.append(arrays)
    return info, cids, states


def test_resolve_revisions(history: History) -> None:
    info, cids, _ = linear(history)
    head = cids[-1]
    history.create_tag(info, "v1", cids[1])
    assert history.resolve(str(head), info)[1] == head
    assert history.resolve(str(head))[1] == head  # no repo: found through the commit index
    assert history.resolve(str(head))[0].repo_id == info.repo_id
    assert history.resolve("main", info)[1] == head
    assert history.resolve("HEAD", info)[1] == head
    assert history.resolve("v1", info)[1] == cids[1]
    assert history.resolve("main~2", info)[1] == cids[-3]
    assert history.resolve("HEAD~1~1", info)[1] == cids[-3]
    assert history.resolve("main^", info)[1] == cids[-2]
    assert history.resolve("main^1^1", info)[1] == cids[-3]
    assert history.resolve("v1~1", info)[1] == cids[0]
    assert history.resolve("main~0", info)[1] == head
    assert history.resolve("m:main~1")[1] == cids[-2]
    assert history.resolve("m:v1")[1] == cids[1]
    assert history.resolve(f"m:{head}")[1] == head
    # unique prefixes
    texts = [str(c) for c in cids]
    for cid, text in zip(cids, texts, strict=True):
        n = next(k for k in range(6, len(text)) if sum(t.startswith(text[:k]) for t in texts) == 1)
        assert history.resolve(text[:n], info)[1] == cid
        assert history.resolve(text[:n] + "~0")[1] == cid


def test_resolve_errors(history: History) -> None:
    info, cids, _ = linear(history, 2)
    prefix = "bafyrei"
    with pytest.raises(NotFound, match="ambiguous"):
        history.resolve(prefix, info)
    texts = [str(c) for c in cids]
    unknown = next(p for p in ("bafyreiaaaa", "bafyreibbbb", "bafyreicccc") if not any(t.startswith(p) for t in texts))
    bad = [unknown, "nope", "main~5", "main^2", "HEAD~3", "no-such-branch", "main~~x", "",
           str(CID.hash(DAG_CBOR, b"not stored")), "other:main", "m:nope"]
    for rev in bad:
        with pytest.raises(NotFound) as exc:
            history.resolve(rev, info)
        assert "\n" not in str(exc.value)


def test_commit_from_another_repo_is_rejected(history: History) -> None:
    info_a, cids_a, _ = linear(history, 1)
    info_b, genesis_b = make_repo(history, model_arrays(9), name="other")
    with pytest.raises(NotFound, match="not in repository"):
        history.resolve(str(cids_a[-1]), info_b)
    with pytest.raises(NotFound):
        history.create_branch(info_b, "x", cids_a[-1])
    with pytest.raises(NotFound):
        history.create_tag(info_b, "x", cids_a[-1])
    assert history.resolve(f"other:{genesis_b}")[1] == genesis_b


# --- branches, tags, merges ----------------------------------------------------------------------


def test_is_ancestor_follows_parents_only(history: History) -> None:
    info, cids, states = linear(history, 3)
    history.create_branch(info, "side", cids[1])
    side = history.commit(info, ArraySource(perturb(states[1], 7)), "side", branch="side").cid
    assert history.is_ancestor(cids[0], cids[-1]) and history.is_ancestor(cids[1], side)
    assert history.is_ancestor(side, side)  # a head is a fast-forward of itself
    assert not history.is_ancestor(cids[-1], cids[0])  # a child is not an ancestor
    assert not history.is_ancestor(side, cids[-1]) and not history.is_ancestor(cids[-1], side)  # diverged


def test_branches_and_tags(history: History) -> None:
    info, cids, states = linear(history, 2)
    history.create_branch(info, "exp", cids[1])
    assert history.branches(info) == {"main": cids[-1], "exp": cids[1]}
    with pytest.raises(FednodeError, match="already exists"):
        history.create_branch(info, "exp", cids[0])
    with pytest.raises(FednodeError, match="invalid branch name"):
        history.create_branch(info, "bad name", cids[0])
    history.switch_branch(info, "exp")
    assert history.current_branch(info) == "exp"
    new = perturb(states[1], 99)
    exp_commit = history.commit(info, ArraySource(new), "on exp", exact=True).cid
    assert history.branch_head(info, "exp") == exp_commit
    assert history.branch_head(info, "main") == cids[-1]
    assert history.load_commit(exp_commit).parents == (cids[1],)
    with pytest.raises(FednodeError, match="current branch"):
        history.delete_branch(info, "exp")
    with pytest.raises(NotFound):
        history.switch_branch(info, "ghost")
    history.switch_branch(info, "main")
    history.delete_branch(info, "exp")
    assert set(history.branches(info)) == {"main"}
    with pytest.raises(NotFound):
        history.delete_branch(info, "exp")
    history.create_tag(info, "v1", cids[1])
    with pytest.raises(FednodeError, match="already exists"):
        history.create_tag(info, "v1", cids[2])
    assert history.tags(info) == {"v1": cids[1]}
    history.delete_tag(info, "v1")
    assert history.tags(info) == {}
    with pytest.raises(NotFound):
        history.delete_tag(info, "v1")


def make_merge(history: History) -> tuple[RepoInfo, dict[str, CID], Arrays]:
    arrays = model_arrays(0)
    info, base = make_repo(history, arrays)
    a1 = history.commit(info, ArraySource(perturb(arrays, 1)), "main 1").cid
    history.create_branch(info, "side", base)
    side_state = perturb(arrays, 2)
    s1 = history.commit(info, ArraySource(side_state), "side 1", branch="side").cid
    merged = perturb(arrays, 3)
    m = history.commit(info, ArraySource(merged), "merge side", kind="merge", extra_parents=(s1,),
                       info={"merge": {"method": "test"}}, exact=True).cid
    return info, {"base": base, "a1": a1, "s1": s1, "merge": m}, merged


def test_merge_commit_and_parent_revisions(history: History) -> None:
    info, c, merged = make_merge(history)
    commit = history.load_commit(c["merge"])
    assert commit.kind == "merge" and commit.parents == (c["a1"], c["s1"])
    assert history.resolve("main^2", info)[1] == c["s1"]
    assert history.resolve("main^1", info)[1] == c["a1"]
    assert history.resolve("main^2~1", info)[1] == c["base"]
    assert history.resolve("main~2", info)[1] == c["base"]
    with pytest.raises(NotFound):
        history.resolve("main^3", info)
    assert history.merge_base([c["a1"], c["s1"]]) == c["base"]
    assert_same_arrays(state_arrays(history, c["merge"]), merged)
    order = [cid for cid, _ in history.walk([c["merge"]])]
    assert order[0] == c["merge"] and order[-1] == c["base"] and set(order) == set(c.values())
    # hand-made merges record no merge plan, so only the structural checks apply (fednode.workflows.merging recomputes)
    assert verify(history, info, c["merge"], check_tensors=False).problems == []


def test_merge_needs_a_second_parent(history: History) -> None:
    info, _ = make_repo(history, model_arrays(0))
    before = store_state(history.store)
    with pytest.raises(Exception):  # noqa: B017 - a lone-parent merge must not be stored, whatever the error
        history.commit(info, ArraySource(model_arrays(1)), "bad merge", kind="merge")
    assert store_state(history.store) == before


# --- revert, diff, checkout ------------------------------------------------------------------------


def test_revert_restores_state_bit_for_bit(history: History) -> None:
    info, cids, states = linear(history, 4, snapshot_interval=2)
    # the head has lossy (non-exact) commits too
    lossy = history.commit(info, ArraySource(perturb(states[-1], 77)), "lossy").cid
    for target_index in (0, 2):
        result = revert(history, info, cids[target_index])
        assert result.commit.kind == "revert"
        assert result.commit.info == {"revert": {"target": cids[target_index]}}
        assert_same_arrays(state_arrays(history, result.cid), states[target_index])
        assert_same_arrays(state_arrays(history, result.cid), state_arrays(history, cids[target_index]))
    assert verify(history, info, history.branch_head(info, "main")).problems == []
    assert history.load_commit(history.resolve("main~1", info)[1]).parents[0] == lossy


def test_diff_matches_numpy(history: History) -> None:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays)
    new = perturb(arrays, 1, names=("layer1.weight",))
    w = new["layer1.weight"][1].copy()
    w[:4] = arrays["layer1.weight"][1][:4]  # only part of the tensor changes
    new["layer1.weight"] = ("F32", w)
    head = history.commit(info, ArraySource(new), "partial").cid
    rows = {r.name: r for r in diff(history, genesis, head)}
    a, b = state_arrays(history, genesis), state_arrays(history, head)
    xa, xb = a["layer1.weight"][1].astype(np.float64), b["layer1.weight"][1].astype(np.float64)
    row = rows["layer1.weight"]
    assert row.status == "changed" and row.numel == xa.size
    assert row.l2 == pytest.approx(np.linalg.norm(xb - xa), rel=1e-12)
    assert row.relative == pytest.approx(np.linalg.norm(xb - xa) / np.linalg.norm(xa), rel=1e-12)
    assert row.changed_fraction == pytest.approx(np.mean(xa != xb))
    assert 0 < row.changed_fraction <= 0.75
    assert {rows[n].status for n in ("layer1.bias", "layer2.weight", "steps")} == {"same"}
    assert diff(history, head, head)[0].status == "same"


def test_checkout_safetensors_and_pt(history: History, tmp_path: Path) -> None:
    import torch

    info, cids, states = linear(history, 3)
    lossy = history.commit(info, ArraySource(perturb(states[-1], 50)), "lossy").cid
    for cid, expected in [(cids[0], states[0]), (cids[-1], states[-1])]:
        out = tmp_path / f"{cid}.safetensors"
        size = checkout(history, cid, out)
        assert size == out.stat().st_size
        assert_same_arrays(read_model(out), expected)
        pt = tmp_path / f"{cid}.pt"
        checkout(history, cid, pt)
        loaded = torch.load(pt, weights_only=True)
        for name, (_, arr) in expected.items():
            assert loaded[name].numpy().tobytes() == arr.tobytes()
            assert tuple(loaded[name].shape) == arr.shape
    first, second = tmp_path / "a.safetensors", tmp_path / "b" / "b.safetensors"
    checkout(history, lossy, first)
    checkout(history, lossy, second)
    assert first.read_bytes() == second.read_bytes()
    assert not list(tmp_path.rglob("*.partial"))


def test_bf16_checkout_pt(history: History, tmp_path: Path) -> None:
    import torch

    t = torch.randn(4, 3).to(torch.bfloat16)
    arrays = {"w": ("BF16", t.view(torch.int16).numpy().view(np.uint16))}
    _, genesis = make_repo(history, arrays)
    checkout(history, genesis, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)["w"]
    assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, t)


# --- integrity: verify, fsck, gc ---------------------------------------------------------------------


def corrupt_block(history: History, cid: CID) -> None:
    with history.store.write() as txn:
        block = bytearray(txn.get_block(cid))
        block[len(block) // 2] ^= 0x01
        txn.delete_block(cid)
        txn.put_block(cid, bytes(block), trusted=True)


def tensor_block(history: History, cid: CID, name: str) -> CID:
    entry = manifest_of(history, cid).tensors[name]
    assert entry.cid is not None
    return entry.cid


def test_fsck_and_verify_clean(history: History) -> None:
    info, c, _ = make_merge(history)
    assert fsck(history).problems == []
    assert fsck(history).commits == 4
    report = verify(history, info, c["merge"], check_tensors=False)
    assert report.problems == [] and report.commits == 4
    report = verify(history, info, c["a1"])
    assert report.problems == [] and report.commits == 2


@pytest.mark.parametrize("which", ["tensor", "manifest", "commit"])
def test_corrupted_block_detected(history: History, tmp_path: Path, which: str) -> None:
    info, cids, _ = linear(history, 2)
    head = cids[-1]
    victim = {"tensor": lambda: tensor_block(history, cids[0], "layer1.weight"),
              "manifest": lambda: history.load_commit(head).weights,
              "commit": lambda: head}[which]()
    corrupt_block(history, victim)
    problems = fsck(history).problems
    assert any(str(victim) in p and "hash" in p for p in problems), problems
    assert any("hash" in p for p in verify(history, info, head).problems)
    with pytest.raises(Corrupt, match="hash"):
        checkout(history, head, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(FednodeError, match="not collecting"):
        gc(history)


def forge_commit(history: History, info: RepoInfo, parent: CID, sig: bytes | None = None,
                 author: bytes | None = None) -> CID:
    """Store a commit with a wrong signature under its own (correct) CID and point 'main' at it."""
    good = history.load_commit(parent)
    commit = Commit(repo=info.repo_id, parents=(parent,), kind="update", weights=good.weights,
                    author=author or good.author, time_ms=good.time_ms + 1, message="forged", sig=b"\x00" * 64,
                    parent_hashes=(good.commit_hash(),))
    if sig is None:
        real = history._signed(commit)
        sig = bytes([real.sig[0] ^ 0x80]) + real.sig[1:]
    commit = dataclasses.replace(commit, sig=sig)
    block = commit.encode()
    cid = CID.hash(DAG_CBOR, block)
    with history.store.write() as txn:
        assert txn.put_block(cid, block)  # untrusted path: the hash matches, so the store accepts it
        txn.set_ref(info.repo_id, "heads/main", bytes(cid))
        txn.index_commit(cid, info.repo_id, commit.commit_hash())
    return cid


def test_bad_signature_detected(history: History) -> None:
    info, cids, _ = linear(history, 1)
    forged = forge_commit(history, info, cids[-1])
    assert not history.verify_commit_signature(history.load_commit(forged))
    problems = verify(history, info, forged).problems
    assert problems == [f"commit {forged}: invalid signature"]
    assert f"commit {forged}: invalid signature" in fsck(history).problems
    # a valid signature by somebody else over a body naming another author also fails
    other = forge_commit(history, info, cids[-1], sig=history.identity.sign(b"unrelated"))
    assert verify(history, info, other).problems


def test_foreign_commit_in_history_detected(history: History) -> None:
    info, cids, _ = linear(history, 1)
    other_info, other_genesis = make_repo(history, model_arrays(5), name="other")
    commit = Commit(repo=info.repo_id, parents=(other_genesis,), kind="update",
                    weights=history.load_commit(other_genesis).weights, author=history.identity.public_key,
                    time_ms=1, message="graft", parent_hashes=(history.load_commit(other_genesis).commit_hash(),))
    commit = history._signed(commit)
    block = commit.encode()
    cid = CID.hash(DAG_CBOR, block)
    with history.store.write() as txn:
        txn.put_block(cid, block)
    problems = verify(history, info, cid).problems
    assert any("foreign genesis" in p for p in problems)
    assert other_info.repo_id != info.repo_id


def test_gc_after_branch_delete(history: History) -> None:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays)
    main_head = history.commit(info, ArraySource(perturb(arrays, 1)), "main").cid
    history.create_branch(info, "tmp", genesis)
    tmp_head = history.commit(info, ArraySource(perturb(arrays, 2, eps=1.0)), "tmp", branch="tmp").cid
    tmp_blocks = {tensor_block(history, tmp_head, n) for n in ("layer1.weight", "layer2.weight")}
    tmp_blocks |= {tmp_head, history.load_commit(tmp_head).weights}
    assert gc(history) == (0, 0)
    blocks_before = store_state(history.store)[0]
    history.delete_branch(info, "tmp")
    removed, freed = gc(history)
    blocks_after = store_state(history.store)[0]
    assert removed == len(blocks_before - blocks_after) >= len(tmp_blocks) and freed > 0
    assert {bytes(c) for c in tmp_blocks} <= blocks_before - blocks_after
    with history.store.read() as txn:
        assert not any(txn.has_block(c) for c in tmp_blocks)
        assert txn.has_block(main_head) and txn.has_block(genesis)
    # everything reachable survived and still checks out
    reachable, problems = reachable_blocks(history)
    assert problems == [] and reachable == blocks_after
    assert fsck(history).problems == []
    assert verify(history, info, main_head).problems == []
    assert gc(history) == (0, 0)


def test_gc_keeps_tagged_commits(history: History) -> None:
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays)
    history.create_branch(info, "tmp", genesis)
    kept = history.commit(info, ArraySource(perturb(arrays, 2)), "tmp", branch="tmp").cid
    history.create_tag(info, "keep", kept)
    history.delete_branch(info, "tmp")
    before = store_state(history.store)[0]
    assert gc(history) == (0, 0)
    assert store_state(history.store)[0] == before
    assert verify(history, info, kept).problems == []


def test_commit_body_roundtrip_and_hash(history: History) -> None:
    info, cids, _ = linear(history, 1)
    commit = history.load_commit(cids[-1])
    block = history.store.get_block(cids[-1])
    assert Commit.decode(block) == commit
    assert commit.cid() == cids[-1]
    body = dagcbor.decode(block)
    del body["sig"]
    import hashlib

    digest = hashlib.sha256(dagcbor.encode(body)).digest()
    assert digest == commit.body_digest()
    parent = history.load_commit(commit.parents[0]).commit_hash()
    assert body["parent_hashes"] == [parent]
    # the documented formula, spelled out: domain, author, kind, parents, body digest
    expected = hashlib.sha256(b"fednode/commit/v1" + commit.author + bytes([1, 1]) + parent + digest).digest()
    assert commit.commit_hash() == expected
    # another author cannot claim the same body: the hash changes with the author
    other = dataclasses.replace(commit, author=bytes(32))
    assert other.commit_hash() != commit.commit_hash()


def test_collected_commit_no_longer_resolves(history: History) -> None:
    """gc removes a deleted branch's commits: they must not resolve, nor become a (dangling) ref again."""
    arrays = model_arrays(0)
    info, genesis = make_repo(history, arrays)
    history.create_branch(info, "tmp", genesis)
    gone = history.commit(info, ArraySource(perturb(arrays, 1)), "tmp", branch="tmp").cid
    history.delete_branch(info, "tmp")
    gc(history)
    with pytest.raises(NotFound):
        history.resolve(str(gone), info)
    with pytest.raises(NotFound):
        history.create_branch(info, "back", gone)
    with pytest.raises(NotFound):
        history.create_tag(info, "back", gone)
    assert fsck(history).problems == []


@pytest.mark.parametrize(
    ("kwargs", "arrays"),
    [
        ({"metrics": {"loss": float("nan")}}, None),
        ({"metrics": {"loss": float("inf")}}, None),
        ({"metrics": {"": 1.0}}, None),
        ({"message": "x" * (64 * 1024 + 1)}, None),
        ({"kind": "merge"}, None),  # a merge with one parent
        ({"kind": "init"}, None),
        ({}, {"": ("F32", np.zeros(2, np.float32))}),  # tensor names are 1..1024 characters
        ({}, {"x" * 1025: ("F32", np.zeros(2, np.float32))}),
        ({}, {"t": ("F32", np.zeros((1,) * 17, np.float32))}),  # at most 16 dimensions
    ],
)
def test_invalid_commits_are_refused_and_nothing_stored(history: History, kwargs: dict, arrays: Arrays | None) -> None:
    """Nothing a reader would reject is ever stored (it would make the whole repository unreadable)."""
    base = arrays or model_arrays(0)
    info, genesis = make_repo(history, model_arrays(0), name="ok")
    before = store_state(history.store)
    if arrays is not None:
        with pytest.raises(FednodeError, match="invalid commit"):
            make_repo(history, arrays, name="bad")
    else:
        with pytest.raises(FednodeError, match="invalid commit"):
            history.commit(info, ArraySource(perturb(base, 1)), **{"message": "m", **kwargs})
        create_kwargs = {k: v for k, v in kwargs.items() if k in ("metrics", "message")}
        if create_kwargs:
            with pytest.raises(FednodeError, match="invalid commit"):
                make_repo(history, base, name="bad", **create_kwargs)
    assert store_state(history.store) == before
    assert history.branch_head(info, "main") == genesis
    assert fsck(history).problems == []


def test_verify_detects_a_wrong_parent_hash(history: History) -> None:
    info, cids, _ = linear(history, 1)
    good = history.load_commit(cids[-1])
    lie = history._signed(dataclasses.replace(good, parent_hashes=(bytes(32),), sig=b"", message="lie"))
    block = lie.encode()
    cid = CID.hash(DAG_CBOR, block)
    with history.store.write() as txn:
        txn.put_block(cid, block)
    problems = verify(history, info, cid).problems
    assert problems == [f"commit {cid}: parent {good.parents[0]} does not have the recorded commit hash"]


def test_remote_and_proposal_refs_resolve_and_gc_keeps_unfinished_fetches(history: History) -> None:
    info, cids, _ = linear(history, 2)
    peer = "12D3KooWPeer"
    with history.store.write() as txn:  # what the daemon records for a peer's announced head
        txn.set_ref(info.repo_id, f"remotes/{peer}/main", bytes(cids[-1]))
        txn.set_ref(info.repo_id, f"proposals/{peer}/main", bytes(cids[-2]))
    assert history.resolve(f"remotes/{peer}/main", info)[1] == cids[-1]
    assert history.resolve(f"proposals/{peer}/main~1", info)[1] == cids[-3]
    assert set(history.remote_refs(info)) == {f"remotes/{peer}/main", f"proposals/{peer}/main"}
    # an unfinished fetch's root keeps its blocks through gc, even with no ref pointing at it
    history.create_branch(info, "tmp", cids[-1])  # (a branch deleted below: its reflog keeps nothing)
    orphan = history.commit(info, ArraySource(perturb(model_arrays(0), seed=99)), "fetched", branch="tmp")
    history.delete_branch(info, "tmp")
    with history.store.write() as txn:
        txn.kv_put("net", b"fetch/" + info.repo_id + bytes(orphan.cid), b"\xa0")
    gc(history)
    assert history.load_commit(orphan.cid).message == "fetched"
    with history.store.write() as txn:
        txn.kv_delete("net", b"fetch/" + info.repo_id + bytes(orphan.cid))
    gc(history)
    with pytest.raises(NotFound):
        history.load_commit(orphan.cid)


# --- incremental verification (the daemon's) and verification without re-hashing ---------------------


def test_incremental_verify_checks_only_new_commits(history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    from fednode.workflows import merging

    info, cids, states = linear(history, 3)
    history.create_branch(info, "side", cids[1])
    history.commit(info, ArraySource(perturb(states[1], 50)), "side 1", branch="side")
    merging.merge(history, info, ["side"], "main", weighting="equal")
    old_head = revert(history, info, cids[1]).cid
    full = verify(history, info, old_head)
    assert full.problems == [] and full.commits == len(full.checked) == 7
    verified = set(full.checked)
    # new commits that read verified ones: delta bases, a merge's base and inputs, a revert's target
    history.commit(info, ArraySource(perturb(states[-1], 60)), "new")
    side = history.commit(info, ArraySource(perturb(states[1], 61)), "side 2", branch="side").cid
    merging.merge(history, info, ["side"], "main", weighting="equal")
    head = revert(history, info, cids[2]).cid
    new = {c for c, _ in history.walk([head, side])} - verified
    assert len(new) == 4

    calls: dict[str, list[CID]] = {"check_commit": [], "walk": [], "check_merge": []}
    check_commit, walk, check_merge = history.check_commit, history.walk, merging.check_merge

    def counting_check_commit(cid: CID, *args, **kw) -> list[str]:
        calls["check_commit"].append(cid)
        return check_commit(cid, *args, **kw)

    def counting_walk(heads: list[CID], *args, **kw):
        for cid, commit in walk(heads, *args, **kw):
            calls["walk"].append(cid)
            yield cid, commit

    def counting_check_merge(h: History, repo: RepoInfo, cid: CID) -> list[str]:
        calls["check_merge"].append(cid)
        return check_merge(h, repo, cid)

    monkeypatch.setattr(history, "check_commit", counting_check_commit)
    monkeypatch.setattr(history, "walk", counting_walk)
    monkeypatch.setattr(merging, "check_merge", counting_check_merge)
    report = verify(history, info, head, verified=verified.__contains__)
    assert report.problems == [] and set(report.checked) == new and report.commits == 4
    assert sorted(calls["check_commit"]) == sorted(new)
    assert set(calls["walk"]) == new  # state and revert/merge checks (both walks) see only new commits
    assert len(calls["check_merge"]) == 1 and calls["check_merge"][0] in new
    for name in calls:
        calls[name].clear()
    full = verify(history, info, head)  # the default (the CLI's) still checks everything
    assert full.problems == [] and full.commits == 11 and len(calls["check_commit"]) == 11
    assert len(calls["check_merge"]) == 2


def test_incremental_verify_does_not_recheck_verified_commits(history: History) -> None:
    info, cids, states = linear(history, 1, snapshot_interval=1)
    verified = set(verify(history, info, cids[-1]).checked)
    new = history.commit(info, ArraySource(perturb(states[-1], 70)), "new", exact=True).cid
    # a raw snapshot (the chain was at its limit): the new commit reads no tensor block of its parent
    assert {e.encoding for e in manifest_of(history, new).tensors.values()} <= {"raw", "same"}
    victim = tensor_block(history, cids[-1], "layer1.weight")
    corrupt_block(history, victim)
    assert verify(history, info, new, verified=verified.__contains__).problems == []
    assert any(str(victim) in p and "hash" in p for p in verify(history, info, new).problems)


def forge_state(history: History, info: RepoInfo, parent: CID, name: str, other: str) -> CID:
    """A properly signed commit on ``parent`` whose manifest gives tensor ``name`` the state of ``other``."""
    good = history.load_commit(parent)
    manifest = manifest_of(history, parent)
    assert manifest.tensors[name].encoding != "raw"  # a raw tensor's state is its own CID: nothing to forge
    tensors = {**manifest.tensors, name: dataclasses.replace(manifest.tensors[name],
                                                             state=manifest.tensors[other].state)}
    block = dataclasses.replace(manifest, tensors=tensors).encode()
    weights = CID.hash(DAG_CBOR, block)
    commit = history._signed(dataclasses.replace(good, weights=weights, message="forged state", sig=b""))
    cid = CID.hash(DAG_CBOR, commit.encode())
    with history.store.write() as txn:
        txn.put_block(weights, block)
        txn.put_block(cid, commit.encode())
    return cid


def test_incremental_verify_catches_a_bad_new_commit(history: History) -> None:
    info, cids, states = linear(history, 2)
    history.commit(info, ArraySource(perturb(states[-1], 80)), "delta")
    head = history.branch_head(info, "main")
    verified = set(verify(history, info, head).checked)
    assert head in verified
    forged = forge_commit(history, info, head)
    for rehash in (True, False):
        problems = verify(history, info, forged, verified=verified.__contains__, rehash=rehash).problems
        assert problems == [f"commit {forged}: invalid signature"]
    # a signed commit whose manifest records a state its tensor does not rebuild to (a re-signed copy of
    # the verified head with a new manifest: same parents, so everything it reads was verified)
    wrong = forge_state(history, info, head, "layer1.weight", "layer2.weight")
    for rehash in (True, False):
        problems = verify(history, info, wrong, verified=verified.__contains__, rehash=rehash).problems
        assert problems == [f"commit {wrong} tensor 'layer1.weight': reconstruction does not match its state CID"]
    assert verify(history, info, wrong, verified={*verified, wrong}.__contains__).problems == []


def test_verify_without_rehash_checks_structure_not_hashes(history: History) -> None:
    big = np.arange(200_000, dtype=np.float32)  # 800 KB: a DAG-PB root over several raw leaves
    info, genesis = make_repo(history, {"big": ("F32", big), **model_arrays(0)})
    root = tensor_block(history, genesis, "big")
    with history.store.read() as txn:
        leaves, _ = decode_node(txn.get_block(root))
    assert len(leaves) == 4 and all(c.codec == RAW for c in leaves)
    for rehash in (True, False):
        assert verify(history, info, genesis, rehash=rehash).problems == []
    # bytes altered in LMDB behind put_block's back: only re-hashing sees it (raw tensors have no state check)
    corrupt_block(history, leaves[1])
    assert any(str(leaves[1]) in p and "hash" in p for p in verify(history, info, genesis).problems)
    assert verify(history, info, genesis, rehash=False).problems == []
    # a missing leaf is reported either way
    with history.store.write() as txn:
        txn.delete_block(leaves[1])
    for rehash in (True, False):
        problems = verify(history, info, genesis, rehash=rehash).problems
        assert problems == [f"commit {genesis} tensor 'big': block {leaves[1]} is not in the store"]


# --- gc while others write; damaged daemon records ----------------------------------------------------


def test_gc_never_collects_a_commit_made_while_it_runs(history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit (or a daemon's fetch) that lands between gc's check and its sweep keeps its blocks:
    the sweep re-marks inside its own write transaction."""
    info, cids, states = linear(history, 1)
    check = reachable_blocks
    made = []

    def check_then_commit(*args, **kw):  # the real check; then another writer commits
        found = check(*args, **kw)
        made.append(history.commit(info, ArraySource(perturb(states[-1], seed=77)), "during gc"))
        return found

    monkeypatch.setattr(fsck_module, "reachable_blocks", check_then_commit)
    gc(history)
    assert made and history.branch_head(info, "main") == made[0].cid
    assert fsck(history).problems == []
    assert history.state(made[0].cid)


def test_damaged_fetch_records_stop_neither_fsck_nor_gc(history: History) -> None:
    info, cids, _ = linear(history, 1)
    with history.store.write() as txn:
        txn.kv_put("net", b"fetch/" + info.repo_id + b"\x01not a cid", b"\xa0")
        txn.kv_put("net", b"fetch/" + info.repo_id + bytes(cids[-1]), b"\xff not cbor")
    report = fsck(history)
    assert report.problems == [] and report.unfinished == []
    assert gc(history) == (0, 0)
