"""The block fetcher and the frame codec in-process, with fake libp2p streams (no daemons).

Regression tests for the fetch path: one request (one stream) at a time per provider, checked and
stored in batches while the rest streams in, memory bounded, blocks hash-checked once (before
the store, which then writes them as trusted), stores in a worker thread, frames read from many
small chunks and written with a prefix in one piece.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from fednode.daemon import exchange, wire
from fednode.daemon.access import Reader
from fednode.daemon.metrics import Metrics
from fednode.storage.store import PUBLIC, Store
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, RAW, encode_varint
from protocol.objects import Manifest, TensorEntry
from protocol.unixfs import CHUNK_SIZE, MAX_LINKS


class FakeStream:
    """Serves one block request from ``blocks`` like ``exchange.serve``, in small read chunks."""

    def __init__(self, host: FakeHost, peer: str) -> None:
        self.host, self.peer = host, peer
        self.out = bytearray()
        self.inbox = bytearray()
        self.was_reset = False

    async def write(self, data: bytes) -> None:
        self.inbox += data
        length, pos = _varint(bytes(self.inbox))
        want = m.decode_want(bytes(self.inbox[pos:pos + length]))
        self.host.asked.setdefault(self.peer, []).extend(want)
        for cid in want:
            block = self.host.blocks.get(cid)
            if block is not None and self.peer in self.host.corrupt and cid in self.host.corrupt[self.peer]:
                block = b"\xff" + block[1:]
            frame = b"\x00" if block is None else b"\x01" + block
            self.out += encode_varint(len(frame)) + frame
        if self.peer in self.host.cut:  # the provider dies after sending this many bytes
            del self.out[self.host.cut[self.peer]:]

    async def read(self, n: int) -> bytes:
        await trio.sleep(self.host.drip.get(self.peer, self.host.read_delay))  # yield like a real stream
        if self.peer in self.host.busy:
            return b""  # reset before any answer, as a provider at its MAX_SERVING limit (seen as EOF)
        chunk = bytes(self.out[:min(n, 7919)])  # odd-sized chunks: frames span many reads
        del self.out[:len(chunk)]
        self.host.bytes_read += len(chunk)
        self.host.sent[self.peer] = self.host.sent.get(self.peer, 0) + len(chunk)
        return chunk

    async def close(self) -> None:
        self.host.active -= 1

    async def reset(self) -> None:
        self.was_reset = True
        self.host.resets += 1
        await self.close()


class FakeHost:
    def __init__(self, store_blocks: dict[CID, bytes]) -> None:
        self.blocks = store_blocks
        self.corrupt: dict[str, set[CID]] = {}
        self.busy: set[str] = set()
        self.cut: dict[str, int] = {}
        self.asked: dict[str, list[CID]] = {}
        self.bytes_read = 0
        self.sent: dict[str, int] = {}
        self.read_delay = 0.0
        self.drip: dict[str, float] = {}  # a peer's own delay before each read
        self.resets = 0
        self.active = 0
        self.max_active = 0
        self.streams = 0

    async def new_stream(self, peer: str, protocols: list[str]) -> FakeStream:
        self.active += 1
        self.streams += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await trio.sleep(0.01)  # a round trip
        except trio.Cancelled:
            self.active -= 1  # never opened
            raise
        return FakeStream(self, peer)


def _varint(buf: bytes) -> tuple[int, int]:
    value = shift = pos = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _dag(n_leaves: int, size: int) -> tuple[CID, dict[CID, bytes]]:
    leaves = {}
    for _ in range(n_leaves):
        data = os.urandom(size)
        leaves[CID.hash(RAW, data)] = data
    # a manifest linking every leaf (the fetcher refuses DAG-CBOR blocks that are neither commits
    # nor manifests); zero-padded names keep the leaves in order in its canonical encoding
    tensors = {f"t{i:04d}": TensorEntry("U8", (size,), "raw", 0, cid, size, state=cid) for i, cid in enumerate(leaves)}
    root_block = Manifest(tensors).encode()
    root = CID.hash(DAG_CBOR, root_block)
    return root, {root: root_block, **leaves}


async def test_fetch_streams_checks_every_block_and_fails_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    monkeypatch.setattr(m, "MAX_WANT", 40)  # several requests per provider
    n = 100
    root, dag = _dag(n, 70_000)  # batches above SMALL_WRITE: checked and stored in worker threads
    host = FakeHost(dag)
    bad_leaf = list(dag)[3]
    host.corrupt["evil"] = {bad_leaf}
    penalties: list[tuple[str, str]] = []
    metrics = Metrics()
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, metrics, lambda p, r: penalties.append((p, r)))  # type: ignore[arg-type]
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["evil", "good"])  # type: ignore[list-item]
        with store.read() as txn:
            for cid, block in dag.items():
                assert txn.get_block(cid) == block  # every block, none of the corrupted bytes
    assert penalties == [("evil", "bad_block")]  # caught before the store
    leaves = list(dag)[1:]
    assert host.asked["good"] == leaves[2:]  # the blocks before the bad one were kept, nothing after it
    assert host.max_active == 1, "one stream at a time"
    assert len(host.asked["evil"]) in (1 + 40, 1 + 80)  # no request to evil after its bad block was seen
    assert metrics.blocks_in >= len(dag)  # counted as they arrive, the corrupted batch included
    assert metrics.fetches_done == 1


async def test_a_bad_block_resets_the_stream_it_came_on(tmp_path: Path) -> None:
    root, dag = _dag(200, 70_000)
    host = FakeHost(dag)
    host.read_delay = 0.001  # ~1.8 s to send everything; the bad first leaf is caught long before
    host.corrupt["evil"] = {list(dag)[1]}
    penalties: list[tuple[str, str]] = []
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: penalties.append((p, r)))  # type: ignore[arg-type]
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["evil", "good"])  # type: ignore[list-item]
    assert penalties == [("evil", "bad_block")]
    assert host.resets == 1  # evil's stream was reset, not read to its end
    assert host.sent["evil"] < 50 * 70_000  # given up after its first batch, not read to its end
    assert host.asked["good"] == list(dag)[1:]


async def test_an_interrupted_transfer_keeps_what_arrived(tmp_path: Path) -> None:
    root, dag = _dag(exchange.BATCH * 2, 70_000)
    host = FakeHost(dag)
    frame = len(encode_varint(70_001)) + 70_001  # length, 0x01, leaf
    host.cut["flaky"] = 39 * frame + 5000  # dies in the 40th leaf of its leaf request
    penalties: list[tuple[str, str]] = []
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: penalties.append((p, r)))  # type: ignore[arg-type]
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["flaky", "good"])  # type: ignore[list-item]
        with store.read() as txn:
            assert all(txn.get_block(cid) == block for cid, block in dag.items())
    leaves = [c for c in dag if c != root]
    got_from_flaky = len(leaves) - len(host.asked["good"])
    assert got_from_flaky == 39  # the blocks that arrived whole were stored, not asked again
    assert host.asked["good"] == leaves[got_from_flaky:]
    assert penalties == []  # a broken transfer is not misbehaviour


async def test_fetch_fails_when_no_provider_has_a_block(tmp_path: Path) -> None:
    root, dag = _dag(exchange.BATCH * 2, 1000)
    missing = list(dag)[5]
    host = FakeHost({c: b for c, b in dag.items() if c != missing})
    metrics = Metrics()
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, metrics, lambda p, r: None)  # type: ignore[arg-type]
        assert not await fetcher.fetch(b"r" * 32, root, lambda: ["a"])  # type: ignore[list-item]
        with store.read() as txn:  # partial progress is kept
            assert txn.has_block(root)
            assert not txn.has_block(missing)
    assert metrics.fetches_failed == 1


async def test_a_refusing_provider_is_skipped_without_penalty(tmp_path: Path) -> None:
    root, dag = _dag(exchange.BATCH + 3, 1000)
    host = FakeHost(dag)
    host.busy.add("busy")
    penalties: list[tuple[str, str]] = []
    metrics = Metrics()
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, metrics, lambda p, r: penalties.append((p, r)))  # type: ignore[arg-type]
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["busy", "good"])  # type: ignore[list-item]
        with store.read() as txn:
            assert all(txn.get_block(cid) == block for cid, block in dag.items())
    assert penalties == []
    assert metrics.refusals == 2  # the root's request and the leaves' request asked "busy" first


class ChunkStream:
    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk = bytearray(data), chunk
        self.written = b""

    async def read(self, n: int) -> bytes:
        out = bytes(self.data[:min(n, self.chunk)])
        del self.data[:len(out)]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_frames_across_chunks_with_prefix_and_limits() -> None:
    out = ChunkStream(b"", 1)
    payload = os.urandom(300_000)
    await wire.write_frame(out, payload, prefix=b"\x01")  # type: ignore[arg-type]
    assert out.written == encode_varint(len(payload) + 1) + b"\x01" + payload
    for chunk in (1, 4096, 1 << 20):
        frame = await wire.read_frame(ChunkStream(out.written, chunk), 400_000)  # type: ignore[arg-type]
        assert frame == b"\x01" + payload and isinstance(frame, bytes)
    with pytest.raises(wire.FrameError, match="exceeds"):
        await wire.read_frame(ChunkStream(out.written, 4096), 1000)  # type: ignore[arg-type]
    with pytest.raises(wire.FrameError, match="stream ended"):
        await wire.read_frame(ChunkStream(out.written[:1000], 4096), 400_000)  # type: ignore[arg-type]


async def test_serve_logs_unexpected_errors_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenStore:
        def read(self) -> None:
            raise RuntimeError("store is gone")

    cid = CID.hash(RAW, b"x")
    frame = m.encode_want([cid])
    stream = ChunkStream(encode_varint(len(frame)) + frame, 4096)
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    stream.close = close  # type: ignore[attr-defined]
    logged: list[tuple[str, dict]] = []
    monkeypatch.setattr(exchange, "log", lambda event, level="info", **kw: logged.append((event, kw)))
    await exchange.serve(stream, BrokenStore(), Metrics(),  # type: ignore[arg-type]
                         reader=Reader(BrokenStore(), b"peer"))  # type: ignore[arg-type]
    assert logged and logged[0][0] == "blocks_serve_failed" and "store is gone" in logged[0][1]["error"]
    assert closed == [True]


async def test_frame_reader_reads_consecutive_frames_from_any_chunking() -> None:
    frames = [b"", b"\x00", os.urandom(200), os.urandom(300_000), b"\x01" + os.urandom(70_000)]
    data = b"".join(encode_varint(len(f)) + f for f in frames)
    for chunk in (1, 2, 7919, 65_536, 1 << 20):
        reader = wire.FrameReader(ChunkStream(data, chunk), chunk=chunk)  # type: ignore[arg-type]
        for f in frames:
            got = await reader.read_frame(400_000)
            assert isinstance(got, memoryview) and got == f
        with pytest.raises(wire.FrameError, match="stream ended"):
            await reader.read_frame(400_000)
    cut = encode_varint(300_000) + b"x" * 1000
    with pytest.raises(wire.FrameError, match="exceeds"):
        await wire.FrameReader(ChunkStream(cut, 4096)).read_frame(100)  # type: ignore[arg-type]
    with pytest.raises(wire.FrameError, match="stream ended"):
        await wire.FrameReader(ChunkStream(cut, 4096)).read_frame(400_000)  # type: ignore[arg-type]
    with pytest.raises(wire.FrameError, match="varint too long"):
        await wire.FrameReader(ChunkStream(b"\xff" * 8, 4096)).read_frame(400_000)  # type: ignore[arg-type]


class RecordingStream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


async def test_frame_writer_sends_noise_sized_pieces() -> None:
    frames = [(os.urandom(262_144), b"\x01"), (b"\x00", b""), (os.urandom(10), b"\x01"), (os.urandom(500_000), b"")]
    out = RecordingStream()
    writer = wire.FrameWriter(out)  # type: ignore[arg-type]
    for data, prefix in frames:
        await writer.write_frame(data, prefix=prefix)
    await writer.flush()
    await writer.flush()  # nothing left: no empty write
    assert b"".join(out.writes) == b"".join(encode_varint(len(p) + len(d)) + p + d for d, p in frames)
    # one yamux frame in one Noise message each: every write but the last is exactly one piece
    assert all(len(w) == wire.WRITE_PIECE for w in out.writes[:-1])
    assert 0 < len(out.writes[-1]) <= wire.WRITE_PIECE


async def test_frame_writer_times_out_on_a_stalled_reader() -> None:
    class Stalled:
        async def write(self, data: bytes) -> None:
            await trio.sleep_forever()

    writer = wire.FrameWriter(Stalled())  # type: ignore[arg-type]
    with pytest.raises(wire.FrameError, match="timed out"):
        await writer.write_frame(os.urandom(wire.WRITE_PIECE * 2), timeout=0.05)


async def test_fetch_reads_ahead_of_a_slow_store_within_in_memory_batches(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    size = 70_000
    root, dag = _dag(exchange.BATCH * 6, size)
    host = FakeHost(dag)
    stored = peak = 0

    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        check_and_store = fetcher.check_and_store

        async def slow_store(repo_id: bytes, received: exchange.Blocks, budget: exchange.Budget | None = None,
                             held: exchange.Blocks | None = None) -> tuple[list, str | None]:
            nonlocal stored, peak
            await trio.sleep(0.05)  # a slow disk: the transfer must go on, but memory stays bounded
            peak = max(peak, host.bytes_read - stored)  # read from the peer, not yet stored
            good, bad = await check_and_store(repo_id, received, budget, held)
            stored += sum(len(b) + 6 for _, b in good)  # with its frame's prefix and length
            return good, bad

        monkeypatch.setattr(fetcher, "check_and_store", slow_store)
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["a"])  # type: ignore[list-item]
    batch = exchange.BATCH * (size + 6)
    assert peak > (exchange.IN_MEMORY - 1) * batch  # the wire kept going while batches were stored
    assert peak <= exchange.IN_MEMORY * batch + 7919  # ... within the bound (plus one read chunk)
    assert host.max_active == 1


async def test_a_fetch_stops_at_its_budget_and_at_the_disk_reserve(tmp_path: Path) -> None:
    root, dag = _dag(exchange.BATCH * 3, 10_000)  # ~960 KB of leaves
    total = sum(len(b) for b in dag.values())
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(FakeHost(dag), store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        budget = exchange.Budget(limit=total // 2)
        assert not await fetcher.fetch(b"r" * 32, root, lambda: ["a"], budget)  # type: ignore[list-item]
        assert budget.refused == "too_large" and 0 < budget.used <= total // 2
        with store.read() as txn:
            stored = sum(len(b) for c, b in dag.items() if txn.has_block(c))
        assert stored == budget.used  # what was charged is exactly what was stored
        again = exchange.Budget()
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["a"], again)  # type: ignore[list-item]
        assert again.refused is None and again.used == total - stored  # only the missing part
    with Store(tmp_path / "t", sync=False) as store:
        # a reserve no disk here has: any store would cross it (the free space measured first was not
        # enough: a test on the other worker freeing files let one batch through, once in CI)
        fetcher = exchange.Fetcher(FakeHost(dag), store, Metrics(), lambda p, r: None,  # type: ignore[arg-type]
                                 min_free_bytes=1 << 62)
        budget = exchange.Budget()
        assert not await fetcher.fetch(b"r" * 32, root, lambda: ["a"], budget)  # type: ignore[list-item]
        assert budget.refused == "disk_full" and budget.used == 0
        with store.read() as txn:
            assert not any(txn.has_block(c) for c in dag)


async def _fetch_counting_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: CID,
                                       dag: dict[CID, bytes]) -> list[int]:
    """Fetch ``dag`` from one fake provider; the number of blocks of each store transaction."""
    calls: list[int] = []
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(FakeHost(dag), store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        store_blocks = fetcher.store_blocks
        monkeypatch.setattr(fetcher, "store_blocks", lambda repo_id, bs, grow=True: (calls.append(len(bs)),
                                                                                      store_blocks(repo_id, bs, grow)))
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["a"])  # type: ignore[list-item]
        with store.read() as txn:
            assert all(txn.get_block(cid) == block for cid, block in dag.items())
    return calls


@pytest.mark.parametrize(("leaves", "size", "transactions"), [(10, 1000, 1), (exchange.BATCH * 2, 70_000, 2)])
async def test_small_levels_share_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leaves: int,
                                                  size: int, transactions: int) -> None:
    """The root's level is held back and stored with the first large batch, or at the end: one
    fsync for all the small levels of a fetch, not one per level."""
    root, dag = _dag(leaves, size)
    calls = await _fetch_counting_transactions(tmp_path, monkeypatch, root, dag)
    assert len(calls) == transactions and sum(calls) == len(dag)


async def test_held_small_blocks_are_stored_once_they_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange, "BATCH_BYTES", 100_000)  # small batches of 32 x 1000 bytes: 32 KB each
    root, dag = _dag(exchange.BATCH * 8, 1000)
    calls = await _fetch_counting_transactions(tmp_path, monkeypatch, root, dag)
    assert sum(calls) == len(dag) and len(calls) >= 2  # memory held back stays bounded
    assert max(calls) * 1000 <= 100_000 + exchange.BATCH * 1000 + 1000  # at most BATCH_BYTES and one batch more


async def test_serve_holds_a_request_for_a_block_our_own_fetch_is_bringing(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange, "HOLD_SECONDS", 0.3)
    coming, never, later = b"on its way", b"nobody fetches this", b"nor this"
    frame = m.encode_want([CID.hash(RAW, coming), CID.hash(RAW, never), CID.hash(RAW, later)])
    stream = ChunkStream(encode_varint(len(frame)) + frame, 4096)

    async def close() -> None:
        pass

    stream.close = close  # type: ignore[attr-defined]
    arrived = trio.Event()
    with Store(tmp_path / "s", sync=False) as store:
        async def our_fetch_lands() -> None:
            await trio.sleep(0.1)
            with store.write() as txn:
                txn.put_block(CID.hash(RAW, coming), coming)
                txn.tag_block(CID.hash(RAW, coming), PUBLIC)  # servable to anyone
            arrived.set()

        in_flight = {CID.hash(RAW, coming): arrived, CID.hash(RAW, never): trio.Event(),
                     CID.hash(RAW, later): trio.Event()}
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(our_fetch_lands)
            await exchange.serve(stream, store, Metrics(), in_flight.get,  # type: ignore[arg-type]
                                 reader=Reader(store, b"peer"))
        took = trio.current_time() - start
    # the first block once our fetch stored it, the others "not here" when the request's hold ran out
    assert stream.written == encode_varint(len(coming) + 1) + b"\x01" + coming + 2 * (encode_varint(1) + b"\x00")
    assert 0.3 <= took < 0.65  # one hold of 0.3 s for the whole request (per block: 0.7 s or more)


async def test_a_fetch_marks_what_it_brings_until_it_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, dag = _dag(4, 1000)
    leaf = list(dag)[1]
    seen: list[object] = []
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(FakeHost(dag), store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        check_and_store = fetcher.check_and_store

        async def watching(repo_id: bytes, received: exchange.Blocks, budget: exchange.Budget | None = None,
                           held: exchange.Blocks | None = None) -> tuple[list, str | None]:
            seen.append(fetcher.in_flight(leaf))
            return await check_and_store(repo_id, received, budget, held)

        monkeypatch.setattr(fetcher, "check_and_store", watching)
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["a"])  # type: ignore[list-item]
        assert fetcher.in_flight(leaf) is None and fetcher.in_flight(root) is None  # cleared at the end
    events = [e for e in seen if e is not None]
    assert events and all(isinstance(e, trio.Event) for e in events)
    assert all(e.is_set() for e in events)  # set by the end at the latest: held requests go on


async def test_a_relay_serves_each_level_as_soon_as_it_is_checked(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A block our fetch has checked but holds for a later transaction is served at once (from
    memory), and a request held for it wakes then: a relay forwards a commit level by level, not
    once its whole fetch ends (weights propagation, issue 11 item 9)."""
    root, dag = _dag(4, 1000)
    answers: list[tuple[bool, bytes | None, bool]] = []
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(FakeHost(dag), store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        check_and_store = fetcher.check_and_store

        async def watching(repo_id: bytes, received: exchange.Blocks, budget: exchange.Budget | None = None,
                           held: exchange.Blocks | None = None) -> tuple[list, str | None]:
            out = await check_and_store(repo_id, received, budget, held)
            if received[0][0] == root:  # the root's level is checked: is it servable, mid-fetch?
                with store.read() as txn:
                    stored = txn.has_block(root)
                event = fetcher.in_flight(root)
                answers.append((stored, exchange._get(store, root, fetcher.checked_block),
                                event is not None and event.is_set()))
            return out

        monkeypatch.setattr(fetcher, "check_and_store", watching)
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["a"])  # type: ignore[list-item]
        assert fetcher.checked_block(root) is None  # stored now: served from LMDB, memory freed
        with store.read() as txn:
            assert txn.get_block(root) == dag[root]
    assert answers == [(False, dag[root], True)]  # not stored yet, yet served, and held requests woken


