"""On-chain anchoring: ``fednode anchor``, ``chain status|flush|retarget|drop|verify|use``,
``chain members add|remove|list`` and ``devchain``.

trio, solders and the chain client load only when a chain command runs (fast start).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.context import (
    CHAIN_BACKENDS,
    emit_json,
    get_node,
    get_repo,
    home,
    json_option,
    out,
    repo_option,
    resolve,
    verify_on_chain,
)
from fednode.chain import session
from fednode.errors import FednodeError
from fednode.node import select_chain_backend

if TYPE_CHECKING:
    from fednode.chain import outbox
    from fednode.chain.anchoring import Anchorer, FlushResult
    from fednode.node import Node


def _flush_report(result: FlushResult, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    data = {**(extra or {}), "sent": result.sent, "queued": result.remaining, "error": result.error,
            "held": result.held}  # fmt: skip
    if as_json:
        emit_json(data)
    else:
        for item in result.sent:
            what = item["cid"] or "repository"
            index = f" index {item['index']}" if "index" in item else ""
            out.print(f"anchored #{item['seq']} {item['op']} {str(what)[:16]}{index}", markup=False)
        if result.unavailable:
            out.print(f"chain unreachable; {result.remaining} item(s) stay queued for 'fednode chain flush'")
        elif result.remaining:
            out.print(f"{result.remaining} item(s) still queued")
        if result.held and not result.unavailable:
            out.print(f"{result.held} queued item(s) wait for another chain (see 'fednode chain status')")
    if result.error and not result.unavailable:
        raise FednodeError(f"anchoring stopped: {result.error}")


def _branch_of(rev: str) -> str | None:
    """The branch a REV names directly (``main``, ``repo:main``), if it is a plain name."""
    base = rev.split(":", 1)[-1]
    return base if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", base) and base != "HEAD" else None


@click.command()
@click.argument("rev")
@repo_option
@click.option("-b", "--branch", default=None,
              help="On-chain branch a merge moves (default: the branch REV names, else the current branch).")
@click.option("--no-flush", is_flag=True, help="Only queue; send later with 'fednode chain flush'.")
@json_option
@click.pass_context
def anchor(ctx: click.Context, rev: str, repo_name: str | None, branch: str | None, no_flush: bool,
           as_json: bool) -> None:  # fmt: skip
    """Anchor REV and its unanchored ancestors on chain (queued, then sent in order)."""
    from fednode.chain.anchoring import FlushResult

    async def go(a: Anchorer, node: Node) -> None:
        info, cid = resolve(node, rev, repo_name)
        name = branch or (_branch_of(rev) if _branch_of(rev) in node.history.branches(info) else None) \
            or node.history.current_branch(info)  # fmt: skip
        queued = await a.enqueue(info, cid, name)
        extra = {"queued_now": [i.to_json() for i in queued]}
        if no_flush:
            result = FlushResult(remaining=len(a.queue()))
        else:
            result = await a.flush()
        if not as_json and not result.sent:
            out.print(f"queued {len(queued)} item(s)" if queued else "nothing new to anchor")
        _flush_report(result, as_json, extra)

    session.run(get_node(ctx), go)


@click.group()
def chain() -> None:
    """On-chain anchoring: status, flush, verify, backend selection."""


@chain.command("status")
@json_option
@click.pass_context
def chain_status(ctx: click.Context, as_json: bool) -> None:
    """Backend, program id, wallet balance and the anchoring queue."""
    from fednode.chain.aio import ChainUnavailable
    from fednode.chain.config import chain_section

    async def go(a: Anchorer, node: Node) -> dict[str, Any]:
        section = chain_section(node.config)
        deployed: bool | None
        repos: list[dict[str, Any]] = []
        here = await a.backend.chain_id(required=False)
        queue = [{**i.to_json(), "placement": i.placement(here)} for i in a.queue()]
        try:
            balance: int | None = await a.backend.balance(node.identity.keypair.pubkey())
            slot: int | None = await a.backend.slot()
            deployed = await a.backend.account_data(a.backend.program_id) is not None
            if deployed:
                repos = [await a.repo_summary(info) for info in node.history.repos()]
        except ChainUnavailable:
            balance = slot = deployed = None
        return {"backend": section["backend"], "url": section.get("url"), "program_id": str(a.backend.program_id),
                "program_deployed": deployed,
                "wallet": node.identity.address, "balance_lamports": balance, "reachable": balance is not None,
                "slot": slot, "repos": repos, "chain": here.to_json(), "queue_length": len(queue),
                "waiting_for_other_chain": sum(1 for i in queue if i["placement"] != "this"),
                "queue": queue}  # fmt: skip

    data = session.run(get_node(ctx), go)
    if as_json:
        emit_json(data)
    else:
        _print_chain_status(data)


def _print_chain_status(data: dict[str, Any]) -> None:
    from fednode.chain.aio import ChainId

    where = data["backend"] + (f" {data['url']}" if data["url"] else "")
    out.print(f"backend    {where}", markup=False)
    missing = " (no program at this address!)" if data["program_deployed"] is False else ""
    out.print(f"program    {data['program_id']}{missing}")
    out.print(f"genesis    {data['chain']['genesis'] or 'not known (chain unreachable)'}")
    bal = "unreachable" if data["balance_lamports"] is None else f"{data['balance_lamports'] / 1e9:.6f} SOL"
    out.print(f"wallet     {data['wallet']} ({bal})")
    for r in data["repos"]:
        if r["on_chain"]:
            heads = ", ".join(f"{b}={h[:12]}" for b, h in sorted(r["heads"].items())) or "no heads"
            out.print(f"repo       {r['name']}: {r['commit_count']} anchored, {heads}", markup=False)
        else:
            out.print(f"repo       {r['name']}: not on chain", markup=False)
    waiting = data["waiting_for_other_chain"]
    out.print(f"queue      {data['queue_length']} item(s)" + (f", {waiting} waiting for another chain" if waiting
                                                                 else ""))  # fmt: skip
    for item in data["queue"]:
        err = f"  [{item['attempts']} attempt(s): {item['error']}]" if item["error"] else ""
        target = ChainId.from_json(item["chain"])
        where = {"this": "", "other": f"  [waiting for chain {target.label() if target else ''}]",
                 "unbound": "  [bound to no chain: queued before chains were recorded]"}[item["placement"]]
        out.print(f"  #{item['seq']} {item['op']:11} {item['kind']:6} {item['cid'][:16]}{where}{err}",
                  markup=False)  # fmt: skip
    if waiting:
        out.print(f"{waiting} item(s) go out only on the chain they were queued for: switch back with "
                  "'fednode chain use', or send them to this chain with 'fednode chain retarget --all'",
                  markup=False)  # fmt: skip


@chain.command("flush")
@json_option
@click.pass_context
def flush(ctx: click.Context, as_json: bool) -> None:
    """Send the queued anchoring requests, in order."""

    async def go(a: Anchorer, node: Node) -> None:
        result = await a.flush()
        if not as_json and not result.sent and not result.error:
            out.print("queue empty")
        _flush_report(result, as_json)

    session.run(get_node(ctx), go)


@chain.command("retarget")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every queued item not meant for the current chain.")
@click.pass_context
def retarget(ctx: click.Context, seqs: tuple[int, ...], all_: bool) -> None:
    """Bind queued items #SEQS (or --all waiting for another chain) to the current chain."""
    if bool(seqs) == all_:
        raise FednodeError("name the items to retarget (SEQ...) or pass --all")

    async def go(a: Anchorer, node: Node) -> tuple[list[outbox.OutboxItem], str]:
        here = await a.backend.chain_id(required=False)
        return a.retarget(here, list(seqs) if seqs else None), here.label()

    moved, label = session.run(get_node(ctx), go)
    out.print(f"retargeted {len(moved)} item(s) to {label}; they go out at the next flush", markup=False)


