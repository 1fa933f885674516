"""A running `fednode daemon` serves its tensor files to a real IPFS node (Kubo v0.22) over bitswap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from daemon_harness import DaemonProc, daemons, make_home
from helpers import run_fednode, write_model
from test_bitswap_kubo import Kubo

from fednode.node import open_node


async def test_kubo_fetches_a_tensor_from_a_running_daemon(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    weights = np.random.default_rng(3).standard_normal(700_000).astype(np.float32)  # 2.8 MB: 11 raw leaves
    model = write_model(tmp_path / "m.safetensors", {"w": ("F32", weights), "b": ("F32", weights[:10].copy())})
    run_fednode(home, "repo", "create", "demo", "--public", "--from", model)
    with open_node(home) as node:
        info = node.history.repo("demo")
        entry = node.history.load_manifest(node.history.load_commit(info.genesis).weights).tensors["w"]
    kubo = Kubo(tmp_path / "kubo")
    try:
        with daemons(DaemonProc(home).start()) as (d,):
            await kubo.start()
            assert (await kubo.call(20, op="connect", addr=d.addr))["rc"] == 0
            dest = tmp_path / "kubo" / "w.bin"
            got = await kubo.call(40, op="download", cid=str(entry.cid), dest=str(dest), timeout=30)
            assert got == {"rc": 0, "timeout": False}, got
            assert dest.read_bytes() == weights.tobytes()  # the tensor's own bytes, under its IPFS CID
            assert entry.cid == entry.state
    finally:
        kubo.stop()
