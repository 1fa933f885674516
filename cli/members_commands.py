"""``fednode members``: who may commit to a repository.

Two lists, one command: the membership the owner signs and gossips (the daemon's
validators accept commits only from its members) and the on-chain allowlist (the
program anchors only members' commits). ``add`` and ``remove`` change both.
"""

from __future__ import annotations

from typing import Any

import click

from fednode.errors import FednodeError
from protocol.multiformats import FormatError, b58decode, b58encode


def _addresses(values: tuple[str, ...]) -> list[bytes]:
    out = []
    for text in values:
        try:
            raw = b58decode(text)
        except FormatError:
            raw = b""
        if len(raw) != 32:
            raise FednodeError(f"invalid address {text!r}: expected a base58 wallet address")
        out.append(raw)
    return out


def _network(node: Any, repo_id: bytes) -> tuple[list[bytes], bool]:
    from fednode.daemon.state import NetState

    msg = NetState(node.store).membership(repo_id)
    return (list(msg.members), bool(msg.public)) if msg else ([], False)


def register(main: click.Group) -> None:
    from cli import chain_commands
    from cli.main import _node, _repo, emit_json, out

    main.commands.pop("members", None)  # this group replaces the network-only command

    @main.group()
    def members() -> None:
        """Who may commit: the signed network membership and the on-chain allowlist."""

    def _publish(ctx: click.Context, name: str, addrs: list[bytes], public: bool) -> str:
        from fednode.daemon.client import Client

        try:
            client = Client(ctx.find_root().obj["home"])
        except FednodeError:
            return "no daemon running: network membership unchanged (start 'fednode daemon' and repeat)"
        res = client.call("POST", "/members", {"repo": name, "members": [b58encode(a) for a in addrs],
                                               "public": public})
        return f"network: {res['members']} member(s) besides the owner, public={res['public']} (signed, published)"

    def _chain(ctx: click.Context, repo_name: str, addrs: list[bytes], add: bool) -> str:
        from solders.pubkey import Pubkey

        async def go(a: Any, node: Any) -> None:
            for raw in addrs:
                await a.set_member(_repo(node, repo_name), Pubkey.from_bytes(raw), add)

        chain_commands._run(ctx, go)
        return f"chain: {'added' if add else 'removed'} {len(addrs)} member(s)"

    def _change(ctx: click.Context, addresses: tuple[str, ...], repo_name: str | None, public: bool | None,
                no_chain: bool, add: bool) -> None:
        node = _node(ctx)
        info = _repo(node, repo_name)
        if node.history.load_commit(info.genesis).author != node.identity.public_key:
            raise FednodeError("only the repository owner (its genesis author) changes its members")
        addrs = _addresses(addresses)
        current, was_public = _network(node, info.repo_id)
        wanted = sorted(set(current) | set(addrs)) if add else sorted(set(current) - set(addrs))
        lines = [_publish(ctx, info.name, wanted, was_public if public is None else public)]
        if not no_chain:
            lines.append(_chain(ctx, info.name, addrs, add))
        for line in lines:
            out.print(line, markup=False)

    for add in (True, False):
        def make(add: bool = add):  # noqa: ANN202
            @click.argument("addresses", nargs=-1, required=True)
            @click.option("-r", "--repo", "repo_name", default=None)
            @click.option("--public/--private", default=None,
                          help="Public repositories accept anyone's merge proposals (commits: members only).")
            @click.option("--no-chain", is_flag=True, help="Only the network membership.")
            @click.pass_context
            def cmd(ctx: click.Context, addresses: tuple[str, ...], repo_name: str | None, public: bool | None,
                    no_chain: bool) -> None:
                _change(ctx, addresses, repo_name, public, no_chain, add)

            cmd.__doc__ = ("Owner: add ADDRESS... to the signed network membership and the on-chain allowlist."
                           if add else "Owner: remove ADDRESS... from both lists.")
            return cmd

        members.command("add" if add else "remove")(make())

    @members.command("list")
    @click.option("-r", "--repo", "repo_name", default=None)
    @click.option("--no-chain", is_flag=True, help="Do not ask the chain.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def members_list(ctx: click.Context, repo_name: str | None, no_chain: bool, as_json: bool) -> None:
        """The network membership (signed by the owner) and the on-chain allowlist."""
        node = _node(ctx)
        info = _repo(node, repo_name)
        network, public = _network(node, info.repo_id)
        data: dict[str, Any] = {"repo": info.name, "network": {"members": [b58encode(a) for a in network],
                                                                "public": public}}
        if not no_chain:
            async def go(a: Any, n: Any) -> dict[str, Any]:
                return await a.members(info)

            try:
                data["chain"] = chain_commands._run(ctx, go)
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
