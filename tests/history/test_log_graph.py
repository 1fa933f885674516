"""`fednode log --graph` text: real histories on a real store, drawn as `git log --graph` draws the same DAG."""

from __future__ import annotations

import os
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path

import pytest
from helpers import model_arrays, perturb, write_model

from fednode.history.graph import graph_lines, topo_order
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging
from protocol.multiformats import CID


class Repo:
    """A repository 'm' made through the CLI, grown through the History and merging APIs."""

    def __init__(self, home: Path, cli, tmp_path: Path) -> None:
        self.home, self.cli = home, cli
        self.arrays = model_arrays(0)
        cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", self.arrays), "-m", "g")
        self.names: dict[str, str] = {}  # short id -> commit message
        with open_node(home) as node:
            self.info = node.history.repo("m")
            self._name(node.history.branch_head(self.info, "main"), "g")

    def _name(self, cid: CID, name: str) -> CID:
        self.names[str(cid)[:16]] = name
        time.sleep(0.002)  # distinct commit times: tips are drawn newest first
        return cid

    def commit(self, name: str, branch: str = "main", start: str | None = None) -> CID:
        with open_node(self.home) as node:
            h = node.history
            if start is not None:
                h.create_branch(self.info, branch, h.resolve(start, self.info)[1])
            source = ArraySource(perturb(self.arrays, len(self.names)))
            return self._name(h.commit(self.info, source, name, branch=branch).cid, name)

    def merge(self, name: str, *branches: str, into: str = "main") -> merging.MergeOutcome:
        with open_node(self.home) as node:
            out = merging.merge(node.history, self.info, list(branches), into=into, weighting="equal", message=name)
        if out.result is not None:
            self._name(out.result.cid, name)
        return out

    def log(self, *args: str) -> str:
        """`fednode log ARGS --oneline` without the short ids (each checked to be a known commit's)."""
        lines = []
        for line in self.cli("log", *args, "--oneline").stdout.splitlines():
            found = re.search(r"\bb[a-z2-7]{15} ", line)
            if found:
                assert found[0][:-1] in self.names, line
                line = line.replace(found[0], "", 1)
            lines.append(line.rstrip())
        return "\n".join(lines)

    def dag(self) -> list[tuple[str, list[str], int]]:
        with open_node(self.home) as node:
            return [(c.message, [node.history.load_commit(p).message for p in c.parents], c.time_ms)
                    for _, c in node.history.walk(list(node.history.branches(self.info).values()))]


def git_graph(dag: list[tuple[str, list[str], int]]) -> str:
    """What `git log --graph --format=%s --all` draws for the same DAG (names unique, tips as branches)."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@a", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@a", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

    with tempfile.TemporaryDirectory() as tmp:
        return _git_graph(Path(tmp), dag, env)


def _git_graph(repo: Path, dag: list[tuple[str, list[str], int]], env: dict[str, str]) -> str:
    def git(*args: str, stdin: str = "", **extra: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, text=True,
                              check=True, env={**env, **extra}).stdout.strip()

    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    tree = git("mktree")
    sha: dict[str, str] = {}
    parents = {name: ps for name, ps, _ in dag}
    for name, _, _ in sorted(dag, key=lambda d: d[2]):
        date = f"@{1_000_000_000 + 10 * len(sha)} +0000"  # git dates are in seconds: keep the commits apart
        args = [a for p in parents[name] for a in ("-p", sha[p])]
        sha[name] = git("commit-tree", tree, "-m", name, *args, GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    children = {p for ps in parents.values() for p in ps}
    for name in parents:
        if name not in children:
            git("update-ref", f"refs/heads/tip-{len(children)}-{sha[name][:8]}", sha[name])
    return "\n".join(line.rstrip() for line in git("log", "--graph", "--format=%s", "--all").splitlines())


def our_graph(dag: list[tuple[Hashable, list[Hashable], int]]) -> str:
    parents = {name: ps for name, ps, _ in dag}
    order = topo_order(dag)
    out: list[str] = []
    for name, (above, prefix, below) in zip(order, graph_lines([(n, parents[n]) for n in order]), strict=True):
        out += [*above, f"{prefix}{name}", *below]
    return "\n".join(line.rstrip() for line in out)


@pytest.fixture
def repo(home: Path, cli, tmp_path: Path) -> Repo:
    return Repo(home, cli, tmp_path)


def test_fork_is_drawn_above_the_commit_it_forks_from(repo: Repo) -> None:
    repo.commit("c1")
    repo.commit("c2")
    repo.commit("s1", branch="side", start="main~1")
    assert repo.log("--all") == """\
