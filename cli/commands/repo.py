"""Repositories: ``fednode repo create|list|use``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cli.context import CASTS, emit_json, get_node, json_option, out
from fednode.history import repo_id_text
from fednode.tensors.modelio import open_model


@click.group()
def repo() -> None:
    """Create, list and select repositories."""


@repo.command("create")
@click.argument("name")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="Initial weights: .safetensors, .pt/.pth/.bin, or a sharded checkpoint directory.")
@click.option("--key", "model_key", default=None, help="Entry of a PyTorch checkpoint that holds the state_dict.")
@click.option("--cast", "cast", type=CASTS, default=None, help="Convert float tensors to this dtype.")
@click.option("-m", "--message", default="initial weights")
@click.option("--scale-bits", type=int, default=None, help="Grid 2**-N of the lossy --encoding fixed|topk.")
@click.option("--snapshot-interval", type=int, default=None, help="Store a full snapshot every N deltas.")
@json_option
@click.pass_context
def repo_create(
    ctx: click.Context, name: str, source: Path, model_key: str | None, cast: str | None, message: str,
    scale_bits: int | None, snapshot_interval: int | None, as_json: bool,
) -> None:
    """Create repository NAME from a model file (its genesis commit)."""
    node = get_node(ctx)
    model = open_model(source, model_key, cast)
    try:
        info, result = node.create_repo(name, model, message, scale_bits, snapshot_interval)
    finally:
        model.close()
    if as_json:
        emit_json({"name": name, "id": repo_id_text(info.repo_id), "genesis": str(result.cid)})
        return
    out.print(f"created repository {name} ({len(model.tensors)} tensors, {result.total_bytes} bytes)")
    out.print(f"id      {repo_id_text(info.repo_id)}")
    out.print(f"genesis {result.cid}")


@repo.command("list")
@json_option
@click.pass_context
def repo_list(ctx: click.Context, as_json: bool) -> None:
    """List repositories in this node's store."""
    node = get_node(ctx)
    rows: list[dict[str, Any]] = []
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
    info = get_node(ctx).use_repo(name)
    out.print(f"current repository: {info.name}")


COMMANDS = [repo]
