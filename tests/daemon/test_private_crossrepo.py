"""A followed public repository's commit naming another repository's private blocks, against real
daemons on 127.0.0.1.

Node A owns a private repository R and follows a public repository P of X's. X knows the CIDs of
R's blocks (read here from A's store: learned in an earlier public period, or guessed) and pushes
two commits of P, signed with its own key: one whose weights field IS R's manifest, one whose own
manifest (which X serves) names R's tensor files. A already holds every block they name. A must
not tag them with P on the commits' word (then it would serve them to anyone as P's): it asks P's
providers for them again, X cannot serve them, the fetches stay incomplete, no ref of P moves, and
X's raw requests for R's blocks over ``/fednode/blocks/1.0.0`` afterwards get none of them (while
the same request gets P's blocks).
"""

from __future__ import annotations

import time
from pathlib import Path

from daemon_harness import DaemonProc, daemons, make_home, open_nodes, ref, wait_for
from helpers import model_arrays, perturb
from rawpeer import ask, closure

from fednode.history import RepoInfo, refstore, repo_id_text
from fednode.node import Node
from fednode.tensors.modelio import ArraySource
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, Manifest

FETCH_ENDS = {"fetch_incomplete", "fetch_complete", "fetch_refused", "fetch_refused_deep", "fetch_error"}


def _forge(x: Node, public: RepoInfo, branch: str, weights: CID, manifest: bytes | None) -> CID:
    """X's signed commit of ``public`` on ``branch`` (over the genesis) with ``weights``, written to X's
    store with its own manifest when given (never R's blocks: X does not hold them)."""
    head = public.genesis
    parent = x.history.load_commit(head)
    commit = Commit(public.repo_id, (head,), "update", weights, x.identity.public_key, parent.time_ms + 1,
                    "nothing to see here", {}, {}, b"", (parent.commit_hash(),))
    commit = Commit(**{**commit.__dict__, "sig": x.identity.sign(commit.commit_hash())})
    cid, block = commit.cid(), commit.encode()
    with x.store.write() as txn:
        if manifest is not None:
            txn.put_block(weights, manifest)
            txn.tag_block(weights, public.repo_id)
        txn.put_block(cid, block)
        txn.tag_block(cid, public.repo_id)
        txn.index_commit(cid, public.repo_id, commit.commit_hash())
        refstore.set_branch(txn, public.repo_id, branch, cid)
    return cid


async def test_a_followed_repository_cannot_claim_private_blocks(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in ("a", "x")]
    na, nx = open_nodes(*homes)
    try:
        base = model_arrays(0)
        secret, _ = na.history.create_repo("secret", ArraySource(base))  # private: the default
        r1 = na.history.commit(secret, ArraySource(perturb(base, 1)), "round 1")
        rid = secret.repo_id
        public, _ = nx.history.create_repo("open", ArraySource(model_arrays(7)), visibility="public")
        pid = public.repo_id
        secret_cids = closure(na, rid)
        r1_manifest = na.history.load_commit(r1.cid).weights
        genesis_files = {n: e for n, e in na.history.load_manifest(
            na.history.load_commit(secret.genesis).weights).tensors.items()}
        assert len(secret_cids) > 10 and r1_manifest in secret_cids
        assert all(e.encoding == "raw" and e.cid in secret_cids for e in genesis_files.values())
        with na.store.read() as txn:
            assert all(txn.block_repos(c) == [rid] for c in secret_cids)

        a = DaemonProc(homes[0]).start()
        x = DaemonProc(homes[1], (a.addr,))
        with daemons(a, x):
            x.start()
            a.api("POST", "/clone", {"repo": repo_id_text(pid), "peers": [x.addr], "timeout": 30})
            wait_for(lambda: ref(na, pid, "heads/main") == public.genesis, 30, "A to clone P")
            public_cids = closure(na, pid)
            wait_for(lambda: a.api("GET", "/status")["pending_fetches"] == 0, 10, "A to settle")
            topic = m.topic_for(pid)
            wait_for(lambda: any(p["peer_id"] == a.peer_id and topic in p["topics"] for p in x.api("GET", "/peers")),
                     20, "X to see A on P's topic", interval=0.2)

            # 1. weights = R's manifest; 2. X's own manifest (served by X) naming R's tensor files
            forged_main = _forge(nx, public, "main", r1_manifest, None)
            renamed = Manifest({f"x.{n}": e for n, e in genesis_files.items()}).encode()
            forged_side = _forge(nx, public, "side", CID.hash(DAG_CBOR, renamed), renamed)
            forged = {forged_main, forged_side}
            x.api("POST", "/push", {"repo": "open"})

            def ended() -> bool:
                roots = {e.get("root") for e in a.log_events() if e.get("event") in FETCH_ENDS}
                return {str(c) for c in forged} <= roots

            wait_for(ended, 60, "A's fetches of X's forged commits to end", interval=0.2)
            time.sleep(1.0)  # a completed fetch's apply (verify, ref move) would follow at once

            with na.store.read() as txn:
                tagged = [c for c in secret_cids if pid in txn.block_repos(c)]
                assert not tagged, f"{len(tagged)} of R's private blocks were tagged with public P"
                assert all(txn.block_repos(c) == [rid] for c in secret_cids)
                p_refs = {name: CID.from_bytes(v) for name, v in txn.list_refs(pid).items() if name != "HEAD"}
            assert p_refs["heads/main"] == public.genesis  # the fetch could not complete: no move
            assert "heads/side" not in p_refs
            assert not forged & set(p_refs.values()), p_refs
            incomplete = {e["root"] for e in a.log_events() if e.get("event") == "fetch_incomplete"}
            assert {str(c) for c in forged} <= incomplete

            # X (its daemon stopped: its own peer id) asks A for R's blocks: none; P's: all
            x.stop()
            served, _ = await ask(nx.identity.seed, a.addr, secret_cids + public_cids)
            assert not set(served) & set(secret_cids), "A served R's private blocks to X"
            assert set(served) == set(public_cids)
    finally:
        for n in (na, nx):
            n.close()
