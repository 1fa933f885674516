"""A private repository end to end, with real daemons on 127.0.0.1 and hostile readers.

Owner O makes a private repository and signs in members M and F; both clone and get O's next
commit. O then removes F and commits again: M gets everything; F gets nothing of the new commit
by any path (the gossip reaches it sealed under a key it was never given, its pull is refused as
private, and O and M answer "not here" for every block it asks for by CID), and neither does a
stranger N that knows every CID. The probes are a real py-libp2p host (Noise, yamux) holding the
asker's own wallet key, so the daemons see exactly the peer id they would check.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
from daemon_harness import DaemonProc, daemons, has_block, make_home, network_config, open_nodes, ref, wait_for
from helpers import model_arrays, perturb, run_fednode
from rawpeer import ask

from fednode.history import repo_id_text
from fednode.storage.keyring import Keyring
from fednode.storage.netstate import NetState
from fednode.tensors.modelio import ArraySource
from fednode.workflows.verify import verify
from protocol import messages as m
from protocol.multiformats import CID

SETTLE_S = 3.0  # after M has the new commit: time for F's anti-entropy rounds (1 s) to try their luck


def _blocks(node) -> set[CID]:
    with node.store.read() as txn:
        return set(txn.iter_block_cids())


def _members(node, repo_id: bytes) -> set[bytes]:
    ms = NetState(node.store).membership(repo_id)
    return set() if ms is None else set(ms.members)


def _epoch(node, repo_id: bytes) -> int:
    held = Keyring(node.store).latest(repo_id)
    return -1 if held is None else held[0]


def _refused_as_private(d: DaemonProc, path: str, body: dict) -> str:
    """An API call the daemon must refuse because the repository is private; the error text."""
    token = (d.home / "api.token").read_text().strip()
    resp = httpx.post(f"http://127.0.0.1:{d.info['api_port']}{path}", json=body,
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert resp.status_code >= 400 and "is private" in resp.text, (resp.status_code, resp.text)
    return resp.text


def _probe_sync(addr: str, seed: bytes, repo_id: bytes, cids: set[CID]) -> tuple[m.HeadsReply | None, set[CID]]:
    """As the holder of wallet key ``seed``: ``repo_id``'s heads reply from ``addr`` (None: reset) and
    the CIDs of ``cids`` whose genuine block came back."""
    served, (reply,) = trio.run(ask, seed, addr, sorted(cids, key=bytes), [repo_id])
    return reply, set(served)


def _assert_refused(reply: m.HeadsReply | None) -> None:
    assert reply is None or (reply.refused == "private" and reply.genesis is None and not reply.heads
                             and reply.members is None and reply.keys is None), reply


def test_removed_member_and_stranger_get_nothing_new(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in ("owner", "m", "f", "n")]
    network_config(homes[2], sync_interval=1.0)  # F asks for heads every second: every chance to leak
    no, nm, nf, nn = open_nodes(*homes)
    try:
        v0 = model_arrays(0)
        info, genesis = no.history.create_repo("p", ArraySource(v0))  # private: the default
        rid = info.repo_id
        assert no.history.is_private(rid)
        o = DaemonProc(homes[0]).start()
        dm, df, dn = (DaemonProc(h, (o.addr,)) for h in homes[1:])
        with daemons(o, dm, df, dn):
            for d in (dm, df, dn):
                d.start()
            o.api("POST", "/members", {"repo": "p", "members": [nm.identity.address, nf.identity.address]})
            for d in (dm, df):
                d.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
            assert ref(nm, rid, "heads/main") == ref(nf, rid, "heads/main") == genesis.cid
            # a stranger cannot clone it
            _refused_as_private(dn, "/clone", {"repo": repo_id_text(rid), "timeout": 20})
            assert nn.history.repos() == [] and not has_block(nn, genesis.cid)

            # O's first commit reaches both members
            v1 = perturb(v0, 1)
            r1 = no.history.commit(no.history.repo("p"), ArraySource(v1), "round 1")
            o.api("POST", "/push", {"repo": "p"})
            wait_for(lambda: all(ref(n, rid, "heads/main") == r1.cid for n in (nm, nf)), 20, "round 1 on both members")
            f_before = _blocks(nf)
            epoch_before = _epoch(no, rid)
            assert _epoch(nf, rid) == epoch_before >= 0  # F held the key while a member

            # O removes F: a new key epoch, for M only
            o.api("POST", "/members", {"repo": "p", "members": [nm.identity.address]})
            assert _epoch(no, rid) > epoch_before
            wait_for(lambda: _epoch(nm, rid) == _epoch(no, rid), 20, "M to receive the new key epoch")
            # M and F (which still hears the topic: membership messages are signed, not sealed) learn of it
            wait_for(lambda: all(_members(n, rid) == {nm.identity.public_key} for n in (nm, nf)), 20,
                     "the new membership on M and F")
            unreadable = df.metrics()["rejected"].get("sealed_unreadable", 0)

            # O commits again: M gets everything
            r2 = no.history.commit(no.history.repo("p"), ArraySource(perturb(v1, 2)), "round 2")
            o.api("POST", "/push", {"repo": "p"})
            wait_for(lambda: ref(nm, rid, "heads/main") == r2.cid, 30, "round 2 on M")
            assert not verify(nm.history, nm.history.repo("p"), r2.cid).problems
            new = _blocks(nm) - f_before  # the blocks of round 2: what F must not get
            assert r2.cid in new and len(new) >= 3, new  # commit, manifest, tensor data

            # F: the gossip reached it, sealed under a key it was never given
            wait_for(lambda: df.metrics()["rejected"].get("sealed_unreadable", 0) > unreadable, 20,
                     "F to receive round 2's gossip it cannot open")
            # its pull is refused as private by both peers that hold the repository; N, which does not
            # hold it, answers nothing, and an empty answer is no answer: the pull fails outright
            failed = run_fednode(homes[2], "pull", "p", check=False, timeout=120)
            assert failed.returncode != 0 and "is private" in failed.stderr, (failed.stdout, failed.stderr)
            dn.stop()  # with only O and M to ask, the same
            failed = run_fednode(homes[2], "pull", "p", check=False, timeout=120)
            assert failed.returncode != 0 and "is private" in failed.stderr, (failed.stdout, failed.stderr)
            trio.run(trio.sleep, SETTLE_S)
            assert ref(nf, rid, "heads/main") == r1.cid
            assert not (_blocks(nf) & new), "F stored a block of the commit made after its removal"
            assert _epoch(nf, rid) == epoch_before  # never got the new key
            # ... and asking by CID, with its own key (its daemon stopped), O and M give it nothing
            df.stop()
            for target in (o, dm):
                reply, got = _probe_sync(target.addr, nf.identity.seed, rid, new)
                _assert_refused(reply)
                assert got == set(), f"{target.home.name} served F {len(got)} block(s) of round 2"

            # N, a stranger who knows every CID (read from M's store), gets no head and no block
            every = _blocks(nm)
            for target in (o, dm):
                reply, got = _probe_sync(target.addr, nn.identity.seed, rid, every)
                _assert_refused(reply)
                assert got == set(), f"{target.home.name} served a stranger {len(got)} block(s)"
            assert nn.history.repos() == [] and not (_blocks(nn) & every)

            # the control: the same probe as M (its daemon stopped) gets the heads and every block, so
            # the refusals above are the access checks, not a probe that cannot read
            dm.stop()
            reply, got = _probe_sync(o.addr, nm.identity.seed, rid, every)
            assert reply is not None and reply.refused is None and reply.genesis == genesis.cid and reply.heads
            assert got == every
            heads = {str(a.head) for a in map(m.decode, reply.heads) if isinstance(a, m.HeadAnnouncement)}
            assert str(r2.cid) in heads, json.dumps(sorted(heads))
    finally:
        for n in (no, nm, nf, nn):
            n.close()
