"""The ``fednode`` click group: global options, one-line errors, and the list of command modules.

Each module under ``cli.commands`` defines its commands as module-level functions and lists them
in ``COMMANDS``; this module adds them to the group, as DVC's ``cli/parser.py`` lists its commands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from cli.commands import (
    branches,
    chain,
    history,
    integrity,
    ipfs,
    members,
    merge,
    net,
    nft,
    pin,
    remotes,
    repo,
    setup,
    train,
    transfer,
    zk,
)
from fednode import __version__
from fednode.errors import FednodeError
from fednode.node import default_home
from protocol.multiformats import FormatError

COMMAND_MODULES = [setup, repo, train, history, branches, remotes, merge, integrity, net, members, chain, transfer,
                   ipfs, pin, nft, zk]


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo("error: " + " ".join(message.split()), err=True)  # always one line
    sys.exit(code)


class FednodeGroup(click.Group):
    """Every failure is one line on stderr and a non-zero exit, never a traceback
    (FEDNODE_DEBUG=1 shows the traceback of an unexpected one)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.Abort, click.exceptions.Exit, EOFError):
            raise  # click's own: usage errors, --help, ctx.exit(), Ctrl-D
        except Exception as exc:
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]  # trio wraps what a task raised (the daemon)
            if isinstance(leaf, FednodeError):
                _fail(str(leaf))
            if isinstance(leaf, OSError):  # the file system or network refused: say what and where
                where = f" ({leaf.filename})" if leaf.filename else ""
                _fail(f"{leaf.strerror or leaf}{where}")
            if isinstance(leaf, FormatError):  # bytes that decode to no valid object
                _fail(f"malformed data: {leaf}")
            if isinstance(leaf, MemoryError):
                _fail("out of memory")
            if os.environ.get("FEDNODE_DEBUG"):
                raise
            _fail(f"unexpected {type(leaf).__name__}: {leaf} (a bug: FEDNODE_DEBUG=1 shows the traceback)", 2)


@click.group(cls=FednodeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fednode")
@click.option("--home", type=click.Path(path_type=Path), help="Node home (default $FEDNODE_HOME or ~/.fednode).")
@click.pass_context
def main(ctx: click.Context, home: Path | None) -> None:
    """fednode: version control for collaborative machine learning on private data."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home or default_home()


def _add_commands(group: click.Group) -> None:
    for module in COMMAND_MODULES:
        for command in module.COMMANDS:
            group.add_command(command)


_add_commands(main)
