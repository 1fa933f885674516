"""Block exchange over ``/fednode/blocks/1.0.0`` (our own protocol, not bitswap).

Request: one frame, DAG-CBOR ``{"want": [CID, ...]}`` (at most MAX_WANT). Response: one frame
per wanted CID, in order: ``0x01 + block`` or ``0x00`` (not here), written in Noise-message-sized
pieces (``wire.FrameWriter``) and read in large chunks (``wire.FrameReader``). The fetcher walks
the DAG level by level; a level's missing blocks are asked of one provider at a time, one request
(one stream) after another. While a request streams in, what has arrived is handed in batches to
a second task that checks every block against the CID it asked for, checks commits (decoding,
signature, repository) and stores the good blocks in one LMDB transaction per batch (in worker
threads for large batches). At most IN_MEMORY batches are held; when the store falls behind, the
receiver stops reading and yamux flow control pauses the provider. On any error or missing
block the fetcher goes on with the next provider, keeping what already arrived.

One stream at a time, not several in parallel: on one connection, parallel streams only
interleave on the same Noise session, and measured here, 64 MiB of leaves took 0.27 s as 8
requests two at a time against 0.22 s as one request (yamux windows also restart at 256 KiB
on every new stream).

Why not py-libp2p's bitswap: it returns whole files as one bytes object, caps blocks at
512 KiB, needs a BlockStore adapter over LMDB and answers Kubo on the wrong stream (field
notes); this protocol is ~150 lines we can bound (sizes, timeouts) and test end to end.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fednode.daemon import wire
from fednode.daemon.access import Reader
from fednode.daemon.fairness import IDLE
from fednode.daemon.metrics import Metrics
from fednode.errors import NotFound
from fednode.history import repos
from fednode.identity import verify_signature
from fednode.logs import log
from fednode.storage.store import PUBLIC, WRITE_HEADROOM, Store, Txn
from protocol import messages as m
from protocol.dag import links  # children to fetch
from protocol.multiformats import CID, DAG_CBOR, DAG_PB, RAW, FormatError
from protocol.objects import COMMIT_TYPE, Commit, Manifest
from protocol.unixfs import CHUNK_SIZE, decode_file_node

PROTOCOL = TProtocol(m.BLOCKS_PROTOCOL)
# What arrives is checked and stored in batches of BATCH blocks or BATCH_BYTES (one LMDB transaction
# each); a fetch holds at most IN_MEMORY batches: one being received, one waiting, one in check+store
BATCH = 32
BATCH_BYTES = 8 << 20


def serve_delay() -> float:
    """Seconds to wait before serving each block ($FEDNODE_BLOCK_SERVE_DELAY, read per use): lets tests
    kill a provider mid-transfer."""
    return float(os.environ.get("FEDNODE_BLOCK_SERVE_DELAY", "0"))
IN_MEMORY = 3
STREAM_TIMEOUT = 15.0
# one request (up to MAX_WANT blocks) must be answered within this, however steadily the peer drips
# its answers (each under STREAM_TIMEOUT: 256 of them were 64 minutes): 256 chunks in 4.8 minutes
REQUEST_BASE_SECONDS, REQUEST_SECONDS_PER_BLOCK = 30.0, 1.0
MAX_REQUEST = 64 * 1024  # bytes of a want list: MAX_WANT CIDs fit many times over
HOLD_SECONDS = 2.0  # most a served request waits, in all, for blocks our own fetches are bringing
SMALL_WRITE = 256 * 1024  # batches below this are checked and stored on the trio thread (no thread hop)
Blocks = list[tuple[CID, bytes]]  # (CID, block) pairs, in the order they were asked for
MAX_FETCH_BYTES = 64 << 30  # [network] max_fetch_bytes: most one fetch job (a commit and all it reaches) stores
# links one fetch job may follow: each CID costs ~0.5 KB while the job runs (64 GiB of 256 KiB chunks: 2^18)
MAX_FETCH_LINKS = 1 << 21
MIN_FREE_BYTES = 1 << 30  # [network] min_free_bytes: a fetch never leaves less free disk than this
# DAG-PB levels below the nearest DAG-CBOR block: a 1 TiB file of 256 KiB chunks, 174 links a node,
# is 3 deep; a chain deeper than this is someone's attempt at making us fetch one block a round trip
MAX_PB_DEPTH = 12
T = TypeVar("T")


@dataclass
class Budget:
    """What one fetch job may still store, across its attempts. ``refused`` says why it stopped:
    ``too_large`` (an announcement must not make us store without bound), ``too_many_blocks`` (nor
    track without bound: a few MiB of link nodes name millions of CIDs) or ``disk_full``."""

    limit: int = MAX_FETCH_BYTES
    used: int = 0
    refused: str | None = None
    links: int = 0  # links of the blocks stored so far: each CID asked for costs memory (MAX_FETCH_LINKS)
    # UnixFS blocks still to come -> the content size declared for each (by a manifest entry or the
    # parent node's blocksizes; -1: declared twice, differently): checked before each is stored
    sizes: dict[CID, int] = field(default_factory=dict)


async def serve(stream: INetStream, store: Store, metrics: Metrics,
                in_flight: Callable[[CID], trio.Event | None] | None = None,
                misbehaved: Callable[[str], object] | None = None,
                checked: Callable[[CID], tuple[bytes, bytes] | None] | None = None,
                reader: Reader | None = None) -> None:
    """Answer one request, with only what the asking peer may read (``access.Reader``: a private
    repository's blocks to its members only; a refused block is answered "not here"). A block we
    do not have yet but are fetching ourselves (``in_flight`` gives the event set as soon as it has
    arrived and passed its checks) is waited for, HOLD_SECONDS at most in all: a node behind us
    then gets it as soon as we do, instead of "not here" and its retry backoff. ``checked`` gives
    blocks that passed their checks but wait in memory for their LMDB transaction
    (``Fetcher.checked_block``, with the repository whose fetch holds each): a relay forwards a
    commit's small blocks level by level, not once its own fetch of the whole closure ends.

    The request must arrive within FIRST_FRAME_TIMEOUT (an idle stream only holds a serving
    slot) and be a valid want list of at most MAX_REQUEST bytes; else the stream is reset and
    ``misbehaved`` told why (``fairness.IDLE``, ``oversize_request``, ``malformed_request``)."""
    delay = serve_delay()
    try:
        try:
            want = m.decode_want(await wire.read_frame(stream, MAX_REQUEST, wire.FIRST_FRAME_TIMEOUT))
        except (wire.FrameTimeout, wire.FrameTooLarge, FormatError, ValueError) as exc:
            why = IDLE if isinstance(exc, wire.FrameTimeout) else \
                "oversize_request" if isinstance(exc, wire.FrameTooLarge) else "malformed_request"
            metrics.refused[why] += 1
            if misbehaved is not None:
                misbehaved(why)
            await _reset_quietly(stream)
            return
        reader = reader or Reader(store, stream.muxed_conn.peer_id)  # one per request: settings read once
        writer = wire.FrameWriter(stream)
        hold_until = trio.current_time() + HOLD_SECONDS  # for the whole request, not per block
        for cid in want:
            block = _get(store, cid, checked, reader)
            arriving = in_flight(cid) if block is None and in_flight is not None else None
            if arriving is not None:
                await writer.flush()  # what is ready goes out first
                with trio.move_on_at(hold_until):
                    await arriving.wait()
                block = _get(store, cid, checked, reader)
            if block is None:
                await writer.write_frame(b"\x00")
                continue
            if delay:
                await writer.flush()
                await trio.sleep(delay)
            await writer.write_frame(block, prefix=b"\x01")
            metrics.bytes_out += len(block)
            metrics.blocks_out += 1
        await writer.flush()
    except (wire.FrameError, FormatError, ValueError) as exc:
        log("blocks_serve_error", "warning", error=str(exc))
    except Exception as exc:  # py-libp2p would swallow it: the fetcher would only see an EOF
        log("blocks_serve_failed", "warning", error=f"{type(exc).__name__}: {exc}")
    finally:
        with trio.move_on_after(1):  # a stream reset above, or a peer not reading, must not hold the slot
            try:
                await stream.close()
            except Exception:
                pass


async def _reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:
            pass


def _get(store: Store, cid: CID, checked: Callable[[CID], tuple[bytes, bytes] | None] | None = None,
         reader: Reader | None = None) -> bytes | None:
    """The block if we hold it and ``reader`` (None: no check) may read it. One look-up (and one copy
    out of LMDB) plus one block index read per block; a short read txn per block, so a slow reader
    never pins LMDB pages for a whole request."""
    held = checked(cid) if checked is not None else None
    if held is not None:
        block, repo_id = held
        return block if reader is None or reader.allows([repo_id]) else None
    if reader is not None:
        with store.read() as txn:
            holders = txn.block_repos(cid)
        if not reader.allows(holders):  # settings read outside the txn; a refused block is never copied
            return None
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
        self._readers = 0  # run_reading threads reading the store now (no map resize meanwhile)
        self._readers_done = trio.Event()  # set when the last of them ends
        self._in_flight: dict[CID, trio.Event] = {}  # blocks our fetches are bringing: set once servable
        # checked blocks held for a later transaction (all fetches), with the repository fetching each
        self._checked: dict[CID, tuple[bytes, bytes]] = {}

    def in_flight(self, cid: CID) -> trio.Event | None:
        """The event set once ``cid`` has arrived and passed its checks (or its fetch ended without
        it), or None (no fetch wants it)."""
        return self._in_flight.get(cid)

    def checked_block(self, cid: CID) -> tuple[bytes, bytes] | None:
        """(block, repository id) of a block that passed every check and waits in memory for its LMDB
        transaction (the repository decides who may be served it)."""
        return self._checked.get(cid)

    def _servable(self, blocks: Blocks) -> None:
        """Wake the requests held for ``blocks`` (stored, or held in ``_checked``)."""
        for cid, _ in blocks:
            event = self._in_flight.get(cid)
            if event is not None:
                event.set()

    def _stored(self, blocks: Blocks) -> None:
        for cid, _ in blocks:
            self._checked.pop(cid, None)

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

    def store_blocks(self, repo_id: bytes, blocks: Blocks, grow: bool = True) -> None:
        """One LMDB transaction for a batch of blocks that ``_check`` has hash-checked, each recorded
        as ``repo_id``'s in the block index as it is stored (served only by that repository's rule)."""
        if not blocks:
            return
        with self.store.write(size_hint=sum(len(b) for _, b in blocks), grow=grow) as txn:
            for cid, block in blocks:
                txn.put_block(cid, block, trusted=True)  # checked against its CID by _check
                txn.tag_block(cid, repo_id)
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

    async def check_and_store(self, repo_id: bytes, received: Blocks, budget: Budget | None = None,
                              held: Blocks | None = None) -> tuple[Blocks, str | None]:
        """Hash-check a received batch, then store its good blocks in one LMDB transaction.

        A large batch is checked and stored in worker threads (hashing and LMDB writes release
        the GIL; page faults of the LMDB map and the fsync at commit no longer stall the trio
        thread, which keeps receiving). One store at a time. Before a worker store the map is
        grown on the trio thread by twice the batch plus a full WRITE_HEADROOM, so neither the
        worker nor a trio-thread writer (size hints far below that) resizes it while the
        worker's txn is open.

        ``held``: a small batch (a commit, a manifest, the inner nodes of a DAG) is checked and
        charged now but kept there, and stored with the next large batch, once BATCH_BYTES are
        held, or by ``flush``: one transaction, one fsync, instead of one per DAG level.
        """
        if not received:
            return [], None
        small = sum(len(b) for _, b in received) < SMALL_WRITE
        if small:
            good, bad = self._check(received, repo_id, budget)
        else:
            good, bad = await trio.to_thread.run_sync(self._check, received, repo_id, budget)
        size = sum(len(b) for _, b in good)
        if budget is not None and good and not self._charge(budget, size):
            return [], bad
        if held is not None:
            held.extend(good)
            if small and sum(len(b) for _, b in held) < BATCH_BYTES:
                self._checked.update((cid, (block, repo_id)) for cid, block in good)
                self._servable(good)
                return good, bad
            good_and_held, held[:] = held[:], []  # a large batch, or enough small ones: store them all
            small = False
        else:
            good_and_held = good
        try:
            async with self._write_lock:
                if small:
                    await self._no_resize_under_readers(sum(len(b) for _, b in good))
                    self.store_blocks(repo_id, good)
                elif good_and_held:
                    extra = 2 * sum(len(b) for _, b in good_and_held) + WRITE_HEADROOM
                    await self._no_resize_under_readers(extra)
                    self.store.reserve(extra)
                    await trio.to_thread.run_sync(self.store_blocks, repo_id, good_and_held, False)
        finally:  # stored, or gone with a failed transaction: no longer served from memory
            self._stored(good_and_held)
        self._servable(good_and_held)
        return good, bad

    async def run_reading(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which only reads the store, e.g. verifying a fetched commit) in a worker
        thread, so the event loop serves streams and ``/status`` meanwhile. LMDB's map must not be
        resized while the thread reads it: the map is grown first, and a store that would need to
        grow it again waits for the readers (``_no_resize_under_readers``); stores within the room
        go on beside the reader (holding the write lock throughout made weights propagation after
        a burst of commits 2x slower)."""
        async with self._write_lock:
            self.store.reserve(2 * WRITE_HEADROOM)
            self._readers += 1
        try:
            return await trio.to_thread.run_sync(fn)
        finally:
            self._readers -= 1
            if not self._readers:
                self._readers_done.set()
                self._readers_done = trio.Event()

    async def _no_resize_under_readers(self, extra: int) -> None:
        """Before a store of ``extra`` bytes (write lock held): wait until no reader thread runs if
        the store would have to grow the map."""
        while self._readers and not self.store.has_room(extra):
            await self._readers_done.wait()

    async def _tag(self, repo_id: bytes, cids: list[CID]) -> None:
        """Record blocks we held already as ``repo_id``'s too (its members may now be served them)."""
        if cids:
            async with self._write_lock:
                await self._no_resize_under_readers(0)
                with self.store.write() as txn:
                    for cid in cids:
                        if txn.has_block(cid):  # gc may have taken it since
                            txn.tag_block(cid, repo_id)

    async def flush(self, repo_id: bytes, held: Blocks) -> None:
        """Store what ``check_and_store`` held back (also while the fetch is being cancelled)."""
        if held:
            with trio.CancelScope(shield=True):
                async with self._write_lock:
                    await self._no_resize_under_readers(sum(len(b) for _, b in held))
                    try:
                        self.store_blocks(repo_id, held)
                    finally:  # stored, or gone with the failed transaction: served from LMDB only
                        self._stored(held)
            held.clear()

    def _check(self, received: Blocks, repo_id: bytes, budget: Budget | None = None) -> tuple[Blocks, str | None]:
        """The blocks before the first bad one, and why that one is bad (None: all good).

        Every block must hash to the CID we asked for; commit blocks must also decode, be signed
        and belong to ``repo_id``; a block of a tensor file must hold the size declared for it
        (``Budget.sizes``: a DAG bomb is refused at its root, before its links are fetched).
        Thread-safe (hashlib releases the GIL)."""
        for i, (cid, block) in enumerate(received):
            if not cid.verify(block):
                return received[:i], "bad_block"
            if budget is not None and cid in budget.sizes and not holds(cid, block, budget.sizes[cid]):
                return received[:i], "bad_dag"
            if cid.codec == DAG_CBOR:
                commit = self._commit_ok(cid, block, repo_id)
                if commit is False:
                    return received[:i], "bad_commit_block"
                if commit is None and not _is_manifest(block):  # the one other DAG-CBOR object we store
                    return received[:i], "bad_manifest_block"
        return received, None

    async def _receive(self, peer: ID, want: list[CID], batches: trio.MemorySendChannel) -> tuple[bool, str | None]:
        """One request to one peer; what arrives goes to ``batches`` (unchecked) in batches of
        BATCH blocks or BATCH_BYTES, so it is checked and stored while the rest streams in.

        Returns (complete, why the peer misbehaved or None): not complete when the peer
        refused, broke off or was cancelled (its partial batch is still handed on)."""
        try:
            with trio.fail_after(STREAM_TIMEOUT):
                stream = await self.host.new_stream(peer, [PROTOCOL])
        except Exception as exc:
            cause = exc.__cause__ or exc.__context__  # py-libp2p wraps the reason in StreamFailure
            log("blocks_dial_failed", "warning", peer=str(peer), error=f"{type(exc).__name__}: {exc}",
                cause=f"{type(cause).__name__}: {cause}" if cause else None)
            return False, None
        reader = wire.FrameReader(stream)
        batch: Blocks = []
        size = 0
        complete, reason = False, None
        allowed = REQUEST_BASE_SECONDS + REQUEST_SECONDS_PER_BLOCK * len(want)
        waited = 0.0  # reading the peer's answers (not our own backpressure)
        try:
            await wire.write_frame(stream, m.encode_want(want))
            for cid in want:
                start, left = trio.current_time(), max(0.0, allowed - waited)
                try:
                    frame = await reader.read_frame(m.MAX_BLOCK_BYTES + 1, min(STREAM_TIMEOUT, left))
                finally:
                    waited += trio.current_time() - start
                if len(frame) == 1 and frame[0] == 0:  # 0x00: not here
                    continue
                if not frame or frame[0] != 1:  # else 0x01 + block
                    reason = "bad_block"
                    break
                view = frame[1:]  # leaves stay views of the received chunk: no 256 KiB copy
                batch.append((cid, view if cid.codec == RAW else bytes(view)))  # type: ignore[arg-type]
                size += len(view)
                self.metrics.bytes_in += len(view)  # as they arrive (progress), checked later
                self.metrics.blocks_in += 1
                if len(batch) >= BATCH or size >= BATCH_BYTES:
                    await batches.send(batch)  # waits while IN_MEMORY batches are held: the peer's
                    batch, size = [], 0  # writes then wait for our yamux window (backpressure)
            else:
                complete = True
        except wire.FrameError as exc:
            if waited >= allowed:  # a peer dripping its answers, each under STREAM_TIMEOUT: the next is asked
                log("blocks_request_slow", "warning", peer=str(peer), want=len(want), seconds=round(waited, 1))
            elif reader.bytes_read == 0:  # not a byte back: a provider at its MAX_SERVING limit resets
                self.metrics.refusals += 1  # new streams (py-libp2p reads that as EOF); the next one serves
                log("blocks_provider_refused", peer=str(peer), want=len(want), error=str(exc))
            else:
                log("blocks_transfer_interrupted", "warning", peer=str(peer), want=len(want), error=str(exc))
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:  # a stream we stop reading early is reset, so the peer stops sending
                    await (stream.close() if complete else stream.reset())
                except Exception:
                    pass
        if batch:
            await batches.send(batch)  # keep partial progress
        return complete and reason is None, reason

    async def fetch_block(self, cid: CID, peer: ID) -> bytes | None:
        """``cid``'s block from ``peer`` alone, hash-checked and not stored; None if it did not serve
        it (a wrong block is also a strike)."""
        send, recv = trio.open_memory_channel[Blocks](1)
        async with send, recv:
            complete, reason = await self._receive(peer, [cid], send)
            try:
                got = recv.receive_nowait() if complete else []
            except trio.WouldBlock:  # the peer answered "not here"
                got = []
        if reason is None and got and not cid.verify(got[0][1]):
            reason = "bad_block"
        if reason is not None:
            self.penalize(peer, reason)
            return None
        return bytes(got[0][1]) if got else None

    async def _fetch_from(self, peer: ID, repo_id: bytes, want: list[CID], budget: Budget,
                          held: Blocks) -> dict[CID, list[CID]]:
        """Ask one peer for ``want`` (requests of up to MAX_WANT, one stream each, in turn) while a
        second task checks and stores what arrived, one batch at a time; returns the links of
        every block stored. Stops at the peer's first bad block, failure or the budget's end."""
        stored: dict[CID, list[CID]] = {}
        send, recv = trio.open_memory_channel[Blocks](IN_MEMORY - 2)

        async def check_and_store_all(cancel: trio.CancelScope) -> None:
            async with recv:
                async for batch in recv:
                    good, bad = await self.check_and_store(repo_id, batch, budget, held)
                    for cid, block in good:
                        stored[cid] = links(cid, block)
                        budget.links += len(stored[cid])
                        expect_sizes(cid, block, budget.sizes)
                    if budget.links > MAX_FETCH_LINKS:
                        budget.refused = "too_many_blocks"
                    if bad or budget.refused:
                        if bad:
                            self.penalize(peer, bad)
                        cancel.cancel()  # stop receiving from this peer
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(check_and_store_all, nursery.cancel_scope)
            async with send:
                for i in range(0, len(want), m.MAX_WANT):
                    complete, reason = await self._receive(peer, want[i:i + m.MAX_WANT], send)
                    if reason is not None:
                        self.penalize(peer, reason)
                    if not complete:
                        break
        return stored

    def _missing_and_children(self, repo_id: bytes, frontier: list[CID], seen: set[CID], depth: dict[CID, int],
                              sizes: dict[CID, int], untagged: list[CID]) -> tuple[list[CID], list[CID]]:
        """The blocks of ``frontier`` to fetch and the next level; present blocks not yet recorded as
        ``repo_id``'s but readable by anyone already (a public repository's, ipfs content) go to
        ``untagged``. A present block readable only by other private repositories' members is
        fetched as if missing: a commit of a repository we follow can name any CID, and tagging what
        we hold on its word would hand another repository's private bytes to its members."""
        missing: list[CID] = []
        children: dict[CID, None] = {}  # an ordered set: a block linked many times is asked for once
        with self.store.read() as txn:
            for cid in frontier:
                if cid in seen:
                    continue
                seen.add(cid)
                # stored blocks only: one held in memory by another fetch may not be stored yet when
                # this fetch ends and its head is verified ("not in the store": the announcer penalized)
                holders = txn.block_repos(cid) if txn.has_block(cid) else None
                if holders is not None and (repo_id in holders or _open_to_all(txn, holders)):
                    block = txn.get_block(cid)
                    if repo_id not in holders:
                        untagged.append(cid)
                    _add_children(children, cid, links(cid, block), depth)
                    expect_sizes(cid, block, sizes)
                else:
                    # absent, or held only for other private repositories (or for none): fetched
                    # again from this repository's providers, so naming a CID never makes us serve
                    # its bytes to a repository whose members did not already hold them
                    missing.append(cid)
        return missing, list(children)

    async def fetch(self, repo_id: bytes, root: CID, providers: Callable[[], list[ID]],
                    budget: Budget | None = None) -> bool:
        """Fetch everything reachable from ``root`` that is missing; True when complete.

        Level by level (a block's children are known only once it is checked); see the module
        docstring for how a level is fetched. Each block is asked for once however often it is
        linked, and UnixFS trees deeper than MAX_PB_DEPTH are refused. Nothing is stored beyond
        ``budget`` (then ``budget.refused`` says why).
        """
        start = time.monotonic()
        seen: set[CID] = set()
        depth: dict[CID, int] = {}  # DAG-PB levels below the nearest DAG-CBOR block
        frontier = [root]
        budget = budget or Budget()
        held: Blocks = []  # small checked blocks waiting for a transaction
        mine: list[CID] = []  # the in-flight entries this fetch made (another fetch may own one)
        try:
            while frontier:
                try:
                    untagged: list[CID] = []
                    missing, children = self._missing_and_children(repo_id, frontier, seen, depth, budget.sizes,
                                                                   untagged)
                    await self._tag(repo_id, untagged)
                    for cid in missing:
                        if cid not in self._in_flight:
                            self._in_flight[cid] = trio.Event()
                            mine.append(cid)
                    failed = await self._fetch_level(repo_id, missing, providers, children, budget, held, depth)
                except TooDeep as exc:
                    budget.refused = "too_deep"
                    log("fetch_refused_deep", "warning", root=str(root), error=str(exc))
                    return False
                if failed or budget.refused:
                    self.metrics.fetches_failed += 1
                    log("fetch_incomplete", "warning", root=str(root), missing=failed, refused=budget.refused)
                    return False
                frontier = children
        finally:
            await self.flush(repo_id, held)  # what arrived is kept, even from a failed fetch
            for cid in mine:  # stored now, or not coming: requests held for them go on
                self._in_flight.pop(cid).set()
        self.metrics.fetches_done += 1
        self.metrics.fetch_seconds += time.monotonic() - start
        return True

    async def _fetch_level(self, repo_id: bytes, missing: list[CID], providers: Callable[[], list[ID]],
                           children: list[CID], budget: Budget, held: Blocks, depth: dict[CID, int]) -> int:
        """Fetch ``missing`` from each provider in turn (what one could not serve goes to the next);
        appends the links of what arrived to ``children``, in order; returns how many blocks
        could not be fetched."""
        stored: dict[CID, list[CID]] = {}
        remaining = missing
        for peer in providers():
            if not remaining or budget.refused:
                break
            stored.update(await self._fetch_from(peer, repo_id, remaining, budget, held))
            remaining = [c for c in remaining if c not in stored]
        more: dict[CID, None] = dict.fromkeys(children)
        for cid in missing:
            _add_children(more, cid, stored.get(cid, []), depth)
        children[:] = list(more)
        return len(remaining)


