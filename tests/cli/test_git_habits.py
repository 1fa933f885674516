"""Git habits through the real CLI: status without a daemon, reset / branch -f with a reflog,
proposals, remote names, -h, "nothing to commit", ambiguous CID prefixes, hints that name real options."""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import click
import pytest
from daemon_harness import DaemonProc, daemons, make_home
from helpers import ROOT, assert_cli_refuses, assert_one_line_error, model_arrays, perturb, run_fednode, write_model
from solders.keypair import Keypair

from cli.app import main as cli_main
from fednode.history import History
from fednode.identity import Identity
from fednode.node import open_node
from fednode.storage.netstate import NetState
from fednode.tensors.modelio import ArraySource
from protocol.messages import MergeProposal


@pytest.fixture
def repo(cli, tmp_path: Path) -> dict:
    """Repository 'm' (current) with genesis, c1, c2 on main."""
    v0 = model_arrays(0)
    v1, v2 = perturb(v0, 1), perturb(v0, 2)
    g = json.loads(cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0),
                       "--json").stdout)["genesis"]
    c1 = json.loads(cli("commit", "--from", write_model(tmp_path / "v1.safetensors", v1), "-m", "one",
                        "--json").stdout)["cid"]
    c2 = json.loads(cli("commit", "--from", write_model(tmp_path / "v2.safetensors", v2), "-m", "two",
                        "--json").stdout)["cid"]
    return {"genesis": g, "c1": c1, "c2": c2, "v2": v2}


refused = assert_cli_refuses


def head(cli, branch: str = "main") -> str:
    return json.loads(cli("show", branch, "--json").stdout)["cid"]


# --- status -------------------------------------------------------------------------------------------


def test_status_without_a_daemon(cli, home: Path, repo: dict) -> None:
    text = cli("status").stdout
    assert "repository m" in text and "branch     main" in text
    assert f"head       {repo['c2'][:16]} two" in text
    assert "daemon     not running" in text
    data = json.loads(cli("status", "--json").stdout)
    assert (data["repository"], data["branch"], data["head"], data["daemon"]) == ("m", "main", repo["c2"],
                                                                                  "not running")
    # a daemon.json left by a killed daemon: no answer on its port is "not running", quickly, exit 0
    (home / "daemon.json").write_text(json.dumps({"pid": 999999, "api_port": 9}))
    (home / "api.token").write_text("x")
    started = time.monotonic()
    data = json.loads(cli("status", "--json").stdout)
    assert data["daemon"].startswith("not running (a stale daemon.json") and time.monotonic() - started < 5
    cli("switch", "main")
    cli("branch", "side", repo["c1"], "-s")
    assert json.loads(cli("status", "--json").stdout)["head"] == repo["c1"]


def test_status_with_a_running_daemon(tmp_path: Path) -> None:
    home = make_home(tmp_path, "a")
    model = write_model(tmp_path / "v0.safetensors", model_arrays(0))
    run_fednode(home, "repo", "create", "m", "--from", str(model))
    them = _other_identity()  # a peer's head as the daemon records it, and a name for that peer
    with open_node(home) as node:
        info = node.history.repo("m")
        with node.store.write() as txn:
            txn.set_ref(info.repo_id, f"remotes/{them.peer_id}/main", bytes(info.genesis))
    run_fednode(home, "remote", "add", "alice", them.peer_id)
    d = DaemonProc(home)
    with daemons(d):
        d.start()
        data = json.loads(run_fednode(home, "status", "--json").stdout)
        assert data["daemon"] == "running" and data["peer_id"] == d.peer_id and data["repository"] == "m"
        assert data["pid"] == d.proc.pid and isinstance(data["topics"], list)
        text = run_fednode(home, "status").stdout
        assert "repository m" in text and f"peer id    {d.peer_id}" in text and "daemon     running" in text
        pulled = run_fednode(home, "pull", "m", "--timeout", "1").stdout  # no peers: the refs it has
        assert f"remotes/alice/main {info.genesis}" in pulled and them.peer_id not in pulled


# --- reset, branch -f, reflog ---------------------------------------------------------------------------


