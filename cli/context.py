"""What every command shares: output, the node opened once, repositories and revisions, option types.

No commands live here. Nothing heavy is imported at module level (``tests/cli/test_fast_start.py``):
a registry that pulls numpy in (the merge strategies) is read only when its option is used.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from fednode import safejson
from fednode.errors import FednodeError
from fednode.history import RepoInfo, repo_id_text
from fednode.node import Node, open_node
from fednode.tensors import encodings, modelio
from protocol.multiformats import CID, b58encode
from protocol.objects import Commit

if TYPE_CHECKING:
    from fednode.chain.anchoring import Anchorer
    from fednode.daemon.api_client import Client

out = Console(highlight=False, soft_wrap=True)


# --- output ---------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def emit(data: Any, as_json: bool, text: str) -> None:
    """``data`` as JSON with --json, else ``text`` as it is (no rich markup)."""
    if as_json:
        emit_json(data)
    else:
        out.print(text, markup=False)


def short(cid: CID | None) -> str:
    """The first 16 characters of a CID, as commands print commits."""
    return str(cid)[:16]


def commit_json(cid: CID, commit: Commit) -> dict[str, Any]:
    return {
        "cid": str(cid),
        "commit_hash": commit.commit_hash().hex(),
        "repo": repo_id_text(commit.repo) if commit.repo else repo_id_text(commit.commit_hash()),
        "kind": commit.kind,
        "parents": [str(p) for p in commit.parents],
        "author": b58encode(commit.author),
        "time": dt.datetime.fromtimestamp(commit.time_ms / 1000, dt.UTC).isoformat(),
        "message": commit.message,
        "metrics": commit.metrics,
        "weights": str(commit.weights),
        "info": json.loads(json.dumps(commit.info, default=str)),
    }


# --- the node, repositories, revisions ------------------------------------------------------


def home(ctx: click.Context) -> Path:
    """The node home of this invocation (``--home``, $FEDNODE_HOME or ~/.fednode)."""
    path: Path = ctx.find_root().obj["home"]
    return path


def get_node(ctx: click.Context) -> Node:
    """The node for this invocation, opened once (LMDB allows one environment per process)."""
    root = ctx.find_root()
    node: Node | None = root.obj.get("node")
    if node is None:
        node = open_node(root.obj["home"])
        root.obj["node"] = node
        root.call_on_close(node.close)
    return node


def get_repo(node: Node, name: str | None) -> RepoInfo:
    """Repository ``name``, else the current one (the error says how this command names one)."""
    return node.repo(name, repository_hint())


def repository_hint() -> str:
    """How the running command takes a repository: its -r/--repo option or its REPO argument."""
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx else []:
        if param.name == "repo_name":
            if isinstance(param, click.Option):
                return f"pass {'/'.join(param.opts)} NAME "
            return f"give {param.human_readable_name.strip('[]')} "
    return ""


def resolve(node: Node, rev: str, repo_name: str | None) -> tuple[RepoInfo, CID]:
    """REV in the named (or current) repository; ``REPO:REV`` names its repository itself."""
    repo = None
    if ":" not in rev:
        try:
            repo = get_repo(node, repo_name)
        except FednodeError:
            if repo_name:
                raise
    return node.history.resolve(rev, repo)


def client(ctx: click.Context, timeout: float | None = None) -> Client:
    """The local API client of this home's daemon (imported late: httpx is heavy)."""
    from fednode.daemon.api_client import Client

    return Client(home(ctx)) if timeout is None else Client(home(ctx), timeout=timeout)


def verify_on_chain(ctx: click.Context, rev: str, repo_name: str | None) -> tuple[int, list[str]]:
    """(commits checked, problems) of REV's ancestry against the chain (``verify --chain``, ``chain verify``)."""
    from fednode.chain import session

    async def check(anchorer: Anchorer, node: Node) -> tuple[int, list[str]]:
        info, cid = resolve(node, rev, repo_name)
        return await anchorer.verify(info, cid)

    return session.run(get_node(ctx), check)


# --- options and their values ---------------------------------------------------------------

repo_option = click.option("-r", "--repo", "repo_name", default=None)
json_option = click.option("--json", "as_json", is_flag=True)
zk_keys_option = click.option(
    "--zk-keys", "zk_keys", default=None, type=click.Path(path_type=Path), metavar="DIR",
    help="Proving keys ('fednode zk setup') for a repository that requires update proofs "
         "(default: $FEDNODE_ZK_KEYS, else [zk] keys in config.toml).")


def use_zk_keys(node: Node, zk_keys: Path | None) -> None:
    """``--zk-keys``: the proving keys this invocation's commits use (before $FEDNODE_ZK_KEYS and the config)."""
    from fednode.workflows.commitments import settings_of

    settings = settings_of(node.history)
    if zk_keys is not None and settings is not None:
        settings.keys_override = zk_keys


class RegistryChoice(click.Choice[str]):
    """A ``click.Choice`` over a registry's names, read when first needed: reading the registry may
    import heavy modules (numpy), and defining a command must not (fast start)."""

    def __init__(self, load: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        # click.Choice.__init__ is not called: it would read the names now.
        self._load = load
        self._names: tuple[str, ...] | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    @choices.setter
    def choices(self, names: tuple[str, ...]) -> None:
        self._names = tuple(names)


def _strategy_names() -> Iterable[str]:
    from fednode import strategies

    return strategies.CLASSES


def _weightings() -> Iterable[str]:
    from fednode.workflows import merging

    return merging.WEIGHTINGS


def _chain_backends() -> Iterable[str]:
    from fednode.chain import config

    return config.BACKENDS


ENCODINGS = click.Choice(encodings.NAMES)
CASTS = click.Choice(modelio.CASTS, case_sensitive=False)
STRATEGIES = RegistryChoice(_strategy_names)
WEIGHTINGS = RegistryChoice(_weightings)
CHAIN_BACKENDS = RegistryChoice(_chain_backends)


def parse_metrics(pairs: tuple[str, ...]) -> dict[str, float]:
    metrics = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            metrics[key] = float(value)
            if metrics[key] - metrics[key] != 0:  # NaN or an infinity: no commit can record it
                raise ValueError
        except ValueError:
            raise FednodeError(f"invalid --metric {pair!r}: use NAME=NUMBER (a finite number)") from None
    return metrics


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FednodeError(f"invalid --param {pair!r}: use NAME=VALUE")
        try:
            params[key] = safejson.loads(value)  # not json.loads: a deep nest could crash the process
        except ValueError:
            params[key] = value
    return params


def positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise FednodeError(f"{option} must be a positive integer, got {text!r}")
    return value
