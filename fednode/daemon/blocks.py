"""Block exchange over ``/fednode/blocks/1.0.0`` (our own protocol, not bitswap).

Request: one frame, DAG-CBOR ``{"want": [CID, ...]}``. Response: one frame per wanted CID, in
order: ``0x01 + block`` or ``0x00`` (not here), written in Noise-message-sized pieces
(``wire.FrameWriter``) and read in large chunks (``wire.FrameReader``). The fetcher keeps
PARALLEL requests of BATCH blocks on the wire (one stream each) and at most IN_MEMORY batches
in memory; a batch that has arrived frees its transfer slot, then every block is checked
against the CID it asked for and commits are checked (decoding, signature, repository) before
the good blocks are stored in one LMDB transaction (in a worker thread for large batches, one
batch at a time). On any error or missing block it goes on with the next provider, keeping
what already arrived.

Why not py-libp2p's bitswap: it returns whole files as one bytes object, caps blocks at
512 KiB, needs a BlockStore adapter over LMDB and answers Kubo on the wrong stream (field
notes); this protocol is ~150 lines we can bound (sizes, timeouts) and test end to end.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fednode.daemon import wire
from fednode.daemon.logs import log
from fednode.daemon.metrics import Metrics
from fednode.errors import NotFound
from fednode.identity import verify_signature
from fednode.store import WRITE_HEADROOM, Store
from protocol import messages as m
from protocol.dag import links  # children to fetch
from protocol.multiformats import CID, DAG_CBOR, RAW, FormatError
from protocol.objects import COMMIT_TYPE, Commit

PROTOCOL = TProtocol(m.BLOCKS_PROTOCOL)
# Seconds to wait before serving each block: lets tests and demos kill a provider mid-transfer.
SERVE_DELAY = float(os.environ.get("FEDNODE_BLOCK_SERVE_DELAY", "0"))
BATCH = 32  # blocks per request: 8 MiB of 256 KiB chunks
PARALLEL = 2  # requests on the wire per fetch, each on its own stream (and its own yamux window)
# batches held per fetch (on the wire, or waiting for / in check+store): at most IN_MEMORY * BATCH
# blocks in memory; one more than PARALLEL, so the wire stays busy while a batch is stored
IN_MEMORY = 3
STREAM_TIMEOUT = 15.0
SMALL_WRITE = 256 * 1024  # batches below this are checked and stored on the trio thread (no thread hop)
MAX_FETCH_BYTES = 64 << 30  # [network] max_fetch_bytes: most one fetch job (a commit and all it reaches) stores
MIN_FREE_BYTES = 1 << 30  # [network] min_free_bytes: a fetch never leaves less free disk than this


@dataclass
class Budget:
    """What one fetch job may still store, across its attempts. ``refused`` says why it stopped:
    ``too_large`` (an announcement must not make us store without bound) or ``disk_full``."""

    limit: int = MAX_FETCH_BYTES
    used: int = 0
    refused: str | None = None


async def serve(stream: INetStream, store: Store, metrics: Metrics) -> None:
    try:
        want = m.decode_want(await wire.read_frame(stream, 64 * 1024))
        writer = wire.FrameWriter(stream)
        for cid in want:
            block = _get(store, cid)
            if block is None:
                await writer.write_frame(b"\x00")
                continue
            if SERVE_DELAY:
                await writer.flush()
                await trio.sleep(SERVE_DELAY)
            await writer.write_frame(block, prefix=b"\x01")
            metrics.bytes_out += len(block)
            metrics.blocks_out += 1
        await writer.flush()
    except (wire.FrameError, FormatError, ValueError) as exc:
        log("blocks_serve_error", "warning", error=str(exc))
    except Exception as exc:  # py-libp2p would swallow it: the fetcher would only see an EOF
        log("blocks_serve_failed", "warning", error=f"{type(exc).__name__}: {exc}")
    finally:
        try:
            await stream.close()
        except Exception:
            pass


def _get(store: Store, cid: CID) -> bytes | None:
    """One look-up (and one copy out of LMDB) per block; a short read txn per block, so a slow
    reader never pins LMDB pages for a whole request."""
    with store.read() as txn:
        try:
            return txn.get_block(cid)
        except NotFound:
            return None


class Fetcher:
    def __init__(self, host: IHost, store: Store, metrics: Metrics, penalize: Callable[[ID, str], None],
                 min_free_bytes: int = MIN_FREE_BYTES) -> None:
        self.host = host
        self.store = store
        self.metrics = metrics
        self.penalize = penalize
        self.min_free_bytes = min_free_bytes
        self._write_lock = trio.Lock()

    def _commit_ok(self, cid: CID, block: bytes, repo_id: bytes) -> Commit | None | bool:
        """A commit block must decode, be signed by its author and belong to ``repo_id``.

        Returns the Commit, None for a non-commit DAG-CBOR block, False for a bad commit.
        """
        try:
            commit = Commit.decode(block)
        except FormatError:
            return None if not block_is_commit(block) else False
        rid = commit.repo if commit.repo is not None else commit.commit_hash()
        if rid != repo_id or not verify_signature(commit.author, commit.commit_hash(), commit.sig):
            return False
        return commit

    def store_blocks(self, repo_id: bytes, blocks: list[tuple[CID, bytes]], grow: bool = True) -> None:
        """One LMDB transaction for a batch of blocks that ``_check`` has hash-checked."""
        if not blocks:
            return
        with self.store.write(size_hint=sum(len(b) for _, b in blocks), grow=grow) as txn:
            for cid, block in blocks:
                txn.put_block(cid, block, trusted=True)  # checked against its CID by _check
                if cid.codec == DAG_CBOR:
                    commit = self._commit_ok(cid, block, repo_id)
                    if isinstance(commit, Commit):
                        txn.index_commit(cid, repo_id, commit.commit_hash())

    def _charge(self, budget: Budget, size: int) -> bool:
        """Take ``size`` bytes from the job's budget and the disk's headroom; False: store nothing."""
        if budget.used + size > budget.limit:
            budget.refused = "too_large"
        elif shutil.disk_usage(self.store.path).free - size < self.min_free_bytes:
            budget.refused = "disk_full"
        else:
            budget.used += size
        return budget.refused is None

    async def check_and_store(self, repo_id: bytes, received: list[tuple[CID, bytes]], budget: Budget | None = None
                              ) -> tuple[list[tuple[CID, bytes]], str | None]:
        """Hash-check a received batch, then store its good blocks in one LMDB transaction.

        A large batch is checked and stored in worker threads (hashing and LMDB writes release
        the GIL; page faults of the LMDB map and the fsync at commit no longer stall the trio
        thread, which keeps receiving). Checks run outside ``_write_lock``, so one batch is
        hashed while the previous one is written; one store at a time. Before a worker store
        the map is grown on the trio thread by twice the batch plus a full WRITE_HEADROOM, so
        neither the worker nor a trio-thread writer (size hints far below that) resizes it
        while the worker's txn is open.
        """
        if not received:
            return [], None
        small = sum(len(b) for _, b in received) < SMALL_WRITE
        if small:
            good, bad = self._check(received, repo_id)
        else:
            good, bad = await trio.to_thread.run_sync(self._check, received, repo_id)
        size = sum(len(b) for _, b in good)
        if budget is not None and good and not self._charge(budget, size):
            return [], bad
        async with self._write_lock:
            if small:
                self.store_blocks(repo_id, good)
            elif good:
                self.store.reserve(2 * size + WRITE_HEADROOM)
                await trio.to_thread.run_sync(self.store_blocks, repo_id, good, False)
        return good, bad

    def _check(self, received: list[tuple[CID, bytes]], repo_id: bytes) -> tuple[list[tuple[CID, bytes]], str | None]:
        """The blocks before the first bad one, and why that one is bad (None: all good).

        Every block must hash to the CID we asked for; commit blocks must also decode, be signed
        and belong to ``repo_id``. Thread-safe (hashlib releases the GIL)."""
        for i, (cid, block) in enumerate(received):
            if not cid.verify(block):
                return received[:i], "bad_block"
            if cid.codec == DAG_CBOR and self._commit_ok(cid, block, repo_id) is False:
                return received[:i], "bad_commit_block"
        return received, None

    async def _receive(self, peer: ID, want: list[CID]) -> tuple[list[tuple[CID, bytes]], str | None]:
        """Ask one peer; the blocks received before any failure (unchecked), and why it stopped
        early when the peer misbehaved (None otherwise)."""
        received: list[tuple[CID, bytes]] = []
        try:
            with trio.fail_after(STREAM_TIMEOUT):
                stream = await self.host.new_stream(peer, [PROTOCOL])
        except Exception as exc:
            log("blocks_dial_failed", "warning", peer=str(peer), error=f"{type(exc).__name__}: {exc}")
            return [], None
        reader = wire.FrameReader(stream)
        try:
            await wire.write_frame(stream, m.encode_want(want))
            for cid in want:
                frame = await reader.read_frame(m.MAX_BLOCK_BYTES + 1, STREAM_TIMEOUT)
                if frame == b"\x00":
                    continue
                if frame[:1] != b"\x01":
                    return received, "bad_block"
                view = frame[1:]  # leaves stay views of the received chunk: no 256 KiB copy
                received.append((cid, view if cid.codec == RAW else bytes(view)))  # type: ignore[arg-type]
                self.metrics.bytes_in += len(view)  # as they arrive (progress), checked later
                self.metrics.blocks_in += 1
        except wire.FrameError as exc:
            if reader.bytes_read == 0:  # not a byte back: a provider at its MAX_SERVING limit resets
                self.metrics.refusals += 1  # new streams (py-libp2p reads that as EOF); the next one serves
                log("blocks_provider_refused", peer=str(peer), want=len(want), error=str(exc))
            else:
                log("blocks_transfer_interrupted", "warning", peer=str(peer), got=len(received),
                    want=len(want), error=str(exc))
        finally:
            try:
                await stream.close()
            except Exception:
                pass
        return received, None

    def _missing_and_children(self, frontier: list[CID], seen: set[CID]) -> tuple[list[CID], list[CID]]:
        missing: list[CID] = []
        children: list[CID] = []
        with self.store.read() as txn:
            for cid in frontier:
                if cid in seen:
                    continue
                seen.add(cid)
                if txn.has_block(cid):
                    children += links(cid, txn.get_block(cid))
                else:
                    missing.append(cid)
        return missing, children

    async def fetch(self, repo_id: bytes, root: CID, providers: Callable[[], list[ID]],
                    budget: Budget | None = None) -> bool:
        """Fetch everything reachable from ``root`` that is missing; True when complete.

        Level by level; a level's missing blocks go out as BATCH-sized requests, PARALLEL of
        them on the wire at once (one stream each) while earlier batches are checked and stored.
        Nothing is stored beyond ``budget`` (then ``budget.refused`` says why).
        """
        start = time.monotonic()
        seen: set[CID] = set()
        frontier = [root]
        budget = budget or Budget()
        while frontier:
            missing, children = self._missing_and_children(frontier, seen)
            failed = await self._fetch_level(repo_id, missing, providers, children, budget)
            if failed:
                self.metrics.fetches_failed += 1
                log("fetch_incomplete", "warning", root=str(root), missing=failed)
                return False
            frontier = children
        self.metrics.fetches_done += 1
        self.metrics.fetch_seconds += time.monotonic() - start
        return True

    async def _fetch_level(self, repo_id: bytes, missing: list[CID], providers: Callable[[], list[ID]],
                           children: list[CID], budget: Budget) -> int:
        """Fetch ``missing`` in BATCH-sized requests; appends the links of what arrived to
        ``children``; returns how many blocks could not be fetched.

        Two limits, both FIFO: PARALLEL transfers on the wire, and IN_MEMORY batches held at once
        (on the wire, waiting for or in check+store). A batch frees its transfer slot as soon as
        it has arrived, so the next transfers go on while it is hashed and stored."""
        failed = 0
        held = trio.CapacityLimiter(IN_MEMORY)
        transfers = trio.CapacityLimiter(PARALLEL)

        async def one(batch: list[CID]) -> None:
            nonlocal failed
            async with held:
                if failed or budget.refused:  # give up early: the job is retried as a whole, or stops
                    failed += len(batch)
                    return
                got = await self._fetch_batch(repo_id, batch, providers(), transfers, budget)
                if len(got) < len(batch):
                    failed += len(batch) - len(got)
                    return
                for cid in batch:
                    children.extend(links(cid, got[cid]))

        async with trio.open_nursery() as nursery:
            for i in range(0, len(missing), BATCH):
                nursery.start_soon(one, missing[i:i + BATCH])
        return failed

    async def _fetch_batch(self, repo_id: bytes, batch: list[CID], peers: list[ID],
                           transfers: trio.CapacityLimiter, budget: Budget) -> dict[CID, bytes]:
        """Each peer in turn for what is still missing; keeps partial progress."""
        got: dict[CID, bytes] = {}
        for peer in peers:
            want = [c for c in batch if c not in got]
            if not want or budget.refused:
                break
            async with transfers:
                received, reason = await self._receive(peer, want)
            good, bad = await self.check_and_store(repo_id, received, budget)
            reason = bad or reason
            if reason is not None:
                self.penalize(peer, reason)
            got.update(good)
        return got


def block_is_commit(block: bytes) -> bool:
    from protocol import dagcbor

    try:
        obj = dagcbor.decode(block)
    except FormatError:
        return False
    return isinstance(obj, dict) and obj.get("type") == COMMIT_TYPE
