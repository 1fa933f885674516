"""Peers' names and proposals: ``fednode remote add|list|remove`` and ``fednode proposals``."""

from __future__ import annotations

import time

import click

from cli.context import emit_json, get_node, get_repo, json_option, out, short


def _age(time_ms: int) -> str:
    if not time_ms:
        return "?"
    seconds = max(0, time.time() - time_ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@click.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@json_option
@click.pass_context
def proposals(ctx: click.Context, repo_name: str | None, as_json: bool) -> None:
    """Merge proposals peers sent for REPO: author, branch, message, age (newest first).
    Review one with 'fednode review proposals/PEER/BRANCH'."""
    from fednode.workflows import refops

    node = get_node(ctx)
    info = get_repo(node, repo_name)
    rows = refops.proposals(node.history, info)
    if as_json:
        emit_json([{"ref": p.ref, "peer": p.peer, "author": p.author, "branch": p.branch,
                    "head": str(p.head), "message": p.message, "time_ms": p.time_ms} for p in rows])
        return
    if not rows:
        out.print(f"no merge proposals for {info.name}")
    for p in rows:
        out.print(f"{short(p.head)} {p.ref}  by {p.author[:12]}..  {_age(p.time_ms)}  {p.message}",
                  markup=False)


@click.group()
def remote() -> None:
    """Short names for peers: remotes/NAME/BRANCH instead of remotes/<peer id>/BRANCH."""


@remote.command("add")
@click.argument("name")
@click.argument("peer")
@click.pass_context
def remote_add(ctx: click.Context, name: str, peer: str) -> None:
    """Name PEER (a peer id 12D3KooW... or a wallet address) NAME."""
    from fednode.workflows import refops

    peer_id = refops.add_remote(get_node(ctx).history, name, peer)
    out.print(f"remote {name} is {peer_id}")


@remote.command("list")
@json_option
@click.pass_context
def remote_list(ctx: click.Context, as_json: bool) -> None:
    """The named peers."""
    from fednode.workflows import refops

    names = refops.remotes(get_node(ctx).history)
    if as_json:
        emit_json(names)
    else:
        for name, peer in sorted(names.items()):
            out.print(f"{name:20} {peer}")


@remote.command("remove")
@click.argument("name")
@click.pass_context
def remote_remove(ctx: click.Context, name: str) -> None:
    """Forget the name NAME (the peer's refs stay, under its peer id)."""
    from fednode.workflows import refops

    peer_id = refops.remove_remote(get_node(ctx).history, name)
    out.print(f"removed remote {name} ({peer_id})")


COMMANDS = [proposals, remote]
