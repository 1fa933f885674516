"""``fednode members``: who may commit to a repository.

Two lists, one command: the membership the owner signs and gossips and the on-chain allowlist
(see ``fednode.workflows.membership``, which holds the rules). ``add`` and ``remove`` change
both, or neither.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import click

from cli.context import client, emit_json, get_node, get_repo, json_option, out, repo_option
from fednode.chain import allowlist, session
from fednode.errors import FednodeError
from fednode.workflows import membership
from protocol.multiformats import b58encode

if TYPE_CHECKING:
    from fednode.chain.anchoring import Anchorer
    from fednode.daemon.api_client import Client
    from fednode.node import Node


@click.group()
def members() -> None:
    """Who may commit: the signed network membership and the on-chain allowlist."""


def _daemon(ctx: click.Context) -> Client:
    """The running daemon's client, after it answered: the network half needs it."""
    try:
        api = client(ctx)
        api.call("GET", "/status")
    except FednodeError:
        raise FednodeError("no daemon is running to publish the network membership: start 'fednode daemon' "
                           "and repeat (nothing was changed)") from None
    return api


def _publish(api: Client, name: str, addrs: list[bytes], public: bool) -> str:
    res = api.call("POST", "/members", {"repo": name, "members": [b58encode(a) for a in addrs], "public": public})
    return f"network: {res['members']} member(s) besides the owner, public={res['public']} (signed, published)"


def _change(ctx: click.Context, addresses: tuple[str, ...], repo_name: str | None, public: bool | None,
            no_chain: bool, add: bool) -> None:
    """Every precondition first (owner, addresses, a daemon that answers, the repository on chain
    and owned by us); then the on-chain change, then the signed membership."""
    node = get_node(ctx)
    info = get_repo(node, repo_name)
    change = membership.plan_change(node, info, addresses, add, public)
    api = _daemon(ctx)
    publish = partial(_publish, api, info.name, change.members, change.public) if change.network_changes else None
    if no_chain:
        out.print(publish() if publish else f"network: unchanged ({membership.unchanged_text(change)})",
                  markup=False)
        return

    async def go(a: Anchorer, n: Node) -> list[str]:
        return await allowlist.apply_on_chain(a, info, change, publish)

    for line in session.run(node, go):
        out.print(line, markup=False)


def _change_options(f: Callable[..., None]) -> Callable[..., None]:
    """The arguments and options ``members add`` and ``members remove`` share (applied bottom-up)."""
    f = click.option("--no-chain", is_flag=True, help="Only the network membership.")(f)
    f = click.option("--public/--private", default=None,
                     help="Public repositories accept anyone's merge proposals (commits: members only).")(f)
    f = repo_option(f)
    return click.argument("addresses", nargs=-1, required=True)(f)


@members.command("add")
@_change_options
@click.pass_context
def members_add(ctx: click.Context, addresses: tuple[str, ...], repo_name: str | None, public: bool | None,
                no_chain: bool) -> None:
    """Owner: add ADDRESS... to the signed network membership and the on-chain allowlist."""
    _change(ctx, addresses, repo_name, public, no_chain, True)


@members.command("remove")
@_change_options
@click.pass_context
def members_remove(ctx: click.Context, addresses: tuple[str, ...], repo_name: str | None, public: bool | None,
                   no_chain: bool) -> None:
    """Owner: remove ADDRESS... from both lists."""
    _change(ctx, addresses, repo_name, public, no_chain, False)


@members.command("list")
@repo_option
@click.option("--no-chain", is_flag=True, help="Do not ask the chain.")
@json_option
@click.pass_context
def members_list(ctx: click.Context, repo_name: str | None, no_chain: bool, as_json: bool) -> None:
    """The network membership (signed by the owner) and the on-chain allowlist."""
    node = get_node(ctx)
    info = get_repo(node, repo_name)
    network, public = membership.network_members(node, info.repo_id)
    visibility = node.history.visibility(info.repo_id)
    readers = "anyone (public)" if visibility == "public" else f"the owner and {len(network)} member(s)"
    data: dict[str, Any] = {"repo": info.name, "visibility": visibility, "readers": readers,
                            "network": {"members": [b58encode(a) for a in network], "public": public}}
    if not no_chain:
        async def go(a: Anchorer, n: Node) -> dict[str, Any]:
            return await a.members(info, network)  # a fresh member knows its allowlist entry

        try:
            data["chain"] = session.run(node, go)
        except FednodeError as exc:
            data["chain"] = {"error": str(exc)}
    if as_json:
        emit_json(data)
        return
    out.print(f"readers: {readers}", markup=False)
    # the membership's own "public" flag is about merge proposals, not about who reads
    names = ", ".join(data["network"]["members"]) or "owner only"
    out.print(f"network ({'proposals from anyone' if public else 'proposals from members'}): {names}", markup=False)
    if "chain" in data:
        chain = data["chain"]
        text = chain.get("error") or ", ".join(chain.get("members", [])) or "owner only"
        out.print(f"chain: {text}", markup=False)


COMMANDS = [members]
