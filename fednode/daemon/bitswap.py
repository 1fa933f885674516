"""IPFS bitswap on the daemon's libp2p host, over the node's LMDB block store.

``start_bitswap(host, store, nursery)`` runs py-libp2p 0.8.1's bitswap on an existing host so
that any IPFS node (Kubo included) can fetch our blocks, and ``want_blocks`` pulls blocks from IPFS
peers into the store (``ipfsget.get_file``: a whole UnixFS file, bounded and checked). Our own
``/fednode/blocks/1.0.0`` protocol (``exchange.py``) stays the way fednode nodes talk to each
other; bitswap is the door to IPFS.
A block the store does not hold may come from ``extra_blocks`` (the daemon passes
``stateblocks.StateBlocks.get``: the UnixFS DAGs of delta-stored tensor states, generated on demand).
Only what the asking peer may read is served (``access.Reader``): a private repository's blocks and
states are refused to every bitswap peer that is not a member (Kubo and Helia peers never are), and
answered as blocks we do not have (DONT_HAVE); public repositories and ipfs content as before.

Safety: a block reaches LMDB only through ``Txn.put_block`` (hash-checked against its CID),
and only when a running fetch (``want_blocks``) asked for it: a peer cannot fill the store with
blocks nobody wanted. Blocks are read back and hash-checked again when the file is assembled.
A peer that sends a block no fetch wanted (wrong bytes for a wanted CID, or unrequested) or one we
cannot read gets a strike through ``penalize`` (the daemon's ``Bans.penalize``: counted, banned
past the threshold): ``FednodeBitswap._process_blocks_v110/_v100``. What a peer's wantlists make us
hold or do is bounded: at most MAX_QUEUED queued entries (bitswapsend.py) and MAX_REMEMBERED wants
of blocks we lack per peer, CIDs of at most MAX_CID_BYTES (a longer one: ignored, a strike), and
ITEM_RATE wantlist entries, blocks and presences a second after a burst (a faster peer's next
message is handled later; one that left meanwhile, not at all). The first block of a message that
nobody asked for ends the message with one strike.

The fix for serving Kubo (``FednodeBitswap._process_wantlist``)
--------------------------------------------------------------
As shipped, py-libp2p answers a wantlist on the stream the wantlist came in on, and answers
WANT_HAVE with the whole block. Kubo never reads the streams it opened to send wantlists: it
expects the answers on a stream opened by the side that has the blocks, and HAVE/DONT_HAVE for
WANT_HAVE. So Kubo's download hung. The override queues every entry, highest priority first, for
the peer's sender (``bitswapsend.PeerSender``: one outbound stream per peer, like Kubo's own
message queue, several blocks a message, sent as they are read): WANT_BLOCK -> the block,
WANT_HAVE -> HAVE (the block itself if at most 1 KiB, as Kubo answers), missing with
``sendDontHave`` -> DONT_HAVE. Second part, also needed (measured:
without it Kubo still hangs): py-libp2p starts a reader on every queue stream that closes the
stream at once when we expect no blocks from that peer, i.e. always when we only serve;
``_on_message_queue_stream_opened`` is replaced by a reader that never closes the stream. Third:
CIDv0 blocks get their real prefix (``_prefix``).

Fetching (``want_blocks``) does not use py-libp2p's ``BitswapSession``: asked without a peer, it
sends WANT_HAVEs and then waits a full second before any WANT_BLOCK, per batch. Ours keeps a
sliding window of WANT_BLOCKs (through py-libp2p's per-peer message queue) to the peer that sent
the level above, holds what arrives in memory (hash-checked) and stores it 8 MiB or one step a
transaction.

py-libp2p internals this depends on (re-check on upgrade; tests/daemon/test_bitswap_kubo.py is the
regression test against a real Kubo): ``BitswapClient._process_wantlist(wantlist, peer_id,
stream)`` being the hook for incoming wantlists, ``_peer_wantlists``, ``_nursery``,
``supported_protocols``, ``cleanup_peer``, ``get_or_create_message_queue`` and the queue's
``add_wants/add_cancels``, ``_on_message_queue_stream_opened(stream, peer_id)``, ``_read_message``
(replaced: a buffered reader per stream), ``_process_message``, ``_process_blocks_v110`` (stores
through ``block_store.put_block``), and a yamux stream's ``send_window`` (read by
``bitswapsend.write_paced``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetStream
from libp2p.bitswap.block_store import BlockStore
from libp2p.bitswap.cid import CIDInput, CIDObject, parse_cid, reconstruct_cid_from_prefix_and_data
from libp2p.bitswap.client import BitswapClient
from libp2p.bitswap.config import MAX_MESSAGE_SIZE
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.peer.id import ID

from fednode.daemon.access import Reader
from fednode.daemon.bitswapsend import SMALL_BLOCK, PeerSender, SendStats, Want
from fednode.daemon.ratelimit import TokenBuckets
from fednode.daemon.wire import FrameError, FrameReader
from fednode.errors import Corrupt, NotFound
from fednode.logs import log
from fednode.storage.store import PUBLIC, Store
from protocol.multiformats import CID, DAG_CBOR, DAG_PB, RAW, SHA2_256, FormatError, encode_varint
from protocol.unixfs import decode_file_node, decode_node

logger = logging.getLogger("fednode.bitswap")

WANT_HAVE = 1  # Message.Wantlist.WantType.Have
# (CID, whether the asker may read a block the given repositories hold) -> a generated block or None
ExtraBlocks = Callable[[CID, Callable[[list[bytes]], bool], str], Awaitable[bytes | None]]
FETCH_WINDOW = 64  # blocks wanted at once from a peer: 16 MiB of 256 KiB chunks
HOLD_BYTES = 8 << 20  # fetched blocks held for one write transaction
STALL_SECONDS = 5.0  # a provider that sends nothing this long: every connected peer is asked too
FIND_AFTER = 1.0  # without a block this long, the DHT's providers are looked up (boxo's provSearchDelay)
RECENT_WANTS = 65536  # CIDs remembered after their fetch ended: a late honest answer is no lie
# A peer's wants of blocks we lack are remembered (a block added later is announced to it), at most
# this many per peer, the oldest forgotten first: boxo's engine keeps 1024 entries per peer too.
MAX_REMEMBERED = 1024
# Wantlist CIDs longer than this are ignored, with one strike per message: boxo's server refuses
# them the same way, and no hash a CID of ours or Kubo's uses comes near (sha2-512: 68 bytes).
MAX_CID_BYTES = 168
NODE_SLACK = 64 * 1024  # bytes a UnixFS node may hold beyond its content and 64 a link (``fits``)
# Items (wantlist entries, blocks, presences) of a peer's messages handled per second, after a
# burst: each costs 15-50 us of our only thread (parse, hash, lookup), so a flood of 4 MiB messages
# (100,000 entries, or 2 million empty blocks: ~1 s and ~100 s of CPU each) is slowed to a fraction
# of a core per peer by handling its next message later. Kubo fetching from us at full speed sends
# ~600 entries a second, Helia asks 174 at once; 256 KiB blocks at 100 MB/s are 400 a second.
ITEM_RATE = 8192.0
ITEM_BURST = 16384.0


def to_ours(cid: CIDInput) -> CID:
    """py-libp2p's CID (py-cid object, bytes or text) -> fednode's CID (FormatError if unsupported)."""
    return CID.from_bytes(bytes(parse_cid(cid).buffer))


def to_theirs(cid: CID) -> CIDObject:
    return parse_cid(bytes(cid))


def _prefix(cid: CIDObject) -> bytes:
    """Bitswap 1.1+ block prefix: version, codec, hash code, digest length.

    py-libp2p's ``get_cid_prefix`` returns b"" for CIDv0, which Kubo cannot use: a CIDv0 has
    the prefix (0, dag-pb, sha2-256, 32) like any other.
    """
    ours = to_ours(cid)
    return encode_varint(ours.version) + encode_varint(ours.codec) + bytes([SHA2_256, 32])


class LMDBBlockStore(BlockStore):
    """py-libp2p ``BlockStore`` over fednode's LMDB ``Store``.

    Reads return any block in the store (the server, ``FednodeBitswap._served_block``, applies read
    access before serving one). Writes are hash-verified (``Txn.put_block``), tagged ``PUBLIC``, and
    accepted only for CIDs registered with ``expect`` (what a running fetch asked for);
    other blocks are dropped. LMDB calls are short and synchronous, as in the daemon.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._expected: dict[CID, int] = {}  # CID -> number of fetches waiting for it
        self._recent: dict[CID, None] = {}  # every CID wanted lately (insertion order: oldest first)
        self._arrived: dict[CID, trio.Event] = {}  # set when an expected block is here (held or stored)
        self.sender: dict[CID, ID] = {}  # who delivered each expected block that arrived
        # hash-checked blocks waiting for one write transaction (``flush``): one commit (an fsync)
        # per HOLD_BYTES or per fetch step instead of one per block; readable here meanwhile
        self._held: dict[CID, bytes] = {}
        self._held_bytes = 0
        self.holding = 0  # ``want_blocks`` running: blocks are held (else each is stored at once)
        self.dropped = 0  # unsolicited or undecodable blocks refused
        # content bytes a parent declared for an expected block (``want_blocks(sizes=)``): one that
        # holds other than that is refused on arrival, before it is stored (``fits``)
        self.sizes: dict[CID, int] = {}
        self.misfits: dict[CID, str] = {}  # expected blocks that arrived not fitting: why

    def expect(self, cids: list[CID]) -> None:
        for cid in cids:
            self._expected[cid] = self._expected.get(cid, 0) + 1
            self._arrived.setdefault(cid, trio.Event())
            self._recent.pop(cid, None)
            self._recent[cid] = None
        while len(self._recent) > RECENT_WANTS:
            del self._recent[next(iter(self._recent))]

    def arrival(self, cid: CID) -> trio.Event:
        """Set once the expected ``cid`` has arrived (call between ``expect`` and ``unexpect``)."""
        return self._arrived[cid]

    def holds(self, cid: CID) -> bool:
        """Held in memory or stored."""
        if cid in self._held:
            return True
        with self.store.read() as txn:
            return txn.has_block(cid)

    def flush(self) -> None:
        """Store the held blocks, one write transaction."""
        if not self._held:
            return
        held, self._held, self._held_bytes = self._held, {}, 0
        with self.store.write(size_hint=sum(len(b) for b in held.values())) as txn:
            for cid, block in held.items():
                txn.put_block(cid, block, trusted=True)  # hash-checked by put_block below
                txn.tag_block(cid, PUBLIC)  # ipfs get: content from IPFS, of no repository

    def wanted(self, cid: CID) -> bool:
        """A running fetch waits for ``cid``."""
        return cid in self._expected

    def wanted_lately(self, cid: CID) -> bool:
        """``cid`` was asked for lately (a block for it arriving after its fetch ended is no lie)."""
        return cid in self._recent

    def match(self, data: bytes) -> CID | None:
        """The wanted CID whose hash ``data`` has (bitswap 1.0 blocks carry no CID), or None."""
        digest = hashlib.sha256(data).digest()
        candidates = [CID(1, RAW, digest), CID(1, DAG_PB, digest), CID(0, DAG_PB, digest), CID(1, DAG_CBOR, digest)]
        found = next((c for c in candidates if c in self._expected), None)  # dict lookups, not a scan
        return found or next((c for c in candidates if c in self._recent), None)

    def unexpect(self, cids: list[CID]) -> None:
        for cid in cids:
            left = self._expected.get(cid, 0) - 1
            if left > 0:
                self._expected[cid] = left
            else:
                self._expected.pop(cid, None)
                self._arrived.pop(cid, None)
                self.sender.pop(cid, None)
                self.sizes.pop(cid, None)
                self.misfits.pop(cid, None)

    def fits(self, cid: CID, data: bytes) -> bool:
        """Whether an expected block holds the content size its parent declared (True if none did):
        a raw leaf exactly that many bytes, a UnixFS node declaring that ``filesize`` and no larger
        than its links need. A block that does not is not stored, and its fetch fails (``misfits``):
        no strike, since the bytes match the CID and the provider may serve someone else's file."""
        declared = self.sizes.get(cid)
        if declared is None:
            return True
        if cid.codec == RAW:
            ok, holds = len(data) == declared, f"{len(data)} bytes"
        else:
            try:
                node = decode_file_node(data)
                ok = node.filesize == declared and len(data) <= declared + NODE_SLACK + 64 * len(node.links)
                holds = f"a node of {len(data)} bytes declaring {node.filesize}"
            except FormatError as exc:
                ok, holds = False, f"no UnixFS node ({exc})"
        if not ok:  # its waiters wake and fail (``want_blocks``): no other bytes have this hash
            self.misfits[cid] = f"block {cid} holds {holds}, where its parent declares {declared}"
            self._arrived[cid].set()
        return ok

    async def get_block(self, cid: CIDInput) -> bytes | None:
        try:
            ours = to_ours(cid)
        except (FormatError, ValueError):
            return None
        if ours in self._held:
            return self._held[ours]
        with self.store.read() as txn:
            return txn.get_block(ours) if txn.has_block(ours) else None

    async def has_block(self, cid: CIDInput) -> bool:
        try:
            ours = to_ours(cid)
        except (FormatError, ValueError):
            return False
        return self.holds(ours)

    async def put_block(self, cid: CIDInput, data: bytes) -> None:
        try:
            ours = to_ours(cid)
        except (FormatError, ValueError):
            self.dropped += 1
            logger.warning("bitswap: dropped a block with an unsupported CID")
            return
        if ours not in self._expected:
            self.dropped += 1
            logger.warning("bitswap: dropped unsolicited block %s", ours)
            return
        if not ours.verify(data):  # a bad block is never held nor stored
            raise Corrupt(f"bitswap block {ours} does not match its hash")
        if ours not in self._held:
            self._held[ours] = bytes(data)
            self._held_bytes += len(data)
        event = self._arrived.get(ours)
        if event is not None:
            event.set()
        if self._held_bytes >= HOLD_BYTES or not self.holding:
            self.flush()

    async def delete_block(self, cid: CIDInput) -> None:
        dropped = self._held.pop(to_ours(cid), None)
        self._held_bytes -= len(dropped or b"")
        with self.store.write() as txn:
            txn.delete_block(to_ours(cid))

    def get_all_cids(self) -> list[bytes]:
        with self.store.read() as txn:
            stored = [bytes(cid) for cid in txn.iter_block_cids()]
        return list(dict.fromkeys([*stored, *(bytes(cid) for cid in self._held)]))


