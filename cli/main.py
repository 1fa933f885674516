"""``fednode``: thin click front end over fednode's history operations."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from fednode import __version__
from fednode.errors import FednodeError
from fednode.history import CommitResult, History, RepoInfo, repo_id_text
from fednode.history.graph import graph_lines, topo_order
from fednode.node import Node, default_home, init_home, open_node
from fednode.tensors import encodings
from fednode.tensors.modelio import open_model
from fednode.workflows import operations
from protocol.multiformats import CID, FormatError
from protocol.objects import Commit

out = Console(highlight=False, soft_wrap=True)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def short(cid: CID) -> str:
    return str(cid)[:16]


def _node(ctx: click.Context) -> Node:
    """The node for this invocation, opened once (LMDB allows one environment per process)."""
    root = ctx.find_root()
    node = root.obj.get("node")
    if node is None:
        node = open_node(root.obj["home"])
        root.obj["node"] = node
        root.call_on_close(node.close)
    return node


def _repo(node: Node, name: str | None) -> RepoInfo:
    if name:
        return node.history.repo(name)
    with node.store.read() as txn:
        current = txn.get_meta("current_repo")
    if current is None:
        raise FednodeError(f"no repository given and none selected: {_repo_hint()}or run 'fednode repo use NAME'")
    return node.history.repo(current.decode())


def _repo_hint() -> str:
    """How the running command takes a repository: its -r/--repo option or its REPO argument."""
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx else []:
        if param.name == "repo_name":
            if isinstance(param, click.Option):
                return f"pass {'/'.join(param.opts)} NAME "
            return f"give {param.human_readable_name.strip('[]')} "
    return ""


def _set_current(node: Node, name: str) -> None:
    with node.store.write() as txn:
        txn.set_meta("current_repo", name.encode())


def _resolve(node: Node, rev: str, repo_name: str | None) -> tuple[RepoInfo, CID]:
    repo = None
    if ":" not in rev:
        try:
            repo = _repo(node, repo_name)
        except FednodeError:
            if repo_name:
                raise
    return node.history.resolve(rev, repo)


def _metrics(pairs: tuple[str, ...]) -> dict[str, float]:
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


def _positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise FednodeError(f"{option} must be a positive integer, got {text!r}")
    return value


def commit_json(cid: CID, commit: Commit) -> dict[str, Any]:
    return {
        "cid": str(cid),
        "commit_hash": commit.commit_hash().hex(),
        "repo": repo_id_text(commit.repo) if commit.repo else repo_id_text(commit.commit_hash()),
        "kind": commit.kind,
        "parents": [str(p) for p in commit.parents],
        "author": _b58(commit.author),
        "time": dt.datetime.fromtimestamp(commit.time_ms / 1000, dt.UTC).isoformat(),
        "message": commit.message,
        "metrics": commit.metrics,
        "weights": str(commit.weights),
        "info": json.loads(json.dumps(commit.info, default=str)),
    }


def _b58(raw: bytes) -> str:
    from protocol.multiformats import b58encode

    return b58encode(raw)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo("error: " + " ".join(message.split()), err=True)  # always one line
    sys.exit(code)


class FednodeGroup(click.Group):
    """Every failure is one line on stderr and a non-zero exit, never a traceback
    (FEDNODE_DEBUG=1 shows the traceback of an unexpected one)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.Abort, click.exceptions.Exit, EOFError):
            raise  # click's own: usage errors, --help, ctx.exit(), Ctrl-D
        except Exception as exc:
            leaf = exc
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]  # trio wraps what a task raised (the daemon)
            if isinstance(leaf, FednodeError):
                _fail(str(leaf))
            if isinstance(leaf, OSError):  # the file system or network refused: say what and where
                where = f" ({leaf.filename})" if leaf.filename else ""
                _fail(f"{leaf.strerror or leaf}{where}")
            if isinstance(leaf, FormatError):  # bytes that decode to no valid object
                _fail(f"malformed data: {leaf}")
            if isinstance(leaf, MemoryError):
                _fail("out of memory")
            if os.environ.get("FEDNODE_DEBUG"):
                raise
            _fail(f"unexpected {type(leaf).__name__}: {leaf} (a bug: FEDNODE_DEBUG=1 shows the traceback)", 2)


