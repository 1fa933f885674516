"""Moving commits as files: ``fednode export REV --car FILE`` and ``fednode import FILE`` (CAR files)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import emit, get_node, json_option, positive_int, repo_option, resolve
from fednode.history import repo_id_text


@click.command("export")
@click.argument("rev")
@click.option("--car", "car_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The CAR file to write (replaced atomically).")
@click.option("--ancestry", is_flag=True, help="Every ancestor commit too (what a new node needs).")
@repo_option
@json_option
@click.pass_context
def export(ctx: click.Context, rev: str, car_path: Path, ancestry: bool, repo_name: str | None,
           as_json: bool) -> None:
    """Write commit REV and the blocks it needs (--ancestry: and all its history) as a CARv1 file."""
    from fednode.workflows.carfiles import export_car  # loaded on use: fast start

    node = get_node(ctx)
    info, cid = resolve(node, rev, repo_name)
    report = export_car(node.history, info, cid, car_path, ancestry)
    data = {"file": str(car_path), "root": str(cid), "repo": info.name, "commits": report.commits,
            "blocks": report.blocks, "bytes": report.bytes}
    emit(data, as_json, f"wrote {car_path}: commit {cid} ({report.commits} commits, {report.blocks} blocks, "
                        f"{report.bytes} bytes)")


@click.command("import")
@click.argument("car_path", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--max-bytes", default=None, help="Refuse a file larger than this (default 64 GiB).")
@json_option
@click.pass_context
def import_(ctx: click.Context, car_path: Path, max_bytes: str | None, as_json: bool) -> None:
    """Check a CAR file completely (every block, signature and reconstruction) and store it, or nothing."""
    from fednode.workflows.carfiles import DEFAULT_MAX_BYTES, import_car  # loaded on use: fast start

    limit = DEFAULT_MAX_BYTES if max_bytes is None else positive_int(max_bytes, "--max-bytes")
    node = get_node(ctx)
    report = import_car(node.history, car_path, limit)
    roots = [str(r) for r in report.roots]
    data = {"file": str(car_path), "roots": roots, "repo": report.repo.name,
            "repo_id": repo_id_text(report.repo.repo_id), "registered": report.registered,
            "commits": len(report.commits), "blocks": report.blocks, "new_blocks": report.new_blocks,
            "bytes": report.bytes}
    new = " (new here: registered)" if report.registered else ""
    emit(data, as_json, f"imported {car_path} into repository {report.repo.name}{new}: {len(report.commits)} "
                        f"commits, {report.blocks} blocks ({report.new_blocks} new, {report.bytes} bytes)\n"
                        + "\n".join(f"commit {r}: name it with 'fednode branch NAME {r} -r {report.repo.name}'"
                                    for r in roots))


COMMANDS = [export, import_]
