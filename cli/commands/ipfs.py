"""Any file by CID: ``fednode ipfs add``, ``get``, ``pins``, ``unpin``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.context import client, emit, emit_json, get_node, json_option, out
from fednode.atomic import check_writable
from fednode.errors import FednodeError
from protocol.multiformats import CID, FormatError

if TYPE_CHECKING:
    from fednode.daemon.api_client import Client

LARGE_FILE = 16 << 20  # bytes from which `get` and `add` show a bar (stderr a terminal, no --json)
POLL_SECONDS = 0.25


def _cid(text: str) -> CID:
    try:
        return CID.parse(text)
    except FormatError:
        raise FednodeError(f"not a CID: {text[:100]!r}") from None


@click.group()
def ipfs() -> None:
    """Files by IPFS CID: add, get (through the daemon), pins."""


@ipfs.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--recursive", "-r", is_flag=True, help="Add a directory and everything under it.")
@click.option("--hidden", "-H", is_flag=True, help="With -r: include hidden files (names starting with '.').")
@click.option("--dereference-symlinks", "-L", "follow", is_flag=True,
              help="With -r: add what symbolic links point to, under the links' names (else links inside the "
                   "tree are kept as links, as Kubo keeps them, and others refused).")
@json_option
@click.pass_context
def add(ctx: click.Context, path: Path, recursive: bool, hidden: bool, follow: bool, as_json: bool) -> None:
    """Store FILE (or, with -r, a directory) as Kubo's `ipfs add --cid-version=1 --raw-leaves` does
    (same CID), pinned; print the CID. A bar on a terminal for 16 MiB and more."""
    from fednode.workflows.ipfsfiles import add_file, scan_tree, store_tree

    show = not as_json and sys.stderr.isatty()
    if path.is_dir() and (follow or not path.is_symlink()):
        if not recursive:
            raise FednodeError(f"{path} is a directory: add it with -r")
        scanned = scan_tree(path, hidden, follow)  # everything checked before anything is stored
        with _bar(show and scanned.size >= LARGE_FILE, scanned.size, "adding") as progress:
            root = store_tree(get_node(ctx).store, scanned, progress=progress)
        emit({"cid": str(root), "size": scanned.size, "files": scanned.files}, as_json, str(root))
        return
    try:
        expected = path.stat().st_size
    except OSError:
        expected = 0  # add_file says why it cannot read it
    with _bar(show and expected >= LARGE_FILE, expected, "adding") as progress:
        root, size = add_file(get_node(ctx).store, path, progress)
    emit({"cid": str(root), "size": size}, as_json, str(root))


@ipfs.command("get")
@click.argument("cid")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the file here (whole or not at all), or a directory's tree (to a new path); "
                   "default: stdout (files only).")
@click.option("--peer", "peers", multiple=True, help="A multiaddr with /p2p/ID to dial first (repeatable).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=64 << 30, show_default=True,
              help="Refuse a file declaring more bytes.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=3600), default=60, show_default=True)
@click.option("--no-pin", is_flag=True, help="Do not pin: the next `fednode gc` may drop the blocks.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@json_option
@click.pass_context
def get(ctx: click.Context, cid: str, out_path: Path | None, peers: tuple[str, ...], max_bytes: int,
        timeout: float, no_pin: bool, quiet: bool, as_json: bool) -> None:
    """Fetch CID from IPFS peers through the running daemon (every block hash-checked), then write it:
    a file to --out or stdout, a directory (and all under it) to --out, a new path."""
    from fednode.workflows.ipfsfiles import write_file, write_tree

    root = _cid(cid)
    if out_path is None and as_json:
        raise FednodeError("--json needs --out FILE: without it the file itself goes to standard output")
    if out_path is not None:
        check_writable(out_path)  # before the fetch (and its pin), not after
    show = not (quiet or as_json) and sys.stderr.isatty()
    body = {"cid": str(root), "peers": list(peers), "max_bytes": max_bytes, "timeout": timeout, "pin": not no_pin,
            # a directory only where it can be written: a new path (the daemon refuses one otherwise, unfetched)
            "directories": out_path is not None and not os.path.lexists(out_path)}
    api = client(ctx, timeout=timeout + 30)
    result = _fetch_with_bar(api, body, timeout + 30) if show else api.call("POST", "/ipfs/get", body)
    size = int(result["size"])
    tree = result.get("kind") == "directory"
    with _bar(show and out_path is not None and size >= LARGE_FILE, size) as progress:
        if tree:
            assert out_path is not None
            write_tree(get_node(ctx).store, root, out_path, progress)
        else:
            write_file(get_node(ctx).store, root, out_path, progress)
    if as_json:
        emit_json({**result, "out": None if out_path is None else str(out_path), "pinned": not no_pin})
    elif out_path is not None and not quiet:
        what = f"directory of {result.get('files')} files, {size} bytes" if tree else f"{size} bytes"
        out.print(f"{root}: {what} -> {out_path}", markup=False)


def _fetch_with_bar(api: Client, body: dict[str, Any], limit: float) -> dict[str, Any]:
    """Start the daemon's fetch without waiting and poll its progress (bytes stored so far against
    the root's declared size, once the root arrived) into a rich bar on stderr."""
    from rich.console import Console
    from rich.progress import Progress

    job = api.call("POST", "/ipfs/get", {**body, "wait": False})["job"]
    deadline = time.monotonic() + limit
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"fetching {body['cid'][:16]}", total=None)
        while True:
            state = api.call("POST", "/ipfs/progress", {"job": job})
            bar.update(task, completed=state["bytes"], total=state["size"])
            if state["done"]:
                break
            if time.monotonic() > deadline:
                raise FednodeError("the daemon's ipfs get did not finish in time")
            time.sleep(POLL_SECONDS)
    if state["error"]:
        raise FednodeError(f"daemon: {state['error']}")
    result: dict[str, Any] = state["result"]
    return result


@contextlib.contextmanager
def _bar(show: bool, total: int, label: str = "writing") -> Iterator[Callable[[int], None] | None]:
    """A rich bar on stderr (the verified write to --out, or an add); yields the callback (None: no bar)."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


@ipfs.command("pins")
@json_option
@click.pass_context
def pins(ctx: click.Context, as_json: bool) -> None:
    """Pinned files (kept by `fednode gc`)."""
    from fednode.workflows.ipfsfiles import list_pins

    entries = list_pins(get_node(ctx).store)
    data = [{"cid": str(p.root), "size": p.size, "source": p.source, "time": p.time} for p in entries]
    emit(data, as_json, "\n".join(f"{p.root}  {p.size}  {p.source}" for p in entries) or "no pins")


@ipfs.command("unpin")
@click.argument("cid")
@json_option
@click.pass_context
def unpin(ctx: click.Context, cid: str, as_json: bool) -> None:
    """Drop a pin; the next `fednode gc` frees the file's blocks unless a ref reaches them."""
    from fednode.workflows.ipfsfiles import unpin as drop_pin

    root = _cid(cid)
    drop_pin(get_node(ctx).store, root)
    emit({"unpinned": str(root)}, as_json, f"unpinned {root}")


COMMANDS = [ipfs]
