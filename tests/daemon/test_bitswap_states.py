"""Every state CID fednode shows is fetchable over bitswap, delta-stored ones included.

A real Kubo (kubo-python, test_bitswap_kubo.Kubo) fetches, from a running daemon, the state CID
``fednode show`` prints for a tensor stored as an xor delta and for one stored ``fixed`` (lossy):
the bytes are the committed state (what ``fednode checkout`` writes), not the input file. A CID
nobody has stays unanswered. The cache bound is checked in process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from daemon_harness import DaemonProc, daemons, make_home
from helpers import read_model, run_fednode, write_model
from test_bitswap_kubo import Kubo

from fednode.daemon.stateblocks import StateCache
from protocol.multiformats import CID, RAW

N = 300_000  # float32: 1.2 MB, 5 raw leaves under one root


def _show(home: Path, rev: str) -> dict[str, dict]:
    out = run_fednode(home, "show", rev, "--json").stdout
    return {t["name"]: t for t in json.loads(out)["tensors"]}


def _checkout(home: Path, rev: str, dest: Path) -> bytes:
    run_fednode(home, "checkout", rev, "--out", str(dest))
    return read_model(dest)["w"][1].tobytes()


async def test_kubo_fetches_delta_stored_states(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(N).astype(np.float32)
    b = np.ones(8, dtype=np.float32)
    run_fednode(home, "repo", "create", "demo", "--from", write_model(tmp_path / "m0.safetensors",
                                                                      {"w": ("F32", w0), "b": ("F32", b)}))
    w1 = w0.copy()
    w1[::50] += 0.25  # a small change: stored as an xor delta
    run_fednode(home, "commit", "--from", write_model(tmp_path / "m1.safetensors", {"w": ("F32", w1), "b": ("F32", b)}),
                "-m", "xor")
    run_fednode(home, "tag", "xor-step")  # a ref: its states are served (branch heads, tags, remotes)
    w2 = w1 + rng.standard_normal(N).astype(np.float32) * 1e-3
    run_fednode(home, "commit", "--from", write_model(tmp_path / "m2.safetensors", {"w": ("F32", w2), "b": ("F32", b)}),
                "-m", "fixed", "--encoding", "fixed")
    xor_entry, fixed_entry = _show(home, "xor-step")["w"], _show(home, "main")["w"]
    assert (xor_entry["encoding"], fixed_entry["encoding"]) == ("xor", "fixed")
    xor_bytes = _checkout(home, "xor-step", tmp_path / "xor.safetensors")
    fixed_bytes = _checkout(home, "main", tmp_path / "fixed.safetensors")
    assert xor_bytes == w1.tobytes() and fixed_bytes != w2.tobytes()  # fixed is lossy: served is the stored state
    nobody = CID.hash(RAW, b"a block no one holds")

    kubo = Kubo(tmp_path / "kubo")
    try:
        with daemons(DaemonProc(home).start()) as (d,):
            await kubo.start()
            assert (await kubo.call(20, op="connect", addr=d.addr))["rc"] == 0
            for label, entry, expected in (("xor", xor_entry, xor_bytes), ("fixed", fixed_entry, fixed_bytes)):
                dest = tmp_path / "kubo" / f"{label}.bin"
                t0 = time.monotonic()
                got = await kubo.call(40, op="download", cid=entry["state"], dest=str(dest), timeout=30)
                elapsed = time.monotonic() - t0
                assert got == {"rc": 0, "timeout": False}, (label, got)
                assert dest.read_bytes() == expected, label
                print(f"kubo fetched the {label}-stored state ({len(expected)} bytes) in {elapsed:.2f} s")
            got = await kubo.call(20, op="download", cid=str(nobody), dest=str(tmp_path / "kubo" / "no.bin"), timeout=3)
            assert got["timeout"] is True and got["rc"] is None, got
            generated = [e for e in d.log_events() if e.get("event") == "state_generated"]
            assert {e["tensor"] for e in generated} == {"w"} and len(generated) == 2, generated
    finally:
        kubo.stop()


def test_state_cache_evicts_least_recent_states_by_bytes() -> None:
    def state(tag: bytes, sizes: list[int]) -> tuple[CID, dict[CID, bytes | memoryview]]:
        blocks: dict[CID, bytes | memoryview] = {}
        for i, size in enumerate(sizes):
            data = tag + bytes([i]) * size
            blocks[CID.hash(RAW, data)] = data
        return next(iter(blocks)), blocks

    cache = StateCache(max_bytes=1000)
    (a, a_blocks), (b, b_blocks), (c, c_blocks) = state(b"a", [300, 99]), state(b"b", [400]), state(b"c", [500])
    assert cache.put(a, a_blocks) and cache.put(b, b_blocks)
    assert cache.bytes == 802
    assert cache.get(a) is not None  # a is now the most recent: b goes first
    assert cache.put(c, c_blocks)
    assert b not in cache and a in cache and c in cache and cache.bytes == 902
    assert all(cache.get(cid) is None for cid in b_blocks)
    assert all(cache.get(cid) == bytes(block) for cid, block in a_blocks.items())
    too_big = state(b"d", [1001])
    assert not cache.put(*too_big) and cache.bytes == 902  # larger than the bound: never held