@chain.command("drop")
@click.argument("seq", type=int)
@click.pass_context
def drop(ctx: click.Context, seq: int) -> None:
    """Remove queued item #SEQ (e.g. one the program will always reject)."""
    item = session.drop_queued(get_node(ctx), seq)
    if item is None:
        raise FednodeError(f"no queued item #{seq} (see 'fednode chain status')")
    out.print(f"dropped #{item.seq} {item.op} {item.cid[:16]}", markup=False)


@chain.command("verify")
@click.argument("rev")
@repo_option
@json_option
@click.pass_context
def chain_verify(ctx: click.Context, rev: str, repo_name: str | None, as_json: bool) -> None:
    """REV's ancestry against its anchored records, signatures, and the repository accumulator."""
    n, problems = verify_on_chain(ctx, rev, repo_name)
    if as_json:
        emit_json({"ok": not problems, "commits": n, "problems": problems})
    else:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        if not problems:
            out.print(f"chain verify: {n} commits match their anchored records; accumulator ok")
    if problems:
        raise FednodeError(f"chain verify failed: {len(problems)} problem(s), first: {problems[0]}")


@chain.command("use")
@click.argument("backend", type=CHAIN_BACKENDS)
@click.option("--url", default=None, help="JSON-RPC URL (rpc backend).")
@click.option("--program-id", default=None, help="Where federity is deployed (default: the dev program id).")
@click.pass_context
def use(ctx: click.Context, backend: str, url: str | None, program_id: str | None) -> None:
    """Select the chain backend in config.toml ([chain] section)."""
    from fednode.chain.config import parse_pubkey

    if backend == "rpc" and not url:
        raise FednodeError("the rpc backend needs --url")
    if backend != "rpc" and url:
        raise FednodeError("--url is for the rpc backend")
    program = str(parse_pubkey("--program-id", program_id)) if program_id else None
    select_chain_backend(home(ctx), backend, url, program)
    out.print(f"chain backend: {backend}" + (f" {url}" if url else ""), markup=False)
    try:
        node = get_node(ctx)
    except FednodeError:  # not initialised yet: nothing queued
        return
    n = session.queued_count(node)
    if n:  # queued items keep the chain they were queued for
        out.print(f"{n} queued item(s) still go only to the chain they were queued for "
                  "(see 'fednode chain status')")  # fmt: skip