async def test_a_fetch_ends_only_once_what_it_reaches_is_stored(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks another fetch holds in memory (checked, not yet in LMDB) are served to peers, but a
    fetch does not count them as present: it would end before they are stored, and the head it
    brought would fail verification ("not in the store") and its announcer be penalized."""
    root, dag = _dag(4, 1000)
    paused, release = trio.Event(), trio.Event()
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(FakeHost(dag), store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        check_and_store = fetcher.check_and_store

        async def first_fetch_pauses(repo_id: bytes, received: exchange.Blocks, budget: exchange.Budget | None = None,
                                     held: exchange.Blocks | None = None) -> tuple[list, str | None]:
            out = await check_and_store(repo_id, received, budget, held)
            if received[0][0] != root and not paused.is_set():  # the first fetch holds every block now
                paused.set()
                await release.wait()
            return out

        monkeypatch.setattr(fetcher, "check_and_store", first_fetch_pauses)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.fetch, b"r" * 32, root, lambda: ["a"])
            await paused.wait()
            assert all(fetcher.checked_block(cid) == (block, b"r" * 32) for cid, block in dag.items())  # held
            assert await fetcher.fetch(b"r" * 32, root, lambda: ["a"])  # type: ignore[list-item]
            with store.read() as txn:
                assert all(txn.has_block(cid) for cid in dag)  # the second fetch stored what it reached
            release.set()


def _manifest_over(root: CID, size: int) -> tuple[CID, bytes]:
    block = Manifest({"w": TensorEntry("U8", (size,), "raw", 0, root, size, state=root)}).encode()
    return CID.hash(DAG_CBOR, block), block


async def test_a_block_linked_many_times_is_asked_for_once(tmp_path: Path) -> None:
    """A file whose every node links MAX_LINKS times to one child (a file of zeros can do this; a
    bomb too, if its manifest owns up to 2.4e14 bytes) costs one request per distinct block."""
    from helpers import dag_bomb

    bomb_root, bomb = dag_bomb(leaf=bytes(CHUNK_SIZE))
    root, block = _manifest_over(bomb_root, CHUNK_SIZE * MAX_LINKS**4)
    host = FakeHost({root: block, **bomb})
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        with trio.fail_after(10):
            assert await fetcher.fetch(b"r" * 32, root, lambda: ["p"])  # type: ignore[list-item]
    assert sorted(map(str, host.asked["p"])) == sorted(map(str, [root, *bomb]))  # each block once


@pytest.mark.parametrize("lie", [None, CHUNK_SIZE * MAX_LINKS])
async def test_a_dag_bomb_is_refused_by_the_fetcher_at_the_first_size_that_disagrees(tmp_path: Path,
                                                                                     lie: int | None) -> None:
    """The manifest says 1 KiB: a root declaring 174^4 chunks is refused as it arrives (lie=None). The
    manifest and the root say 174 chunks, but the root's child declares 174^3 (lie): refused at the
    child. Nothing of what disagrees is stored and the provider is penalized."""
    from helpers import dag_bomb

    bomb_root, bomb = dag_bomb(leaf=bytes(CHUNK_SIZE), lie_at_root=lie)
    root, block = _manifest_over(bomb_root, lie or 1024)
    host = FakeHost({root: block, **bomb})
    penalties: list[tuple[str, str]] = []
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: penalties.append((p, r)))  # type: ignore[arg-type]
        with trio.fail_after(10):
            assert not await fetcher.fetch(b"r" * 32, root, lambda: ["p"])  # type: ignore[list-item]
        with store.read() as txn:
            stored = [c for c in bomb if txn.has_block(c)]
    assert penalties == [("p", "bad_dag")]
    assert len(host.asked["p"]) == (2 if lie is None else 3)  # manifest, root (, its one distinct child)
    assert stored == ([] if lie is None else [bomb_root])


async def test_a_unixfs_chain_deeper_than_any_file_is_refused(tmp_path: Path) -> None:
    from protocol.multiformats import DAG_PB
    from protocol.unixfs import Link, _unixfs_data, encode_node

    child = CID.hash(RAW, b"x")
    dag = {child: b"x"}
    for _ in range(exchange.MAX_PB_DEPTH + 5):
        node = encode_node([Link(child, 1, 1)], _unixfs_data(1, [1]))
        child = CID(1, DAG_PB, CID.hash(DAG_PB, node).digest)
        dag[child] = node
    root, block = _manifest_over(child, 1)
    host = FakeHost({root: block, **dag})
    budget = exchange.Budget()
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        with trio.fail_after(10):
            assert not await fetcher.fetch(b"r" * 32, root, lambda: ["p"], budget)  # type: ignore[list-item]
    assert budget.refused == "too_deep"
    assert len(host.asked["p"]) == 1 + exchange.MAX_PB_DEPTH + 1  # the manifest, then no deeper than the limit


async def test_stores_go_on_beside_a_reader_unless_the_map_must_grow(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """run_reading (verification in a worker thread) must not hold off every store (that made weights
    propagation after a burst 2x slower), but no store may resize LMDB's map while the reader runs."""
    import threading

    store = Store(tmp_path / "s")
    try:
        fetcher = exchange.Fetcher(None, store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        release = threading.Event()
        block = os.urandom(1000)
        batch = [(CID.hash(RAW, block), block)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.run_reading, lambda: release.wait(10))
            await trio.sleep(0.05)
            with trio.fail_after(2):  # within the room reserved before the reader: stored at once
                good, bad = await fetcher.check_and_store(b"r" * 32, batch)
            assert good == batch and bad is None
            with store.read() as txn:
                assert txn.has_block(batch[0][0])
            monkeypatch.setattr(store, "has_room", lambda extra: False)  # this store would grow the map
            other = os.urandom(1000)
            done = trio.Event()

            async def store_other() -> None:
                await fetcher.check_and_store(b"r" * 32, [(CID.hash(RAW, other), other)])
                done.set()

            nursery.start_soon(store_other)
            await trio.sleep(0.2)
            assert not done.is_set()  # waits for the reader
            release.set()
            with trio.fail_after(5):
                await done.wait()
    finally:
        store.close()


async def test_a_fetch_stops_at_its_link_limit_before_asking_for_them(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each CID a fetch follows costs memory while it runs, and a few MiB of link nodes name millions
    of distinct CIDs: past MAX_FETCH_LINKS links the job is refused (``too_many_blocks``), before the
    links of the block that crossed it are asked for."""
    monkeypatch.setattr(exchange, "MAX_FETCH_LINKS", exchange.BATCH * 3 - 1)
    root, dag = _dag(exchange.BATCH * 3, 1000)
    host = FakeHost(dag)
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        budget = exchange.Budget()
        assert not await fetcher.fetch(b"r" * 32, root, lambda: ["a"], budget)  # type: ignore[list-item]
        assert budget.refused == "too_many_blocks" and budget.links == exchange.BATCH * 3
        assert host.asked["a"] == [root]  # the leaves were never asked for
    monkeypatch.setattr(exchange, "MAX_FETCH_LINKS", exchange.BATCH * 3)
    with Store(tmp_path / "t", sync=False) as store:
        fetcher = exchange.Fetcher(FakeHost(dag), store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        assert await fetcher.fetch(b"r" * 32, root, lambda: ["a"])  # type: ignore[list-item]


async def test_a_provider_dripping_its_answers_is_left_for_the_next(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each answer within STREAM_TIMEOUT, yet a request (up to 256 blocks) could take 64 minutes: a
    request must be answered within REQUEST_BASE_SECONDS + REQUEST_SECONDS_PER_BLOCK each, and what a
    provider did not send by then is asked of the next."""
    monkeypatch.setattr(exchange, "REQUEST_BASE_SECONDS", 0.25)
    monkeypatch.setattr(exchange, "REQUEST_SECONDS_PER_BLOCK", 0.0)
    root, dag = _dag(20, 1000)
    host = FakeHost(dag)
    host.drip["slow"] = 0.2  # ~20 KB in 7,919-byte reads: 0.6 s for the leaves
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: None)  # type: ignore[arg-type]
        with trio.fail_after(10):
            assert await fetcher.fetch(b"r" * 32, root, lambda: ["slow", "fast"])  # type: ignore[list-item]
        with store.read() as txn:
            assert all(txn.get_block(c) == b for c, b in dag.items())
    assert host.asked.get("fast"), "the slow provider was waited for to the end"


async def test_fetch_block_checks_the_one_block_and_blames_a_wrong_one(tmp_path: Path) -> None:
    """``Fetcher.fetch_block`` (a clone's genesis): the block from one peer, hash-checked, not
    stored; a peer that does not hold it answers None without blame, one that sends other bytes
    is struck (``bad_block``), one that says nothing is given up on."""
    root, dag = _dag(1, 100)
    host = FakeHost(dag)
    host.corrupt["liar"] = {root}
    host.busy.add("mute")  # resets before any answer
    strikes: list[tuple[str, str]] = []
    with Store(tmp_path / "s", sync=False) as store:
        fetcher = exchange.Fetcher(host, store, Metrics(), lambda p, r: strikes.append((p, r)))  # type: ignore[arg-type]
        with trio.fail_after(10):
            assert await fetcher.fetch_block(root, "good") == dag[root]  # type: ignore[arg-type]
            assert await fetcher.fetch_block(root, "liar") is None  # type: ignore[arg-type]
            assert await fetcher.fetch_block(CID.hash(DAG_CBOR, b"\xa0"), "good") is None  # type: ignore[arg-type]
            assert await fetcher.fetch_block(root, "mute") is None  # type: ignore[arg-type]
        with store.read() as txn:
            assert not txn.has_block(root)  # nothing stored
    assert strikes == [("liar", "bad_block")]
