"""A delta-stored state larger than the in-memory state cache is still served over bitswap.

With ``bitswap_cache_bytes`` = 8 MiB a 20 MiB xor-stored tensor goes to the on-disk spill
(stateblocks.StateSpill): a real Kubo (kubo-python) fetches the CID ``fednode show`` prints, the
bytes are the committed state, and the daemon's peak RSS is reported and bounded. In process: the
spill's LRU bound by bytes, a state larger than the spill refused, and read access kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import trio
from daemon_harness import DaemonProc, daemons, make_home, network_config
from helpers import read_model, run_fednode, write_model
from test_bitswap_kubo import Kubo

from fednode.daemon.stateblocks import SpillFile, StateBlocks, StateSpill
from fednode.history import History
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import CID, RAW
from protocol.unixfs import add_bytes, iter_file

CACHE = 8 << 20
N = 5 << 20  # float32: 20 MiB, 2.5x the cache


def _rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


async def test_kubo_fetches_a_state_larger_than_the_cache(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    network_config(home, bitswap_cache_bytes=CACHE, bitswap_spill_bytes=64 << 20)
    rng = np.random.default_rng(11)
    w0 = rng.standard_normal(N).astype(np.float32)
    run_fednode(home, "repo", "create", "big", "--public", "--from",
                write_model(tmp_path / "m0.safetensors", {"w": ("F32", w0)}))
    w1 = w0.copy()
    w1[::64] += 0.5  # a small change: stored as an xor delta
    run_fednode(home, "commit", "--from", write_model(tmp_path / "m1.safetensors", {"w": ("F32", w1)}), "-m", "xor")
    entry = {t["name"]: t for t in json.loads(run_fednode(home, "show", "main", "--json").stdout)["tensors"]}["w"]
    assert entry["encoding"] == "xor", entry
    run_fednode(home, "checkout", "main", "--out", str(tmp_path / "out.safetensors"))
    expected = read_model(tmp_path / "out.safetensors")["w"][1].tobytes()
    assert expected == w1.tobytes() and len(expected) == 20 << 20
    kubo = Kubo(tmp_path / "kubo")
    try:
        with daemons(DaemonProc(home).start()) as (d,):
            assert d.proc is not None
            await kubo.start()
            assert (await kubo.call(20, op="connect", addr=d.addr))["rc"] == 0
            before = _rss_kib(d.proc.pid)
            dest = tmp_path / "kubo" / "big.bin"
            t0 = time.monotonic()
            got = await kubo.call(120, op="download", cid=entry["state"], dest=str(dest), timeout=100)
            elapsed = time.monotonic() - t0
            events = [e for e in d.log_events() if "state" in e.get("event", "") or e.get("level") != "info"]
            assert got == {"rc": 0, "timeout": False}, (got, events[-12:])
            assert dest.read_bytes() == expected
            after = _rss_kib(d.proc.pid)
            generated = [e for e in d.log_events() if e.get("event") == "state_generated"]
            assert [(e["tensor"], e["spilled"]) for e in generated] == [("w", True)], generated
            assert not [e for e in d.log_events() if e.get("event") == "state_too_large"]
            growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
            print(f"kubo fetched a {len(expected) >> 20} MiB state (cache {CACHE >> 20} MiB) in {elapsed:.2f} s; "
                  f"daemon RSS {before['VmRSS'] >> 10} MiB before, peak {after['VmHWM'] >> 10} MiB, "
                  f"now {after['VmRSS'] >> 10} MiB (peak growth {growth_mib:.0f} MiB)")
            # the rebuild holds the tensor and its parent (as checkout does); the served state is on disk
            assert growth_mib < 6 * (len(expected) >> 20), growth_mib
    finally:
        kubo.stop()


def _spilled(tag: bytes, sizes: list[int]) -> tuple[CID, SpillFile]:
    spilled = SpillFile()
    first = None
    for i, size in enumerate(sizes):
        data = tag + bytes([i]) * size
        cid = CID.hash(RAW, data)
        first = first or cid
        spilled.write(cid, data)
    assert first is not None
    return first, spilled


def test_spill_evicts_least_recent_states_by_bytes() -> None:
    spill = StateSpill(max_bytes=1000)
    (a, fa), (b, fb), (c, fc) = _spilled(b"a", [300, 99]), _spilled(b"b", [400]), _spilled(b"c", [500])
    assert spill.put(a, fa) and spill.put(b, fb) and spill.bytes == 802
    assert spill.get(a) == b"a" + bytes([0]) * 300  # read back from the file; a is now the most recent
    assert spill.put(c, fc)
    assert b not in spill and a in spill and c in spill and spill.bytes == 902
    assert fb.file.closed and spill.get(b) is None
    d, fd = _spilled(b"d", [1001])
    assert not spill.put(d, fd) and fd.file.closed and spill.bytes == 902  # larger than the bound: never held
    spill.drop(a)
    assert fa.file.closed and spill.bytes == 501


class _Threads:
    async def run_reading(self, fn):  # type: ignore[no-untyped-def]
        return await trio.to_thread.run_sync(fn)


async def test_large_state_spilled_checked_and_access_kept(history: History) -> None:
    n = 1 << 20  # 4 MiB of float32, over a 1 MiB cache
    w0 = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    w1 = w0.copy()
    w1[::100] *= 2
    repo, _ = history.create_repo("demo", ArraySource({"w": ("F32", w0)}), visibility="public")
    head = history.commit(repo, ArraySource({"w": ("F32", w1)}), "xor").cid
    entry = history.load_manifest(history.load_commit(head).weights).tensors["w"]
    assert entry.encoding == "xor" and entry.state == add_bytes(w1.tobytes())
    # no spill room: not served, as before
    refused = StateBlocks(history, _Threads(), max_cache_bytes=1 << 20, max_spill_bytes=1 << 20)
    assert await refused.get(entry.state) is None and refused.generated == 0
    blocks = StateBlocks(history, _Threads(), max_cache_bytes=1 << 20, max_spill_bytes=16 << 20)
    assert await blocks.get(entry.state, allows=lambda repos: False) is None  # refused before any rebuild
    assert blocks.generated == 0
    async with trio.open_nursery() as nursery:  # two peers want the root at once: one rebuild
        for _ in range(2):
            nursery.start_soon(blocks.get, entry.state)
    assert blocks.generated == 1 and entry.state in blocks.spill and blocks.cache.bytes == 0
    served = b"".join(iter_file(lambda cid: blocks.spill.get(cid) or b"", entry.state))
    assert served == w1.tobytes()
    child = next(iter(c for c in blocks.spill._owner if c != entry.state))
    assert await blocks.get(child, allows=lambda repos: False) is None  # a held child: still refused
    assert await blocks.get(child, allows=lambda repos: len(repos) == 1) is not None
    # a rebuilt DAG whose root is not the recorded state is never served
    source = blocks.index.sources.pop(entry.state)
    wrong = add_bytes(b"not this tensor")
    blocks.index.sources[wrong] = source
    assert await blocks.get(wrong) is None and wrong not in blocks.spill


async def test_rebuilds_are_charged_to_whoever_asks(history: History, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each rebuild's bytes are charged to the asker: past its burst it waits, past MAX_REBUILD_WAIT
    of debt it is refused (nothing rebuilt), and another asker is not affected; a cached state costs
    nothing. Before, asking in turn for more states than the cache holds rebuilt each one for free."""
    from fednode.daemon import stateblocks

    n = 1 << 18  # 1 MiB of float32 a state
    rng = np.random.default_rng(5)
    repo, _ = history.create_repo("demo", ArraySource({"w": ("F32", rng.standard_normal(n).astype(np.float32))}),
                                  visibility="public")
    states = []
    for i in range(3):
        w = rng.standard_normal(n).astype(np.float32)
        w[::2] = 0  # a change the xor delta stores
        head = history.commit(repo, ArraySource({"w": ("F32", w)}), f"c{i}").cid
        entry = history.load_manifest(history.load_commit(head).weights).tensors["w"]
        if entry.encoding != "snapshot":
            states.append(entry.state)
    assert len(states) == 3, "a commit was stored as a snapshot: no rebuild to charge"
    monkeypatch.setattr(stateblocks, "REBUILD_RATE", 4 << 20)  # 4 MiB a second: a state costs 0.25 s
    monkeypatch.setattr(stateblocks, "REBUILD_BURST", 1 << 20)  # one state at once
    monkeypatch.setattr(stateblocks, "MAX_REBUILD_WAIT", 0.3)  # at most 1.2 MiB of debt
    blocks = StateBlocks(history, _Threads(), max_cache_bytes=1 << 30)
    start = trio.current_time()
    assert await blocks.get(states[0], asker="a") is not None  # within the burst
    assert await blocks.get(states[0], asker="a") is not None and blocks.generated == 1  # cached: free
    assert trio.current_time() - start < 0.25
    got: dict[CID, bytes | None] = {}

    async def ask(state: CID) -> None:
        got[state] = await blocks.get(state, asker="a")

    async with trio.open_nursery() as nursery:  # two more at once: one waits 0.25 s, one is refused
        for state in states[1:3]:
            nursery.start_soon(ask, state)
    assert sorted(g is None for g in got.values()) == [False, True] and trio.current_time() - start >= 0.25 - 0.01
    assert blocks.generated == 2 and blocks.deferred == 1
    (refused,) = [state for state, g in got.items() if g is None]
    assert await blocks.get(refused, asker="b") is not None and blocks.generated == 3  # another asker
