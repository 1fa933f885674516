"""Moving commits as files: ``fednode export REV --car FILE`` and ``fednode import FILE`` (CAR files,
sealed for the members when the repository is private: fednode/workflows/sealedcar.py)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import emit, get_node, json_option, positive_int, repo_option, resolve
from fednode.history import repo_id_text
from protocol.multiformats import b58encode


@click.command("export")
@click.argument("rev")
@click.option("--car", "car_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The file to write (replaced atomically).")
@click.option("--ancestry", is_flag=True, help="Every ancestor commit too (what a new node needs).")
@click.option("--plain", is_flag=True,
              help="A private repository as an UNENCRYPTED CAR (default: sealed for its members).")
@repo_option
@json_option
@click.pass_context
def export(ctx: click.Context, rev: str, car_path: Path, ancestry: bool, plain: bool, repo_name: str | None,
           as_json: bool) -> None:
    """Write commit REV and the blocks it needs (--ancestry: and all its history) as a CARv1 file;
    a private repository's is sealed so that only its owner and members can read it (docs/privacy.md)."""
    from fednode.workflows.carfiles import export_car  # loaded on use: fast start
    from fednode.workflows.sealedcar import backup_readers, export_sealed

    node = get_node(ctx)
    info, cid = resolve(node, rev, repo_name)
    private = node.history.is_private(info.repo_id)
    readers = backup_readers(node, info) if private and not plain else []
    if readers:
        report = export_sealed(node.history, info, cid, car_path, readers, ancestry)
    else:
        if private:
            click.echo(f"warning: {car_path} is an UNENCRYPTED copy of private repository {info.name}: "
                       "whoever gets the file reads its weights", err=True)
        report = export_car(node.history, info, cid, car_path, ancestry)
    data = {"file": str(car_path), "root": str(cid), "repo": info.name, "commits": report.commits,
            "blocks": report.blocks, "bytes": report.file_bytes, "car_bytes": report.bytes,
            "sealed": bool(readers), "readers": [b58encode(r) for r in readers]}
    sealed = (f", sealed for {len(readers)} reader(s): the owner and {len(readers) - 1} member(s)"
              if readers else "")
    emit(data, as_json, f"wrote {car_path}: commit {cid} ({report.commits} commits, {report.blocks} blocks, "
                        f"{report.file_bytes} bytes{sealed})")


@click.command("import")
@click.argument("car_path", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--max-bytes", default=None, help="Refuse a file larger than this (default 64 GiB).")
@json_option
@click.pass_context
def import_(ctx: click.Context, car_path: Path, max_bytes: str | None, as_json: bool) -> None:
    """Check a CAR file completely (every block, signature and reconstruction) and store it, or nothing;
    a sealed backup is first decrypted with this node's key (its owner's or a member's only)."""
    from fednode.workflows.carfiles import DEFAULT_MAX_BYTES, import_car  # loaded on use: fast start
    from fednode.workflows.sealedcar import import_sealed, is_sealed

    limit = DEFAULT_MAX_BYTES if max_bytes is None else positive_int(max_bytes, "--max-bytes")
    node = get_node(ctx)
    sealed = is_sealed(car_path)
    if sealed:
        report = import_sealed(node.history, node.identity, car_path, limit)
    else:
        report = import_car(node.history, car_path, limit)
    roots = [str(r) for r in report.roots]
    data = {"file": str(car_path), "roots": roots, "repo": report.repo.name,
            "repo_id": repo_id_text(report.repo.repo_id), "registered": report.registered,
            "commits": len(report.commits), "blocks": report.blocks, "new_blocks": report.new_blocks,
            "bytes": report.bytes, "sealed": sealed,
            "published": None if report.published is None else str(report.published)}
    new = " (new here: registered)" if report.registered else ""
    if report.published is not None:  # the owner's verified decision came with the file
        new += f"; it is now public (the owner's publish commit {report.published})"
    how = " (a sealed backup, opened with your key)" if sealed else ""
    emit(data, as_json, f"imported {car_path}{how} into repository {report.repo.name}{new}: {len(report.commits)} "
                        f"commits, {report.blocks} blocks ({report.new_blocks} new, {report.bytes} bytes)\n"
                        + "\n".join(f"commit {r}: name it with 'fednode branch NAME {r} -r {report.repo.name}'"
                                    for r in roots))


COMMANDS = [export, import_]