def is_genesis_of(repo_id: bytes, block: bytes) -> bool:
    """Whether ``block`` is ``repo_id``'s genesis: an init commit, no parents, its hash the id, signed."""
    try:
        commit = Commit.decode(block)
    except FormatError:
        return False
    return (commit.kind == "init" and not commit.parents and commit.commit_hash() == repo_id
            and verify_signature(commit.author, commit.commit_hash(), commit.sig))


def holds(cid: CID, block: bytes, declared: int) -> bool:
    """Whether a block of a tensor file holds the ``declared`` content bytes, laid out as we build
    files (every link of a node but the last a full chunk or more: no runs of tiny sub-DAGs)."""
    if cid.codec == RAW:
        return len(block) == declared
    if cid.codec != DAG_PB or declared < 0:
        return False
    try:
        node = decode_file_node(block)
    except FormatError:
        return False
    return node.filesize == declared and all(s >= CHUNK_SIZE for s in node.blocksizes[:-1])


def expect_sizes(cid: CID, block: bytes, sizes: dict[CID, int]) -> None:
    """Record what ``block`` declares of the blocks it links to: a manifest, each tensor file's
    size; a UnixFS node (one we expect, already checked by ``holds``), each child's."""
    if cid.codec == DAG_CBOR:
        try:
            manifest = Manifest.decode(block)
        except FormatError:
            return  # a commit
        declared = [(e.cid, e.size) for e in manifest.tensors.values() if e.cid is not None]
    elif cid.codec == DAG_PB and cid in sizes:
        node = decode_file_node(block)
        declared = list(zip(node.links, node.blocksizes, strict=True))
    else:
        return
    for kid, size in declared:
        sizes[kid] = size if sizes.get(kid, size) == size else -1