@click.group(cls=FednodeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fednode")
@click.option("--home", type=click.Path(path_type=Path), help="Node home (default $FEDNODE_HOME or ~/.fednode).")
@click.pass_context
def main(ctx: click.Context, home: Path | None) -> None:
    """fednode: version control for collaborative machine learning on private data."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home or default_home()


@main.command()
@click.option("--keypair", type=click.Path(path_type=Path, dir_okay=False), help="Import a solana-keygen JSON keypair.")
@click.option("--force", is_flag=True, help="Replace an existing identity.")
@click.pass_context
def init(ctx: click.Context, keypair: Path | None, force: bool) -> None:
    """Create the node home: wallet keypair (0600), config.toml, store."""
    home = ctx.obj["home"]
    existed = home.exists()
    try:
        identity = init_home(home, keypair, force)
    except BaseException:
        if not existed:  # a failed init (a full disk...) leaves no half-made home behind
            shutil.rmtree(home, ignore_errors=True)
        raise
    out.print(f"initialised {home}")
    out.print(f"wallet  {identity.address}")
    out.print(f"peer id {identity.peer_id}")


@main.command("id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def id_(ctx: click.Context, as_json: bool) -> None:
    """Print the wallet address and libp2p peer id (the same Ed25519 key)."""
    node = _node(ctx)
    info = {"address": node.identity.address, "peer_id": node.identity.peer_id, "home": str(node.home)}
    if as_json:
        emit_json(info)
    else:
        out.print(f"wallet  {info['address']}\npeer id {info['peer_id']}")


@main.group()
def repo() -> None:
    """Create, list and select repositories."""


@repo.command("create")
@click.argument("name")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="Initial weights: .safetensors, .pt/.pth/.bin, or a sharded checkpoint directory.")
@click.option("--key", "model_key", default=None, help="Entry of a PyTorch checkpoint that holds the state_dict.")
@click.option("--cast", "cast", type=click.Choice(["F64", "F32", "F16", "BF16"], case_sensitive=False), default=None,
              help="Convert float tensors to this dtype.")
@click.option("-m", "--message", default="initial weights")
@click.option("--scale-bits", type=int, default=None, help="Grid 2**-N of the lossy --encoding fixed|topk.")
@click.option("--snapshot-interval", type=int, default=None, help="Store a full snapshot every N deltas.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def repo_create(
    ctx: click.Context, name: str, source: Path, model_key: str | None, cast: str | None, message: str,
    scale_bits: int | None, snapshot_interval: int | None, as_json: bool,
) -> None:
    """Create repository NAME from a model file (its genesis commit)."""
    node = _node(ctx)
    defaults = node.config.get("repository_defaults", {})
    model = open_model(source, model_key, cast)
    try:
        info, result = node.history.create_repo(
            name,
            model,
            message,
            scale_bits if scale_bits is not None else int(defaults.get("scale_bits", 24)),
            snapshot_interval if snapshot_interval is not None else int(defaults.get("snapshot_interval", 8)),
        )
    finally:
        model.close()
    _set_current(node, name)
    if as_json:
        emit_json({"name": name, "id": repo_id_text(info.repo_id), "genesis": str(result.cid)})
        return
    out.print(f"created repository {name} ({len(model.tensors)} tensors, {result.total_bytes} bytes)")
    out.print(f"id      {repo_id_text(info.repo_id)}")
    out.print(f"genesis {result.cid}")


@repo.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def repo_list(ctx: click.Context, as_json: bool) -> None:
    """List repositories in this node's store."""
    node = _node(ctx)
    rows = []
    for info in node.history.repos():
        branches = node.history.branches(info)
        rows.append({"name": info.name, "id": repo_id_text(info.repo_id), "branches": len(branches),
                     "settings": info.settings})
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "id", "branches")
    for row in rows:
        table.add_row(row["name"], row["id"], str(row["branches"]))
    out.print(table)


@repo.command("use")
@click.argument("name")
@click.pass_context
def repo_use(ctx: click.Context, name: str) -> None:
    """Make NAME the current repository for commands without --repo."""
    node = _node(ctx)
    info = node.history.repo(name)
    _set_current(node, info.name)
    out.print(f"current repository: {info.name}")


ENCODING_HELP = ("How updates are stored. xor (default) is lossless: every tensor bit for bit, a byte-grouped XOR "
                 "against the parent, zstd-compressed. LOSSY, only when chosen, with the max absolute and relative "
                 "error of each float tensor printed: fixed (rounds to the repository grid 2**-scale_bits), fp16, "
                 "int8, topk (keeps only the largest changes).")


def _json_float(x: float) -> float | str:
    return x if x != float("inf") else "inf"


def storage_json(result: CommitResult) -> dict[str, Any]:
    """What a commit stored and, for a lossy encoding, how far each float tensor moved."""
    return {"new_bytes": result.new_bytes, "encoding": result.encoding, "lossless": result.lossless,
            "max_quantization_error": result.max_quantization_error,
            "errors": {n: {"max_abs": e.max_abs, "max_rel": _json_float(e.max_rel)}
                       for n, e in sorted(result.errors.items())}}