class FednodeBitswap(BitswapClient):
    """py-libp2p's ``BitswapClient`` answering wantlists the way Kubo expects (module docstring).

    ``extra_blocks``: where a wanted block the store lacks is looked for next (served only, never
    stored); None: the store alone.
    """

    extra_blocks: ExtraBlocks | None = None
    penalize: Callable[[ID, str], None] | None = None  # the daemon's Bans.penalize; None: log only

    def __init__(self, host: IHost, block_store: BlockStore) -> None:
        super().__init__(host, block_store)
        self._senders: dict[ID, PeerSender] = {}  # who is waiting for blocks, and their sender tasks
        self.send_stats = SendStats()
        self._readers: weakref.WeakKeyDictionary[INetStream, FrameReader] = weakref.WeakKeyDictionary()
        self._pace = TokenBuckets(ITEM_RATE, ITEM_BURST)  # kept across reconnects

    async def _read_message(self, stream: INetStream) -> Message | None:
        """The stream's next message; None at its end or on any error (as py-libp2p's own).

        py-libp2p's reads the length prefix a byte at a time, each byte a muxer read that also sends
        a yamux window update back (a Noise message for both sides to handle), and joins a body's
        pieces by repeated concatenation. A buffered ``FrameReader`` per stream reads what the muxer
        holds at once: serving Kubo 64 MiB (115 incoming messages) now sends 200 window updates."""
        reader = self._readers.get(stream)
        if reader is None:
            reader = self._readers[stream] = FrameReader(stream)
        try:
            body = await reader.read_frame(MAX_MESSAGE_SIZE, timeout=math.inf)  # idle bounds are the callers'
            msg = Message()
            msg.ParseFromString(cast(bytes, body))  # protobuf parses any buffer; its stubs say bytes
            return msg
        except (FrameError, DecodeError) as exc:
            logger.debug("bitswap: a stream from %s ended: %s", stream.muxed_conn.peer_id, exc)
            self._readers.pop(stream, None)
            return None

    async def _process_message(self, msg: Message, peer_id: ID, stream: INetStream) -> None:
        """py-libp2p's, paced: a peer's messages are handled at most ITEM_RATE wantlist entries,
        blocks and presences a second after a burst (a faster peer's next message waits), and
        nothing is done for a peer that left during the wait (its state was cleaned up already)."""
        items = len(msg.wantlist.entries) + len(msg.blocks) + len(msg.payload) + len(msg.blockPresences)
        wait = self._pace.pace(str(peer_id), items)
        if wait:
            await trio.sleep(wait)
            if peer_id not in self.host.get_network().connections:
                return
        await super()._process_message(msg, peer_id, stream)

    def _lied(self, peer: ID, reason: str, what: str) -> None:
        logger.warning("bitswap: peer %s %s (%s)", peer, what, reason)
        if self.penalize is not None:
            self.penalize(peer, reason)

    async def _process_blocks_v110(self, blocks: Sequence[Message.Block], peer_id: ID) -> None:
        """Bitswap 1.1+: the CID is rebuilt from the block's prefix and bytes, so a block whose bytes
        do not match the CID we asked for shows as a block nobody wanted: penalized, never stored.
        The first such block ends the message (one strike; the rest is not looked at)."""
        assert isinstance(self.block_store, LMDBBlockStore)
        good: list[Message.Block] = []
        for block in blocks:
            try:
                cid = to_ours(reconstruct_cid_from_prefix_and_data(block.prefix, block.data))
            except Exception:  # a prefix we cannot read, or a hash or codec we do not use
                self._lied(peer_id, "bitswap_malformed", "sent a block with an unreadable prefix")
                break
            if self.block_store.wanted(cid):
                if not self.block_store.fits(cid, block.data):  # the file is inconsistent: no block can
                    continue  # fit, and a provider of someone else's file is not to blame (``fits``)
                good.append(block)
                self.block_store.sender.setdefault(cid, peer_id)
            elif not self.block_store.wanted_lately(cid):
                self._lied(peer_id, "bitswap_bad_block", f"sent block {cid}, which no fetch asked for "
                           "(wrong bytes for a wanted CID, or unrequested)")
                break
        if good:
            await super()._process_blocks_v110(good, peer_id)

    async def _process_blocks_v100(self, blocks: list[bytes], peer_id: ID) -> None:
        """Bitswap 1.0: blocks carry no CID; one whose hash is no CID we wanted lately is a lie, and
        ends the message. A matched block goes the 1.1 way with its CID's prefix (py-libp2p's 1.0
        path would drop it unless its presence tracker expected this very peer to send it)."""
        assert isinstance(self.block_store, LMDBBlockStore)
        good: list[Message.Block] = []
        for data in blocks:
            cid = self.block_store.match(data)
            if cid is None:
                self._lied(peer_id, "bitswap_bad_block", "sent a block (1.0) whose hash no fetch asked for")
                break
            if self.block_store.wanted(cid):
                if not self.block_store.fits(cid, data):
                    continue
                good.append(Message.Block(prefix=_prefix(to_theirs(cid)), data=data))
                self.block_store.sender.setdefault(cid, peer_id)
        if good:
            await super()._process_blocks_v110(good, peer_id)

    async def _served_block(self, cid: CIDObject, reader: Reader, have_only: bool = False) -> bytes | None:
        """The block if we hold it (or can generate it) and ``reader``'s peer may read it; else None.
        ``have_only``: b"" stands for a stored block over SMALL_BLOCK bytes (not copied out of the
        store); a smaller one is returned whole, to be sent instead of a HAVE."""
        try:
            ours = to_ours(cid)
        except (FormatError, ValueError):
            return None
        with reader.store.read(buffers=True) as txn:  # block_size copies nothing out
            try:
                if have_only and txn.block_size(ours) > SMALL_BLOCK:
                    block: bytes | None = b""  # held; a HAVE answers, nothing copied out
                else:
                    block = txn.get_block(ours)
            except NotFound:
                block = None
            holders = txn.block_repos(ours) if block is not None else []
        if block is not None:
            return block if reader.allows(holders) else None
        if self.extra_blocks is not None:
            return await self.extra_blocks(ours, reader.allows, reader.asker)
        return None

    def _sender(self, peer_id: ID) -> PeerSender:
        """The peer's sender (bitswapsend.py), started in the client's nursery on first use."""
        sender = self._senders.get(peer_id)
        if sender is None:
            assert isinstance(self.block_store, LMDBBlockStore) and self._nursery is not None
            store = self.block_store.store

            def lookups() -> Callable[[CIDObject, bool], Awaitable[bytes | None]]:
                reader = Reader(store, peer_id)  # one per message: repository settings read once
                return lambda cid, have_only: self._served_block(cid, reader, have_only)

            def missing(want: Want) -> None:  # remembered: a block added later is announced
                remembered = self._peer_wantlists.setdefault(peer_id, {})
                remembered.pop(want.cid, None)  # the newest last: the oldest go first
                remembered[want.cid] = {"priority": 1, "want_type": WANT_HAVE if want.have_only else 0,
                                        "send_dont_have": want.send_dont_have}
                while len(remembered) > MAX_REMEMBERED:
                    del remembered[next(iter(remembered))]

            sender = PeerSender(self.host, peer_id, list(self.supported_protocols), lookups, self.send_stats,
                                self._on_message_queue_stream_opened, missing)
            self._senders[peer_id] = sender
            self._nursery.start_soon(sender.run)
        return sender

    async def _process_wantlist(self, wantlist: Message.Wantlist, peer_id: ID, stream: INetStream) -> None:
        """Queue the entries for the peer's sender, which answers on its own stream (module
        docstring): WANT_BLOCK -> the block, WANT_HAVE -> HAVE (a block of at most SMALL_BLOCK bytes
        whole), missing with sendDontHave -> DONT_HAVE."""
        peer_wants = self._peer_wantlists.setdefault(peer_id, {})
        sender = self._sender(peer_id)
        if wantlist.full:
            peer_wants.clear()
            sender.clear()
        # highest priority first: Kubo lists a message's entries in map order, and its DAG reader needs
        # the block it gave the highest priority (the next child in the file) before the others
        oversized = 0
        for entry in sorted(wantlist.entries, key=lambda e: -e.priority):
            if len(entry.block) > MAX_CID_BYTES:
                oversized += 1
                continue
            try:
                cid = parse_cid(entry.block)
            except Exception:
                continue
            key = bytes(entry.block)
            if entry.cancel:
                peer_wants.pop(cid, None)
                sender.cancel(key)
                continue
            try:
                prefix = _prefix(cid)
            except (FormatError, ValueError):
                prefix = b""  # not a CID we serve: answered as missing
            sender.want(Want(cid, key, prefix, entry.wantType == WANT_HAVE, entry.sendDontHave))
        if oversized:
            self._lied(peer_id, "bitswap_malformed", f"wanted {oversized} CIDs over {MAX_CID_BYTES} bytes")

    def cleanup_peer(self, peer_id: ID) -> None:
        super().cleanup_peer(peer_id)
        sender = self._senders.pop(peer_id, None)
        if sender is not None:
            sender.cancel_scope.cancel()

    async def stop(self) -> None:
        for sender in self._senders.values():
            sender.cancel_scope.cancel()
        self._senders.clear()
        await super().stop()

    def _on_message_queue_stream_opened(self, stream: INetStream, peer_id: ID) -> None:
        # Shipped: a reader that closes our outbound stream as soon as we expect no blocks from
        # the peer, racing the queue's first write. Here: read (answers from peers that reply
        # inline) until the peer closes; never close the queue's stream under it.
        if self._nursery is not None:
            self._nursery.start_soon(self._drain, stream, peer_id)

    async def _drain(self, stream: INetStream, peer_id: ID) -> None:
        try:
            while (msg := await self._read_message(stream)) is not None:
                await self._process_message(msg, peer_id, stream)
        except Exception as exc:  # a hostile or broken peer ends only its own reader
            logger.debug("bitswap reader for %s ended: %s", peer_id, exc)


