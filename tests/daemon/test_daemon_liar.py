"""A lying block provider (py-libp2p directly, its own process) against a real daemon.

The liar relays the owner's heads (valid, signed) and serves the owner's blocks with one bit
flipped in every leaf. The victim, connected to the liar alone, must store none of the leaves,
leave its branch where it was and ban the liar after ``ban_threshold`` bad transfers (that it
resets a liar's stream early is tested in-process, in test_daemon_blocks.py); connected to the
owner, it then fetches the commit intact. Run as a script it IS the liar:
``python test_daemon_liar.py OWNER_ADDR``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_harness import (
    DaemonProc,
    big_model,
    daemons,
    has_block,
    kill_process,
    make_home,
    network_config,
    open_nodes,
    ref,
    wait_for,
)
from helpers import ROOT, script_env

from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import RAW


def _leaves(node, head) -> list:
    """The RAW leaf CIDs of every tensor of ``head`` (from the owner's store)."""
    from protocol.dag import links

    manifest = node.history.load_manifest(node.history.load_commit(head).weights)
    out, stack = [], [entry.cid for entry in manifest.tensors.values()]
    with node.store.read() as txn:
        while stack:
            cid = stack.pop()
            if cid.codec == RAW:
                out.append(cid)
            else:
                stack.extend(links(cid, txn.get_block(cid)))
    return out


def test_a_lying_provider_stores_nothing_and_is_banned(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "ab"]
    na, nb = open_nodes(*homes)
    liar = None
    try:
        info, _ = na.history.create_repo("m", ArraySource(big_model(0)), visibility="public")
        rid = info.repo_id
        network_config(homes[1], ban_threshold=2)
        a = DaemonProc(homes[0]).start()
        with daemons(a):
            liar, liar_addr = _start_liar(a.addr, "flip")
            b = DaemonProc(homes[1], (liar_addr,))
            with daemons(b):
                b.start()
                # the liar relays A's heads; every leaf it serves has one bit flipped
                b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 5}, expect=404)
                liar_id = liar_addr.rsplit("/", 1)[-1]
                wait_for(lambda: liar_id in b.api("GET", "/status")["bans"], 30, "B to ban the liar")
                leaves = _leaves(na, info.genesis)
                assert leaves and not any(has_block(nb, c) for c in leaves)  # not one bad byte stored
                assert ref(nb, rid, "heads/main") is None
                ban = b.api("GET", "/status")["bans"][liar_id]
                assert ban["reason"] == "bad_block"
                liar.stdin.write("report\n")
                liar.stdin.flush()
                assert int(liar.stdout.readline()) >= 2  # it did serve bad leaves, once per attempt at least
                # the honest owner: the same fetch (still recorded) completes intact
                b.api("POST", "/clone", {"repo": repo_id_text(rid), "peers": [a.addr], "timeout": 30})
                wait_for(lambda: ref(nb, rid, "heads/main") == info.genesis, 30, "B to clone from A")
                with nb.store.read() as txn, na.store.read() as txa:
                    assert all(txn.get_block(c) == txa.get_block(c) for c in leaves)
    finally:
        kill_process(liar)
        for n in (na, nb):
            n.close()


def test_a_peer_naming_another_block_as_the_genesis_gets_nothing_fetched(tmp_path: Path) -> None:
    """A clone asks its heads query of whoever it finds; this liar relays the owner's heads but names
    the genesis commit's weights manifest (a DAG-CBOR block it serves, honestly, with all it reaches)
    as the genesis. Before, the daemon fetched and stored that whole closure, tagged as the
    repository's, before finding the block was no genesis; now it checks the one block first."""
    homes = [make_home(tmp_path, n) for n in "ab"]
    na, nb = open_nodes(*homes)
    liar = None
    try:
        info, _ = na.history.create_repo("m", ArraySource(big_model(0)), visibility="public")
        rid = info.repo_id
        a = DaemonProc(homes[0]).start()
        with daemons(a):
            liar, liar_addr = _start_liar(a.addr, "genesis")
            b = DaemonProc(homes[1], (liar_addr,))
            with daemons(b):
                b.start()
                got = b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 5}, expect=404)
                manifest = na.history.load_commit(info.genesis).weights
                assert f"named {manifest} as the genesis of {repo_id_text(rid)}, which it is not" in got["error"]
                leaves = _leaves(na, info.genesis)
                assert not has_block(nb, manifest) and not any(has_block(nb, c) for c in leaves)
                assert b.api("GET", "/status")["metrics"]["penalties"].get("bad_genesis") == 1
                assert ref(nb, rid, "heads/main") is None
    finally:
        kill_process(liar)
        for n in (na, nb):
            n.close()