def print_storage(result: CommitResult) -> None:
    if result.encoding not in encodings.LOSSY:
        out.print(f"{result.new_bytes} new bytes stored; lossless ({result.encoding}): every tensor bit for bit")
        return
    worst = max((e.max_rel for e in result.errors.values()), default=0.0)
    out.print(f"{result.new_bytes} new bytes stored; LOSSY encoding {result.encoding}: max abs error "
              f"{result.max_quantization_error:.3g}, max relative error {worst:.3g}")
    if result.errors:
        table = Table("tensor", "max abs error", "max rel error")
        for name, e in sorted(result.errors.items()):
            table.add_row(name, f"{e.max_abs:.3g}", f"{e.max_rel:.3g}")
        out.print(table)


@main.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="The model: .safetensors, .pt/.pth/.bin, or a sharded checkpoint directory.")
@click.option("--key", "model_key", default=None, help="Entry of a PyTorch checkpoint that holds the state_dict.")
@click.option("--cast", "cast", type=click.Choice(["F64", "F32", "F16", "BF16"], case_sensitive=False), default=None,
              help="Convert float tensors to this dtype (a dtype change is refused without it).")
@click.option("-m", "--message", required=True)
@click.option("-b", "--branch", default=None, help="Branch to commit on (default: the current branch).")
@click.option("--metric", "metrics", multiple=True, help="NAME=VALUE, repeatable.")
@click.option("--samples", "samples_text", default=None, metavar="N",
              help="Training samples behind this update (weights a `merge --weights samples`).")
@click.option("--encoding", type=click.Choice(list(encodings.NAMES)), default=encodings.DEFAULT,
              show_default=True, help=ENCODING_HELP)
@click.option("--topk-fraction", type=float, default=0.01, show_default=True, help="Share of values kept by topk.")
@click.option("--no-compress", is_flag=True, help="Do not zstd-compress update payloads.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def commit(
    ctx: click.Context, repo_name: str | None, source: Path, model_key: str | None, cast: str | None, message: str,
    branch: str | None, metrics: tuple[str, ...], samples_text: str | None, encoding: str, topk_fraction: float,
    no_compress: bool, as_json: bool,
) -> None:
    """Commit a model file as an update on a branch ("nothing to commit" when it equals the head)."""
    node = _node(ctx)
    info = _repo(node, repo_name)
    parsed = _metrics(metrics)
    declared = _positive_int(samples_text, "--samples") if samples_text is not None else None
    model = open_model(source, model_key, cast)
    try:
        operations.check_commit_source(node.history, node.history.branch_head(
            info, branch or node.history.current_branch(info)), model)
        result = node.history.commit(info, model, message, branch=branch, metrics=parsed, encoding=encoding,
                                     topk_fraction=topk_fraction, compress=not no_compress,
                                     info={"samples": declared} if declared is not None else None)
    finally:
        model.close()
    if as_json:
        emit_json({**commit_json(result.cid, result.commit), **storage_json(result)})
        return
    out.print(f"[{branch or node.history.current_branch(info)} {short(result.cid)}] {message}", markup=False)
    print_storage(result)


@main.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.argument("branch", required=False)
@click.option("--all", "all_branches", is_flag=True,
              help="Every ref: branches, tags, peers' heads (remotes/*) and merge proposals (proposals/*).")