def test_reset_moves_the_branch_and_the_reflog_keeps_the_old_head(cli, home: Path, repo: dict,
                                                                  tmp_path: Path) -> None:
    out = cli("reset", "HEAD~1").stdout
    assert head(cli) == repo["c1"] and repo["c2"][:16] in out and "reflog" in out
    entries = json.loads(cli("reflog", "--json").stdout)
    assert [(e["old"], e["new"]) for e in entries] == [
        (repo["c2"], repo["c1"]), (repo["c1"], repo["c2"]), (repo["genesis"], repo["c1"]), (None, repo["genesis"])]
    assert entries[0]["reason"] == "reset: moving to HEAD~1"
    assert entries[1]["reason"] == "update: two" and entries[3]["reason"] == "created: initial weights"
    lines = cli("reflog").stdout.splitlines()
    assert lines[0].startswith(f"{repo['c1'][:16]} main@{{0}} ") and lines[0].endswith("reset: moving to HEAD~1")
    assert len(lines) == 4 and len(cli("reflog", "-n", "2").stdout.splitlines()) == 2
    # the old head is reachable through the reflog: main@{1}
    cli("reset", "main@{1}")
    assert head(cli) == repo["c2"]
    # bad targets: one line, nothing moved or stored
    refused(cli, home, "reset", "ghost", needles=("unknown revision",))
    refused(cli, home, "reset", "main@{9}", needles=("reflog", "entries"))
    refused(cli, home, "reset", "HEAD", "-b", "nobranch", needles=("unknown branch",))
    with open_node(home) as node:  # a commit of another repository
        _, other = node.history.create_repo("other", ArraySource(model_arrays(5)))
    refused(cli, home, "reset", str(other.cid), needles=("not in repository m",))
    # a revert is logged with its kind and message; a fast-forward over several commits as such
    cli("revert", repo["genesis"])
    assert json.loads(cli("reflog", "--json").stdout)[0]["reason"].startswith("revert: revert to")
    cli("branch", "-f", "main", repo["genesis"])
    cli("merge", "--into", "main", repo["c2"])
    assert json.loads(cli("reflog", "--json").stdout)[0] | {"time_ms": 0} == {
        "old": repo["genesis"], "new": repo["c2"], "reason": "fast-forward: two", "time_ms": 0}


def test_gc_keeps_what_the_reflog_names(cli, home: Path, repo: dict) -> None:
    cli("reset", repo["genesis"])
    assert json.loads(cli("gc", "--json").stdout)["blocks_removed"] == 0  # c1, c2: old heads of main
    assert "commits ok" in cli("fsck").stdout
    cli("reset", "main@{1}")  # undone after a gc: nothing was lost
    assert head(cli) == repo["c2"]
    cli("checkout", "main", "--out", home / "o.safetensors")
    # a deleted branch's reflog is kept for reading, but holds nothing back from gc
    cli("branch", "tmp", repo["c1"])
    cli("commit", "-b", "tmp", "--from", home / "o.safetensors", "-m", "on tmp")
    tmp_head = head(cli, "tmp")
    cli("branch", "-d", "tmp")
    assert json.loads(cli("gc", "--json").stdout)["blocks_removed"] > 0
    assert json.loads(cli("reflog", "tmp", "--json").stdout)[0]["old"] == tmp_head
    refused(cli, home, "show", tmp_head, needles=("unknown revision",))
    assert "fsck: 3 commits ok" in cli("fsck").stdout


def test_branch_force_creates_or_moves(cli, home: Path, repo: dict) -> None:
    refused(cli, home, "branch", "main", repo["c1"], needles=("already exists", "branch -f"))
    out = cli("branch", "-f", "main", repo["c1"]).stdout
    assert "moved branch main" in out and head(cli) == repo["c1"]
    cli("branch", "-f", "feature", repo["genesis"])
    assert head(cli, "feature") == repo["genesis"]
    cli("branch", "--force", "feature", "main")
    moves = json.loads(cli("reflog", "feature", "--json").stdout)
    assert [(m["old"], m["new"]) for m in moves] == [(repo["genesis"], repo["c1"]), (None, repo["genesis"])]
    assert moves[0]["reason"] == "branch -f: moving to main"
    assert json.loads(cli("reflog", "main", "--json").stdout)[0]["old"] == repo["c2"]
    refused(cli, home, "branch", "-f", "bad..name", "main", needles=("invalid branch name",))
    refused(cli, home, "branch", "-f", needles=("-f moves a branch",))
    refused(cli, home, "reflog", "nothere", needles=("unknown branch",))
    # a deleted branch keeps its reflog: the last head can be found again
    cli("branch", "-d", "feature")
    assert json.loads(cli("reflog", "feature", "--json").stdout)[0]["old"] == repo["c1"]


# --- proposals and remote names ---------------------------------------------------------------------------