@dataclass
class BitswapHandle:
    client: FednodeBitswap
    blocks: LMDBBlockStore

    @property
    def store(self) -> Store:
        return self.blocks.store

    async def stop(self) -> None:
        await self.client.stop()


async def start_bitswap(host: IHost, store: Store, nursery: trio.Nursery,
                        extra_blocks: ExtraBlocks | None = None,
                        penalize: Callable[[ID, str], None] | None = None) -> BitswapHandle:
    """Serve the store's blocks (and ``extra_blocks``'s) over /ipfs/bitswap/1.2.0, 1.1.0, 1.0.0 on ``host``.

    ``nursery`` runs the per-peer message queues and stream readers: it must live as long as
    the host runs. ``await handle.stop()`` removes the protocol handlers. ``penalize(peer, reason)``
    is called for each block a peer sends that no fetch wanted (wrong bytes for a CID, unrequested)
    or that cannot be read: the daemon passes ``Bans.penalize``.
    """
    blocks = LMDBBlockStore(store)
    client = FednodeBitswap(host, blocks)
    client.extra_blocks = extra_blocks
    client.penalize = penalize
    client.set_nursery(nursery)
    await client.start()
    return BitswapHandle(client, blocks)


def _children(cid: CID, block: bytes) -> list[CID]:
    if cid.codec == RAW:
        return []
    if cid.codec == DAG_PB:
        return decode_node(block)[0]
    raise FormatError(f"block {cid} is not part of a UnixFS file")