def _start_liar(owner_addr: str, mode: str) -> tuple[subprocess.Popen, str]:
    """This file run as the liar (``mode``: flip leaves' bits, or name another block as the genesis)
    in front of the owner; (its process, its address). The caller stops it (kill_process)."""
    liar = subprocess.Popen(env=script_env(), args=[sys.executable, __file__, owner_addr, mode], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert liar.stdout is not None and liar.stderr is not None
    liar_addr = liar.stdout.readline().strip()
    assert liar_addr.startswith("/ip4/127.0.0.1/"), liar.stderr.read()[-3000:]
    return liar, liar_addr


async def _liar(owner_addr: str, mode: str = "flip") -> None:
    import multiaddr
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from fednode.daemon import wire
    from fednode.daemon.host import build_host
    from protocol import messages as m

    host = build_host(create_new_key_pair())
    owner = info_from_p2p_addr(multiaddr.Multiaddr(owner_addr))
    heads, blocks = TProtocol(m.HEADS_PROTOCOL), TProtocol(m.BLOCKS_PROTOCOL)
    flipped = 0

    async def relay_heads(stream) -> None:
        query = await wire.read_frame(stream, 64 * 1024)
        up = await host.new_stream(owner.peer_id, [heads])
        await wire.write_frame(up, query)
        reply = await wire.read_frame(up, 2 * 1024 * 1024)
        await up.close()
        if mode == "genesis":  # the genesis commit's manifest named as the genesis
            import dataclasses

            from protocol.objects import Commit

            heads_reply = m.HeadsReply.decode(reply)
            assert heads_reply.genesis is not None
            got = await host.new_stream(owner.peer_id, [blocks])
            await wire.write_frame(got, m.encode_want([heads_reply.genesis]))
            block = bytes(await wire.FrameReader(got).read_frame(m.MAX_BLOCK_BYTES + 1))[1:]
            await got.close()
            reply = dataclasses.replace(heads_reply, genesis=Commit.decode(block).weights).encode()
        await wire.write_frame(stream, reply)
        await stream.close()

    async def lying_blocks(stream) -> None:
        want = await wire.read_frame(stream, 64 * 1024)
        up = await host.new_stream(owner.peer_id, [blocks])
        await wire.write_frame(up, want)
        reader, writer = wire.FrameReader(up), wire.FrameWriter(stream)
        nonlocal flipped
        try:
            for cid in m.decode_want(want):
                frame = bytes(await reader.read_frame(m.MAX_BLOCK_BYTES + 1))
                if mode == "flip" and cid.codec == RAW and frame[:1] == b"\x01":
                    frame = frame[:-1] + bytes([frame[-1] ^ 1])
                    flipped += 1
                await writer.write_frame(frame)
            await writer.flush()
            await stream.close()
        except wire.FrameError:  # the victim may reset our stream after the first bad batch
            pass
        finally:
            await up.reset()

    host.set_stream_handler(heads, relay_heads)
    host.set_stream_handler(blocks, lying_blocks)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        await host.connect(owner)
        print(f"{host.get_addrs()[0]}", flush=True)
        with trio.fail_after(120):
            await trio.to_thread.run_sync(sys.stdin.readline)
        print(flipped, flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)


if __name__ == "__main__":
    import trio

    trio.run(_liar, *sys.argv[1:])
