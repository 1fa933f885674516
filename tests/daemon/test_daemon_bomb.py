"""A UnixFS DAG bomb against a real daemon, and against the daemon's verification (issue 10, item 4).

The owner's daemon A (a second process, the hostile side here) holds a commit it signed whose
manifest entry for a 1 KiB tensor points at a DAG bomb: 5 blocks whose links expand to 174^4
leaves. Victim B clones the repository, fetches that head and must refuse it in under a second
(the old unbounded size walk ran ~1.5 h on the event loop), answering ``/status`` within 1 s all
along; it keeps its branch at the genesis, stores nothing of the bomb and bans A (``ban_threshold
= 1``), which served a file root that disagrees with its manifest. The fetcher refuses it first;
the second test shows that verification (``Applier.apply``), the next line of defence, refuses the
same commit when its blocks are already in the store, in milliseconds, and penalizes its signer.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from daemon_harness import DaemonProc, daemons, has_block, make_home, network_config, open_nodes, ref, wait_for
from helpers import dag_bomb

from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, Manifest


def _bomb_commit(node, rid: bytes, parent_cid: CID) -> tuple[CID, CID]:
    """Store a signed commit on ``heads/main`` whose tensor "w" is a DAG bomb; (commit, bomb root)."""
    history = node.history
    parent = history.load_commit(parent_cid)
    entry = history.load_manifest(parent.weights).tensors["w"]
    root, blocks = dag_bomb()
    manifest = Manifest({"w": dataclasses.replace(entry, cid=root, state=root)})
    commit = history._signed(Commit(
        repo=rid, parents=(parent_cid,), parent_hashes=(parent.commit_hash(),), kind="update",
        weights=CID.hash(DAG_CBOR, manifest.encode()), author=node.identity.public_key,
        time_ms=parent.time_ms + 1, message="a bomb"))
    with node.store.write() as txn:
        for cid, block in blocks.items():
            txn.put_block(cid, block)
        history._put_objects(txn, manifest, commit)
        txn.set_ref(rid, "heads/main", bytes(commit.cid()))
    return commit.cid(), root


class StatusProbe:
    """Asks ``/status`` every 50 ms in a thread; records the slowest answer (a failure counts as 99 s)."""

    def __init__(self, d: DaemonProc) -> None:
        self.d, self.worst, self.count = d, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        token = (self.d.home / "api.token").read_text().strip()
        url = f"http://127.0.0.1:{self.d.info['api_port']}/status"
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                ok = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.worst = max(self.worst, time.monotonic() - start if ok else 99.0)
            self.count += 1
            self._stop.wait(0.05)

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_a_dag_bomb_is_refused_at_once_and_the_daemon_stays_responsive(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "ab"]
    na, nb = open_nodes(*homes)
    try:
        info, created = na.history.create_repo("m", ArraySource({"w": ("F32", np.ones(256, np.float32))}),
                                                  visibility="public")
        rid, genesis = info.repo_id, created.cid
        bomb_head, bomb_root = _bomb_commit(na, rid, genesis)
        network_config(homes[1], ban_threshold=1)
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        with daemons(a, b):
            b.start()
            with StatusProbe(b) as probe:
                b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 20}, timeout=30)
                wait_for(lambda: a.peer_id in b.api("GET", "/status")["bans"], 20, "B to ban the bomb's provider")
                time.sleep(0.5)  # a few more probes after the refusal
            events = b.log_events()
            cloned = next(e for e in events if e.get("event") == "repo_cloned")
            banned = next(e for e in events if e.get("event") == "peer_banned")
            took = banned["ts"] - cloned["ts"]  # the head's fetch starts once the genesis is in
            print(f"bomb refused {took * 1000:.0f} ms after the clone's genesis; slowest /status "
                  f"{probe.worst * 1000:.0f} ms of {probe.count}")
            assert took < 1.0 and banned["last_reason"] == "bad_dag"
            assert probe.count > 5 and probe.worst < 1.0
        # nothing of the bomb's commit is referenced or recorded as verified
        assert ref(nb, rid, "heads/main") == genesis
        with nb.store.read() as txn:
            refs = txn.list_refs(rid)
        assert bytes(bomb_head) not in refs.values()
        from fednode.storage.netstate import NetState

        assert not NetState(nb.store).is_verified(rid, bomb_head)
        assert not has_block(nb, bomb_root)  # refused as it arrived: it declares 174^4 KiB, not 1 KiB
    finally:
        for n in (na, nb):
            n.close()


def test_verifying_a_stored_bomb_takes_milliseconds_and_penalizes_its_announcer(tmp_path: Path) -> None:
    import trio
    from test_daemon_verify import announce, apply, fake_daemon

    (node,) = open_nodes(make_home(tmp_path, "a"))
    try:
        info, created = node.history.create_repo("m", ArraySource({"w": ("F32", np.ones(256, np.float32))}),
                                                  visibility="public")
        bomb_head, _ = _bomb_commit(node, info.repo_id, created.cid)
        with node.store.write() as txn:  # as if the bomb had just been fetched
            txn.set_ref(info.repo_id, "heads/main", bytes(created.cid))
        d = fake_daemon(node.history)
        penalties: list[tuple[object, str]] = []
        d.penalize = lambda peer, reason: penalties.append((peer, reason))
        start = time.monotonic()
        trio.run(apply, d, info.repo_id, announce(node.identity, info.repo_id, bomb_head, 1))
        took = time.monotonic() - start
        assert took < 1.0, took
        assert d.metrics.rejected["verify_failed"] == 1 and [r for _, r in penalties] == ["verify_failed"]
        assert ref(node, info.repo_id, "heads/main") == created.cid
        assert not d.state.is_verified(info.repo_id, bomb_head)
    finally:
        node.close()


def test_verification_runs_beside_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However long a fetched head takes to verify (here: 1 s per commit, simulated), the event
    loop keeps running: the real ``Fetcher.run_reading`` hands verification to a worker thread."""
    import trio
    from test_daemon_verify import announce, apply, fake_daemon

    from fednode.daemon.exchange import Fetcher
    from fednode.daemon.metrics import Metrics

    (node,) = open_nodes(make_home(tmp_path, "a"))
    try:
        info, created = node.history.create_repo("m", ArraySource({"w": ("F32", np.ones(256, np.float32))}),
                                                  visibility="public")
        d = fake_daemon(node.history)
        d.fetcher = Fetcher(None, node.store, Metrics(), d.penalize)  # type: ignore[arg-type]
        check_commit = node.history.check_commit

        def slow(*args, **kw) -> list[str]:
            time.sleep(1.0)
            return check_commit(*args, **kw)

        monkeypatch.setattr(node.history, "check_commit", slow)
        gaps: list[float] = []

        async def main() -> None:
            async def tick() -> None:
                last = trio.current_time()
                while True:
                    await trio.sleep(0.02)
                    gaps.append(trio.current_time() - last)
                    last = trio.current_time()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tick)
                await apply(d, info.repo_id, announce(node.identity, info.repo_id, created.cid, 1))
                nursery.cancel_scope.cancel()

        trio.run(main)
        assert d.state.is_verified(info.repo_id, created.cid)  # it did verify, for a second
        assert len(gaps) > 20 and max(gaps) < 0.3, (len(gaps), max(gaps, default=None))
    finally:
        node.close()