def _other_identity() -> Identity:
    return Identity(Keypair.from_seed(bytes(range(100, 132))))


def test_proposals_list_author_branch_message_age(cli, home: Path, repo: dict) -> None:
    assert "no merge proposals for m" in cli("proposals").stdout
    them = _other_identity()
    with open_node(home) as node:
        info = node.history.repo("m")
        theirs = History(node.store, them)
        theirs.create_branch(info, "tmp", node.history.branch_head(info, "main"))
        result = theirs.commit(info, ArraySource(perturb(repo["v2"], 7)), "their update", branch="tmp")
        node.history.delete_branch(info, "tmp")
        sent = int(time.time() * 1000) - 3 * 3600 * 1000
        msg = MergeProposal(info.repo_id, "main", result.cid, "please merge my round", 1, sent, them.public_key)
        msg = MergeProposal(**{**msg.__dict__, "sig": them.sign(msg.signing_hash())})
        NetState(node.store).put_proposal(info.repo_id, them.public_key, "main", msg.encode())
        with node.store.write() as txn:
            txn.set_ref(info.repo_id, f"proposals/{them.peer_id}/main", bytes(result.cid))
    rows = json.loads(cli("proposals", "--json").stdout)
    assert rows == [{"ref": f"proposals/{them.peer_id}/main", "peer": them.peer_id, "author": them.address,
                     "branch": "main", "head": str(result.cid), "message": "please merge my round",
                     "time_ms": sent}]
    line = cli("proposals").stdout.strip()
    assert "please merge my round" in line and "3h ago" in line and them.address[:12] in line
    cli("remote", "add", "bob", them.address)  # a wallet address names the same key's peer id
    assert json.loads(cli("proposals", "--json").stdout)[0]["ref"] == "proposals/bob/main"
    assert json.loads(cli("show", "proposals/bob/main", "--json").stdout)["cid"] == str(result.cid)


def test_remote_names(cli, home: Path, repo: dict) -> None:
    them = _other_identity()
    with open_node(home) as node:
        info = node.history.repo("m")
        with node.store.write() as txn:
            txn.set_ref(info.repo_id, f"remotes/{them.peer_id}/main", bytes(node.history.resolve(repo["c1"], info)[1]))
    assert f"remotes/{them.peer_id}/main" in cli("log", "--all", "--oneline").stdout
    assert "remote alice is " + them.peer_id in cli("remote", "add", "alice", them.peer_id).stdout
    assert json.loads(cli("remote", "list", "--json").stdout) == {"alice": them.peer_id}
    log = cli("log", "--all", "--oneline").stdout
    assert "remotes/alice/main" in log and them.peer_id not in log
    assert "remotes/alice/main" in cli("branch").stdout
    assert json.loads(cli("show", "remotes/alice/main", "--json").stdout)["cid"] == repo["c1"]
    assert json.loads(cli("diff", "remotes/alice/main", "main", "--json").stdout)["a"] == repo["c1"]
    refused(cli, home, "remote", "add", "alice", Identity.generate().peer_id, needles=("already exists",))
    refused(cli, home, "remote", "add", "carol", them.address, needles=("already named", "alice"))
    refused(cli, home, "remote", "add", "9lives", them.peer_id, needles=("invalid remote name",))
    refused(cli, home, "remote", "add", "dave", "not-a-peer", needles=("not a peer id",))
    refused(cli, home, "remote", "remove", "nobody", needles=("unknown remote",))
    cli("remote", "remove", "alice")
    assert f"remotes/{them.peer_id}/main" in cli("log", "--all", "--oneline").stdout
    assert json.loads(cli("remote", "list", "--json").stdout) == {}