class TooDeep(Exception):
    """A UnixFS tree deeper than MAX_PB_DEPTH: no file we store is, a chain of 1-link nodes is."""


def _add_children(children: dict[CID, None], parent: CID, kids: list[CID], depth: dict[CID, int]) -> None:
    """Add ``parent``'s links to the ordered set ``children``, recording how deep in a UnixFS tree
    each is (0 below a DAG-CBOR block)."""
    level = depth.get(parent, 0) + 1 if parent.codec == DAG_PB else 0
    if level > MAX_PB_DEPTH:
        raise TooDeep(f"block {parent} is {level - 1} DAG-PB levels deep")
    for kid in kids:
        children[kid] = None
        if kid.codec == DAG_PB:
            depth[kid] = min(depth.get(kid, level), level)


def _is_manifest(block: bytes) -> bool:
    """Whether a DAG-CBOR block is a valid weights manifest. An honest node stores nothing else
    that is neither a commit nor a manifest, so a provider serving one is to blame."""
    try:
        Manifest.decode(block)
    except FormatError:
        return False
    return True


def block_is_commit(block: bytes) -> bool:
    from protocol import dagcbor

    try:
        obj = dagcbor.decode(block)
    except FormatError:
        return False
    return isinstance(obj, dict) and obj.get("type") == COMMIT_TYPE


def _open_to_all(txn: Txn, holders: list[bytes]) -> bool:
    """Whether a block held for ``holders`` may already be served to anyone."""
    return any(h == PUBLIC or repos.visibility(txn, h) == "public" for h in holders)
