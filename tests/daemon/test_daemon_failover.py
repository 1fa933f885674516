"""Block exchange under failure: a provider killed mid-transfer, a fetcher killed and restarted."""

from __future__ import annotations

from pathlib import Path

from daemon_harness import DaemonProc, big_model, daemons, make_home, open_nodes, ref, wait_for

from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource
from fednode.workflows.fsck import fsck

DELAY = {"FEDNODE_BLOCK_SERVE_DELAY": "0.04"}  # ~40 ms per 256 KiB block: slow enough to interrupt


def test_fetch_survives_provider_kill_and_own_restart(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    try:
        info, genesis = na.history.create_repo("big", ArraySource(big_model(0)), visibility="public")
        rid = info.repo_id
        a = DaemonProc(homes[0], env=DELAY).start()
        b = DaemonProc(homes[1], (a.addr,), env=DELAY)
        c = DaemonProc(homes[2], (a.addr,))
        with daemons(a, b, c):
            b.start()
            b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
            assert ref(nb, rid, "heads/main") == genesis.cid
            c.bootstrap = (a.addr, b.addr)
            c.start()
            wait_for(lambda: c.api("GET", "/status")["peers"] == 2, 10, "C to connect to A and B")
            served = {d.peer_id: d.metrics()["blocks_out"] for d in (a, b)}
            # C clones; kill whichever peer is serving it once a few blocks went through
            import threading

            result: dict = {}
            thread = threading.Thread(target=lambda: result.update(
                c.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 60})))
            thread.start()

            def serving() -> DaemonProc | None:
                for d in (a, b):
                    if d.metrics()["blocks_out"] - served[d.peer_id] >= 4:
                        return d
                return None

            victim = wait_for(serving, 10, "a provider to start serving C", interval=0.01)
            victim.kill()
            thread.join(timeout=60)
            assert result.get("refs", {}).get("heads/main") == str(genesis.cid), result
            assert not fsck(nc.history).problems
            events = [e["event"] for e in c.log_events()]
            assert "blocks_transfer_interrupted" in events

            # the owner's history moves on while C is down; C is SIGKILLed in the middle of catching
            # up, restarted, and resumes the fetch recorded in its net db
            if victim is a:
                a.bootstrap = (b.addr,)
            victim.start()  # C dials A and B at once: either may have been serving it
            assert c.stop() == 0
            r1 = na.history.commit(na.history.repo("big"), ArraySource(big_model(1)), "new weights", encoding="fp16")
            a.api("POST", "/push", {"repo": "big"})
            wait_for(lambda: ref(nb, rid, "heads/main") == r1.cid, 30, "B to take the update")
            c.start()
            wait_for(lambda: c.metrics()["blocks_in"] >= 5, 15, "C to start fetching", interval=0.01)
            c.kill()
            with nc.store.read() as txn:
                unfinished = txn.kv_items("net", b"fetch/")
            assert unfinished, "an interrupted fetch is recorded in the net db"
            c.start()
            wait_for(lambda: ref(nc, rid, "heads/main") == r1.cid, 30, "C to finish after restart")
            assert any(e["event"] == "fetch_resumed" for e in c.log_events())
            assert not fsck(nc.history).problems

            def no_fetch_left() -> bool:  # a heads exchange may have queued r1 again meanwhile: it ends too
                with nc.store.read() as txn:
                    return not txn.kv_items("net", b"fetch/")

            wait_for(no_fetch_left, 15, "C's fetch records to be cleared")
    finally:
        for n in (na, nb, nc):
            n.close()
