"""A hostile MEMBER (py-libp2p directly, its own process) against a real daemon.

Attacks that used to stop or fool a daemon (issue 10):
- the 13-byte gossip message ``{"t": [], "v": 1}`` (a TypeError escaped the validator and killed it);
- malleated copies of a genuine signed commit (``v: true`` / ``v: 1.0`` instead of ``v: 1``): another
  block with the same commit hash and a valid signature, which re-pointed the commit-hash index;
- a heads query with a wrong-typed field;
- a merge proposal whose commit's manifest has ``dtype: []`` (killed the daemon inside ``sync.apply``),
  served by the attacker itself.
Each test requires: the daemon stays alive and answers ``status`` within 1 s, honest traffic goes on,
nothing of the attacker's is stored (no block of the gossip attacks, no manifest or ref of the bad
proposal), and the attacker is penalized, then banned. Run as a script it IS the attacker:
``python test_daemon_attacks.py TARGET_ADDR REPO_ID KEY_FILE``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from daemon_harness import DaemonProc, daemons, kill_process, make_home, network_config, open_nodes, ref, wait_for
from helpers import ROOT, model_arrays, perturb, script_env, store_state

from fednode.history import repo_id_text
from fednode.identity import Identity
from fednode.storage.netstate import NetState
from fednode.tensors.modelio import ArraySource

BAN_THRESHOLD = 5  # 13-byte message + two malleated commits + a malformed heads query + the bad manifest


def _status_within(d: DaemonProc, seconds: float) -> dict:
    token = (d.home / "api.token").read_text().strip()
    start = time.monotonic()
    resp = httpx.get(f"http://127.0.0.1:{d.info['api_port']}/status", headers={"Authorization": f"Bearer {token}"},
                     timeout=seconds)
    assert resp.status_code == 200 and time.monotonic() - start < seconds
    return resp.json()


def _hash_index(node, commit_hash: bytes) -> bytes | None:
    with node.store.read() as txn:
        value = txn._txn.get(commit_hash, db=txn._db("hashes"))
    return None if value is None else bytes(value)


def _step(proc: subprocess.Popen, command: str, expect: str) -> None:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline().strip()
    assert line == expect, (line, proc.stderr.read()[-3000:] if proc.poll() is not None else "")


def test_a_hostile_member_cannot_stop_or_fool_the_daemon(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "ab"]
    na, nb = open_nodes(*homes)
    attacker_key = tmp_path / "attacker.json"
    attacker = Identity.generate()
    attacker.save(attacker_key)
    hostile = None
    try:
        info, _ = na.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        rid = info.repo_id
        r1 = na.history.commit(na.history.repo("m"), ArraySource(perturb(model_arrays(0), 1)), "epoch 1")
        network_config(homes[1], ban_threshold=BAN_THRESHOLD, sync_interval=3600.0)
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        with daemons(a, b):
            b.start()
            a.api("POST", "/members", {"repo": "m", "members": [attacker.address]})
            b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 20})
            wait_for(lambda: ref(nb, rid, "heads/main") == r1.cid, 20, "B to clone A's head")
            wait_for(lambda: b.api("GET", "/status")["pending_fetches"] == 0, 10, "B to settle")
            hostile = subprocess.Popen(
        env=script_env(), args=[sys.executable, __file__, b.addr, repo_id_text(rid), str(attacker_key)],
                                       cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            assert hostile.stdout.readline().strip() == "ready", hostile.stderr.read()[-3000:]
            wait_for(lambda: _is_member(nb, rid, attacker.public_key), 10, "B to know the attacker as a member")
            before = store_state(nb.store)
            r1_hash = na.history.load_commit(r1.cid).commit_hash()
            assert _hash_index(nb, r1_hash) == bytes(r1.cid)

            # 1. the 13-byte message and the malleated copies of A's signed commit
            _step(hostile, "gossip", "sent")
            wait_for(lambda: b.metrics()["rejected"].get("malformed", 0) == 3, 10, "3 malformed rejections")
            wait_for(lambda: b.metrics()["penalties"].get("malformed_request") == 1, 10, "the heads query's strike")
            _status_within(b, 1.0)
            assert store_state(nb.store) == before  # no malleated block stored
            assert _hash_index(nb, r1_hash) == bytes(r1.cid)  # the hash index still names the genuine block
            assert b.metrics()["errors"] == {}  # rejected by the decoders, not by a last-resort guard

            # 2. a signed proposal whose commit's manifest has dtype []: refused when fetched, attacker banned
            _step(hostile, "proposal", "sent")
            wait_for(lambda: attacker.peer_id in b.api("GET", "/status")["bans"], 20, "B to ban the attacker")
            status = _status_within(b, 1.0)
            assert status["bans"][attacker.peer_id]["reason"] == "bad_manifest_block"
            assert status["metrics"]["penalties"] == {"malformed": 3, "malformed_request": 1,
                                                   "bad_manifest_block": 1}
            bad_manifest = hostile.stdout.readline().strip()
            with nb.store.read() as txn:
                assert not [name for _, name, _ in txn.all_refs() if name.startswith("proposals/")]
                assert not txn.has_block(_cid(bad_manifest))
            assert hostile.wait(timeout=40) == 0, hostile.stderr.read()[-3000:]  # disconnected, and again on redial
            assert b.metrics()["refused_streams"].get("banned_connection", 0) >= 1

            # honest traffic goes on
            r2 = na.history.commit(na.history.repo("m"), ArraySource(perturb(model_arrays(0), 2)), "epoch 2")
            a.api("POST", "/push", {"repo": "m"})
            wait_for(lambda: ref(nb, rid, "heads/main") == r2.cid, 20, "B to take A's next commit")
            assert b.metrics()["errors"] == {}
    finally:
        kill_process(hostile)
        for n in (na, nb):
            n.close()


def _is_member(node, rid: bytes, key: bytes) -> bool:
    membership = NetState(node.store).membership(rid)
    return membership is not None and key in membership.members


def _cid(text: str):
    from protocol.multiformats import CID

    return CID.parse(text)


# --- the attacker --------------------------------------------------------------------------------


async def _attacker(target: str, repo_b58: str, key_file: str) -> None:
    import multiaddr
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.tools.anyio_service import background_trio_service

    from fednode.daemon import wire
    from fednode.daemon.host import build_host, build_pubsub
    from fednode.history import parse_repo_id
    from protocol import dagcbor
    from protocol import messages as m
    from protocol.multiformats import CID, DAG_CBOR
    from protocol.objects import Commit

    me = Identity.load(Path(key_file))
    host = build_host(create_new_key_pair(me.seed))
    repo_id = parse_repo_id(repo_b58)
    topic = m.topic_for(repo_id)
    target_info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    served: dict[CID, bytes] = {}

    async def serve_blocks(stream) -> None:
        want = m.decode_want(await wire.read_frame(stream, 64 * 1024))
        writer = wire.FrameWriter(stream)
        for cid in want:
            block = served.get(cid)
            await writer.write_frame(b"\x00" if block is None else block, prefix=b"" if block is None else b"\x01")
        await writer.flush()
        await stream.close()

    host.set_stream_handler(TProtocol(m.BLOCKS_PROTOCOL), serve_blocks)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        pubsub, router = build_pubsub(host)
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            await host.connect(target_info)
            await pubsub.subscribe(topic)
            await trio.sleep(2.5)  # join the target's mesh (1 s heartbeats)
            # the genuine head commit, as the target serves it
            query = await host.new_stream(target_info.peer_id, [TProtocol(m.HEADS_PROTOCOL)])
            await wire.write_frame(query, m.encode_heads_query(repo_id))
            reply = m.HeadsReply.decode(await wire.read_frame(query, 1 << 20))
            head = m.decode(reply.heads[0]).head
            blocks = await host.new_stream(target_info.peer_id, [TProtocol(m.BLOCKS_PROTOCOL)])
            await wire.write_frame(blocks, m.encode_want([head]))
            genuine = bytes(await wire.read_frame(blocks, 1 << 20))[1:]
            print("ready", flush=True)

            await trio.to_thread.run_sync(sys.stdin.readline)  # "gossip"
            obj = dagcbor.decode(genuine)
            batch = [dagcbor.encode({"t": [], "v": 1})]
            batch += [m.CommitEnvelope(dagcbor.encode({**obj, "v": v})).encode() for v in (True, 1.0)]
            for data in batch:
                await pubsub.publish(topic, data)
                await trio.sleep(0.15)
            garbage = await host.new_stream(target_info.peer_id, [TProtocol(m.HEADS_PROTOCOL)])
            await wire.write_frame(garbage, dagcbor.encode({"repo": [1, 2]}))  # a heads query with a wrong type
            await garbage.close()
            print("sent", flush=True)

            await trio.to_thread.run_sync(sys.stdin.readline)  # "proposal"
            parent = Commit.decode(genuine)
            manifest = dagcbor.encode({"type": "fednode/weights", "v": 1, "tensors": {"w": {
                "dtype": [], "shape": [1], "encoding": "raw", "depth": 0, "state": bytes(parent.weights),
                "cid": parent.weights, "size": 4}}})
            weights = CID.hash(DAG_CBOR, manifest)
            bad = Commit(repo_id, (head,), "update", weights, me.public_key, 1, "poisoned", {}, {}, b"",
                         (parent.commit_hash(),))
            bad = Commit(**{**bad.__dict__, "sig": me.sign(bad.commit_hash())})
            served.update({weights: manifest, bad.cid(): bad.encode()})
            proposal = m.MergeProposal(repo_id, "main", bad.cid(), "please merge", 1, 1, me.public_key)
            proposal = m.MergeProposal(**{**proposal.__dict__, "sig": me.sign(proposal.signing_hash())})
            await pubsub.publish(topic, proposal.encode())
            print("sent", flush=True)
            print(weights, flush=True)
            with trio.fail_after(20):  # banned: the target hangs up on us
                while target_info.peer_id in host.get_connected_peers():
                    await trio.sleep(0.05)
            for _ in range(3):  # and on every new connection of ours
                try:
                    await host.connect(target_info)
                except Exception:  # the dial may already fail: the target closed it during setup
                    pass
                with trio.fail_after(10):
                    while target_info.peer_id in host.get_connected_peers():
                        await trio.sleep(0.05)


if __name__ == "__main__":
    import logging

    import trio

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    trio.run(_attacker, sys.argv[1], sys.argv[2], sys.argv[3])
