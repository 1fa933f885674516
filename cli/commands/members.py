"""``fednode members``: who may commit to a repository.

Two lists, one command: the membership the owner signs and gossips (the daemon's
validators accept commits only from its members) and the on-chain allowlist (the
program anchors only members' commits). ``add`` and ``remove`` change both, or neither.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import click

from cli.context import client, emit_json, get_node, get_repo, json_option, out, repo_option
from fednode.errors import FednodeError
from fednode.workflows import membership, onchain
from protocol.multiformats import b58encode

if TYPE_CHECKING:
    from fednode.chain.anchoring import Anchorer
    from fednode.daemon.api_client import Client
    from fednode.history import RepoInfo
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


def _unchanged(addrs: list[bytes], add: bool) -> str:
    return f"{len(addrs)} address(es) already {'members' if add else 'absent'}"


def _change(ctx: click.Context, addresses: tuple[str, ...], repo_name: str | None, public: bool | None,
            no_chain: bool, add: bool) -> None:
    """Every precondition first (owner, addresses, a daemon that answers, the repository on chain
    and owned by us); then the on-chain change, then the signed membership. A failure after the
    chain changed undoes the on-chain change: both lists change, or neither."""
    node = get_node(ctx)
    info = get_repo(node, repo_name)
    membership.check_owner(node, info)
    addrs = membership.parse_addresses(addresses)
    if node.identity.public_key in addrs:
        raise FednodeError("the owner is implicitly a member: leave its address out")
    current, was_public = membership.network_members(node, info.repo_id)
    wanted = membership.changed_members(current, addrs, add)
    now_public = was_public if public is None else public
    api = _daemon(ctx)
    publish: Callable[[], str] | None = None  # None: the network membership stays as it is
    if wanted != sorted(current) or now_public != was_public:
        publish = partial(_publish, api, info.name, wanted, now_public)
    if no_chain:
        out.print(publish() if publish else f"network: unchanged ({_unchanged(addrs, add)})", markup=False)
        return

    async def go(a: Anchorer, n: Node) -> list[str]:
        return await _change_on_chain(a, info, addrs, add, publish)

    for line in onchain.run(node, go):
        out.print(line, markup=False)


async def _change_on_chain(a: Anchorer, info: RepoInfo, addrs: list[bytes], add: bool,
                           publish: Callable[[], str] | None) -> list[str]:
    """Change the allowlist, then publish the network membership (``publish``, None when it stays)."""
    from solders.pubkey import Pubkey

    record = await a.repo_record(info.repo_id)
    if record is None:
        raise FednodeError(f"repository {info.name} is not on chain: anchor its genesis first "
                           f"('fednode anchor {info.name}:{info.genesis}'); nothing was changed")
    if record.owner != a.identity.public_key:
        raise FednodeError(f"only the on-chain owner {b58encode(record.owner)} changes the members of "
                           f"{info.name}; nothing was changed")
    todo = [raw for raw in addrs if await a.is_member(info.repo_id, raw) != add]
    if not todo and publish is None:
        return [f"nothing to change: {_unchanged(addrs, add)}"]
    done: list[bytes] = []
    try:
        for raw in todo:
            await a.set_member(info, Pubkey.from_bytes(raw), add)
            done.append(raw)
        lines = [publish()] if publish else ["network: unchanged"]
    except Exception as exc:
        raise FednodeError(f"{onchain.describe_failure(exc)}; {await _undo(a, info, done, add)}") from None
    verb = "added" if add else "removed"
    already = f" ({len(addrs) - len(todo)} already {'members' if add else 'absent'})" if len(todo) < len(addrs) else ""
    return [*lines, f"chain: {verb} {len(todo)} member(s){already}"]


async def _undo(a: Anchorer, info: RepoInfo, done: list[bytes], add: bool) -> str:
    """Reverse the on-chain changes already made; what is true afterwards, in words."""
    from solders.pubkey import Pubkey

    if not done:
        return "nothing was changed"
    left = []
    for raw in reversed(done):
        try:
            await a.set_member(info, Pubkey.from_bytes(raw), not add)
        except Exception:  # the chain refused the undo too: say which address stays changed
            left.append(b58encode(raw))
    if left:
        return (f"the on-chain allowlist stays changed for {', '.join(left)} (undo with 'fednode chain members "
                f"{'remove' if add else 'add'}'); the network membership was not changed")
    return f"the on-chain change was undone for {len(done)} member(s); nothing was changed"


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
    data: dict[str, Any] = {"repo": info.name, "network": {"members": [b58encode(a) for a in network],
                                                            "public": public}}
    if not no_chain:
        async def go(a: Anchorer, n: Node) -> dict[str, Any]:
            return await a.members(info, network)  # a fresh member knows its allowlist entry

        try:
            data["chain"] = onchain.run(node, go)
        except FednodeError as exc:
            data["chain"] = {"error": str(exc)}
    if as_json:
        emit_json(data)
        return
    out.print(f"network ({'public' if public else 'private'}): " + (", ".join(data["network"]["members"])
                                                                      or "owner only"), markup=False)
    if "chain" in data:
        chain = data["chain"]
        text = chain.get("error") or ", ".join(chain.get("members", [])) or "owner only"
        out.print(f"chain: {text}", markup=False)


COMMANDS = [members]
