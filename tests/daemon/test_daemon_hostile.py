"""A hostile peer (py-libp2p directly, its own process) against a real daemon.

It publishes forged-signature, malformed, oversize, non-member, wrong-repository, replayed
and duplicate messages on the repository topic, and one on a followed but unknown repository:
every one is rejected (counted by reason), nothing is stored, and the peer is disconnected
and blacklisted after ``ban_threshold`` penalized messages. Run as a script it IS the hostile
peer: ``python test_daemon_hostile.py TARGET_ADDR REPO_ID FOLLOWED_REPO_ID``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_harness import DaemonProc, daemons, kill_process, make_home, network_config, open_nodes, ref, wait_for
from helpers import ROOT, model_arrays, perturb, script_env, store_state

from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource


def _net_state(node) -> list:
    """The net db without ``ban/`` keys (a ban is the one thing the attack should store)."""
    with node.store.read() as txn:
        return [(k, v) for k, v in txn.kv_items("net") if not k.startswith(b"ban/")]


def test_hostile_messages_are_rejected_and_the_peer_banned(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "ab"]
    na, nb = open_nodes(*homes)
    hostile = None
    try:
        info, _ = na.history.create_repo("m", ArraySource(model_arrays(0)), visibility="public")
        rid = info.repo_id
        # no anti-entropy rounds here: they legitimately write (seqs) while we compare store states
        network_config(homes[1], ban_threshold=6, sync_interval=3600.0)
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        with daemons(a, b):
            b.start()
            b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 20})
            followed_only = repo_id_text(bytes([7]) * 32)  # followed, never cloned: no owner known
            b.api("POST", "/follow", {"repo": followed_only, "public": True})  # the hostile uses its public topic
            hostile = subprocess.Popen(
        env=script_env(), args=[sys.executable, __file__, b.addr, repo_id_text(rid), followed_only], cwd=ROOT,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
            assert hostile.stdout.readline().strip() == "ready", hostile.stderr.read()[-3000:]
            r1 = na.history.commit(na.history.repo("m"), ArraySource(perturb(model_arrays(0), 1)), "epoch 1")
            a.api("POST", "/push", {"repo": "m"})
            assert hostile.stdout.readline().strip() == "captured", hostile.stderr.read()[-3000:]
            wait_for(lambda: ref(nb, rid, "heads/main") == r1.cid, 10, "B to take A's commit")
            wait_for(lambda: b.api("GET", "/status")["pending_fetches"] == 0, 10, "B to settle")
            before = (store_state(nb.store), _net_state(nb))
            accepted_before = b.metrics()["accepted"]
            hostile.stdin.write("go\n")
            hostile.stdin.flush()
            assert hostile.stdout.readline().strip() == "done", hostile.stderr.read()[-3000:]
            expected = {"replay": 1, "duplicate": 1, "unknown_repo": 1, "malformed": 1, "oversize": 1,
                        "bad_signature": 2, "not_member": 1, "wrong_repo": 1}
            wait_for(lambda: b.metrics()["rejected"] == expected, 10, f"rejections {expected}")
            assert hostile.stdout.readline().strip() == "disconnected", hostile.stderr.read()[-3000:]
            status = b.api("GET", "/status")
            assert status["metrics"]["bans"] == 1 and len(status["blacklisted"]) == 1
            assert status["metrics"]["accepted"] == accepted_before
            assert (store_state(nb.store), _net_state(nb)) == before
            metrics = b.api("GET", "/metrics")
            assert 'fednode_messages_rejected_total{reason="bad_signature"} 2' in metrics
            assert hostile.wait(timeout=10) == 0
            banned = status["blacklisted"][0]
            assert status["bans"][banned]["reason"] in {"bad_signature", "malformed", "oversize", "not_member",
                                                        "wrong_repo", "unknown_repo"}
            # the ban is stored: a restarted daemon still refuses the peer, until an operator lifts it
            b.stop()
            b.start()
            assert b.api("GET", "/status")["blacklisted"] == [banned]
            assert b.api("POST", "/unban", {"peer": banned}) == {"peer_id": banned, "was_banned": True}
            after = b.api("GET", "/status")
            assert after["blacklisted"] == [] and after["bans"] == {}
            assert b.api("POST", "/unban", {"peer": "not-a-peer"}, expect=400)["error"].startswith("not a peer id")
    finally:
        kill_process(hostile)
        for n in (na, nb):
            n.close()


# --- the hostile peer ----------------------------------------------------------------------------


async def _hostile(target: str, repo_b58: str, other_b58: str) -> None:
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport
    from libp2p.tools.anyio_service import background_trio_service

    from fednode.history import parse_repo_id
    from fednode.identity import Identity
    from protocol import messages as m
    from protocol.objects import Commit

    me = Identity.generate()
    kp = create_new_key_pair(me.seed)
    host = new_host(key_pair=kp, sec_opt={PROTOCOL_ID: Transport(kp, noise_privkey=x25519().private_key)},
                    muxer_preference="YAMUX")
    repo_id = parse_repo_id(repo_b58)
    topic = m.topic_for(repo_id)
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        router = GossipSub([PROTOCOL_ID_V11], 6, 4, 12, heartbeat_interval=1, eclipse_protection_enabled=False)
        pubsub = Pubsub(host, router)
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            await host.connect(info)
            sub = await pubsub.subscribe(topic)
            other_topic = m.topic_for(parse_repo_id(other_b58))
            await pubsub.subscribe(other_topic)
            await trio.sleep(2.5)  # join the target's mesh (1 s heartbeats)
            print("ready", flush=True)
            head_raw = commit_raw = None
            with trio.fail_after(20):
                while head_raw is None or commit_raw is None:
                    msg = await sub.get()
                    parsed = m.decode(msg.data)
                    if isinstance(parsed, m.HeadAnnouncement):
                        head_raw = msg.data
                    elif isinstance(parsed, m.CommitEnvelope):
                        commit_raw = msg.data
            print("captured", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            head = m.decode(head_raw)
            commit = Commit.decode(m.decode(commit_raw).block)
            forged = Commit(**{**commit.__dict__, "message": "tampered"})  # the author's sig no longer matches
            mine = Commit(**{**commit.__dict__, "author": me.public_key, "sig": b""})
            mine = Commit(**{**mine.__dict__, "sig": me.sign(mine.commit_hash())})  # valid, but not a member
            elsewhere = Commit(**{**commit.__dict__, "repo": bytes([9]) * 32, "author": me.public_key, "sig": b""})
            elsewhere = Commit(**{**elsewhere.__dict__, "sig": me.sign(elsewhere.commit_hash())})
            unknown = m.HeadAnnouncement(parse_repo_id(other_b58), "main", head.head, 1, 1, me.public_key)
            unknown = m.HeadAnnouncement(**{**unknown.__dict__, "sig": me.sign(unknown.signing_hash())})
            fake_head = m.HeadAnnouncement(**{**head.__dict__, "seq": head.seq + 10, "sig": b""})
            fake_head = m.HeadAnnouncement(**{**fake_head.__dict__, "sig": me.sign(fake_head.signing_hash())})
            from protocol import dagcbor

            await pubsub.publish(other_topic, unknown.encode())  # a repository the target cannot check
            batch = [
                head_raw,  # replay of a genuine owner announcement
                commit_raw,  # duplicate of a commit the target has
                m.CommitEnvelope(elsewhere.encode()).encode(),  # a commit of another repository
                b"\xa2\x61t\x66commit\x61v\x01garbage",  # malformed
                dagcbor.encode({"t": "commit", "v": 1, "block": bytes(600 * 1024)}),  # oversize (< 1 MiB)
                m.CommitEnvelope(forged.encode()).encode(),  # forged signature
                m.CommitEnvelope(mine.encode()).encode(),  # non-member author
                fake_head.encode(),  # owner's announcement signed by someone else
            ]
            for data in batch:
                await pubsub.publish(topic, data)
                await trio.sleep(0.15)
            print("done", flush=True)
            with trio.fail_after(10):
                while info.peer_id in host.get_connected_peers():
                    await trio.sleep(0.05)
            print("disconnected", flush=True)


if __name__ == "__main__":
    import logging

    import trio

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    trio.run(_hostile, sys.argv[1], sys.argv[2], sys.argv[3])
