"""Answering bitswap wantlists: one sender per peer, several blocks per message, sent as soon as read.

py-libp2p's per-peer ``BitswapMessageQueue`` (what ``bitswap.py`` used before) waits 15 ms after
every wantlist before it sends, puts each 256 KiB block in a message of its own (its batches stop at
60 kB), and the whole wantlist's blocks were read into memory before the first was sent. Here the
wantlist handler only queues what was asked (``PeerSender.want``), and the peer's sender task
reads blocks from the store one at a time and packs them into messages of up to MESSAGE_LIMIT
bytes, sending each as soon as it is full or nothing more is queued: the first block leaves while
later wantlist entries are still being read, and at most one message of blocks is held in memory.
Entries are answered highest priority first; a WANT_HAVE of a block of at most SMALL_BLOCK bytes
gets the block itself (boxo's ``maxBlockSizeReplaceHasWithBlock``: the root of a file or a commit
arrives without a second round trip). A peer that reads nothing for SEND_TIMEOUT loses its
queued wants (its stream is closed); a stream that breaks is reopened once per message.

MESSAGE_LIMIT is 512 KiB (two 256 KiB blocks): Kubo (go-bitswap's ``network.MessageSizeMax``), Helia
(``DEFAULT_MAX_INCOMING_MESSAGE_SIZE``) and py-libp2p (``MAX_MESSAGE_SIZE``) all refuse messages over
4 MiB; every receiver holds a whole message before it uses any block of it, and py-libp2p's reader
joins a message's pieces by repeated concatenation (quadratic in its size), so a few blocks a
message batch the writes without delaying the receiver much; small blocks go by the hundred. A
block too large for a message of HARD_LIMIT (4 MiB less room for the framing) is answered as not here.

Measured on 2026-12-05 (Kubo fetching 64 MiB from two daemons in turn around a Kubo <- Kubo fetch,
fresh Kubos each round, the order alternated, a position effect fitted out): with 512 KiB messages
Kubo fetched 0.019 s (100 rounds; standard error 0.016) and 0.052 s (20 rounds; 0.025) faster than with 1 MiB,
at parity with Kubo <- Kubo (mean 0.913 s against 0.914 s); 256 KiB (Kubo's server sends one block
a message) was no different from 512 KiB (0.015 s, standard error 0.022) nor from 1 MiB; Helia took 0.829 s
against 0.835 s (12 rounds). Spreading a peer's messages over 4 streams (Kubo's server opens a
stream per message, on 8 workers) was slower by 0.084 s (0.031), and 0.05 s more of our CPU per fetch.

Writes go through ``bulkwrite``: what the peer's yamux window allows, as one yamux frame sealed in
consecutive Noise messages and sent at once, the writer woken by the peer's window update (py-libp2p's
yamux sleeps 10 ms on an empty window, which held one stream to Kubo to about 26 MB/s).

Messages are encoded here (``encode_message``), not through protobuf objects: each block is copied
once, into the message; ``tests/daemon/test_bitswap_batching.py`` checks the encoding against
py-libp2p's own ``Message`` parser.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.bitswap.config import BITSWAP_PROTOCOL_V100
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fednode.daemon import bulkwrite
from protocol.multiformats import encode_varint

logger = logging.getLogger("fednode.bitswap")

MESSAGE_LIMIT = 512 << 10  # bytes of blocks a message carries (module docstring)
HARD_LIMIT = (4 << 20) - 4096  # the most any message may be: under every implementation's 4 MiB
MAX_QUEUED = 8192  # wantlist entries waiting per peer; more are ignored until it drains
SEND_TIMEOUT = 30.0  # most one message may take to leave (a peer that stops reading)
SMALL_BLOCK = 1024  # a WANT_HAVE of a block this small is answered with the block (boxo's default)
WANT_HAVE = 1  # Message.Wantlist.WantType.Have
DONT_HAVE = 1  # Message.BlockPresenceType.DontHave (Have is 0)

# (the CID as a py-libp2p object, whether a HAVE is enough) -> the block or None; with a HAVE
# enough, b"" may stand for a held block (not copied out), and a block of at most SMALL_BLOCK bytes
# is sent whole, saving the peer its WANT_BLOCK round trip (as Kubo's server does). A new lookup for
# each message (it may cache the peer's access rights meanwhile)
Lookup = Callable[[object, bool], Awaitable[bytes | None]]


@dataclass
class Want:
    cid: object  # py-libp2p's CID object, as parsed from the wantlist
    cid_bytes: bytes
    prefix: bytes  # bitswap 1.1+ block prefix
    have_only: bool  # WANT_HAVE: a presence is enough
    send_dont_have: bool


def _field(tag: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    return [bytes([tag]), encode_varint(len(payload)), payload]


def encode_message(blocks: Sequence[tuple[bytes, bytes | memoryview]], presences: Sequence[tuple[bytes, bool]],
                   v100: bool) -> bytes:
    """A bitswap ``Message`` (fields: blocks=2, payload=3 {prefix=1, data=2}, blockPresences=4
    {cid=1, type=2}) holding ``blocks`` ((prefix, data); 1.0: data only) and ``presences`` ((CID
    bytes, have)), as protobuf encodes it, with its varint length in front. One copy of each block."""
    parts: list[bytes | memoryview] = []
    for prefix, data in blocks:
        if v100:
            parts += _field(0x12, data)
        else:
            inner = _field(0x0A, prefix)
            inner += [b"\x12", encode_varint(len(data))]
            size = sum(len(p) for p in inner) + len(data)
            parts += [b"\x1a", encode_varint(size), *inner, data]
    for cid, have in presences:
        inner_b = b"".join(_field(0x0A, cid)) + (b"" if have else bytes([0x10, DONT_HAVE]))
        parts += _field(0x22, inner_b)
    body_len = sum(len(p) for p in parts)
    return b"".join([encode_varint(body_len), *parts])


async def write_paced(stream: INetStream, data: bytes) -> None:
    """Write ``data`` as the peer's yamux window allows (``bulkwrite``)."""
    await bulkwrite.write(stream, data)


