"""Integrity tools that tell the truth: fsck and gc with unfinished fetches, fetch expiry, fsck --repair.

Real LMDB stores; damage is done to the stored bytes directly, behind the store's back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_arrays, fixed_identity, model_arrays, read_model, run_fednode, write_model

from fednode.history import History
from fednode.node import Node, open_node
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows.fsck import fsck, gc
from protocol.multiformats import CID, RAW
from protocol.unixfs import decode_node

Arrays = dict[str, tuple[str, np.ndarray]]


def big_arrays(seed: int = 7) -> Arrays:
    """~1 MB: a DAG-PB root over 4 raw leaves, so a fetch can stop halfway."""
    rng = np.random.default_rng(seed)
    return {"big": ("F32", rng.standard_normal(250_000).astype(np.float32)), **model_arrays(seed)}


def leaves_of(store: Store, history: History, commit: CID, name: str = "big") -> tuple[CID, list[CID]]:
    entry = history.load_manifest(history.load_commit(commit).weights).tensors[name]
    assert entry.cid is not None
    with store.read() as txn:
        leaves, _ = decode_node(txn.get_block(entry.cid))
    assert len(leaves) == 4 and all(c.codec == RAW for c in leaves)
    return entry.cid, leaves


def corrupt(store: Store, cid: CID) -> None:
    """Flip one byte of a stored block in LMDB (bit rot: the key stays, the bytes change)."""
    with store.write() as txn:
        block = bytearray(txn.get_block(cid))
        block[len(block) // 2] ^= 0x01
        holders = txn.block_repos(cid)  # the bytes rot, not the block index beside them
        txn.delete_block(cid)
        txn.put_block(cid, bytes(block), trusted=True)
        for repo_id in holders:
            txn.tag_block(cid, repo_id)


def partial_clone(node: Node, tmp_path: Path) -> tuple[CID, list[CID]]:
    """The state a daemon killed mid-clone leaves: the genesis of another node's repository, its
    manifest, the tensor roots and 2 of 4 leaves of its big tensor, and the fetch record."""
    src = Store(tmp_path / "src-store")
    try:
        history = History(src, fixed_identity(bytes(range(2, 34))))
        info, result = history.create_repo("theirs", ArraySource(big_arrays()))
        root, leaves = leaves_of(src, history, result.cid)
        with src.read() as txn:
            blocks = {c: txn.get_block(c) for c in txn.iter_block_cids() if c not in leaves[2:]}
    finally:
        src.close()
    with node.store.write() as txn:
        for cid, block in blocks.items():
            txn.put_block(cid, block)
    NetState(node.store).add_fetch(info.repo_id, result.cid, [], [])
    return result.cid, leaves


@pytest.fixture
def mine(node: Node, tmp_path: Path) -> CID:
    """A complete repository of our own next to whatever a test adds."""
    _, result = node.history.create_repo("mine", ArraySource(model_arrays(0)))
    return result.cid


def test_fsck_reports_an_unfinished_fetch_as_unfinished(node: Node, tmp_path: Path, mine: CID) -> None:
    root, leaves = partial_clone(node, tmp_path)
    report = fsck(node.history)
    assert report.problems == []  # before: "block ... is not in the store" for the 2 leaves not fetched yet
    assert len(report.unfinished) == 1 and str(root) in report.unfinished[0]
    assert "2 missing so far" in report.unfinished[0], report.unfinished
    node.close()
    done = run_fednode(node.home, "fsck")  # exit status 0
    assert "1 fetch(es) unfinished" in done.stdout and "fsck: 1 commits ok" in done.stdout
    data = json.loads(run_fednode(node.home, "fsck", "--json").stdout)
    assert data["ok"] and data["problems"] == [] and str(root) in data["unfinished"][0]


def test_fsck_still_fails_on_real_damage_next_to_an_unfinished_fetch(node: Node, tmp_path: Path, mine: CID) -> None:
    root, leaves = partial_clone(node, tmp_path)
    corrupt(node.store, leaves[0])  # a block the fetcher stored, now rotten: damage, not progress
    problems = fsck(node.history).problems
    assert problems == [f"block {leaves[0]} does not match its hash"]
    with node.store.write() as txn:  # a block missing below a branch head is damage too
        txn.delete_block(node.history.load_commit(mine).weights)
    node.close()
    failed = run_fednode(node.home, "fsck", check=False)
    assert failed.returncode == 1 and "is not in the store" in failed.stderr


def test_gc_keeps_the_partial_data_of_unfinished_fetches(node: Node, tmp_path: Path, mine: CID) -> None:
    root, leaves = partial_clone(node, tmp_path)
    with node.store.write() as txn:  # real garbage next to it
        txn.put_block(CID.hash(RAW, b"garbage"), b"garbage")
    with node.store.read() as txn:
        before = {bytes(c) for c in txn.iter_block_cids()}
    assert gc(node.history) == (1, 7)  # before: refused ("fsck found problems")
    with node.store.read() as txn:
        after = {bytes(c) for c in txn.iter_block_cids()}
        assert txn.has_block(root) and txn.has_block(leaves[0]) and txn.has_block(leaves[1])
    assert before - after == {bytes(CID.hash(RAW, b"garbage"))}
    NetState(node.store).done_fetch(node.history.repos()[0].repo_id, root)  # not this repo: no-op
    assert gc(node.history) == (0, 0)
    repo_id = node.history.load_commit(root).commit_hash()
    NetState(node.store).done_fetch(repo_id, root)  # the fetch is dropped: its data is garbage now
    removed, _ = gc(node.history)
    with node.store.read() as txn:
        assert removed > 0 and not txn.has_block(root) and not txn.has_block(leaves[0])
    assert fsck(node.history).problems == [] and fsck(node.history).unfinished == []


# --- expiry of a head that is never served --------------------------------------------------------------


def test_unfinished_fetches_expire_with_their_announcements(node: Node, tmp_path: Path, mine: CID) -> None:
    from protocol.messages import HeadAnnouncement

    root, _ = partial_clone(node, tmp_path)
    repo_id = node.history.load_commit(root).commit_hash()
    state = NetState(node.store)
    ident = fixed_identity(bytes(range(2, 34)))
    ann = HeadAnnouncement(repo_id, "main", root, 1, 0, ident.public_key)
    ann = HeadAnnouncement(**{**ann.__dict__, "sig": ident.sign(ann.signing_hash())})
    state.put_announcement(ann)
    first = time.time()
    txn_id = node.store._env.info()["last_txnid"]
    assert state.expire_fetches(100, now=first + 50) == []
    assert node.store._env.info()["last_txnid"] == txn_id  # a sweep with nothing to do writes nothing
    assert len(state.fetches()) == 1 and len(state.announcements(repo_id)) == 1
    assert state.expire_fetches(100, now=first + 200) == [(repo_id, root)]
    assert state.fetches() == [] and state.announcements(repo_id) == []  # no longer served to peers
    # the head is announced again: fetched again, but its record keeps its first time, so it goes at
    # the next sweep (a restart or a persistent announcer does not keep it alive forever)
    state.add_fetch(repo_id, root, [], [])
    state.put_announcement(ann)
    node.store.close()
    node.store = Store(node.home / "store")  # a restart: the times are in LMDB
    state = NetState(node.store)
    assert state.expire_fetches(100, now=first + 201) == [(repo_id, root)]
    assert state.announcements(repo_id) == []
    # fsck and gc: an expired record is no root (the CLI passes [network] fetch_expiry_seconds)
    state.add_fetch(repo_id, root, [], [])
    history = History(node.store, node.identity)
    report = fsck(history, fetch_expiry=0.0)
    assert report.unfinished == [] and "expired" in report.expired[0] and str(root) in report.expired[0]
    removed, _ = gc(history, fetch_expiry=0.0)
    with node.store.read() as txn:
        assert removed >= 4 and not txn.has_block(root)
    # a fetch that completes forgets its expiry: a later announcement of it gets a fresh clock
    state.done_fetch(repo_id, root)
    state.add_fetch(repo_id, root, [], [])
    assert state.expire_fetches(100, now=time.time() + 50) == []


def test_fetch_expiry_setting_is_checked(node: Node) -> None:
    node.close()
    config = node.home / "config.toml"
    config.write_text(config.read_text().replace("[network]\n", '[network]\nfetch_expiry_seconds = "x"\n'))
    bad = run_fednode(node.home, "gc", check=False)
    assert bad.returncode == 1 and "fetch_expiry_seconds must be" in bad.stderr


# --- fsck --repair ------------------------------------------------------------------------------------


def test_fsck_repair_from_the_original_file(cli, home: Path, tmp_path: Path) -> None:
    arrays = big_arrays()
    original = write_model(tmp_path / "orig.safetensors", arrays)
    cli("repo", "create", "m", "--from", original)
    with open_node(home) as n:
        _, head = n.history.resolve("m:main")
        _, leaves = leaves_of(n.store, n.history, head)
        corrupt(n.store, leaves[2])
    bad = cli("fsck", ok=False)
    assert bad.exit_code == 1 and f"block {leaves[2]} does not match its hash" in bad.stderr
    # the dedup keeps the bad bytes: adding the very same file again repairs nothing
    cli("repo", "create", "again", "--from", original)
    assert cli("fsck", ok=False).exit_code == 1
    fixed = cli("fsck", "--repair", "--from", original)
    assert "repaired 1 block(s)" in fixed.stdout and "fsck: 2 commits ok" in fixed.stdout
    cli("fsck")
    out = tmp_path / "out.safetensors"
    cli("checkout", "m:main", "--out", out)
    assert_same_arrays(read_model(out), arrays)  # the original bytes, bit for bit


def test_fsck_repair_without_a_source_says_so(cli, home: Path, tmp_path: Path) -> None:
    with open_node(home) as n:
        _, result = n.history.create_repo("m", ArraySource(model_arrays(0)))
        manifest = n.history.load_commit(result.cid).weights
        corrupt(n.store, manifest)  # no model file holds a manifest, and no daemon runs
    other = write_model(tmp_path / "other.safetensors", model_arrays(1))
    bad = cli("fsck", "--repair", "--from", other, ok=False)
    assert bad.exit_code == 1
    assert "not fetching from peers: no daemon is running" in bad.stdout
    assert f"block {manifest} does not match its hash" in bad.stderr
    with open_node(home) as n, n.store.read() as txn:
        assert txn.has_block(manifest)  # nothing deleted when nothing could replace it
    assert cli("fsck", "--from", other, ok=False).exit_code == 1  # --from needs --repair


# --- with real daemons: repair from a peer, expiry at start ----------------------------------------------


def test_fsck_repair_fetches_corrupt_blocks_from_a_peer_and_the_daemon_expires_old_fetches(tmp_path: Path) -> None:
    from daemon_harness import DaemonProc, daemons, make_home, open_nodes

    from fednode.history import repo_id_text
    from protocol import dagcbor

    home_a, home_b = make_home(tmp_path, "a"), make_home(tmp_path, "b")
    na, nb = open_nodes(home_a, home_b)
    try:
        arrays = big_arrays()
        info, genesis = na.history.create_repo("big", ArraySource(arrays), visibility="public")  # B is no member
        # B holds two fetch records from an earlier run: one 3 days old (never served), one fresh
        stale, fresh = CID.hash(RAW, b"never served"), CID.hash(RAW, b"announced a minute ago")
        with nb.store.write() as txn:
            for root, age in ((stale, 3 * 86400), (fresh, 60)):
                record = {"providers": [], "thens": [], "since": int(time.time()) - age}
                txn.kv_put("net", b"fetch/" + info.repo_id + bytes(root), dagcbor.encode(record))
        a = DaemonProc(home_a).start()
        b = DaemonProc(home_b, (a.addr,))
        with daemons(a, b):
            b.start()
            b.api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 30})
            events = b.log_events()
            assert [e["root"] for e in events if e["event"] == "fetch_expired"] == [str(stale)]
            resumed = {e["root"] for e in events if e["event"] == "fetch_resumed"}
            assert str(fresh) in resumed and str(stale) not in resumed
            # bit rot on B: a leaf of the big tensor and the manifest (which no model file holds)
            _, leaves = leaves_of(nb.store, nb.history, genesis.cid)
            manifest = nb.history.load_commit(genesis.cid).weights
            corrupt(nb.store, leaves[1])
            corrupt(nb.store, manifest)
            bad = run_fednode(home_b, "fsck", check=False)
            assert bad.returncode == 1 and "does not match its hash" in bad.stderr
            served = a.metrics()["blocks_out"]
            fixed = run_fednode(home_b, "fsck", "--repair")
            assert "fetched 1 commit closure(s) again from peers" in fixed.stdout, fixed.stdout
            assert "fsck: 1 commits ok" in fixed.stdout
            assert a.metrics()["blocks_out"] - served == 2  # exactly the two damaged blocks
            out = tmp_path / "out.safetensors"
            run_fednode(home_b, "checkout", "big:main", "--out", out)
            assert_same_arrays(read_model(out), arrays)
    finally:
        na.close()
        nb.close()


def test_a_clone_killed_midway_is_unfinished_not_damaged(tmp_path: Path) -> None:
    """SIGKILL a real daemon in the middle of a clone: fsck says unfinished (exit 0), gc keeps what
    arrived, and the restarted daemon resumes the fetch, fetches only the rest and registers the clone."""
    import threading

    from daemon_harness import DaemonProc, daemons, make_home, open_nodes, ref, wait_for

    from fednode.history import repo_id_text

    home_a, home_b = make_home(tmp_path, "a"), make_home(tmp_path, "b")
    na, nb = open_nodes(home_a, home_b)
    try:
        rng = np.random.default_rng(3)  # 48 leaves: the first 32 are stored while 16 more stream in (0.8 s)
        info, genesis = na.history.create_repo("big", ArraySource(
            {"w": ("F32", rng.standard_normal(48 * 65536).astype(np.float32))}), visibility="public")
        total = 48 + 3  # leaves, the DAG-PB root, the manifest, the commit
        a = DaemonProc(home_a, env={"FEDNODE_BLOCK_SERVE_DELAY": "0.05"}).start()
        b = DaemonProc(home_b, (a.addr,))
        with daemons(a, b):
            b.start()
            clone = threading.Thread(target=lambda: _quietly(
                lambda: b.api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 30})))
            clone.start()

            def stored() -> int:
                with nb.store.read() as txn:
                    return sum(1 for _ in txn.iter_block_cids())

            wait_for(lambda: stored() >= 32, 20, "B to store the first batch of leaves")
            b.kill()
            clone.join(timeout=10)
            assert ref(nb, info.repo_id, "genesis") is None  # the clone did not finish
            kept = stored()
            assert kept < total
            fsck = run_fednode(home_b, "fsck")  # exit status 0
            assert f"fetch of {genesis.cid} in {repo_id_text(info.repo_id)} unfinished" in fsck.stdout
            assert json.loads(run_fednode(home_b, "gc", "--json").stdout)["blocks_removed"] == 0
            assert stored() == kept
            served = a.metrics()["blocks_out"]
            b.start()  # the recorded fetch resumes: only what is missing travels, and the clone completes
            wait_for(lambda: ref(nb, info.repo_id, "heads/main") == genesis.cid, 30, "the resumed clone to finish")
            assert nb.history.repo_by_id(info.repo_id).name == "big"
            b.api("POST", "/clone", {"repo": repo_id_text(info.repo_id), "timeout": 30})  # nothing left to do
            assert ref(nb, info.repo_id, "heads/main") == genesis.cid
            assert a.metrics()["blocks_out"] - served <= total - kept
            done = run_fednode(home_b, "fsck")
            assert "unfinished" not in done.stdout and "fsck: 1 commits ok" in done.stdout
    finally:
        na.close()
        nb.close()


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:
        pass


def test_a_running_daemon_expires_a_fetch_and_a_restart_does_not_revive_it(tmp_path: Path) -> None:
    from daemon_harness import DaemonProc, daemons, make_home, wait_for

    home = make_home(tmp_path, "b")
    config = home / "config.toml"
    config.write_text(config.read_text().replace(
        "[network]\n", "[network]\nsync_interval = 0.5\nfetch_expiry_seconds = 2\n"))
    root = CID.hash(RAW, b"announced, never served")
    b = DaemonProc(home)
    with daemons(b):
        b.start()
        with Store(home / "store") as store:  # recorded while it runs (as a fetch it scheduled would be)
            NetState(store).add_fetch(bytes(32), root, [], [])
        wait_for(lambda: any(e["event"] == "fetch_expired" for e in b.log_events()), 10, "the fetch to expire")
        expired = [e for e in b.log_events() if e.get("root") == str(root)]
        assert [e["event"] for e in expired] == ["fetch_expired"] and expired[0]["age_seconds"] >= 2
        assert b.stop() == 0
        b.start()  # a restart: nothing to resume
        assert b.api("GET", "/status")["pending_fetches"] == 0
        assert [e for e in b.log_events() if e.get("root") == str(root)] == expired
    with Store(home / "store") as store:
        assert NetState(store).fetches() == []
