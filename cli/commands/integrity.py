"""Checking and cleaning the store: ``fednode verify``, ``fsck`` (``--repair``) and ``gc``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli.context import client, emit_json, get_node, json_option, out, repo_option, resolve, verify_on_chain
from fednode.errors import FednodeError
from fednode.history import repo_id_text
from fednode.node import Node
from fednode.workflows import fsck as fsck_workflow
from fednode.workflows.verify import VerifyReport
from fednode.workflows.verify import verify as verify_ancestry
from protocol.multiformats import CID


def _report(report: VerifyReport, what: str, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": not report.problems, "commits": report.commits, "problems": report.problems,
                   "rounding_proven": report.rounding_proven})
    elif report.problems:
        for p in report.problems:
            click.echo(f"problem: {p}", err=True)
    else:
        proven = report.rounding_proven
        out.print(f"{what}: {report.commits} commits ok" + (
            f" ({proven} FedAvg merge{'s' if proven != 1 else ''}: rounding proven by the remainder proof)"
            if proven else ""))
    if report.problems:
        raise FednodeError(f"{what} failed: {len(report.problems)} problem(s), first: {report.problems[0]}")


@click.command()
@click.argument("rev")
@repo_option
@click.option("--chain", "on_chain", is_flag=True, help="Also check every commit against its anchored record.")
@json_option
@click.pass_context
def verify(ctx: click.Context, rev: str, repo_name: str | None, on_chain: bool, as_json: bool) -> None:
    """Check hashes, signatures, merges and reverts of REV's whole ancestry (--chain: and the chain)."""
    node = get_node(ctx)
    info, cid = resolve(node, rev, repo_name)
    report = verify_ancestry(node.history, info, cid)
    if on_chain and not report.problems:
        _, chain_problems = verify_on_chain(ctx, rev, repo_name)
        report.problems += [f"chain: {p}" for p in chain_problems]
    _report(report, "verify --chain" if on_chain else "verify", as_json)


@click.command()
@json_option
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
    node = get_node(ctx)
    expiry = fetch_expiry_seconds(node.config)
    report = fsck_workflow.fsck(node.history, expiry)
    fixed: dict[str, Any] = {}
    if repair and report.damaged:
        fixed = _repair(ctx, node, expiry, list(sources),
                        (lambda line: click.echo(line, err=True)) if as_json else out.print)
        report = fsck_workflow.fsck(node.history, expiry)
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
    from fednode.workflows import repair

    def connect() -> repair.Refetch | None:
        try:
            api = client(ctx, timeout=150)
            api.call("GET", "/status")
        except FednodeError as exc:
            say(f"not fetching from peers: {exc}")
            return None

        def refetch(repo_id: bytes, root: CID) -> bool:
            body = {"repo": repo_id_text(repo_id), "root": str(root), "timeout": 120}
            return bool(api.call("POST", "/fetch", body).get("ok"))

        return refetch

    result = repair.repair(node.store, lambda: fsck_workflow.damaged_blocks(node.history, expiry), sources, connect)
    if result.from_files:
        say(f"repaired {len(result.from_files)} block(s) from {', '.join(map(str, sources))}")
    if result.refetched:
        say(f"fetched {len(set(result.refetched))} commit closure(s) again from peers")
    for why in result.failed:
        say(f"not repaired: {why}")
    return {"from_files": [str(c) for c in result.from_files], "refetched": [str(c) for c in result.refetched],
            "failed": result.failed}


@click.command()
@json_option
@click.pass_context
def gc(ctx: click.Context, as_json: bool) -> None:
    """Delete blocks that no branch, tag, unfinished fetch or recent reflog entry (90 days) reaches."""
    from fednode.storage.netstate import fetch_expiry_seconds

    node = get_node(ctx)
    removed, freed = fsck_workflow.gc(node.history, fetch_expiry_seconds(node.config))
    if as_json:
        emit_json({"blocks_removed": removed, "bytes_freed": freed})
    else:
        out.print(f"removed {removed} unreachable blocks ({freed} bytes)")


COMMANDS = [verify, fsck, gc]