def _ask(handle: BitswapHandle, peers: list[ID], cids: list[CID]) -> None:
    """WANT_BLOCK (with DONT_HAVE asked for) for ``cids``, to each of ``peers``."""
    if not cids:
        return
    theirs = [to_theirs(c) for c in cids]
    infos = {c: {"want_type": 0, "send_dont_have": True} for c in theirs}
    for peer in peers:
        handle.client.get_or_create_message_queue(peer).add_wants(theirs, want_infos=infos)


def _connected(handle: BitswapHandle) -> list[ID]:
    return list(handle.client.host.get_network().connections.keys())


@dataclass
class _Wants:
    """One ``want_blocks`` call: who was asked, what is still outstanding."""

    handle: BitswapHandle
    asked: list[ID]
    outstanding: list[CID] = field(default_factory=list)
    arrived: int = 0  # times blocks were seen to arrive

    async def pump(self, cids: list[CID]) -> None:
        blocks = self.handle.blocks
        todo = iter(cids)
        more = True
        while more or self.outstanding:
            new: list[CID] = []
            while more and len(self.outstanding) < FETCH_WINDOW:
                cid = next(todo, None)
                more = cid is not None
                if cid is not None and not blocks.holds(cid):
                    self.outstanding.append(cid)
                    new.append(cid)
            _ask(self.handle, self.asked, new)
            if not self.outstanding:
                break
            with trio.move_on_after(STALL_SECONDS) as wait:
                await blocks.arrival(self.outstanding[0]).wait()
            if wait.cancelled_caught:  # the provider stalls or lacks it: ask everyone we are connected to
                self._ask_too([p for p in _connected(self.handle) if p not in self.asked])
            for cid in self.outstanding:
                if cid in blocks.misfits:
                    raise FormatError(blocks.misfits[cid])
            left = [c for c in self.outstanding if not blocks.arrival(c).is_set()]
            self.arrived += len(left) < len(self.outstanding)
            self.outstanding[:] = left

    def _ask_too(self, peers: list[ID]) -> None:
        self.asked += peers
        _ask(self.handle, peers, [c for c in self.outstanding if not self.handle.blocks.arrival(c).is_set()])

    async def find_later(self, find: Callable[[], Awaitable[list[ID]]]) -> None:
        """Once FIND_AFTER passes with no block arriving (not during a slow transfer), ask the DHT's
        providers too."""
        seen = -1
        while seen != self.arrived:
            seen = self.arrived
            await trio.sleep(FIND_AFTER)
        if self.outstanding:
            try:
                found = [p for p in await find() if p not in self.asked]
            except Exception as exc:  # the DHT failing must not fail a fetch that connected peers may finish
                log("dht_lookup_failed", "warning", error=f"{type(exc).__name__}: {exc}")
                return
            log("dht_providers_asked", providers=[str(p) for p in found])
            self._ask_too(found)

    def cancel_rest(self) -> None:
        """Nobody should keep sending what we no longer wait for."""
        if self.outstanding:
            theirs = [to_theirs(c) for c in self.outstanding]
            for peer in self.asked:
                self.handle.client.get_or_create_message_queue(peer).add_cancels(theirs)


