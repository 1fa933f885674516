"""``fednode pin REV [--kubo URL]``: pin a commit on an operator's Kubo; ``fednode pin --status``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from cli.context import emit, emit_json, get_node, json_option, out, resolve
from fednode.errors import FednodeError

if TYPE_CHECKING:
    from fednode.node import Node



@click.command()
@click.argument("rev", required=False)
@click.option("--kubo", "kubo", help="Kubo's RPC API URL (default: [ipfs] kubo_api, else http://127.0.0.1:5001).")
@click.option("--repo", "-r", "repo_name", help="Repository name (default: the current one).")
@click.option("--service", is_flag=True,
              help="Pin on the IPFS Pinning Service API at [ipfs] pinning_service instead of a Kubo.")
@click.option("--sealed", is_flag=True,
              help="A private repository: pin a sealed backup of REV and its ancestry (members read it).")
@click.option("--status", is_flag=True, help="List the queued, pinned and failed pin requests.")
@json_option
@click.pass_context
def pin(ctx: click.Context, rev: str | None, kubo: str | None, repo_name: str | None, service: bool,
        sealed: bool, status: bool, as_json: bool) -> None:
    """Queue the pin of REV's tensor states, manifest and commit on a Kubo; the running daemon pins them."""
    node = get_node(ctx)
    if status:
        if rev is not None:
            raise FednodeError("give either REV or --status, not both")
        _status(node, as_json)
        return
    if rev is None:
        raise FednodeError("give the revision to pin (e.g. main), or --status")
    from fednode.storage.pinqueue import DEFAULT_KUBO
    from fednode.workflows.pinning import enqueue, enqueue_sealed, read_token

    ipfs = node.config.get("ipfs", {})
    if service:
        if kubo is not None or "pinning_service" not in ipfs or "pinning_service_token_file" not in ipfs:
            raise FednodeError("--service pins on [ipfs] pinning_service with the token in [ipfs] "
                               "pinning_service_token_file: set both (and no --kubo)")
        url = str(ipfs["pinning_service"])
        read_token(ipfs["pinning_service_token_file"])  # unreadable, open to others, no token: refused now
    else:
        url = kubo or str(ipfs.get("kubo_api", DEFAULT_KUBO))
    info, cid = resolve(node, rev, repo_name)
    kind, size = ("psa" if service else "kubo"), 0
    if sealed:
        req, new, size = enqueue_sealed(node, info, cid, url, service=kind)
    else:
        req, new = enqueue(node.history, info, cid, url, service=kind)
    from fednode.daemon.pidfile import running_pid

    running = running_pid(node.home) is not None
    who = "the running daemon pins it" if running else "no daemon is running: 'fednode daemon' pins it once started"
    count = len(req.targets) if not service else sum(1 for _, rec in req.targets if rec)
    what = f"a sealed backup {req.targets[0][0]} of {cid}" if req.source == "sealed" else f"{cid} ({count} CIDs)"
    text = (f"{'queued' if new else 'already queued'}: pin #{req.seq} of {what} "
            f"on {req.kubo}; {who} (see 'fednode pin --status')")
    emit({**req.to_json(), "new": new, "daemon_running": running, "sealed_bytes": size}, as_json, text)


def _status(node: Node, as_json: bool) -> None:
    from fednode.storage import pinqueue

    with node.store.read() as txn:
        reqs = pinqueue.items(txn)
    if as_json:
        emit_json([r.to_json() for r in reqs])
        return
    if not reqs:
        out.print("no pin requests")
    for r in reqs:
        when = "" if r.state != "queued" or not r.attempts else f", next try in {max(0, r.next_at - time.time()):.0f} s"
        total = len(r.targets) if r.service == "kubo" else sum(1 for _, rec in r.targets if rec)
        line = (f"#{r.seq} {r.state} {r.commit} on {r.kubo}: {len(r.done)}/{total} pinned, "
                f"{r.attempts} failed attempts{when}")
        out.print(line + (f" (last error: {r.error})" if r.error else ""), markup=False)


COMMANDS = [pin]
