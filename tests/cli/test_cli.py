"""The fednode CLI: end-to-end flows through the real console script, the rest through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_one_line_error,
    assert_same_arrays,
    home_state,
    model_arrays,
    perturb,
    read_model,
    run_fednode,
    write_model,
)
from solders.keypair import Keypair

from fednode.history import repo_id_text
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource
from fednode.workflows.verify import verify
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit


def test_end_to_end_real_console_script(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = tmp_path / "id.json"
    key.write_text(Keypair().to_json())
    run_fednode(home, "init", "--keypair", key)
    v0 = model_arrays(0)
    v1 = perturb(v0, 1)
    m0 = write_model(tmp_path / "v0.safetensors", v0)
    m1 = write_model(tmp_path / "v1.safetensors", v1)
    created = json.loads(run_fednode(home, "repo", "create", "mnist", "--from", m0, "--json").stdout)
    committed = json.loads(run_fednode(home, "commit", "--from", m1, "-m", "epoch 1", "--metric", "loss=0.5",
                                       "--json").stdout)
    assert committed["parents"] == [created["genesis"]]
    assert committed["metrics"] == {"loss": 0.5} and committed["kind"] == "update"
    assert committed["repo"] == created["id"]
    log = json.loads(run_fednode(home, "log", "--json").stdout)
    assert [e["cid"] for e in log] == [committed["cid"], created["genesis"]]
    assert log[0]["refs"] == ["main"]
    out = tmp_path / "out.safetensors"
    run_fednode(home, "checkout", "HEAD~1", "--out", out)
    assert_same_arrays(read_model(out), v0)
    verify = run_fednode(home, "verify", "main")
    assert "2 commits ok" in verify.stdout
    assert "fsck: 2 commits ok" in run_fednode(home, "fsck").stdout
    # errors: one line on stderr, non-zero exit, nothing stored
    before = home_state(home)
    bad = run_fednode(home, "checkout", "nope", "--out", tmp_path / "x.safetensors", check=False)
    assert bad.returncode != 0
    assert_one_line_error(bad.stderr, "unknown revision")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model at all, just text" * 10)
    bad = run_fednode(home, "commit", "--from", junk, "-m", "junk", check=False)
    assert bad.returncode != 0
    assert_one_line_error(bad.stderr, "not a safetensors file")
    assert home_state(home) == before


# --- in-process CLI -------------------------------------------------------------------------------------


@pytest.fixture
def repo(cli, tmp_path: Path) -> dict:
    """A repository 'm' with two commits on main, created through the CLI."""
    v0 = model_arrays(0)
    v1 = perturb(v0, 1)
    created = json.loads(cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0),
                             "--json").stdout)
    c1 = json.loads(cli("commit", "--from", write_model(tmp_path / "v1.safetensors", v1), "-m", "one",
                        "--json").stdout)
    return {"genesis": created["genesis"], "c1": c1["cid"], "id": created["id"], "v0": v0, "v1": v1}


def test_repo_create_list_use(cli, tmp_path: Path, repo: dict) -> None:
    other = write_model(tmp_path / "o.safetensors", model_arrays(5))
    text = cli("repo", "create", "other", "--from", other, "--scale-bits", "16", "--snapshot-interval", "2").stdout
    assert "created private repository other" in text
    rows = {r["name"]: r for r in json.loads(cli("repo", "list", "--json").stdout)}
    assert set(rows) == {"m", "other"}
    assert rows["other"]["settings"] == {"name": "other", "scale_bits": 16, "snapshot_interval": 2,
                                         "visibility": "private"}
    assert rows["other"]["visibility"] == "private"
    assert rows["m"]["id"] == repo["id"] and rows["m"]["branches"] == 1
    assert "other" in cli("repo", "list").stdout
    # create selected 'other'; log now shows it
    assert len(json.loads(cli("log", "--json").stdout)) == 1
    assert "current repository: m" in cli("repo", "use", "m").stdout
    assert len(json.loads(cli("log", "--json").stdout)) == 2
    assert len(json.loads(cli("log", "other", "--json").stdout)) == 1
    # a repo id works as a name
    assert len(json.loads(cli("log", repo["id"], "--json").stdout)) == 2
    bad = cli("repo", "use", "ghost", ok=False)
    assert bad.exit_code != 0
    assert_one_line_error(bad.stderr, "unknown repository")
    dup = cli("repo", "create", "m", "--from", other, ok=False)
    assert_one_line_error(dup.stderr, "already exists")


def test_no_repository_selected(cli) -> None:
    result = cli("log", ok=False)
    assert result.exit_code != 0
    assert_one_line_error(result.stderr, "no repository given")


def test_show_json(cli, repo: dict) -> None:
    data = json.loads(cli("show", "HEAD", "--json").stdout)
    assert data["cid"] == repo["c1"] and data["signature_valid"] is True
    tensors = {t["name"]: t for t in data["tensors"]}
    assert set(tensors) == set(repo["v1"])
    for name, (dtype, arr) in repo["v1"].items():
        t = tensors[name]
        assert t["dtype"] == dtype and t["shape"] == list(arr.shape)
        assert t["encoding"] in ("xor", "same")  # the lossless default
        if t["encoding"] == "xor":
            assert CID.parse(t["cid"]).codec in (0x55, 0x70) and t["depth"] == 1
    assert tensors["steps"]["encoding"] == "same" and tensors["steps"]["cid"] is None
    genesis = json.loads(cli("show", repo["genesis"], "--json").stdout)
    assert {t["encoding"] for t in genesis["tensors"]} == {"raw"}
    assert all(CID.parse(t["cid"]) for t in genesis["tensors"])
    assert "layer1.weight" in cli("show", "main").stdout


def test_diff_json_against_numpy(cli, repo: dict) -> None:
    data = json.loads(cli("diff", "main~1", "main", "--json").stdout)
    assert data["a"] == repo["genesis"] and data["b"] == repo["c1"]
    rows = {r["name"]: r for r in data["tensors"]}
    for name, (_, a) in repo["v0"].items():
        b = repo["v1"][name][1]
        xa, xb = a.astype(np.float64), b.astype(np.float64)
        row = rows[name]
        if np.array_equal(xa, xb):
            assert row["status"] == "same"
            continue
        assert row["status"] == "changed"
        assert row["l2"] == pytest.approx(np.linalg.norm(xb - xa), rel=1e-9)
        assert row["relative"] == pytest.approx(np.linalg.norm(xb - xa) / np.linalg.norm(xa), rel=1e-9)
        assert row["changed_fraction"] == pytest.approx(np.mean(xa != xb))
    assert "L2 change" in cli("diff", "main~1", "main").stdout


def test_checkout_round_trips(cli, repo: dict, tmp_path: Path) -> None:
    import torch

    st = tmp_path / "c.safetensors"
    assert "wrote" in cli("checkout", "main", "--out", st).stdout
    assert_same_arrays(read_model(st), repo["v1"])
    again = tmp_path / "again.safetensors"
    cli("checkout", repo["c1"], "--out", again)
    assert again.read_bytes() == st.read_bytes()
    pt = tmp_path / "c.pt"
    cli("checkout", "main~1", "--out", pt)
    loaded = torch.load(pt, weights_only=True)
    for name, (_, arr) in repo["v0"].items():
        assert loaded[name].numpy().tobytes() == arr.tobytes()
    # a .pt file commits like a safetensors file
    state = {k: v.clone() for k, v in loaded.items()}
    state["layer1.bias"] += 0.25
    torch.save(state, tmp_path / "next.pt")
    result = json.loads(cli("commit", "--from", tmp_path / "next.pt", "-m", "from pt", "--json").stdout)
    cli("checkout", result["cid"], "--out", tmp_path / "next.safetensors")
    back = read_model(tmp_path / "next.safetensors")
    assert back["layer1.bias"][1].tobytes() == state["layer1.bias"].numpy().tobytes()


def test_branch_tag_switch(cli, repo: dict, tmp_path: Path) -> None:
    assert "created branch exp" in cli("branch", "exp", "main~1").stdout
    listing = json.loads(cli("branch", "--json").stdout)
    assert listing == {"current": "main", "branches": {"main": repo["c1"], "exp": repo["genesis"]}}
    cli("switch", "exp")
    assert json.loads(cli("branch", "--json").stdout)["current"] == "exp"
    v2 = perturb(repo["v0"], 7)
    c2 = json.loads(cli("commit", "--from", write_model(tmp_path / "v2.safetensors", v2), "-m", "exp 1",
                        "--json").stdout)
    assert c2["parents"] == [repo["genesis"]]
    assert json.loads(cli("branch", "--json").stdout)["branches"]["exp"] == c2["cid"]
    assert json.loads(cli("branch", "--json").stdout)["branches"]["main"] == repo["c1"]
    cli("branch", "-s", "main")
    assert json.loads(cli("branch", "--json").stdout)["current"] == "main"
    cli("branch", "-s", "other", "exp")
    assert json.loads(cli("branch", "--json").stdout) == {
        "current": "other", "branches": {"main": repo["c1"], "exp": c2["cid"], "other": c2["cid"]}}
    cli("switch", "main")
    assert "deleted branch other" in cli("branch", "-d", "other").stdout
    cur = cli("branch", "-d", "main", ok=False)
    assert_one_line_error(cur.stderr, "current branch")
    # tags
    assert "tagged" in cli("tag", "v1", "main~1").stdout
    assert json.loads(cli("tag", "--json").stdout) == {"v1": repo["genesis"]}
    assert json.loads(cli("show", "v1", "--json").stdout)["cid"] == repo["genesis"]
    dup = cli("tag", "v1", ok=False)
    assert_one_line_error(dup.stderr, "already exists")
    cli("tag", "-d", "v1")
    assert json.loads(cli("tag", "--json").stdout) == {}
    for args, needle in [(("branch", "bad name"), "invalid branch name"), (("switch", "ghost"), "unknown branch"),
                         (("branch", "-d", "ghost"), "unknown branch"), (("tag", "-d", "ghost"), "unknown tag")]:
        result = cli(*args, ok=False)
        assert result.exit_code != 0
        assert_one_line_error(result.stderr, needle)


def test_revisions_through_cli(cli, repo: dict) -> None:
    def cid_of(rev: str) -> str:
        return json.loads(cli("show", rev, "--json").stdout)["cid"]

    assert cid_of(repo["c1"]) == repo["c1"]
    assert cid_of(repo["c1"][:20]) == repo["c1"]
    assert cid_of("HEAD~1") == repo["genesis"]
    assert cid_of("m:main~1") == repo["genesis"]
    assert cid_of(f"m:{repo['c1']}") == repo["c1"]
    for rev, needle in [("bafyrei", "ambiguous"), ("main~9", "past the genesis"), ("main^2", "parent"),
                        ("ghost", "unknown revision"), ("ghost:main", "unknown repository"),
                        (str(CID.hash(DAG_CBOR, b"x")), "unknown revision")]:
        result = cli("show", rev, ok=False)
        assert result.exit_code == 1, rev
        assert_one_line_error(result.stderr, needle)


def make_merge_via_api(home: Path) -> dict[str, str]:
    """main: genesis - c1 - c2 - merge; side: c1 - s1 - s2 - merge (built through the Python API)."""
    with open_node(home) as node:
        h = node.history
        info = h.repo("m")
        c1 = h.branch_head(info, "main")
        arrays = {n: (e.dtype, a.reshape(e.shape)) for n, (e, a) in h.state(c1).items()}
        c2 = h.commit(info, ArraySource(perturb(arrays, 20)), "main 2").cid
        h.create_branch(info, "side", c1)
        s1 = h.commit(info, ArraySource(perturb(arrays, 21)), "side 1", branch="side").cid
        s2 = h.commit(info, ArraySource(perturb(arrays, 22)), "side 2", branch="side").cid
        m = h.commit(info, ArraySource(perturb(arrays, 23)), "merge side", kind="merge", extra_parents=(s2,)).cid
        return {"c2": str(c2), "s1": str(s1), "s2": str(s2), "merge": str(m)}


def test_log_graph_with_merge(cli, repo: dict, home: Path) -> None:
    c = make_merge_via_api(home)
    entries = json.loads(cli("log", "--json").stdout)
    order = [e["cid"] for e in entries]
    assert order[0] == c["merge"] and order[-1] == repo["genesis"]
    assert set(order) == {*c.values(), repo["c1"], repo["genesis"]}
    assert entries[0]["parents"] == [c["c2"], c["s2"]] and entries[0]["kind"] == "merge"
    for child, parent in [("s2", "s1"), ("merge", "c2"), ("merge", "s2")]:  # children before parents
        assert order.index(c[child]) < order.index(c[parent])
    assert order.index(c["s1"]) < order.index(repo["c1"]) and order.index(c["c2"]) < order.index(repo["c1"])
    lines = cli("log").stdout.splitlines()
    shape = [line.split("bafy")[0].rstrip() if "bafy" in line else line.rstrip() for line in lines]
    text = "\n".join(lines)
    assert len([g for g in shape if "*" in g]) == 6, text
    assert "merge side" in lines[0] and "(HEAD -> main)" in lines[0] and shape[0] == "*"
    assert shape[1] == "|\\", text
    assert shape.count("| *") == 2 and shape.count("* |") == 1, text
    fork = next(i for i, line in enumerate(lines) if repo["c1"][:16] in line)  # the fork is drawn above c1
    assert shape[fork - 1] == "|/" and shape[fork] == "*", text
    assert shape[-1] == "*" and "initial weights" in lines[-1]
    # second-parent revisions and the merge verify
    assert json.loads(cli("show", "main^2", "--json").stdout)["cid"] == c["s2"]
    assert json.loads(cli("show", "main^2~1", "--json").stdout)["cid"] == c["s1"]
    assert json.loads(cli("show", "main^1", "--json").stdout)["cid"] == c["c2"]
    assert "fsck: 6 commits ok" in cli("fsck").stdout
    assert "4 commits ok" in cli("verify", "side").stdout
    assert len(json.loads(cli("log", "-n", "2", "--json").stdout)) == 2
    assert len(json.loads(cli("log", "--all", "--json").stdout)) == 6
    assert len(json.loads(cli("log", "m", "side", "--json").stdout)) == 4


def test_revert_through_cli(cli, repo: dict, tmp_path: Path) -> None:
    v2 = perturb(repo["v1"], 3, grid=None)
    cli("commit", "--from", write_model(tmp_path / "v2.safetensors", v2), "-m", "two")
    assert "revert to" in cli("revert", "main~2").stdout
    head = json.loads(cli("show", "HEAD", "--json").stdout)
    assert head["kind"] == "revert" and head["info"]["revert"]["target"] == repo["genesis"]
    cli("checkout", "HEAD", "--out", tmp_path / "r.safetensors")
    assert_same_arrays(read_model(tmp_path / "r.safetensors"), repo["v0"])
    diff = json.loads(cli("diff", "HEAD", repo["genesis"], "--json").stdout)
    assert {r["status"] for r in diff["tensors"]} == {"same"}
    assert "4 commits ok" in cli("verify", "HEAD").stdout


def test_gc_through_cli(cli, repo: dict, home: Path, tmp_path: Path) -> None:
    cli("branch", "tmp")
    big = perturb(repo["v1"], 9, eps=1.0)
    c = json.loads(cli("commit", "--from", write_model(tmp_path / "b.safetensors", big), "-b", "tmp", "-m", "tmp",
                       "--json").stdout)
    assert json.loads(cli("gc", "--json").stdout) == {"blocks_removed": 0, "bytes_freed": 0}
    before = home_state(home)[0]
    cli("branch", "-d", "tmp")
    result = json.loads(cli("gc", "--json").stdout)
    after = home_state(home)[0]
    assert result["blocks_removed"] == len(before - after) > 0 and result["bytes_freed"] > 0
    assert bytes(CID.parse(c["cid"])) in before - after
    assert "fsck: 2 commits ok" in cli("fsck").stdout
    assert "removed 0 unreachable blocks" in cli("gc").stdout
    gone = cli("show", c["cid"], ok=False)
    assert_one_line_error(gone.stderr, "unknown revision")


# --- bad input: one-line error, non-zero exit, nothing stored ----------------------------------------


def check_refused(cli, home: Path, args: tuple, *needles: str) -> None:
    before = home_state(home)
    result = cli(*args, ok=False)
    assert result.exit_code == 1, (args, result.output)
    assert_one_line_error(result.stderr, *needles)
    assert home_state(home) == before


def test_mismatched_models_refused(cli, repo: dict, home: Path, tmp_path: Path) -> None:
    v = repo["v1"]
    cases = {
        "missing": ({k: x for k, x in v.items() if k != "layer2.weight"}, "missing layer2.weight"),
        "extra": ({**v, "head.bias": ("F32", np.zeros(3, np.float32))}, "unexpected head.bias"),
        "shape": ({**v, "layer1.bias": ("F32", np.zeros(15, np.float32))}, "layer1.bias"),
        "dtype": ({**v, "layer1.bias": ("F16", v["layer1.bias"][1].astype(np.float16))}, "F16"),
    }
    for name, (arrays, needle) in cases.items():
        path = write_model(tmp_path / f"{name}.safetensors", arrays)
        check_refused(cli, home, ("commit", "--from", path, "-m", name), needle)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not a safetensors file"),
        (b"\x00" * 7, "not a safetensors file"),
        (b"\xff" * 64, "not a safetensors file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "not a safetensors file"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "holds no tensors"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00[12]", "not a safetensors file"),
    ],
)
def test_not_safetensors_refused(cli, repo: dict, home: Path, tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    check_refused(cli, home, ("commit", "--from", path, "-m", "bad"), needle)
    check_refused(cli, home, ("repo", "create", "fresh", "--from", path), needle)


def test_other_bad_inputs_refused(cli, repo: dict, home: Path, tmp_path: Path) -> None:
    model = write_model(tmp_path / "ok.safetensors", perturb(repo["v1"], 4))
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a pickle")
    check_refused(cli, home, ("commit", "--from", tmp_path / "absent.safetensors", "-m", "x"), "no such file")
    check_refused(cli, home, ("commit", "--from", bad_pt, "-m", "x"), "not a PyTorch state_dict")
    check_refused(cli, home, ("commit", "--from", model, "-m", "x", "--metric", "loss"), "invalid --metric")
    check_refused(cli, home, ("commit", "--from", model, "-m", "x", "--metric", "loss=nan"), "invalid --metric")
    check_refused(cli, home, ("commit", "--from", model, "-m", "x", "-b", "ghost"), "unknown branch")
    check_refused(cli, home, ("commit", "ghost", "--from", model, "-m", "x"), "unknown repository")
    check_refused(cli, home, ("checkout", "ghost", "--out", tmp_path / "o.safetensors"), "unknown revision")
    check_refused(cli, home, ("revert", "ghost"), "unknown revision")
    check_refused(cli, home, ("diff", "main", "ghost"), "unknown revision")
    check_refused(cli, home, ("branch", "x", "ghost"), "unknown revision")
    check_refused(cli, home, ("tag", "x", "main~7"), "past the genesis")
    check_refused(cli, home, ("repo", "create", "bad:name", "--from", model), "invalid repository name")
    assert not (tmp_path / "o.safetensors").exists()


def corrupt(home: Path, cid: CID) -> None:
    with open_node(home) as node, node.store.write() as txn:
        block = bytearray(txn.get_block(cid))
        block[-1] ^= 0xFF
        txn.delete_block(cid)
        txn.put_block(cid, bytes(block), trusted=True)


def test_corrupted_tensor_block(cli, repo: dict, home: Path, tmp_path: Path) -> None:
    genesis = json.loads(cli("show", repo["genesis"], "--json").stdout)
    victim = CID.parse(next(t["cid"] for t in genesis["tensors"] if t["name"] == "layer1.weight"))
    corrupt(home, victim)
    for args in (("verify", "main"), ("fsck",), ("checkout", "main", "--out", tmp_path / "o.safetensors"),
                 ("gc",)):
        before = home_state(home)
        result = cli(*args, ok=False)
        assert result.exit_code == 1, args
        assert "hash" in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
        assert home_state(home) == before
    assert not (tmp_path / "o.safetensors").exists()
    verify = json.loads(cli("verify", "main", "--json", ok=False).stdout)
    assert verify["ok"] is False and any(str(victim) in p for p in verify["problems"])


def test_corrupted_commit_block(cli, repo: dict, home: Path, tmp_path: Path) -> None:
    corrupt(home, CID.parse(repo["c1"]))
    for args in (("verify", "main"), ("fsck",), ("checkout", "main", "--out", tmp_path / "o.safetensors"),
                 ("log",)):
        result = cli(*args, ok=False)
        assert result.exit_code == 1, args
        assert "hash" in result.stderr, (args, result.stderr)


def test_tampered_signature_detected_by_verify(cli, repo: dict, home: Path) -> None:
    with open_node(home) as node:
        h = node.history
        info = h.repo("m")
        good = h.load_commit(CID.parse(repo["c1"]))
        forged = Commit(**{**good.__dict__, "message": "rewritten history"})  # keeps the old signature
        block = forged.encode()
        cid = CID.hash(DAG_CBOR, block)
        with node.store.write() as txn:
            txn.put_block(cid, block)
            txn.set_ref(info.repo_id, "heads/evil", bytes(cid))
            txn.index_commit(cid, info.repo_id, forged.commit_hash())
        assert verify(h, info, CID.parse(repo["c1"])).problems == []
    result = cli("verify", "evil", ok=False)
    assert result.exit_code == 1
    assert f"commit {cid}: invalid signature" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: verify failed")
    assert cli("fsck", ok=False).exit_code == 1
    assert json.loads(cli("show", "evil", "--json").stdout)["signature_valid"] is False
    assert "2 commits ok" in cli("verify", "main").stdout


def test_repo_id_text_matches_cli(cli, repo: dict) -> None:
    with open_node(Path(cli("id", "--json").stdout and json.loads(cli("id", "--json").stdout)["home"])) as node:
        assert repo_id_text(node.history.repo("m").repo_id) == repo["id"]
