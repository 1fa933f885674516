"""``fednode zk setup``: update-proof keys (and the remainder keys FedAvg merges prove their rounding
with, in ``remainder/``) for development and tests, in the node home."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from cli.context import emit, home, json_option
from fednode.errors import FednodeError


def zk_remainder_bits() -> int:
    return 33  # zkprove.REMAINDER_BITS, without importing the zk stack to define the command


@click.group()
def zk() -> None:
    """Zero-knowledge update proofs (docs/zk.md "Update proofs")."""


@zk.command("setup")
@click.option("--size", "-n", "n", type=int, default=64, show_default=True,
              help="Most values a proof covers (shorter vectors are zero-padded).")
@click.option("--bits", "-k", "k", type=int, default=16, show_default=True,
              help="Every value is a signed integer of this many bits.")
@click.option("--ptau", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A prepared powers-of-tau file from a public ceremony (default: a local set-up, development only).")
@click.option("--remainder-bits", "remainder_bits", type=int, default=zk_remainder_bits(), show_default=True,
              metavar="K", help="The remainder keys' K: a FedAvg merge's total weight W must be below 2^(K-1).")
@click.option("--no-remainder", is_flag=True,
              help="Skip the remainder keys (FedAvg merges of a repository made from these keys then prove nothing).")
@click.option("--force", is_flag=True, help="Replace keys of the same size made before.")
@json_option
@click.pass_context
def setup(ctx: click.Context, n: int, k: int, ptau: Path | None, remainder_bits: int, no_remainder: bool,
          force: bool, as_json: bool) -> None:
    """Make the circuit keys for update proofs and, in remainder/, for merges' remainder proofs (|r_i| <= W/2),
    in one set-up: fednode's own from secrets drawn here, or snarkjs's over --ptau (a local set-up is NOT
    trustworthy for others)."""
    from fednode.workflows import zkprove

    out = home(ctx) / "zk" / f"update-n{n}-k{k}"
    rbits = None if no_remainder else remainder_bits
    tools = zkprove.find_tools() if ptau is not None else None  # before anything is removed
    if out.exists():
        if not force:
            raise FednodeError(f"keys exist in {out}; --force replaces them")
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        try:
            meta = zkprove.setup(out, n, k, remainder_bits=rbits, ptau=ptau, tools=tools)
        except BaseException:
            old.rename(out)  # the old keys stay when the new ones fail
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        meta = zkprove.setup(out, n, k, remainder_bits=rbits, ptau=ptau, tools=tools)
    meta["path"] = str(out)
    text = (f"update-proof keys for {n} signed {k}-bit values in {out}\n"
            f"verifying key {meta['vk_id']}\nset-up: {meta['ptau']}")
    if rbits is not None:
        rmeta = meta["remainder"]
        assert isinstance(rmeta, dict)
        text += (f"\nremainder-proof keys (|r_i| <= W/2, W below 2^{rbits - 1}) in {out / 'remainder'}\n"
                 f"remainder verifying key {rmeta['vk_id']}")
    emit(meta, as_json, text)


COMMANDS = [zk]
