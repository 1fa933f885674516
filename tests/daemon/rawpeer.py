"""A bare py-libp2p peer with a chosen wallet key, for the private-repository tests: it asks a daemon
for blocks over /fednode/blocks/1.0.0 and for heads over /fednode/heads/1.0.0 with raw requests, as
a hostile client (or a member, for the control) would; and the block closure a reader could name."""

from __future__ import annotations

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from fednode.daemon import wire
from fednode.daemon.host import build_host
from fednode.node import Node
from protocol import messages as m
from protocol.dag import links
from protocol.multiformats import CID


def closure(node: Node, repo_id: bytes) -> list[CID]:
    """Every block the refs of ``repo_id`` reach in ``node``'s store (every CID a reader could name)."""
    seen: dict[bytes, CID] = {}
    with node.store.read() as txn:
        stack = [CID.from_bytes(v) for name, v in txn.list_refs(repo_id).items() if name != "HEAD"]
        while stack:
            cid = stack.pop()
            if bytes(cid) in seen or not txn.has_block(cid):
                continue
            seen[bytes(cid)] = cid
            stack.extend(links(cid, txn.get_block(cid)))
    return list(seen.values())


async def ask(seed: bytes, target: str, cids: list[CID], repos: list[bytes] | tuple[bytes, ...] = (),
              ) -> tuple[list[CID], list[m.HeadsReply | None]]:
    """As the holder of wallet key ``seed``: ask ``target`` for ``cids`` and for the heads of ``repos``.
    Returns the CIDs served (each hash-checked; anything but a genuine block or "not here" fails the
    test) and the heads replies (None: the stream was reset, a refusal too)."""
    host = build_host(create_new_key_pair(seed))
    served: list[CID] = []
    replies: list[m.HeadsReply | None] = []
    with trio.fail_after(60):
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(target))
            await host.connect(info)
            for i in range(0, len(cids), m.MAX_WANT):
                want = cids[i:i + m.MAX_WANT]
                stream = await host.new_stream(info.peer_id, [TProtocol(m.BLOCKS_PROTOCOL)])
                await wire.write_frame(stream, m.encode_want(want))
                reader = wire.FrameReader(stream)
                for cid in want:  # per CID in order: 0x01 + block, or 0x00 (not here)
                    frame = bytes(await reader.read_frame(m.MAX_BLOCK_BYTES + 1, 15))
                    if frame[:1] == b"\x01":
                        assert cid.verify(frame[1:])
                        served.append(cid)
                    else:
                        assert frame == b"\x00"
                await stream.close()
            for repo_id in repos:
                try:
                    stream = await host.new_stream(info.peer_id, [TProtocol(m.HEADS_PROTOCOL)])
                    await wire.write_frame(stream, m.encode_heads_query(repo_id))
                    replies.append(m.HeadsReply.decode(await wire.read_frame(stream, 2 << 20, timeout=10)))
                    await stream.close()
                except Exception:  # a reset stream (py-libp2p's errors vary): a refusal as well
                    replies.append(None)
    return served, replies
