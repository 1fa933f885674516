"""Weights follow their commits through a line of relays, and late announcements change nothing.

A burst of owner commits makes every node fetch one job per announcement; the jobs end out of
order. Before, a job for an older head that ended after a newer one's wrote
``remotes/<owner>/main`` (the owner's main "diverged" from itself: 116 such refs in a 10-node
bench run). Real daemons in a line A - B - C (C reaches A only through B).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from daemon_harness import DaemonProc, daemons, make_home, open_nodes, ref, wait_for

from fednode.history import repo_id_text
from fednode.tensors.modelio import ArraySource

BURST = 12


def test_a_burst_reaches_the_end_of_a_line_and_leaves_no_stale_remote_refs(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in "abc"]
    na, nb, nc = open_nodes(*homes)
    try:
        rng = np.random.default_rng(0)
        base = rng.standard_normal(20_000).astype(np.float32)
        info, _ = na.history.create_repo("line", ArraySource({"w": ("F32", base)}), visibility="public")
        rid = info.repo_id
        a = DaemonProc(homes[0])
        with daemons(a):
            a.start()
            b = DaemonProc(homes[1], (a.addr,))
            with daemons(b):
                b.start()
                b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
                c = DaemonProc(homes[2], (b.addr,))
                with daemons(c):
                    c.start()
                    c.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
                    wait_for(lambda: len(c.api("GET", "/peers")) >= 1, 10, "C to connect to B")
                    last = None
                    for k in range(BURST):  # every commit changes every value: each fetch moves real weights
                        arr = base + np.float32(0.001 * (k + 1))
                        last = na.history.commit(info, ArraySource({"w": ("F32", arr)}), f"c{k}").cid
                        a.api("POST", "/push", {"repo": "line"})
                    for node in (nb, nc):
                        wait_for(lambda node=node: ref(node, rid, "heads/main") == last, 30,
                                 "the last commit to move main at the end of the line")
                    wait_for(lambda: not b.api("GET", "/status")["pending_fetches"]
                             and not c.api("GET", "/status")["pending_fetches"], 10, "fetches to settle")
                    for d in (b, c):  # finished jobs are dropped (a daemon runs for months)
                        assert d.api("GET", "/status")["fetch_jobs_held"] == 0
                    for node in (nb, nc):
                        with node.store.read() as txn:
                            assert txn.list_refs(rid, "remotes/") == {}  # the owner only fast-forwarded main
                        assert ref(node, rid, "heads/main") == last
    finally:
        for n in (na, nb, nc):
            n.close()
