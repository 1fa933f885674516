"""`fednode ipfs get` of files a REAL Helia 7 (npm, js-libp2p) added and serves, in its layouts.

Helia's `addBytes` defaults: CIDv1, raw leaves of 1 MiB, balanced with 1024 links per node. The
wide layout is seen with 16 KiB chunks (about 200 leaves under one root: over Kubo's 174); with
`maxChildrenPerNode: 174` and 256 KiB chunks Helia builds Kubo's `--cid-version=1 --raw-leaves`
DAG, and `fednode ipfs add` must give the same CID. Set-up as test_bitswap_helia.py.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import numpy as np
from daemon_harness import DaemonProc, daemons, make_home
from helia_node import HELIA_DIR, PREAMBLE, check_installed
from helpers import run_fednode

from fednode.node import open_node
from protocol.multiformats import CID
from protocol.unixfs import HAMT_SHARD, decode_node, unixfs_type

SIZE = 3 * 1024 * 1024 + 4321
HELIA_SERVE = PREAMBLE + """
const { readFile } = await import('node:fs/promises')
const { fixedSize } = await import('ipfs-unixfs-importer/chunker')
const { balanced } = await import('ipfs-unixfs-importer/layout')

const [path, timeoutMs] = process.argv.slice(1)
const helia = createHelia(['/ip4/127.0.0.1/tcp/0'])
await helia.start()
const fs = unixfs(helia)
const data = await readFile(path)
const stop = async () => { await helia.stop(); process.exit(0) }
setTimeout(stop, Number(timeoutMs))
process.stdin.on('end', stop)
process.stdin.resume()
console.log(JSON.stringify({
  addrs: helia.libp2p.getMultiaddrs().map(String),
  default: String(await fs.addBytes(data)),
  wide: String(await fs.addBytes(data.subarray(0, 200 * 16384), { chunker: fixedSize({ chunkSize: 16384 }) })),
  kubo: String(await fs.addBytes(data, { chunker: fixedSize({ chunkSize: 262144 }),
                                         layout: balanced({ maxChildrenPerNode: 174 }) })),
  dir: await (async () => {  // a directory tree, as `ipfs add -r` would share a data set
    let last
    for await (const entry of fs.addAll([
      { path: 'notes.txt', content: new TextEncoder().encode('hello\\n') },
      { path: 'sub/scan.bin', content: data.subarray(0, 700000) },
      { path: 'sub/deeper/empty', content: new Uint8Array(0) },
      { path: 'sub/deeper/again.txt', content: new TextEncoder().encode('hello\\n') }
    ], { wrapWithDirectory: true })) last = entry
    return String(last.cid)
  })(),
  sharded: await (async () => {  // a HAMT-sharded directory (Kubo shards past 256 KiB of links)
    let last
    const files = Array.from({ length: 300 },
      (_, i) => ({ path: `f${i}.txt`, content: new TextEncoder().encode(`${i}`) }))
    files.push({ path: 'sub/inner.txt', content: new TextEncoder().encode('inner') })
    for await (const entry of fs.addAll(files, { wrapWithDirectory: true, shardSplitThresholdBytes: 1 })) last = entry
    return String(last.cid)
  })()
}))
"""


def _hello(proc: subprocess.Popen, timeout: float) -> dict:
    box: dict = {}
    reader = threading.Thread(target=lambda: box.setdefault("line", proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert box.get("line"), f"helia did not start in {timeout} s"
    return json.loads(box["line"])


def test_get_files_helia_added_in_its_layouts(tmp_path: Path) -> None:
    check_installed()
    home = make_home(tmp_path, "me")
    data = np.random.default_rng(21).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    helia = subprocess.Popen(["node", "--input-type=module", "-e", HELIA_SERVE, str(tmp_path / "f.bin"), "120000"],
                             cwd=HELIA_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        hello = _hello(helia, 60)
        tcp = next(a for a in hello["addrs"] if "/tcp/" in a)
        ours = run_fednode(home, "ipfs", "add", str(tmp_path / "f.bin")).stdout.strip()
        assert ours == hello["kubo"]  # Kubo's --cid-version=1 --raw-leaves layout, built by Helia
        with daemons(DaemonProc(home).start()):
            for name, expected in (("default", data), ("wide", data[: 200 * 16384])):
                out = tmp_path / f"{name}.bin"
                run_fednode(home, "ipfs", "get", hello[name], "--out", str(out), "--peer", tcp, "--timeout", "60",
                            "--json", timeout=120)
                assert out.read_bytes() == expected, name
            # a directory Helia added: written as a new directory tree, the same files
            tree = tmp_path / "tree"
            got = json.loads(run_fednode(home, "ipfs", "get", hello["dir"], "--out", str(tree), "--peer", tcp,
                                         "--timeout", "60", "--json", timeout=120).stdout)
            assert got["kind"] == "directory" and got["files"] == 4 and got["size"] == 700_000 + 12
            written = {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
            assert written == {"notes.txt": b"hello\n", "sub/scan.bin": data[:700_000], "sub/deeper/empty": b"",
                               "sub/deeper/again.txt": b"hello\n"}
            # a HAMT-sharded directory (300 entries over its shards): read across them, written whole
            sharded = tmp_path / "sharded"
            got = json.loads(run_fednode(home, "ipfs", "get", hello["sharded"], "--out", str(sharded), "--peer", tcp,
                                         "--timeout", "60", "--json", timeout=120).stdout)
            assert got["kind"] == "directory" and got["files"] == 301
            written = {str(p.relative_to(sharded)): p.read_bytes() for p in sharded.rglob("*") if p.is_file()}
            assert written == {**{f"f{i}.txt": str(i).encode() for i in range(300)}, "sub/inner.txt": b"inner"}
            with open_node(home) as node:
                assert unixfs_type(node.store.get_block(CID.parse(hello["sharded"]))) == HAMT_SHARD
            # to standard output, or over an existing path, a directory is refused before it is fetched
            refused = run_fednode(home, "ipfs", "get", hello["dir"], "--out", str(tmp_path / "f.bin"), "--peer",
                                  tcp, check=False)
            assert refused.returncode == 1 and "is a UnixFS directory: give --out" in refused.stderr
        with open_node(home) as node:
            links = {n: len(decode_node(node.store.get_block(CID.parse(hello[n])))[0]) for n in ("default", "wide")}
        assert links["default"] == 4  # 1 MiB leaves
        assert links["wide"] > 174  # one node wider than Kubo's (Helia measured 193 for these bytes)
    finally:
        if helia.stdin is not None:
            helia.stdin.close()
        try:
            helia.wait(timeout=15)
        except subprocess.TimeoutExpired:
            helia.kill()
            helia.wait(timeout=5)