@click.option("--remotes", is_flag=True, help="Also the peers' heads (remotes/*) and merge proposals (proposals/*).")
@click.option("--oneline", is_flag=True, help="One short line a commit: id, refs, message.")
@click.option("-n", "limit", type=int, default=None, help="At most this many commits.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log(ctx: click.Context, repo_name: str | None, branch: str | None, all_branches: bool, remotes: bool,
        oneline: bool, limit: int | None, as_json: bool) -> None:
    """History of a branch (or --all refs) with a graph of merges, as git log --graph draws it."""
    from rich.markup import escape

    if limit is not None and limit < 0:
        raise FednodeError(f"-n must be 0 or more, not {limit}")
    node = _node(ctx)
    info = _repo(node, repo_name)
    history: History = node.history
    from fednode.workflows.refops import named_remote_refs

    branches, tags, remote = history.branches(info), history.tags(info), named_remote_refs(history, info)
    current = history.current_branch(info)
    heads = [history.resolve(branch or "HEAD", info)[1]]
    if all_branches:
        heads += [*branches.values(), *tags.values()]
    if all_branches or remotes:
        heads += list(remote.values())
    labels: dict[CID, list[str]] = {}
    for name, cid in sorted(branches.items(), key=lambda kv: kv[0] != current):  # the current branch first
        labels.setdefault(cid, []).append(f"HEAD -> {name}" if name == current else name)
    for name, cid in [*remote.items(), *((f"tag: {t}", c) for t, c in tags.items())]:
        labels.setdefault(cid, []).append(name)
    commits = dict(history.walk(list(dict.fromkeys(heads))))
    order = topo_order([(c, cm.parents, cm.time_ms) for c, cm in commits.items()])[:limit]
    if as_json:
        emit_json([{**commit_json(c, commits[c]), "refs": [r.removeprefix("HEAD -> ") for r in labels.get(c, [])]}
                   for c in order])
        return
    for cid, (above, prefix, below) in zip(order, graph_lines([(c, commits[c].parents) for c in order]), strict=True):
        cm = commits[cid]
        for line in above:
            out.print(line.rstrip(), markup=False)
        refs = f" [cyan]({escape(', '.join(labels[cid]))})[/]" if cid in labels else ""
        if oneline:
            text = escape(cm.message)
        else:
            when = dt.datetime.fromtimestamp(cm.time_ms / 1000).strftime("%Y-%m-%d %H:%M")
            metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(cm.metrics.items()))
            text = f"{cm.kind:6} {when} {escape(cm.message)}" + (f" [dim]{escape(metrics)}[/]" if metrics else "")
        out.print(f"{escape(prefix)}[yellow]{short(cid)}[/]{refs} {text}", markup=True)
        for line in below:
            out.print(line.rstrip(), markup=False)


@main.command()
@click.argument("rev")
@click.option("-r", "--repo", "repo_name", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, rev: str, repo_name: str | None, as_json: bool) -> None:
    """A commit: metadata and every tensor with dtype, shape, encoding and CID."""
    node = _node(ctx)
    _, cid = _resolve(node, rev, repo_name)
    commit_obj = node.history.load_commit(cid)
    manifest = node.history.load_manifest(commit_obj.weights)
    tensors = []
    for name, e in manifest.tensors.items():
        tensors.append({"name": name, "dtype": e.dtype, "shape": list(e.shape), "encoding": e.encoding,
                        "cid": str(e.cid) if e.cid else None, "state": str(e.state), "stored_bytes": e.size,
                        "depth": e.depth,
                        "dense_bytes": e.nbytes, "compression": e.compression,
                        "compression_ratio": round(e.nbytes / e.size, 3) if e.size else None,
                        "int_bits": e.int_bits or None,
                        "scale_bits": e.scale_bits if e.encoding in ("fixed", "topk") else None})
    dense = sum(t["dense_bytes"] for t in tensors)
    stored = sum(t["stored_bytes"] for t in tensors)
    data = {**commit_json(cid, commit_obj), "tensors": tensors, "dense_bytes": dense, "stored_bytes": stored,
            "compression_ratio": round(dense / stored, 3) if stored else None,
            "signature_valid": node.history.verify_commit_signature(commit_obj)}
    if as_json:
        emit_json(data)
        return
    out.print(f"commit  [yellow]{cid}[/]")
    out.print(f"kind    {data['kind']}   author {data['author']}   {data['time']}")
    for p in data["parents"]:
        out.print(f"parent  {p}")
    out.print(f"message {data['message']}")
    if data["metrics"]:
        out.print("metrics " + " ".join(f"{k}={v:.6g}" for k, v in sorted(data["metrics"].items())))
    table = Table("tensor", "dtype", "shape", "encoding", "stored", "ratio", "cid")
    for t in tensors:
        enc = t["encoding"] + ("+zstd" if t["compression"] == "zstd" else "")
        ratio = f"{t['compression_ratio']:.1f}x" if t["compression_ratio"] else "-"
        table.add_row(t["name"], t["dtype"], str(t["shape"]), enc, str(t["stored_bytes"]), ratio,
                      (t["cid"] or "-")[:20])
    out.print(table)
    ratio = f"{data['compression_ratio']:.1f}x" if data["compression_ratio"] else "nothing stored"
    out.print(f"stored {stored} bytes for {dense} bytes of weights (compression ratio {ratio})")


@main.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("--file", "file", type=click.Path(path_type=Path), default=None,
              help="Compare A with this model on disk instead of a second revision.")
@click.option("--key", "model_key", default=None, help="With --file: the checkpoint entry holding the state_dict.")
@click.option("--cast", "cast", type=click.Choice(["F64", "F32", "F16", "BF16"], case_sensitive=False), default=None,
              help="With --file: convert its float tensors to this dtype first.")
