"""Reading history: ``fednode log``, ``show``, ``diff``, ``checkout``; and ``revert``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from cli.context import (
    CASTS,
    commit_json,
    emit_json,
    get_node,
    get_repo,
    json_option,
    out,
    repo_option,
    resolve,
    short,
)
from fednode.errors import FednodeError
from fednode.history.graph import graph_lines, topo_order
from fednode.tensors.modelio import open_model
from fednode.workflows import checkout as checkout_workflow
from fednode.workflows import commitments
from fednode.workflows.diff import diff as diff_revisions
from fednode.workflows.diff import diff_file
from fednode.workflows.revert import revert as revert_to
from protocol.multiformats import CID
from protocol.objects import Commit


@click.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.argument("branch", required=False)
@click.option("--all", "all_branches", is_flag=True,
              help="Every ref: branches, tags, peers' heads (remotes/*) and merge proposals (proposals/*).")
@click.option("--remotes", is_flag=True, help="Also the peers' heads (remotes/*) and merge proposals (proposals/*).")
@click.option("--oneline", is_flag=True, help="One short line a commit: id, refs, message.")
@click.option("-n", "limit", type=int, default=None, help="At most this many commits.")
@json_option
@click.pass_context
def log(ctx: click.Context, repo_name: str | None, branch: str | None, all_branches: bool, remotes: bool,
        oneline: bool, limit: int | None, as_json: bool) -> None:
    """History of a branch (or --all refs) with a graph of merges, as git log --graph draws it."""
    from fednode.workflows.refops import named_remote_refs

    if limit is not None and limit < 0:
        raise FednodeError(f"-n must be 0 or more, not {limit}")
    node = get_node(ctx)
    info = get_repo(node, repo_name)
    history = node.history
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
    ordered = topo_order([(c, cm.parents, cm.time_ms) for c, cm in commits.items()])
    order = [c for c in ordered if isinstance(c, CID)][:limit]  # the ids given: CIDs
    if as_json:
        emit_json([{**commit_json(c, commits[c]), "refs": [r.removeprefix("HEAD -> ") for r in labels.get(c, [])]}
                   for c in order])
        return
    for cid, (above, prefix, below) in zip(order, graph_lines([(c, commits[c].parents) for c in order]), strict=True):
        for line in above:
            out.print(line.rstrip(), markup=False)
        refs = f" [cyan]({escape(', '.join(labels[cid]))})[/]" if cid in labels else ""
        out.print(f"{escape(prefix)}[yellow]{short(cid)}[/]{refs} {_log_text(commits[cid], oneline)}", markup=True)
        for line in below:
            out.print(line.rstrip(), markup=False)


def _log_text(commit: Commit, oneline: bool) -> str:
    """A commit's text after its id in ``log`` (rich markup)."""
    if oneline:
        return escape(commit.message)
    when = dt.datetime.fromtimestamp(commit.time_ms / 1000).strftime("%Y-%m-%d %H:%M")
    metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(commit.metrics.items()))
    return f"{commit.kind:6} {when} {escape(commit.message)}" + (f" [dim]{escape(metrics)}[/]" if metrics else "")


@click.command()
@click.argument("rev")
@repo_option
@json_option
@click.pass_context
def show(ctx: click.Context, rev: str, repo_name: str | None, as_json: bool) -> None:
    """A commit: metadata and every tensor with dtype, shape, encoding and CID."""
    node = get_node(ctx)
    repo_info, cid = resolve(node, rev, repo_name)
    commit_obj = node.history.load_commit(cid)
    manifest = node.history.load_manifest(commit_obj.weights)
    proof = None
    if "zk" in repo_info.settings:  # a repository that requires update proofs (zk stack loaded only then)
        from fednode.workflows import zkpolicy

        proof = zkpolicy.describe(repo_info, commit_obj)
    tensors: list[dict[str, Any]] = []
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
            "signature_valid": node.history.verify_commit_signature(commit_obj),
            "commitment": commitments.describe(commit_obj), "proof": proof}
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
    if data["commitment"] is not None:
        out.print(f"zk      {escape(data['commitment'])}")
    if proof is not None:  # a merge's line reads "remainder proof: ..." already
        out.print(proof if proof.startswith("remainder proof") else f"proof: {proof}", markup=False)
    table = Table("tensor", "dtype", "shape", "encoding", "stored", "ratio", "cid")
    for t in tensors:
        enc = t["encoding"] + ("+zstd" if t["compression"] == "zstd" else "")
        ratio = f"{t['compression_ratio']:.1f}x" if t["compression_ratio"] else "-"
        table.add_row(t["name"], t["dtype"], str(t["shape"]), enc, str(t["stored_bytes"]), ratio,
                      (t["cid"] or "-")[:20])
    out.print(table)
    ratio = f"{data['compression_ratio']:.1f}x" if data["compression_ratio"] else "nothing stored"
    out.print(f"stored {stored} bytes for {dense} bytes of weights (compression ratio {ratio})")