# Under `chain`: the top-level `fednode members` changes the network membership and the allowlist together.
@chain.group("members")
def chain_members() -> None:
    """Repository members on chain (owner only for add/remove)."""


def _set_member(ctx: click.Context, address: str, repo_name: str | None, add: bool) -> None:
    from fednode.chain.config import parse_pubkey

    member = parse_pubkey("address", address)

    async def go(a: Anchorer, node: Node) -> None:
        await a.set_member(get_repo(node, repo_name), member, add)

    session.run(get_node(ctx), go)
    out.print(f"{'added' if add else 'removed'} member {member}")


@chain_members.command("add")
@click.argument("address")
@repo_option
@click.pass_context
def chain_members_add(ctx: click.Context, address: str, repo_name: str | None) -> None:
    """Add ADDRESS as a member."""
    _set_member(ctx, address, repo_name, True)


@chain_members.command("remove")
@click.argument("address")
@repo_option
@click.pass_context
def chain_members_remove(ctx: click.Context, address: str, repo_name: str | None) -> None:
    """Remove member ADDRESS."""
    _set_member(ctx, address, repo_name, False)


@chain_members.command("list")
@repo_option
@json_option
@click.pass_context
def chain_members_list(ctx: click.Context, repo_name: str | None, as_json: bool) -> None:
    """The owner and the members on chain (among addresses this node knows)."""

    async def go(a: Anchorer, node: Node) -> dict[str, Any]:
        return await a.members(get_repo(node, repo_name))

    data = session.run(get_node(ctx), go)
    if as_json:
        emit_json(data)
        return
    out.print(f"owner  {data['owner']}")
    for m in data["members"]:
        out.print(f"member {m}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", default=8899, show_default=True, type=click.IntRange(0, 65535))
@click.option("--ledger", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the chain's accounts in DIR across restarts (default: in memory only).")
def devchain(host: str, port: int, ledger: Path | None) -> None:
    """Run a local Solana JSON-RPC chain with federity loaded (foreground; Ctrl-C stops it)."""
    from fednode.chain.config import DEV_PROGRAM_ID, program_elf
    from fednode.chain.devchain import DevChain, check_loopback, make_server

    check_loopback(host)  # before building anything
    dev = DevChain(DEV_PROGRAM_ID, program_elf(), ledger=ledger)
    try:
        server = make_server(dev, host, port)
    except OSError as exc:
        raise FednodeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = server.server_address[1]
    kept = f" ledger {ledger}" if ledger else ""
    click.echo(f"devchain listening on http://{host}:{bound} program {DEV_PROGRAM_ID} genesis {dev.genesis}"
               f"{kept}", nl=True)  # fmt: skip
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        dev.close()


COMMANDS = [anchor, chain, devchain]
