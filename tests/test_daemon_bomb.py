"""A UnixFS DAG bomb against a real daemon (issue 10, item 4).

The owner's daemon A (a second process, the hostile side here) holds a commit it signed whose
manifest entry for a 1 KiB tensor points at a DAG bomb: 5 blocks whose links expand to 174^4
leaves. Victim B clones the repository, fetches that head and must refuse it in under a second
(the old unbounded size walk ran ~1.5 h on the event loop), answering ``/status`` within 1 s all
along; it keeps its branch at the genesis, records nothing for the bomb and bans the owner's peer
(``ban_threshold = 1``), who signed the announcement of that head.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from test_daemon_harness import DaemonProc, daemons, has_block, make_home, open_nodes, ref, wait_for
from test_unixfs import dag_bomb

from fednode.history import repo_id_text
from fednode.modelio import ArraySource
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, Manifest


def _bomb_commit(node, rid: bytes, parent_cid: CID) -> tuple[CID, CID]:  # noqa: ANN001
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
        info, created = na.history.create_repo("m", ArraySource({"w": ("F32", np.ones(256, np.float32))}))
        rid, genesis = info.repo_id, created.cid
        bomb_head, bomb_root = _bomb_commit(na, rid, genesis)
        config = homes[1] / "config.toml"
        config.write_text(config.read_text().replace("mdns = false", "mdns = false\nban_threshold = 1"))
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        with daemons(a, b):
            b.start()
            with StatusProbe(b) as probe:
                b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 20}, timeout=30)
                wait_for(lambda: any(e.get("event") == "head_verify_failed" for e in b.log_events()), 20,
                         "B to refuse the bomb")
                time.sleep(0.5)  # a few more probes after the refusal
            events = b.log_events()
            fetched = next(e for e in events if e.get("event") == "fetch_complete" and e.get("root") == str(bomb_head))
            refused = next(e for e in events if e.get("event") == "head_verify_failed")
            took = refused["ts"] - fetched["ts"]
            print(f"bomb refused {took * 1000:.0f} ms after its fetch completed; slowest /status "
                  f"{probe.worst * 1000:.0f} ms of {probe.count}; problem: {refused['problem']}")
            assert took < 1.0 and "declares" in refused["problem"]
            assert probe.count > 5 and probe.worst < 1.0
            assert a.peer_id in b.api("GET", "/status")["bans"]
            assert b.api("GET", "/status")["bans"][a.peer_id]["reason"] == "verify_failed"
        # nothing of the bomb's commit is referenced or recorded as verified
        assert ref(nb, rid, "heads/main") == genesis
        with nb.store.read() as txn:
            refs = txn.list_refs(rid)
        assert bytes(bomb_head) not in refs.values()
        from fednode.daemon.state import NetState

        assert not NetState(nb.store).is_verified(rid, bomb_head)
        assert has_block(nb, bomb_root)  # it was fetched (5 small blocks), and refused
    finally:
        for n in (na, nb):
            n.close()
