"""Branches and tags: ``fednode branch``, ``switch``, ``tag``; moving a branch back: ``reset``, ``reflog``."""

from __future__ import annotations

import datetime as dt

import click

from cli.context import emit_json, get_node, get_repo, json_option, out, repo_option, short
from fednode.errors import FednodeError
from fednode.history import History, RepoInfo


@click.command()
@click.argument("name", required=False)
@click.argument("start", required=False)
@click.option("-d", "--delete", is_flag=True)
@click.option("-f", "--force", is_flag=True, help="Move NAME to START even if it exists (old head: 'fednode reflog').")
@click.option("-s", "--switch", "switch_to", is_flag=True, help="Make NAME the current branch.")
@repo_option
@json_option
@click.pass_context
def branch(ctx: click.Context, name: str | None, start: str | None, delete: bool, force: bool, switch_to: bool,
           repo_name: str | None, as_json: bool) -> None:
    """List branches, or create NAME at START (default HEAD), move it (-f), delete (-d) or switch (-s)."""
    node = get_node(ctx)
    info = get_repo(node, repo_name)
    history = node.history
    if force and (name is None or delete):
        raise FednodeError("-f moves a branch: fednode branch -f NAME [START]")
    if name is None:
        _list_branches(history, info, as_json)
        return
    if delete:
        history.delete_branch(info, name)
        out.print(f"deleted branch {name}")
        return
    if switch_to and start is None and name in history.branches(info):
        history.switch_branch(info, name)
        out.print(f"switched to branch {name}")
        return
    _set_branch(history, info, name, start, force)
    if switch_to:
        history.switch_branch(info, name)
        out.print(f"switched to branch {name}")


def _list_branches(history: History, info: RepoInfo, as_json: bool) -> None:
    """``fednode branch``: local branches and the peers' heads, the current one starred."""
    from fednode.workflows import refops

    current = history.current_branch(info)
    rows = {b: str(c) for b, c in history.branches(info).items()}
    rows.update({r: str(c) for r, c in refops.named_remote_refs(history, info).items()})
    if as_json:
        emit_json({"current": current, "branches": rows})
    else:
        for b, c in rows.items():
            out.print(f"{'*' if b == current else ' '} {b:20} {c[:16]}")


def _set_branch(history: History, info: RepoInfo, name: str, start: str | None, force: bool) -> None:
    """Create branch NAME at START (default HEAD); with ``force``, move it there if it exists."""
    from fednode.workflows import refops

    _, cid = history.resolve(start or "HEAD", info)
    if force:
        old = refops.move_branch(history, info, name, cid, f"branch -f: moving to {start or 'HEAD'}", create=True)
        out.print(f"moved branch {name} to {short(cid)}" + (f" (was {short(old)})" if old else " (new)"))
    else:
        history.create_branch(info, name, cid)
        out.print(f"created branch {name} at {short(cid)}")


@click.command()
@click.argument("name")
@repo_option
@click.pass_context
def switch(ctx: click.Context, name: str, repo_name: str | None) -> None:
    """Make branch NAME the current branch."""
    node = get_node(ctx)
    node.history.switch_branch(get_repo(node, repo_name), name)
    out.print(f"switched to branch {name}")


@click.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("-d", "--delete", is_flag=True)
@repo_option
@json_option
@click.pass_context
def tag(ctx: click.Context, name: str | None, rev: str | None, delete: bool, repo_name: str | None,
        as_json: bool) -> None:
    """List tags, or tag REV (default HEAD) as NAME, or delete (-d)."""
    node = get_node(ctx)
    info = get_repo(node, repo_name)
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


@click.command()
@click.argument("rev")
@click.option("-b", "--branch", default=None, help="Branch to move (default: the current branch).")
@repo_option
@json_option
@click.pass_context
def reset(ctx: click.Context, rev: str, branch: str | None, repo_name: str | None, as_json: bool) -> None:
    """Move the current branch (or -b BRANCH) to REV; the old head stays in 'fednode reflog'."""
    from fednode.workflows import refops

    node = get_node(ctx)
    info = get_repo(node, repo_name)
    _, cid = node.history.resolve(rev, info)
    name = branch or node.history.current_branch(info)
    old = refops.move_branch(node.history, info, name, cid, f"reset: moving to {rev}")
    if as_json:
        emit_json({"branch": name, "old": str(old), "new": str(cid)})
    else:
        out.print(f"{name} is now at {short(cid)} (was {short(old)}; see 'fednode reflog {name}')",
                  markup=False)


@click.command()
@click.argument("branch", required=False)
@repo_option
@click.option("-n", "limit", type=click.IntRange(min=0), default=None, help="At most this many entries.")
@json_option
@click.pass_context
def reflog(ctx: click.Context, branch: str | None, repo_name: str | None, limit: int | None,
           as_json: bool) -> None:
    """Where BRANCH (default: the current branch) pointed, newest first: commits, merges,
    resets, forced moves, fast-forwards from peers."""
    from fednode.workflows import refops

    node = get_node(ctx)
    info = get_repo(node, repo_name)
    name = branch or node.history.current_branch(info)
    entries = refops.reflog(node.history, info, name)[:limit]
    if as_json:
        emit_json(entries)
        return
    for i, e in enumerate(entries):
        when = dt.datetime.fromtimestamp(e["time_ms"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
        new = (e["new"] or "(deleted)")[:16]
        out.print(f"{new:16} {name}@{{{i}}} {when} {e['reason']}", markup=False)


COMMANDS = [branch, switch, tag, reset, reflog]