@dataclass
class SendStats:
    """What the senders sent (all peers): for tests and the bench."""

    messages: int = 0
    blocks: int = 0
    presences: int = 0
    largest: int = 0  # bytes of the largest message


class PeerSender:
    """The wantlist entries one peer is waiting for, and the task that answers them in order."""

    def __init__(self, host: IHost, peer: ID, protocols: list[str], lookups: Callable[[], Lookup], stats: SendStats,
                 on_stream_opened: Callable[[INetStream, ID], None], missing: Callable[[Want], None]) -> None:
        self.host = host
        self.peer = peer
        self.protocols = protocols
        self.lookups = lookups
        self.stats = stats
        self.on_stream_opened = on_stream_opened
        self.missing = missing  # told of each wanted block we do not hold (or may not serve)
        self.pending: dict[bytes, Want] = {}  # CID bytes -> entry; insertion order is answer order
        self.dropped = 0
        self._wake = trio.Event()
        self._stream: INetStream | None = None
        self._protocol: str | None = None
        self._carry: tuple[Want, bytes] | None = None  # a block read that did not fit the last message
        self.cancel_scope = trio.CancelScope()

    def want(self, entry: Want) -> None:
        queued = self.pending.get(entry.cid_bytes)
        if queued is None and len(self.pending) >= MAX_QUEUED:
            self.dropped += 1
            return
        if queued is not None and entry.have_only and not queued.have_only:
            return  # a WANT_HAVE does not undo a WANT_BLOCK still queued (as in Kubo's engine)
        self.pending[entry.cid_bytes] = entry
        self._wake.set()

    def cancel(self, cid_bytes: bytes) -> None:
        self.pending.pop(cid_bytes, None)

    def clear(self) -> None:
        self.pending.clear()

    async def run(self) -> None:
        with self.cancel_scope:
            try:
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    while self.pending or self._carry is not None:
                        try:
                            await self._send_next()
                        except Exception as exc:  # never into the bitswap nursery: this peer's wants are dropped
                            logger.warning("bitswap: answering %s failed: %s: %s", self.peer, type(exc).__name__, exc)
                            self.pending.clear()
                            self._carry = None
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self._close()

    async def _open(self) -> INetStream:
        if self._stream is None:
            stream = await self.host.new_stream(self.peer, [TProtocol(p) for p in self.protocols])
            self._protocol = str(stream.get_protocol() or BITSWAP_PROTOCOL_V100)
            self.protocols = [self._protocol]  # the next stream, if any, speaks the same
            self._stream = stream
            self.on_stream_opened(stream, self.peer)
        return self._stream

    async def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.close()
            except Exception:
                pass

    async def _build(self, v100: bool) -> tuple[bytes, int, int]:
        """The next message from the front of the queue: (bytes, blocks, presences)."""
        blocks: list[tuple[bytes, bytes]] = []
        presences: list[tuple[bytes, bool]] = []
        size = 0
        lookup = self.lookups()
        while self.pending or self._carry is not None:
            if self._carry is not None:
                (entry, block), self._carry = self._carry, None
            else:
                entry = self.pending.pop(next(iter(self.pending)))
                have_only = entry.have_only and not v100  # bitswap 1.0 knows no presences
                try:
                    got = await lookup(entry.cid, have_only)
                except Exception as exc:  # e.g. a state that cannot be rebuilt: answered as not held
                    logger.warning("bitswap: reading a block for %s failed: %s: %s", self.peer,
                                   type(exc).__name__, exc)
                    got = None
                if got is None or len(got) + 1024 > HARD_LIMIT:
                    self.missing(entry)
                    if entry.send_dont_have and not v100:
                        presences.append((entry.cid_bytes, False))
                    continue
                if have_only and not 0 < len(got) <= SMALL_BLOCK:
                    presences.append((entry.cid_bytes, True))
                    continue
                block = got
            if blocks and size + len(block) > MESSAGE_LIMIT:
                self._carry = (entry, block)
                break
            blocks.append((entry.prefix, block))
            size += len(block)
            if size >= MESSAGE_LIMIT:
                break
        return encode_message(blocks, presences, v100), len(blocks), len(presences)

    async def _send_next(self) -> None:
        """Build and send one message; on a broken stream, a new stream once, then give up on it."""
        try:
            with trio.fail_after(SEND_TIMEOUT):
                stream = await self._open()
        except Exception as exc:  # peer gone or refusing: what it wanted is dropped
            logger.debug("bitswap: no stream to %s: %s", self.peer, exc)
            self.pending.clear()
            self._carry = None
            return
        message, n_blocks, n_presences = await self._build(self._protocol == BITSWAP_PROTOCOL_V100)
        if not n_blocks and not n_presences:
            return
        for attempt in (1, 2):
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    await write_paced(stream, message)
                break
            except trio.TooSlowError:  # the peer stopped reading: what it wanted is dropped
                logger.info("bitswap: %s read nothing for %.0f s; its wants are dropped", self.peer, SEND_TIMEOUT)
                await self._close()
                self.pending.clear()
                self._carry = None
                return
            except Exception as exc:
                logger.debug("bitswap: sending to %s failed (%s): %s", self.peer, attempt, exc)
                await self._close()
                if attempt == 2:
                    return
                try:
                    with trio.fail_after(SEND_TIMEOUT):
                        stream = await self._open()
                except Exception:
                    return
        self.stats.messages += 1
        self.stats.blocks += n_blocks
        self.stats.presences += n_presences
        self.stats.largest = max(self.stats.largest, len(message))
