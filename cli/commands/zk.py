"""``fednode zk setup``: update-proof keys for development and tests, in the node home."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from cli.context import emit, home, json_option
from fednode.errors import FednodeError


@click.group()
def zk() -> None:
    """Zero-knowledge update proofs (docs/zk.md "Update proofs")."""


@zk.command("setup")
@click.option("--size", "-n", "n", type=int, default=64, show_default=True,
              help="Most values a proof covers (shorter vectors are zero-padded).")
@click.option("--bits", "-k", "k", type=int, default=16, show_default=True,
              help="Every value is a signed integer of this many bits.")
@click.option("--ptau", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A prepared powers-of-tau file from a public ceremony (default: a local one, development only).")
@click.option("--force", is_flag=True, help="Replace keys of the same size made before.")
@json_option
@click.pass_context
def setup(ctx: click.Context, n: int, k: int, ptau: Path | None, force: bool, as_json: bool) -> None:
    """Make the circuit keys for update proofs (circom2 + snarkjs; a local set-up is NOT trustworthy for others)."""
    from fednode.workflows import zkprove

    out = home(ctx) / "zk" / f"update-n{n}-k{k}"
    tools = zkprove.find_tools()  # before anything is removed
    if out.exists():
        if not force:
            raise FednodeError(f"keys exist in {out}; --force replaces them")
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        try:
            meta = zkprove.setup(out, n, k, ptau=ptau, tools=tools)
        except BaseException:
            old.rename(out)  # the old keys stay when the new ones fail
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        meta = zkprove.setup(out, n, k, ptau=ptau, tools=tools)
    meta["path"] = str(out)
    text = (f"update-proof keys for {n} signed {k}-bit values in {out}\n"
            f"verifying key {meta['vk_id']}\npowers of tau: {meta['ptau']}")
    emit(meta, as_json, text)


COMMANDS = [zk]
