"""Git habits: ``fednode reset``, ``reflog``, ``proposals`` and ``remote add|list|remove``."""

from __future__ import annotations

import datetime as dt
import time

import click

from cli.main import _node, _repo, emit_json, out, short


def _age(time_ms: int) -> str:
    if not time_ms:
        return "?"
    seconds = max(0, time.time() - time_ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def register(main: click.Group) -> None:
    """Add this module's commands to the ``fednode`` group."""

    @main.command()
    @click.argument("rev")
    @click.option("-b", "--branch", default=None, help="Branch to move (default: the current branch).")
    @click.option("-r", "--repo", "repo_name", default=None)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def reset(ctx: click.Context, rev: str, branch: str | None, repo_name: str | None, as_json: bool) -> None:
        """Move the current branch (or -b BRANCH) to REV; the old head stays in 'fednode reflog'."""
        from fednode.workflows import refops

        node = _node(ctx)
        info = _repo(node, repo_name)
        _, cid = node.history.resolve(rev, info)
        name = branch or node.history.current_branch(info)
        old = refops.move_branch(node.history, info, name, cid, f"reset: moving to {rev}")
        if as_json:
            emit_json({"branch": name, "old": str(old), "new": str(cid)})
        else:
            out.print(f"{name} is now at {short(cid)} (was {short(old)}; see 'fednode reflog {name}')",
                      markup=False)

    @main.command()
    @click.argument("branch", required=False)
    @click.option("-r", "--repo", "repo_name", default=None)
    @click.option("-n", "limit", type=click.IntRange(min=0), default=None, help="At most this many entries.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def reflog(ctx: click.Context, branch: str | None, repo_name: str | None, limit: int | None,
               as_json: bool) -> None:
        """Where BRANCH (default: the current branch) pointed, newest first: commits, merges,
        resets, forced moves, fast-forwards from peers."""
        from fednode.workflows import refops

        node = _node(ctx)
        info = _repo(node, repo_name)
        name = branch or node.history.current_branch(info)
        entries = refops.reflog(node.history, info, name)[:limit]
        if as_json:
            emit_json(entries)
            return
        for i, e in enumerate(entries):
            when = dt.datetime.fromtimestamp(e["time_ms"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
            new = (e["new"] or "(deleted)")[:16]
            out.print(f"{new:16} {name}@{{{i}}} {when} {e['reason']}", markup=False)

    @main.command()
    @click.argument("repo_name", metavar="[REPO]", required=False)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def proposals(ctx: click.Context, repo_name: str | None, as_json: bool) -> None:
        """Merge proposals peers sent for REPO: author, branch, message, age (newest first).
        Review one with 'fednode review proposals/PEER/BRANCH'."""
        from fednode.workflows import refops

        node = _node(ctx)
        info = _repo(node, repo_name)
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

    @main.group()
    def remote() -> None:
        """Short names for peers: remotes/NAME/BRANCH instead of remotes/<peer id>/BRANCH."""

    @remote.command("add")
    @click.argument("name")
    @click.argument("peer")
    @click.pass_context
    def remote_add(ctx: click.Context, name: str, peer: str) -> None:
        """Name PEER (a peer id 12D3KooW... or a wallet address) NAME."""
        from fednode.workflows import refops

        peer_id = refops.add_remote(_node(ctx).history, name, peer)
        out.print(f"remote {name} is {peer_id}")

    @remote.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def remote_list(ctx: click.Context, as_json: bool) -> None:
        """The named peers."""
        from fednode.workflows import refops

        names = refops.remotes(_node(ctx).history)
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

        peer_id = refops.remove_remote(_node(ctx).history, name)
        out.print(f"removed remote {name} ({peer_id})")
