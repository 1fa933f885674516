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
    from fednode.storage.netstate import NetState

    msg = NetState(node.store).membership(repo_id)
    return (list(msg.members), bool(msg.public)) if msg else ([], False)


def register(main: click.Group) -> None:
    from cli import chain_commands
    from cli.main import _node, _repo, emit_json, out

    main.commands.pop("members", None)  # this group replaces the network-only command

    @main.group()
    def members() -> None:
        """Who may commit: the signed network membership and the on-chain allowlist."""

    def _daemon(ctx: click.Context) -> Any:
        """The running daemon's client, after it answered: the network half needs it."""
        from fednode.daemon.api_client import Client

        home = ctx.find_root().obj["home"]
        try:
            client = Client(home)
            client.call("GET", "/status")
        except FednodeError:
            raise FednodeError("no daemon is running to publish the network membership: start 'fednode daemon' "
                               "and repeat (nothing was changed)") from None
        return client

    def _publish(client: Any, name: str, addrs: list[bytes], public: bool) -> str:
        res = client.call("POST", "/members", {"repo": name, "members": [b58encode(a) for a in addrs],
                                               "public": public})
        return f"network: {res['members']} member(s) besides the owner, public={res['public']} (signed, published)"

    def _change(ctx: click.Context, addresses: tuple[str, ...], repo_name: str | None, public: bool | None,
                no_chain: bool, add: bool) -> None:
        """Every precondition first (owner, addresses, a daemon that answers, the repository on chain
        and owned by us); then the on-chain change, then the signed membership. A failure after the
        chain changed undoes the on-chain change: both lists change, or neither."""
        node = _node(ctx)
        info = _repo(node, repo_name)
        me = node.identity.public_key
        if node.history.load_commit(info.genesis).author != me:
            raise FednodeError("only the repository owner (its genesis author) changes its members")
        addrs = _addresses(addresses)
        if me in addrs:
            raise FednodeError("the owner is implicitly a member: leave its address out")
        current, was_public = _network(node, info.repo_id)
        wanted = sorted(set(current) | set(addrs)) if add else sorted(set(current) - set(addrs))
        now_public = was_public if public is None else public
        client = _daemon(ctx)
        network_changes = wanted != sorted(current) or now_public != was_public
        if no_chain:
            if not network_changes:
                out.print(f"network: unchanged ({_unchanged(addrs, add)})", markup=False)
                return
            out.print(_publish(client, info.name, wanted, now_public), markup=False)
            return

        async def go(a: Any, n: Any) -> list[str]:
            from solders.pubkey import Pubkey

            record = await a.repo_record(info.repo_id)
            if record is None:
                raise FednodeError(f"repository {info.name} is not on chain: anchor its genesis first "
                                   f"('fednode anchor {info.name}:{info.genesis}'); nothing was changed")
            if record.owner != me:
                raise FednodeError(f"only the on-chain owner {b58encode(record.owner)} changes the members of "
                                   f"{info.name}; nothing was changed")
            todo = [raw for raw in addrs if await a.is_member(info.repo_id, raw) != add]
            if not todo and not network_changes:
                return [f"nothing to change: {_unchanged(addrs, add)}"]
            done: list[bytes] = []
            try:
                for raw in todo:
                    await a.set_member(info, Pubkey.from_bytes(raw), add)
                    done.append(raw)
                lines = [_publish(client, info.name, wanted, now_public)] if network_changes else \
                    ["network: unchanged"]  # fmt: skip
            except Exception as exc:
                raise FednodeError(f"{_why(exc)}; {await _undo(a, info, done, add)}") from None
            verb = "added" if add else "removed"
            return [*lines, f"chain: {verb} {len(todo)} member(s)"
                    + (f" ({len(addrs) - len(todo)} already {'members' if add else 'absent'})"
                       if len(todo) < len(addrs) else "")]

        for line in chain_commands._run(ctx, go):
            out.print(line, markup=False)

    async def _undo(a: Any, info: Any, done: list[bytes], add: bool) -> str:
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

    def _why(exc: Exception) -> str:
        from fednode.chain.aio import ChainUnavailable  # the chain client loads only when used (fast start)
        from fednode.chain.anchoring import explain
        from fednode.chain.backend import ChainError

        if isinstance(exc, ChainUnavailable):
            return f"chain unavailable: {exc}"
        if isinstance(exc, ChainError):
            return f"transaction rejected: {explain(exc)}"
        return str(exc) if isinstance(exc, FednodeError) else f"{type(exc).__name__}: {exc}"

    def _unchanged(addrs: list[bytes], add: bool) -> str:
        return f"{len(addrs)} address(es) already {'members' if add else 'absent'}"

    for add in (True, False):
        def make(add: bool = add):
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
                return await a.members(info, network)  # a fresh member knows its allowlist entry

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