@click.option("-r", "--repo", "repo_name", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def diff(ctx: click.Context, a: str, b: str | None, file: Path | None, model_key: str | None, cast: str | None,
         repo_name: str | None, as_json: bool) -> None:
    """Per tensor: L2 norm of the change, relative change, fraction of changed values (A to B, or
    A to a model file with --file)."""
    if (b is None) == (file is None):
        raise FednodeError("diff compares two revisions (diff A B) or a revision and a file (diff A --file PATH)")
    if file is None and (model_key or cast):
        raise FednodeError("--key and --cast are for --file")
    node = _node(ctx)
    _, ca = _resolve(node, a, repo_name)
    if file is not None:
        model = open_model(file, model_key, cast)
        try:
            rows = operations.diff_file(node.history, ca, model)
        finally:
            model.close()
        b_text = str(file)
    else:
        _, cb = _resolve(node, b, repo_name)
        rows = operations.diff(node.history, ca, cb)
        b_text = str(cb)
    if as_json:
        emit_json({"a": str(ca), "b": b_text, "tensors": [r.to_json() for r in rows]})
        return
    table = Table("tensor", "status", "L2 change", "relative", "changed")
    for r in rows:
        table.add_row(r.name, r.status, f"{r.l2:.4g}", f"{r.relative:.3g}", f"{r.changed_fraction:.1%}")
    out.print(table)


@main.command()
@click.argument("rev")
@click.option("--out", "out_text", required=True, type=click.Path(),
              help="A .safetensors, .pt, .pth or .bin file; DIR/ or an existing directory: DIR/model.safetensors.")
@click.option("-r", "--repo", "repo_name", default=None)
@click.pass_context
def checkout(ctx: click.Context, rev: str, out_text: str, repo_name: str | None) -> None:
    """Write a revision's weights to a .safetensors (or .pt/.pth/.bin) file, or into a directory."""
    node = _node(ctx)
    _, cid = _resolve(node, rev, repo_name)
    out_path = operations.checkout_path(out_text)  # refuses a path that cannot be a new model file
    try:
        size = operations.checkout(node.history, cid, out_path)
    except OSError as exc:
        raise FednodeError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    out.print(f"wrote {out_path} ({size} bytes) from {short(cid)}")


@main.command()
@click.argument("name", required=False)
@click.argument("start", required=False)
@click.option("-d", "--delete", is_flag=True)
@click.option("-f", "--force", is_flag=True, help="Move NAME to START even if it exists (old head: 'fednode reflog').")
@click.option("-s", "--switch", "switch_to", is_flag=True, help="Make NAME the current branch.")
@click.option("-r", "--repo", "repo_name", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def branch(ctx: click.Context, name: str | None, start: str | None, delete: bool, force: bool, switch_to: bool,
           repo_name: str | None, as_json: bool) -> None:
    """List branches, or create NAME at START (default HEAD), move it (-f), delete (-d) or switch (-s)."""
    from fednode.workflows import refops

    node = _node(ctx)
    info = _repo(node, repo_name)
    history = node.history
    if force and (name is None or delete):
        raise FednodeError("-f moves a branch: fednode branch -f NAME [START]")
    if name is None:
        current = history.current_branch(info)
        rows = {b: str(c) for b, c in history.branches(info).items()}
        rows.update({r: str(c) for r, c in refops.named_remote_refs(history, info).items()})
        if as_json:
            emit_json({"current": current, "branches": rows})
        else:
            for b, c in rows.items():
                out.print(f"{'*' if b == current else ' '} {b:20} {c[:16]}")
        return
    if delete:
        history.delete_branch(info, name)
        out.print(f"deleted branch {name}")
        return
    if switch_to and start is None and name in history.branches(info):
        history.switch_branch(info, name)
        out.print(f"switched to branch {name}")
        return
    _, cid = history.resolve(start or "HEAD", info)
    if force:
        old = refops.move_branch(history, info, name, cid, f"branch -f: moving to {start or 'HEAD'}", create=True)
        out.print(f"moved branch {name} to {short(cid)}" + (f" (was {short(old)})" if old else " (new)"))
    else:
        history.create_branch(info, name, cid)
        out.print(f"created branch {name} at {short(cid)}")
    if switch_to:
        history.switch_branch(info, name)
        out.print(f"switched to branch {name}")


@main.command()
@click.argument("name")
@click.option("-r", "--repo", "repo_name", default=None)
@click.pass_context
def switch(ctx: click.Context, name: str, repo_name: str | None) -> None:
    """Make branch NAME the current branch."""
    node = _node(ctx)
    node.history.switch_branch(_repo(node, repo_name), name)
    out.print(f"switched to branch {name}")


@main.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("-d", "--delete", is_flag=True)
@click.option("-r", "--repo", "repo_name", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tag(ctx: click.Context, name: str | None, rev: str | None, delete: bool, repo_name: str | None,
        as_json: bool) -> None:
    """List tags, or tag REV (default HEAD) as NAME, or delete (-d)."""
    node = _node(ctx)
    info = _repo(node, repo_name)
    if name is None:
        rows = {t: str(c) for t, c in node.history.tags(info).items()}
        if as_json:
            emit_json(rows)
        else:
            for t, c in rows.items():
                out.print(f"{t:20} {c[:16]}")
        return
    if delete:
        node.history.delete_tag(info, name)
        out.print(f"deleted tag {name}")
        return
    _, cid = node.history.resolve(rev or "HEAD", info)
    node.history.create_tag(info, name, cid)
    out.print(f"tagged {short(cid)} as {name}")


@main.command()
@click.argument("rev")
@click.option("-b", "--branch", default=None)
@click.option("-r", "--repo", "repo_name", default=None)
@click.pass_context
def revert(ctx: click.Context, rev: str, branch: str | None, repo_name: str | None) -> None:
    """New commit on the branch that restores REV's weights (history is never rewritten)."""
    node = _node(ctx)
    info, cid = _resolve(node, rev, repo_name)
    result = operations.revert(node.history, info, cid, branch)
    out.print(f"[{branch or node.history.current_branch(info)} {short(result.cid)}] revert to {short(cid)}",
              markup=False)


@main.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.option("--script", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A PyTorch module with model() and data(), or any executable (HEAD.safetensors OUT.safetensors).")
@click.option("-b", "--branch", default=None, help="Branch to train on (default: the current branch).")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dp", "dp_epsilon", type=float, default=None, help="Train with DP-SGD to this epsilon (Opacus).")
@click.option("--dp-delta", type=float, default=1e-5, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="DP-SGD clipping bound.")
@click.option("-m", "--message", default=None)
@click.option("--encoding", type=click.Choice(list(encodings.NAMES)), default=encodings.DEFAULT,
              show_default=True, help=ENCODING_HELP)
@click.option("--topk-fraction", type=float, default=0.01, show_default=True, help="Share of values kept by topk.")
@click.option("--no-compress", is_flag=True, help="Do not zstd-compress update payloads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def train(ctx: click.Context, repo_name: str | None, script: Path, branch: str | None, epochs: int, seed: int,
          dp_epsilon: float | None, dp_delta: float, max_grad_norm: float, message: str | None, encoding: str,
          topk_fraction: float, no_compress: bool, quiet: bool, as_json: bool) -> None:
    """Train locally from the branch head; commit the result as an update on that branch."""
    from fednode.workflows.training import DPConfig

    node = _node(ctx)
    info = _repo(node, repo_name)
    dp = DPConfig(dp_epsilon, dp_delta, max_grad_norm) if dp_epsilon is not None else None
    commit_result, trained = operations.train(node.history, info, script, branch, epochs, seed, dp,
                                              quiet or as_json, message,
                                              dict(encoding=encoding, topk_fraction=topk_fraction,
                                                   compress=not no_compress))
    if as_json:
        emit_json({**commit_json(commit_result.cid, commit_result.commit), **storage_json(commit_result)})
        return
    metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(trained.metrics.items()))
    out.print(f"[{branch or node.history.current_branch(info)} {short(commit_result.cid)}] "
              f"{commit_result.commit.message}", markup=False)
    out.print(f"{trained.samples} samples, {epochs} epoch(s), {trained.duration_s:.1f} s; {metrics}")
    print_storage(commit_result)
    if trained.dp:
        out.print(f"DP-SGD: epsilon spent {trained.dp['epsilon']:.3f} (delta {trained.dp['delta']:g})")


def _params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FednodeError(f"invalid --param {pair!r}: use NAME=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@main.command()
@click.argument("branches", nargs=-1, required=True)
@click.option("--strategy", default="fedavg", show_default=True,
              help="fedavg | median | trimmed-mean | krum | multi-krum. Defaults: trimmed-mean trims "
                   "max(floor(trim_fraction*n), min_trim) per side, trim_fraction=0.1, min_trim=1 (needs 3+ "
                   "inputs); median min_inputs=3; krum/multi-krum byzantine=1 (needs 5+ inputs), "
                   "byzantine=None (most tolerated) needs min_byzantine=1, multi-krum m=n-byzantine.")
@click.option("--param", "params", multiple=True,
              help="Strategy parameter NAME=VALUE (e.g. byzantine=1, trim=2, min_trim=0, min_inputs=1).")
@click.option("--weights", "weighting", type=click.Choice(["samples", "equal"]), default="samples",
              show_default=True, help="samples: each input weighs the training samples it declares since the "
              "merge base (train, or commit --samples N), each sample counted once across rounds.")
@click.option("--into", default=None, help="Branch that receives the merge (default: the current branch).")
@click.option("-m", "--message", default=None)
@click.option("-r", "--repo", "repo_name", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def merge(ctx: click.Context, branches: tuple[str, ...], strategy: str, params: tuple[str, ...], weighting: str,
          into: str | None, message: str | None, repo_name: str | None, as_json: bool) -> None:
    """Merge BRANCH... (N-way, exact): merged = base + aggregate(deltas from the merge base)."""
    from fednode.workflows import merging

    node = _node(ctx)
    info = _repo(node, repo_name)
    outcome = merging.merge(node.history, info, list(branches), into, strategy, _params(params), weighting,
                            message)
    target = into or node.history.current_branch(info)
    if outcome.result is None:
        if as_json:
            emit_json({"fast_forward": str(outcome.fast_forward)})
        else:
            out.print(f"fast-forward {target} to {short(outcome.fast_forward)}")
        return
    result = outcome.result
    if as_json:
        emit_json(commit_json(result.cid, result.commit))
        return
    out.print(f"[{target} {short(result.cid)}] {result.commit.message}", markup=False)
    out.print(f"base {short(outcome.base)}; inputs " + ", ".join(
        f"{short(c)} (w={w})" for c, w in zip(outcome.inputs, outcome.weights, strict=True)))


@main.command()
@click.argument("rev")
@click.option("--into", default=None, help="Branch the update would be merged into (default: current).")
@click.option("--eval", "eval_script", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="PyTorch module whose data()[1] is the reviewer's held-out data.")
@click.option("-r", "--repo", "repo_name", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def review(ctx: click.Context, rev: str, into: str | None, eval_script: Path | None, repo_name: str | None,
           as_json: bool) -> None:
    """What merging REV would do: delta norms, changed fraction, metrics before/after, anomaly flags.

    \b
    Flags NaN/Inf, and an update L2 norm over 10x any of: the median of past update norms (3+ of
    them), the median of the other open updates (branches, remotes, proposals not yet merged),
    or the base model's own norm (float tensors)."""
    from fednode.workflows.review import review as run_review

    node = _node(ctx)
    info, cid = _resolve(node, rev, repo_name)
    target = node.history.branch_head(info, into or node.history.current_branch(info))
    result = run_review(node.history, info, cid, target, eval_script)
    if as_json:
        emit_json(result.to_json())
    else:
        out.print(f"review {short(cid)} into {into or node.history.current_branch(info)} "
                  f"(base {short(result.base)})", markup=False)
        table = Table("tensor", "status", "L2 change", "relative", "changed")
        for t in result.tensors:
            table.add_row(t["name"], t["status"], f"{t['l2']:.4g}", f"{t['relative']:.3g}",
                          f"{t['changed_fraction']:.1%}")
        out.print(table)
        median = f"{result.history_median_l2:.4g}" if result.history_median_l2 is not None else "n/a"
        peers = f"{result.peer_median_l2:.4g} of {result.peers}" if result.peer_median_l2 is not None else "n/a"
        out.print(f"update L2 norm {result.update_l2:.4g} (history median {median}, other open updates' "
                  f"median {peers}, base norm {result.base_l2:.4g})", markup=False)
        for key in sorted(set(result.before) | set(result.after)):
            b, a = result.before.get(key, float("nan")), result.after.get(key, float("nan"))
            out.print(f"{key:12} before {b:.4f}  after {a:.4f}  ({a - b:+.4f})")
        for flag in result.flags:
            out.print(f"[bold red]FLAG[/] {flag}")
        if not result.flags:
            out.print("no anomalies found")


def _report(report: operations.VerifyReport, what: str, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": not report.problems, "commits": report.commits, "problems": report.problems})
    elif report.problems:
        for p in report.problems:
            click.echo(f"problem: {p}", err=True)
    else:
        out.print(f"{what}: {report.commits} commits ok")
    if report.problems:
        raise FednodeError(f"{what} failed: {len(report.problems)} problem(s), first: {report.problems[0]}")


@main.command()
@click.argument("rev")
@click.option("-r", "--repo", "repo_name", default=None)
@click.option("--chain", "on_chain", is_flag=True, help="Also check every commit against its anchored record.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, rev: str, repo_name: str | None, on_chain: bool, as_json: bool) -> None:
    """Check hashes, signatures, merges and reverts of REV's whole ancestry (--chain: and the chain)."""
    node = _node(ctx)
    info, cid = _resolve(node, rev, repo_name)
    report = operations.verify(node.history, info, cid)
    if on_chain and not report.problems:
        from cli.chain_commands import verify_on_chain

        _, chain_problems = verify_on_chain(ctx, rev, repo_name)
        report.problems += [f"chain: {p}" for p in chain_problems]
    _report(report, "verify --chain" if on_chain else "verify", as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--repair", is_flag=True,
              help="Restore damaged blocks: from --from files, then from peers through the running daemon.")
@click.option("--from", "sources", multiple=True, type=click.Path(path_type=Path),
              help="A model file (.safetensors/.pt) holding the original tensors (repeatable; with --repair).")
@click.pass_context
def fsck(ctx: click.Context, as_json: bool, repair: bool, sources: tuple[Path, ...]) -> None:
    """Every reachable block present and hash-verified, every signature valid; unfinished fetches
    are listed apart (exit status 0 when nothing else is wrong)."""
    from fednode.storage.netstate import fetch_expiry_seconds

    if sources and not repair:
        raise FednodeError("--from is for --repair")
    node = _node(ctx)
    expiry = fetch_expiry_seconds(node.config)
    report = operations.fsck(node.history, expiry)
    fixed: dict[str, Any] = {}
    if repair and report.damaged:
        fixed = _repair(ctx, node, expiry, list(sources),
                        (lambda line: click.echo(line, err=True)) if as_json else out.print)
        report = operations.fsck(node.history, expiry)
    if as_json:
        emit_json({"ok": not report.problems, "commits": report.commits, "problems": report.problems,
                   "unfinished": report.unfinished, "expired": report.expired,
                   **({"repair": fixed} if repair else {})})
        if report.problems:
            raise FednodeError(f"fsck failed: {len(report.problems)} problem(s), first: {report.problems[0]}")
        return
    for note in report.unfinished + report.expired:
        out.print(note)
    if report.unfinished:
        out.print(f"{len(report.unfinished)} fetch(es) unfinished (the daemon resumes them; not damage)")
    _report(report, "fsck", False)


def _repair(ctx: click.Context, node: Node, expiry: float, sources: list[Path], say: Callable[[str], None]
            ) -> dict[str, Any]:
    """``fsck --repair``: files first, then the daemon (if one runs) fetches what is left from peers."""
    from fednode.daemon.api_client import Client
    from fednode.workflows import repair

    def connect() -> repair.Refetch | None:
        try:
            client = Client(ctx.find_root().obj["home"], timeout=150)
            client.call("GET", "/status")
        except FednodeError as exc:
            say(f"not fetching from peers: {exc}")
            return None

        def refetch(repo_id: bytes, root: CID) -> bool:
            body = {"repo": repo_id_text(repo_id), "root": str(root), "timeout": 120}
            return bool(client.call("POST", "/fetch", body).get("ok"))

        return refetch

    result = repair.repair(node.store, lambda: operations.damaged_blocks(node.history, expiry), sources, connect)
    if result.from_files:
        say(f"repaired {len(result.from_files)} block(s) from {', '.join(map(str, sources))}")
    if result.refetched:
        say(f"fetched {len(set(result.refetched))} commit closure(s) again from peers")
    for why in result.failed:
        say(f"not repaired: {why}")
    return {"from_files": [str(c) for c in result.from_files], "refetched": [str(c) for c in result.refetched],
            "failed": result.failed}


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx: click.Context, as_json: bool) -> None:
    """Delete blocks that no branch, tag, unfinished fetch or recent reflog entry (90 days) reaches."""
    from fednode.storage.netstate import fetch_expiry_seconds

    node = _node(ctx)
    removed, freed = operations.gc(node.history, fetch_expiry_seconds(node.config))
    if as_json:
        emit_json({"blocks_removed": removed, "bytes_freed": freed})
    else:
        out.print(f"removed {removed} unreachable blocks ({freed} bytes)")


def _register_extensions() -> None:
    from cli import chain_commands, git_commands, members_commands, net_commands

    chain_commands.register(main)
    git_commands.register(main)
    net_commands.register(main)
    members_commands.register(main)


if __name__ == "__main__":  # `python -m cli.main`: extension modules must import this very module
    sys.modules.setdefault("cli.main", sys.modules[__name__])
_register_extensions()

if __name__ == "__main__":
    main()
