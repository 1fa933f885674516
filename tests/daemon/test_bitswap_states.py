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
import trio
from daemon_harness import DaemonProc, daemons, make_home
from helpers import read_model, run_fednode, write_model
from test_bitswap_kubo import Kubo

from fednode.daemon.stateblocks import StateBlocks, StateCache
from fednode.history import History
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import CID, RAW
from protocol.unixfs import add_bytes, decode_node, iter_file

N = 300_000  # float32: 1.2 MB, 5 raw leaves under one root


def _show(home: Path, rev: str) -> dict[str, dict]:
    out = run_fednode(home, "show", rev, "--json").stdout
    return {t["name"]: t for t in json.loads(out)["tensors"]}


def fixed_bytes_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32)


def _checkout(home: Path, rev: str, dest: Path) -> bytes:
    run_fednode(home, "checkout", rev, "--out", str(dest))
    return read_model(dest)["w"][1].tobytes()


async def test_kubo_fetches_delta_stored_states(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(N).astype(np.float32)
    b = np.ones(8, dtype=np.float32)
    run_fednode(home, "repo", "create", "demo", "--public", "--from", write_model(tmp_path / "m0.safetensors",
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
                assert got == {"rc": 0, "timeout": False}, (label, got, d.log_events()[-12:])
                assert dest.read_bytes() == expected, label
                print(f"kubo fetched the {label}-stored state ({len(expected)} bytes) in {elapsed:.2f} s")
            # a commit made while the daemon runs: a miss re-reads the refs
            w3 = fixed_bytes_array(fixed_bytes) + 0.5
            run_fednode(home, "commit", "--from", write_model(tmp_path / "m3.safetensors",
                                                              {"w": ("F32", w3), "b": ("F32", b)}), "-m", "later")
            later = _show(home, "main")["w"]
            assert later["encoding"] == "xor"
            dest = tmp_path / "kubo" / "later.bin"
            got = await kubo.call(40, op="download", cid=later["state"], dest=str(dest), timeout=30)
            assert got == {"rc": 0, "timeout": False} and dest.read_bytes() == w3.tobytes(), got
            got = await kubo.call(20, op="download", cid=str(nobody), dest=str(tmp_path / "kubo" / "no.bin"), timeout=3)
            assert got["timeout"] is True and got["rc"] is None, got
            generated = [e for e in d.log_events() if e.get("event") == "state_generated"]
            assert {e["tensor"] for e in generated} == {"w"} and len(generated) == 3, generated
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


class _Threads:
    """``ReaderThreads`` without a fetcher: a plain worker thread."""

    async def run_reading(self, fn):  # type: ignore[no-untyped-def]
        return await trio.to_thread.run_sync(fn)


async def test_states_generated_once_checked_and_only_for_what_refs_reach(history: History) -> None:
    w0 = np.random.default_rng(7).standard_normal(N).astype(np.float32)
    w1 = w0.copy()
    w1[::40] -= 1.0
    repo, _ = history.create_repo("demo", ArraySource({"w": ("F32", w0)}), visibility="public")
    head = history.commit(repo, ArraySource({"w": ("F32", w1)}), "xor").cid
    entry = history.load_manifest(history.load_commit(head).weights).tensors["w"]
    assert entry.encoding == "xor" and entry.state == add_bytes(w1.tobytes())
    with history.store.read() as txn:
        assert not txn.has_block(entry.state)  # nothing in the store has the state's CID
    blocks = StateBlocks(history, _Threads())
    async with trio.open_nursery() as nursery:  # two peers want the root at once: one rebuild
        for _ in range(2):
            nursery.start_soon(blocks.get, entry.state)
    assert blocks.generated == 1
    assert b"".join(iter_file(lambda cid: blocks.cache.get(cid) or b"", entry.state)) == w1.tobytes()
    assert await blocks.get(CID.hash(RAW, b"nobody's")) is None
    # a rebuilt DAG whose root is not the recorded state is never served
    source = blocks.index.sources.pop(entry.state)
    wrong = add_bytes(b"not this tensor")
    blocks.index.sources[wrong] = source
    assert await blocks.get(wrong) is None and wrong not in blocks.cache
    # a child of an evicted state rebuilds its state
    child = decode_node(blocks.cache.get(entry.state) or b"")[0][1]
    blocks.index.sources[entry.state] = source
    blocks.cache.drop(entry.state)
    assert await blocks.get(child) is not None and blocks.generated == 2
    # an ancestor is served too: every state `show` prints for a commit `log` reaches
    history.commit(repo, ArraySource({"w": ("F32", w1 * 2)}), "moves main on")
    blocks.cache.drop(entry.state)
    await blocks.refresh()
    assert entry.state in blocks.index.sources and await blocks.get(entry.state) is not None
    # once no ref reaches a commit any more (its branch deleted), its states are not served
    history.create_branch(repo, "side", history.branch_head(repo, "main"))
    side = history.commit(repo, ArraySource({"w": ("F32", w1 * 3)}), "on side", branch="side").cid
    side_state = history.load_manifest(history.load_commit(side).weights).tensors["w"].state
    await blocks.refresh()
    assert side_state in blocks.index.sources
    history.delete_branch(repo, "side")
    await blocks.refresh()
    assert side_state not in blocks.index.sources and await blocks.get(side_state) is None
