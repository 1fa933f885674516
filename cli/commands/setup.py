"""Setting up a node: ``fednode init`` and ``fednode id``."""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import emit_json, get_node, json_option, out
from fednode.node import init_home


@click.command()
@click.option("--keypair", type=click.Path(path_type=Path, dir_okay=False), help="Import a solana-keygen JSON keypair.")
@click.option("--force", is_flag=True, help="Replace an existing identity.")
@click.pass_context
def init(ctx: click.Context, keypair: Path | None, force: bool) -> None:
    """Create the node home: wallet keypair (0600), config.toml, store."""
    home = ctx.obj["home"]
    identity = init_home(home, keypair, force)
    out.print(f"initialised {home}")
    out.print(f"wallet  {identity.address}")
    out.print(f"peer id {identity.peer_id}")


@click.command("id")
@json_option
@click.pass_context
def id_(ctx: click.Context, as_json: bool) -> None:
    """Print the wallet address and libp2p peer id (the same Ed25519 key)."""
    node = get_node(ctx)
    info = {"address": node.identity.address, "peer_id": node.identity.peer_id, "home": str(node.home)}
    if as_json:
        emit_json(info)
    else:
        out.print(f"wallet  {info['address']}\npeer id {info['peer_id']}")


COMMANDS = [init, id_]