# --- small habits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["-h"], ["commit", "-h"], ["remote", "add", "-h"], ["repo", "create", "-h"]])
def test_dash_h_is_help(cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.stdout.startswith("Usage: ") and "-h, --help" in result.stdout


def test_empty_commit_says_nothing_to_commit(cli, home: Path, repo: dict, tmp_path: Path) -> None:
    same = write_model(tmp_path / "same.safetensors", repo["v2"])
    refused(cli, home, "commit", "--from", same, "-m", "again", needles=("nothing to commit",))
    refused(cli, home, "commit", "--from", same, "-m", "again", "--encoding", "fp16", needles=("nothing to commit",))
    # on another branch whose head differs, the same model is a real commit
    cli("branch", "older", repo["c1"])
    cli("commit", "--from", same, "-m", "catch up", "-b", "older")


def test_ambiguous_cid_prefix(cli, home: Path, repo: dict) -> None:
    for prefix in ("bafy", "bafyrei"):
        err = refused(cli, home, "show", prefix, needles=("ambiguous", "3 commits start with it"))
        assert repo["c1"][:20] in err
    assert json.loads(cli("show", repo["c1"][:24], "--json").stdout)["cid"] == repo["c1"]
    refused(cli, home, "show", "bafyzzzzzz", needles=("unknown revision",))
    # a prefix shared with another repository's commits still names this repository's one commit
    with open_node(home) as node:
        _, other = node.history.create_repo("other", ArraySource(model_arrays(9)))
    n = next(n for n in range(8, 60) if sum(c.startswith(str(other.cid)[:n]) for c in repo.values()
                                              if isinstance(c, str)) == 0)
    assert json.loads(cli("show", f"other:{str(other.cid)[:n]}", "--json").stdout)["cid"] == str(other.cid)


# --- error hints name options that exist ---------------------------------------------------------------------

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
QUOTED_COMMAND = re.compile(r"'fednode ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")


def _all_options(cmd: click.Command, out: set[str]) -> set[str]:
    for p in cmd.params:
        if isinstance(p, click.Option):
            out.update(o for o in p.opts + p.secondary_opts if o.startswith("--"))
    for sub in getattr(cmd, "commands", {}).values():
        _all_options(sub, out)
    return out


def _message_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings (docstrings may quote other tools' options)."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def test_error_hints_name_options_that_exist(cli, tmp_path: Path) -> None:
    files = [*(ROOT / "cli").glob("*.py"), *(ROOT / "fednode").rglob("*.py")]
    trees = {f: ast.parse(f.read_text()) for f in files}
    argparse_options = {a.value for t in trees.values() for n in ast.walk(t)
                        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"
                        for a in n.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    real = _all_options(cli_main, {"--help", "--version"}) | argparse_options
    assert {"--repo", "--from", "--cast", "--key", "--file", "--force", "--out"} <= real  # the scan sees them
    unknown, commands = [], []
    for f, tree in trees.items():
        for node in _message_strings(tree):
            unknown += [f"{f.relative_to(ROOT)}:{node.lineno} {o}" for o in OPTION.findall(node.value)
                        if o not in real]
            for m in QUOTED_COMMAND.finditer(node.value):
                cmd = cli_main.commands.get(m[1])
                if cmd is None or (m[2] and isinstance(cmd, click.Group) and m[2] not in cmd.commands):
                    commands.append(f"{f.relative_to(ROOT)}:{node.lineno} {m[0]}")
    assert not unknown, f"messages name options no command has: {unknown}"
    assert not commands, f"messages name commands that do not exist: {commands}"
    # and each command's own hint names what that command takes: -r/--repo, or a REPO argument
    for args in (["log"], ["commit", "--from", "x.safetensors", "-m", "x"], ["branch"], ["reflog"], ["proposals"],
                 ["reset", "HEAD"], ["tag"], ["merge", "a"], ["train", "--script", __file__]):
        result = cli(*args, ok=False)
        assert result.exit_code == 1, (args, result.output)
        assert_one_line_error(result.stderr, "no repository given")
        leaf = cli_main.commands[args[0]]
        own = {o for p in leaf.params if isinstance(p, click.Option) for o in p.opts}
        for option in OPTION.findall(result.stderr):
            assert option in own, f"'fednode {args[0]}' error names {option}, which it does not take: {result.stderr}"


def test_reflog_keeps_the_last_entries_per_branch(cli, repo: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import fednode.storage.store

    monkeypatch.setattr(fednode.storage.store, "REFLOG_KEEP", 3)
    cli("branch", "main2", repo["c1"])  # a branch whose name extends another's: separate logs
    for rev in (repo["genesis"], repo["c1"], repo["genesis"], repo["c2"]):
        cli("reset", rev)
        cli("reset", rev, "-b", "main2")
    main = json.loads(cli("reflog", "--json").stdout)
    assert [e["new"] for e in main] == [repo["c2"], repo["genesis"], repo["c1"]]
    assert [e["reason"] for e in main] == [f"reset: moving to {r}" for r in (repo["c2"], repo["genesis"], repo["c1"])]
    main2 = json.loads(cli("reflog", "main2", "--json").stdout)
    assert [e["new"] for e in main2] == [repo["c2"], repo["genesis"], repo["c1"]]
    assert [e["old"] for e in main2] == [repo["genesis"], repo["c1"], repo["genesis"]]