* (side) s1
| * (HEAD -> main) c2
|/
* c1
* g"""
    assert our_graph(repo.dag()) == git_graph(repo.dag())


def test_fast_forward_is_one_line(repo: Repo) -> None:
    repo.commit("s1", branch="side", start="main")
    repo.commit("s2", branch="side")
    assert repo.merge("unused", "side").fast_forward is not None
    assert repo.log("--all") == "* (HEAD -> main, side) s2\n* s1\n* g"
    assert repo.log() == repo.log("--all")


def test_three_way_merge(repo: Repo) -> None:
    """Two hospitals train from c1 while the owner commits c2; the owner merges all three."""
    repo.commit("c1")
    repo.commit("a1", branch="ha", start="main")
    repo.commit("b1", branch="hb", start="main")
    repo.commit("c2")
    merge = repo.merge("M", "ha", "hb").result
    assert merge is not None and len(merge.commit.parents) == 3
    second, third = (repo.names[str(p)[:16]] for p in merge.commit.parents[1:])  # the merge orders them by CID
    assert repo.log("--all") == f"""\
*-.   (HEAD -> main) M
|\\ \\
| | * (h{third[0]}) {third}
| * | (h{second[0]}) {second}
| |/
* / c2
|/
* c1
* g"""
    assert our_graph(repo.dag()) == git_graph(repo.dag())


def test_eight_way_merge_closes_every_lane(repo: Repo) -> None:
    """Seven hospitals train from c1 and the owner merges them all (main's c1 is the eighth parent);
    a hospital goes on from the merge."""
    repo.commit("c1")
    for h in range(7):
        repo.commit(f"s{h}", branch=f"h{h}", start="main")
    merge = repo.merge("M", *(f"h{h}" for h in range(7))).result
    assert merge is not None and len(merge.commit.parents) == 8
    repo.commit("next", branch="next", start="main")
    s = [repo.names[str(p)[:16]] for p in reversed(merge.commit.parents[1:])]  # drawn last parent first
    assert repo.log("--all") == f"""\
* (next) next
*-----------.   (HEAD -> main) M
|\\ \\ \\ \\ \\ \\ \\
| | | | | | | * (h{s[0][1]}) {s[0]}
| |_|_|_|_|_|/
|/| | | | | |
| | | | | | * (h{s[1][1]}) {s[1]}
| |_|_|_|_|/
|/| | | | |
| | | | | * (h{s[2][1]}) {s[2]}
| |_|_|_|/
|/| | | |
| | | | * (h{s[3][1]}) {s[3]}
| |_|_|/
|/| | |
| | | * (h{s[4][1]}) {s[4]}
| |_|/
|/| |
| | * (h{s[5][1]}) {s[5]}
| |/
|/|
| * (h{s[6][1]}) {s[6]}
|/
* c1
* g"""
    assert our_graph(repo.dag()) == git_graph(repo.dag())


def test_remotes_proposals_and_head_marker(repo: Repo) -> None:
    """Peers' heads and proposals (refs the daemon records, set here as it sets them) show with --remotes
    and --all; HEAD marks the current branch; without --oneline the kind and time follow the id."""
    repo.commit("c1")
    repo.commit("p1", branch="tmp-p", start="main")
    repo.commit("q1", branch="tmp-q", start="main")
    with open_node(repo.home) as node:
        h = node.history
        heads = {name: h.branch_head(repo.info, name) for name in ("tmp-p", "tmp-q")}
        for name in heads:
            h.delete_branch(repo.info, name)
        with node.store.write() as txn:  # as fednode/daemon/sync.py records them
            txn.set_ref(repo.info.repo_id, "remotes/peerA/main", bytes(heads["tmp-p"]))
            txn.set_ref(repo.info.repo_id, "proposals/peerB/fix", bytes(heads["tmp-q"]))
    assert repo.log() == "* (HEAD -> main) c1\n* g"
    with_remotes = """\
* (proposals/peerB/fix) q1
| * (remotes/peerA/main) p1
|/
* (HEAD -> main) c1
* g"""
    assert repo.log("--remotes") == with_remotes
    assert repo.log("--all") == with_remotes
    repo.cli("branch", "side", "main~1")
    repo.cli("switch", "side")
    assert repo.log("--all").splitlines()[-2:] == ["* (main) c1", "* (HEAD -> side) g"]
    full = repo.cli("log", "-n", "1").stdout
    assert re.fullmatch(r"\* b[a-z2-7]{15} \(HEAD -> side\) init   \d{4}-\d\d-\d\d \d\d:\d\d g\n", full), full


def federated_rounds(seed: int) -> list[tuple[str, list[str], int]]:
    """A synthetic DAG of federated rounds: hospitals branch from the last merge (or, skipping a round,
    go on from their own last commit), the owner sometimes commits too, then merges every hospital."""
    rng = random.Random(seed)
    dag, head, last, n = [("g", [], 0)], "g", {}, 0
    for r in range(rng.randint(1, 3)):
        inputs = []
        for h in range(rng.randint(1, 5)):
            base = head if rng.random() < 0.8 else last.get(h, head)
            last[h] = f"r{r}h{h}"
            dag.append((last[h], [base], len(dag)))
            inputs.append(last[h])
        if rng.random() < 0.5:
            n += 1
            dag.append((f"o{n}", [head], len(dag)))
            head = f"o{n}"
        dag.append((f"M{r}", [head, *inputs], len(dag)))
        head = f"M{r}"
    return dag


@pytest.mark.parametrize("seed", range(12))
def test_federated_rounds_draw_as_git_draws_them(seed: int) -> None:
    dag = federated_rounds(seed)
    assert our_graph(dag) == git_graph(dag)


def test_limit_counts_commits_and_refuses_a_negative(repo: Repo) -> None:
    repo.commit("c1")
    repo.commit("c2")
    assert repo.log("-n", "2") == "* (HEAD -> main) c2\n* c1"
    assert repo.log("-n", "0") == ""
    bad = repo.cli("log", "-n", "-1", ok=False)
    assert bad.exit_code != 0 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["error: -n must be 0 or more, not -1"]


def random_dag(seed: int) -> list[tuple[str, list[str], int]]:
    """Any DAG: each commit has 1 to 5 parents among the earlier ones (criss-cross merges included)."""
    rng = random.Random(seed)
    dag: list[tuple[str, list[str], int]] = [("g", [], 0)]
    for i in range(1, rng.randint(2, 12)):
        earlier = [name for name, _, _ in dag]
        dag.append((f"c{i}", rng.sample(earlier, min(rng.choice([1, 1, 2, 3, 5]), len(earlier))), i))
    return dag


@pytest.mark.parametrize("seed", range(40))
def test_every_commit_row_shows_exactly_the_open_lines(seed: int) -> None:
    """Whatever the shape, a commit's row has one lane per line of history still open there (the
    parents awaited by the commits above it, and the commit itself): lanes close, none is lost."""
    dag = random_dag(seed)
    parents = {name: ps for name, ps, _ in dag}
    order = topo_order(dag)
    assert sorted(order) == sorted(parents) and order[-1] == "g"
    awaited: set[str] = set()
    for name, (_, prefix, _) in zip(order, graph_lines([(n, parents[n]) for n in order]), strict=True):
        assert prefix.count("*") == 1 and set(prefix) <= set("*|/\\-. ")
        lanes = sum(prefix.count(c) for c in "*|/\\")
        assert lanes == len(awaited | {name}), (seed, name, prefix)
        awaited = (awaited - {name}) | set(parents[name])