async def want_blocks(handle: BitswapHandle, cids: list[CID], peers: list[ID] | None,
                      sizes: dict[CID, int] | None = None,
                      find: Callable[[], Awaitable[list[ID]]] | None = None) -> list[ID]:
    """Fetch ``cids`` into the store (a sliding window of FETCH_WINDOW wants) from ``peers`` (None:
    every connected peer); when nothing arrives for STALL_SECONDS, every connected peer is asked
    too, and with ``find`` (which dials the DHT's providers and names them) the providers it finds
    are asked once FIND_AFTER passed without a block arriving. Returns when all are here (held or
    stored) or when cancelled (the caller's deadline); the blocks are stored (``flush``) either
    way, and the returned list names who delivered them. ``sizes``: the content size declared for
    each (``LMDBBlockStore.fits``), checked on arrival.

    Instead of py-libp2p's ``BitswapSession.get_blocks_batch``, which asks in batches and, without a
    peer, waits a full second after its WANT_HAVEs before it sends a single WANT_BLOCK."""
    blocks = handle.blocks
    wants = _Wants(handle, list(peers) if peers is not None else _connected(handle))
    blocks.expect(cids)
    blocks.sizes.update(sizes or {})
    blocks.holding += 1
    try:
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            if find is not None:
                nursery.start_soon(wants.find_later, find)
            try:
                await wants.pump(cids)
            except Exception as exc:  # raised as itself below, not inside the nursery's ExceptionGroup
                error = exc
            nursery.cancel_scope.cancel()  # done: no look-up needed any more
        if error is not None:
            raise error
        return list(dict.fromkeys(blocks.sender[c] for c in cids if c in blocks.sender))
    finally:
        wants.cancel_rest()
        blocks.unexpect(cids)
        blocks.holding -= 1
        blocks.flush()


__all__ = ["BitswapHandle", "FednodeBitswap", "LMDBBlockStore", "start_bitswap", "to_ours", "to_theirs",
           "want_blocks"]