@click.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("--file", "file", type=click.Path(path_type=Path), default=None,
              help="Compare A with this model on disk instead of a second revision.")
@click.option("--key", "model_key", default=None, help="With --file: the checkpoint entry holding the state_dict.")
@click.option("--cast", "cast", type=CASTS, default=None,
              help="With --file: convert its float tensors to this dtype first.")
@repo_option
@json_option
@click.pass_context
def diff(ctx: click.Context, a: str, b: str | None, file: Path | None, model_key: str | None, cast: str | None,
         repo_name: str | None, as_json: bool) -> None:
    """Per tensor: L2 norm of the change, relative change, fraction of changed values (A to B, or
    A to a model file with --file)."""
    if (b is None) == (file is None):
        raise FednodeError("diff compares two revisions (diff A B) or a revision and a file (diff A --file PATH)")
    if file is None and (model_key or cast):
        raise FednodeError("--key and --cast are for --file")
    node = get_node(ctx)
    _, ca = resolve(node, a, repo_name)
    if file is not None:
        model = open_model(file, model_key, cast)
        try:
            rows = diff_file(node.history, ca, model)
        finally:
            model.close()
        b_text = str(file)
    else:
        assert b is not None  # one of b and file, checked above
        _, cb = resolve(node, b, repo_name)
        rows = diff_revisions(node.history, ca, cb)
        b_text = str(cb)
    if as_json:
        emit_json({"a": str(ca), "b": b_text, "tensors": [r.to_json() for r in rows]})
        return
    table = Table("tensor", "status", "L2 change", "relative", "changed")
    for r in rows:
        table.add_row(r.name, r.status, f"{r.l2:.4g}", f"{r.relative:.3g}", f"{r.changed_fraction:.1%}")
    out.print(table)


@click.command()
@click.argument("rev")
@click.option("--out", "out_text", required=True, type=click.Path(),
              help="A .safetensors, .pt, .pth or .bin file; DIR/ or an existing directory: DIR/model.safetensors.")
@repo_option
@click.pass_context
def checkout(ctx: click.Context, rev: str, out_text: str, repo_name: str | None) -> None:
    """Write a revision's weights to a .safetensors (or .pt/.pth/.bin) file, or into a directory."""
    node = get_node(ctx)
    _, cid = resolve(node, rev, repo_name)
    out_path = checkout_workflow.checkout_path(out_text)  # refuses a path that cannot be a new model file
    try:
        size = checkout_workflow.checkout(node.history, cid, out_path)
    except OSError as exc:
        raise FednodeError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    out.print(f"wrote {out_path} ({size} bytes) from {short(cid)}")


@click.command()
@click.argument("rev")
@click.option("-b", "--branch", default=None)
@repo_option
@click.pass_context
def revert(ctx: click.Context, rev: str, branch: str | None, repo_name: str | None) -> None:
    """New commit on the branch that restores REV's weights (history is never rewritten)."""
    node = get_node(ctx)
    info, cid = resolve(node, rev, repo_name)
    result = revert_to(node.history, info, cid, branch)
    out.print(f"[{branch or node.history.current_branch(info)} {short(result.cid)}] revert to {short(cid)}",
              markup=False)


COMMANDS = [log, show, diff, checkout, revert]
