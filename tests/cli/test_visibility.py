"""Visibility from the user's side: ``repo create --private/--public``, what ``repo list``,
``status`` and ``members list`` say, and ``repo publish`` (the owner's irreversible decision)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_cli_refuses, copy_home, home_state, model_arrays, perturb, write_model
from solders.keypair import Keypair

from fednode.history import objstore, refstore
from fednode.node import init_home, open_node
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, Manifest, TensorEntry


@pytest.fixture(autouse=True)
def program_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded chain's program is built into this session's temp dir, not the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def _create(cli, tmp_path: Path, name: str, *flags: str) -> dict:
    v0 = model_arrays(0)
    made = json.loads(cli("repo", "create", name, "--from", write_model(tmp_path / f"{name}.safetensors", v0),
                          *flags, "--json").stdout)
    cli("commit", name, "--from", write_model(tmp_path / f"{name}1.safetensors", perturb(v0, 1)), "-m", "one")
    return made


def test_create_is_private_by_default_and_says_so(cli, tmp_path: Path, home: Path) -> None:
    model = write_model(tmp_path / "v0.safetensors", model_arrays(0))
    text = cli("repo", "create", "secret", "--from", model).stdout
    assert "created private repository secret" in text and "only the owner and its members" in text
    text = cli("repo", "create", "open", "--from", model, "--public").stdout
    assert "created public repository open" in text and "anyone can read it" in text
    made = json.loads(cli("repo", "create", "also", "--from", model, "--private", "--json").stdout)
    assert made["visibility"] == "private"
    rows = {r["name"]: r for r in json.loads(cli("repo", "list", "--json").stdout)}
    assert {n: r["visibility"] for n, r in rows.items()} == {"secret": "private", "open": "public", "also": "private"}
    assert rows["open"]["settings"]["visibility"] == "public"  # recorded in the genesis itself
    node = open_node(home)
    try:
        for name, want in (("secret", "private"), ("open", "public")):
            info = node.history.repo(name)
            assert node.history.load_commit(info.genesis).settings["visibility"] == want
    finally:
        node.close()
    table = cli("repo", "list").stdout
    assert "visibility" in table
    assert any("secret" in line and "private" in line for line in table.splitlines())
    assert any("open" in line and "public" in line for line in table.splitlines())


def test_status_and_members_list_show_who_reads(cli, tmp_path: Path) -> None:
    _create(cli, tmp_path, "m")
    status = json.loads(cli("status", "--json").stdout)
    assert status["repository"] == "m" and status["visibility"] == "private"
    assert "visibility private" in cli("status").stdout
    members = json.loads(cli("members", "list", "-r", "m", "--no-chain", "--json").stdout)
    assert members["visibility"] == "private" and members["readers"] == "the owner and 0 member(s)"
    assert "readers: the owner and 0 member(s)" in cli("members", "list", "-r", "m", "--no-chain").stdout
    cli("repo", "publish", "-r", "m", "--yes", "--no-chain")
    status = json.loads(cli("status", "--json").stdout)
    assert status["visibility"] == "public" and "visibility public" in cli("status").stdout
    _create(cli, tmp_path, "other")  # status lists every repository, not only the current one
    status = json.loads(cli("status", "--json").stdout)
    assert status["repositories"] == [{"name": "m", "visibility": "public"},
                                      {"name": "other", "visibility": "private"}]
    assert "repos      m (public), other (private)" in cli("status").stdout
    members = json.loads(cli("members", "list", "-r", "m", "--no-chain", "--json").stdout)
    assert members["visibility"] == "public" and members["readers"] == "anyone (public)"
    assert "readers: anyone (public)" in cli("members", "list", "-r", "m", "--no-chain").stdout


def test_publish_by_the_owner_then_refusals(cli, tmp_path: Path, home: Path) -> None:
    made = _create(cli, tmp_path, "m")
    head = json.loads(cli("log", "m", "--json").stdout)[0]["cid"]
    # irreversible: without a terminal, only --yes confirms; refused first, nothing stored
    assert_cli_refuses(cli, home, "repo", "publish", "-r", "m", "--no-chain", needles=("--yes", "nothing was changed"))
    done = json.loads(cli("repo", "publish", "-r", "m", "--yes", "--no-chain", "--json").stdout)
    assert done["visibility"] == "public" and done["anchored"] is None and done["branch"] == "main"
    log = json.loads(cli("log", "m", "--json").stdout)
    assert log[0]["cid"] == done["commit"] and log[1]["cid"] == head and len(log) == 3
    node = open_node(home)
    try:
        info = node.history.repo("m")
        commit = node.history.load_commit(CID.parse(done["commit"]))
        assert commit.info == {"visibility": "public"} and commit.author == node.identity.public_key
        assert node.history.published(info.repo_id) == CID.parse(done["commit"])
        a, b = node.history.state(CID.parse(head)), node.history.state(CID.parse(done["commit"]))
        assert all(a[n][1].tobytes() == b[n][1].tobytes() for n in a)  # no tensor changed
    finally:
        node.close()
    assert "3 commits ok" in cli("verify", "main", "-r", "m").stdout
    assert "fsck: " in cli("fsck").stdout
    assert {r["name"]: r["visibility"] for r in json.loads(cli("repo", "list", "--json").stdout)} == {"m": "public"}
    # idempotent refusal; no way back
    assert_cli_refuses(cli, home, "repo", "publish", "-r", "m", "--yes", "--no-chain", needles=("m is already public",))
    assert_cli_refuses(cli, home, "repo", "unpublish", "-r", "m",
                       needles=("cannot become private again", "anyone may already hold its weights"))
    public = _create(cli, tmp_path, "p", "--public")
    assert public["visibility"] == "public"
    assert_cli_refuses(cli, home, "repo", "publish", "-r", "p", "--yes", needles=("p is already public",))
    assert made["id"] != public["id"]


def test_publish_by_a_non_owner_is_refused(cli, tmp_path: Path, home: Path) -> None:
    _create(cli, tmp_path, "m")
    other = tmp_path / "other"
    key = tmp_path / "other.json"
    key.write_text(Keypair.from_seed(bytes([7]) * 32).to_json())
    init_home(other, key)
    shutil.rmtree(other / "store")
    copy_home(home / "store", other / "store")  # the same repository, held by someone else
    from click.testing import CliRunner

    from cli.app import main as cli_main

    def other_cli(*args: object, ok: bool = True):
        result = CliRunner().invoke(cli_main, ["--home", str(other), *map(str, args)], catch_exceptions=False)
        assert not ok or result.exit_code == 0, result.output
        return result

    assert_cli_refuses(other_cli, other, "repo", "publish", "-r", "m", "--yes", "--no-chain",
                       needles=("only the owner of m",))
    assert json.loads(other_cli("repo", "list", "--json").stdout)[0]["visibility"] == "private"


def test_publish_anchors_on_the_embedded_chain(cli, tmp_path: Path) -> None:
    _create(cli, tmp_path, "m")
    done = json.loads(cli("repo", "publish", "-r", "m", "--yes", "--json").stdout)
    assert done["anchored"] is True, done
    assert "nothing new to anchor" in cli("anchor", "main", "-r", "m").stdout
    assert "3 commits match" in cli("chain", "verify", "main", "-r", "m").stdout


def test_publish_with_the_chain_unreachable_says_so(cli, tmp_path: Path, home: Path) -> None:
    _create(cli, tmp_path, "m")
    cli("chain", "use", "rpc", "--url", "http://127.0.0.1:1")
    result = cli("repo", "publish", "-r", "m", "--yes")
    assert "m is now public" in result.stdout
    assert "not anchored" in result.stdout and "'fednode anchor main -r m' retries" in result.stdout
    assert json.loads(cli("repo", "list", "--json").stdout)[0]["visibility"] == "public"  # the decision stands


def _forge_publish(home: Path, author_seed: bytes | None, change: bool) -> None:
    """A publish commit on m's main: by another key, or one that claims other weights."""
    node = open_node(home)
    try:
        history = node.history
        info = history.repo("m")
        identity = node.identity if author_seed is None else type(node.identity)(Keypair.from_seed(author_seed))
        head = history.branch_head(info, "main")
        parent = history.load_commit(head)
        tensors = {n: TensorEntry(e.dtype, e.shape, "same", e.depth + 1, state=e.state)
                   for n, e in history.load_manifest(parent.weights).tensors.items()}
        if change:
            genesis = history.load_manifest(history.load_commit(info.genesis).weights).tensors
            name = "layer1.weight"
            tensors[name] = TensorEntry(tensors[name].dtype, tensors[name].shape, "same", tensors[name].depth,
                                        state=genesis[name].state)
        manifest = Manifest(tensors)
        commit = objstore.sign(identity, Commit(
            repo=info.repo_id, parents=(head,), parent_hashes=(parent.commit_hash(),), kind="update",
            weights=CID.hash(DAG_CBOR, manifest.encode()), author=identity.public_key,
            time_ms=parent.time_ms + 1, message="make the repository public", metrics={},
            info={"visibility": "public"}))
        with node.store.write() as txn:
            objstore.put_objects(txn, manifest, commit)
            refstore.set_branch(txn, info.repo_id, "main", commit.cid())
            txn.index_commit(commit.cid(), info.repo_id, commit.commit_hash())
    finally:
        node.close()


@pytest.mark.parametrize(("seed", "change", "needle"), [
    (bytes([9]) * 32, False, "only the repository owner can make it public"),
    (None, True, "changes its weights"),
], ids=["not-the-owner", "changed-weights"])
def test_verify_rejects_a_bad_publish_commit(cli, tmp_path: Path, home: Path, seed: bytes | None, change: bool,
                                             needle: str) -> None:
    _create(cli, tmp_path, "m")
    _forge_publish(home, seed, change)
    before = home_state(home)
    result = cli("verify", "main", "-r", "m", ok=False)
    assert result.exit_code == 1 and needle in result.output + result.stderr
    assert home_state(home) == before
