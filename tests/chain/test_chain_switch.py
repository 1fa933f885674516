"""Anchors never go to the wrong chain (issue 11 item 5), and an embedded chain's limits are named
(item 6). Real `fednode daemon` and `fednode devchain` processes on 127.0.0.1: a running daemon
picks up `fednode chain use`; every queued item goes only to the chain it was queued for; items
waiting for another chain are shown by `chain status` and can be retargeted."""

from __future__ import annotations

import time
from pathlib import Path

from daemon_harness import DaemonProc, daemons, make_home, wait_for
from helpers import assert_one_line_error, copy_home, model_arrays, perturb, run_fednode, write_model
from test_devchain import copy_branch, devchain, fed_json, program_cache  # noqa: F401  (fixtures)

from fednode.chain import outbox
from fednode.storage.store import Store

FLUSH = 0.3  # the daemons' flush interval here (seconds)


def fast_flush(home: Path) -> None:
    config = home / "config.toml"
    text = config.read_text()
    assert 'backend = "embedded"\n' in text
    config.write_text(text.replace('backend = "embedded"\n', f'backend = "embedded"\nflush_interval = {FLUSH}\n', 1))


def models(tmp_path: Path, n: int) -> list[str]:
    arrays = model_arrays(0)
    return [write_model(tmp_path / f"m{k}.safetensors", perturb(arrays, k) if k else arrays) for k in range(n)]


def status(home: Path) -> dict:
    return fed_json(home, "chain", "status")


def anchored(home: Path) -> int | None:
    """Commits of the one repository anchored on the chain the home uses now (None: not on it)."""
    (repo,) = status(home)["repos"]
    return repo.get("commit_count")


def test_running_daemon_switches_from_embedded_to_devchain(tmp_path: Path, devchain: str) -> None:  # noqa: F811
    home = make_home(tmp_path, "node")
    fast_flush(home)
    m0, m1, m2 = models(tmp_path, 3)
    run_fednode(home, "repo", "create", "demo", "--from", m0)
    run_fednode(home, "commit", "--from", m1, "-m", "one")
    with daemons(DaemonProc(home).start()) as (d,):
        assert fed_json(home, "anchor", "main", "--no-flush")["queued"] == 3
        wait_for(lambda: status(home)["queue_length"] == 0 and anchored(home) == 2, 30,
                 "the daemon to anchor on its embedded chain")  # fmt: skip
        embedded = status(home)["chain"]
        assert embedded["endpoint"] == "embedded" and embedded["genesis"]
        # Switch while the daemon runs: what is queued now is meant for the devchain.
        switched = run_fednode(home, "chain", "use", "rpc", "--url", devchain).stdout
        assert f"chain backend: rpc {devchain}" in switched
        assert f"flush_interval = {FLUSH}" in (home / "config.toml").read_text()  # node settings kept
        run_fednode(home, "commit", "--from", m2, "-m", "two")
        queued = fed_json(home, "anchor", "main", "--no-flush")
        assert [i["op"] for i in queued["queued_now"]] == ["create_repo", "anchor", "anchor", "anchor"]
        targets = {(i["chain"]["endpoint"], i["chain"]["genesis"]) for i in queued["queued_now"]}
        assert len(targets) == 1 and targets.pop()[1] not in (None, embedded["genesis"])
        wait_for(lambda: status(home)["queue_length"] == 0, 30, "the daemon to send the queue to the devchain")
        here = status(home)
        assert here["chain"]["endpoint"] == devchain and here["repos"][0]["commit_count"] == 3
        assert "3 commits match" in run_fednode(home, "chain", "verify", "main").stdout
        # The embedded chain never saw the commit queued after the switch.
        run_fednode(home, "chain", "use", "embedded")
        back = status(home)
        assert back["chain"]["genesis"] == embedded["genesis"] and back["repos"][0]["commit_count"] == 2

        def switches() -> list[str]:
            return [e["backend"] for e in d.log_events() if e["event"] == "chain_backend_changed"]

        wait_for(lambda: switches() == ["rpc", "embedded"], 10, "the daemon to log both switches")
        assert not [e for e in d.log_events() if e["event"] == "chain_flush_failed"]


def test_queued_items_wait_for_their_chain(tmp_path: Path, devchain: str) -> None:  # noqa: F811
    home = make_home(tmp_path, "node")
    fast_flush(home)
    m0, m1 = models(tmp_path, 2)
    run_fednode(home, "repo", "create", "demo", "--from", m0)
    run_fednode(home, "commit", "--from", m1, "-m", "one")
    for_embedded = fed_json(home, "anchor", "main", "--no-flush")["queued_now"]  # no daemon yet
    assert len(for_embedded) == 3 and {i["chain"]["endpoint"] for i in for_embedded} == {"embedded"}
    run_fednode(home, "chain", "use", "rpc", "--url", devchain)
    with daemons(DaemonProc(home).start()) as (d,):
        # The devchain gets the same commits queued for it; the daemon sends only those.
        queued = fed_json(home, "anchor", "main", "--no-flush")
        assert len(queued["queued_now"]) == 3 and queued["queued"] == 6
        wait_for(lambda: anchored(home) == 2 and status(home)["queue_length"] == 3, 30,
                 "the daemon to anchor the devchain's items")  # fmt: skip
        time.sleep(6 * FLUSH)  # several more flush cycles: the embedded chain's items stay
        waiting = status(home)
        assert waiting["queue_length"] == 3 and waiting["waiting_for_other_chain"] == 3
        assert [(i["op"], i["cid"]) for i in waiting["queue"]] == [(i["op"], i["cid"]) for i in for_embedded]
        assert {(i["placement"], i["chain"]["endpoint"]) for i in waiting["queue"]} == {("other", "embedded")}
        text = run_fednode(home, "chain", "status").stdout
        assert "3 item(s), 3 waiting for another chain" in text and "[waiting for chain embedded (genesis" in text
        assert "fednode chain retarget --all" in text
        flushed = fed_json(home, "chain", "flush")  # by hand: the same rule
        assert flushed["sent"] == [] and flushed["held"] == 3 and flushed["error"] is None
        # Back on the embedded chain, the daemon sends them there, and only there.
        run_fednode(home, "chain", "use", "embedded")
        wait_for(lambda: status(home)["queue_length"] == 0, 30, "the daemon to send them to the embedded chain")
        assert anchored(home) == 2
        assert not [e for e in d.log_events() if e["event"] == "chain_flush_failed"]
    run_fednode(home, "chain", "use", "rpc", "--url", devchain)
    assert anchored(home) == 2  # the devchain kept its own two anchors, nothing more


def test_unbound_items_are_held_until_retargeted(tmp_path: Path) -> None:
    """An item queued before chains were recorded is sent nowhere until `chain retarget` binds it."""
    home = make_home(tmp_path, "node")
    (m0,) = models(tmp_path, 1)
    run_fednode(home, "repo", "create", "demo", "--from", m0)
    queued = fed_json(home, "anchor", "main", "--no-flush")["queued_now"]
    with Store(home / "store") as store, store.write() as txn:  # as an older fednode wrote them
        for item in outbox.items(txn):
            item.chain = None
            outbox.save(txn, item)
    listed = status(home)
    assert {i["placement"] for i in listed["queue"]} == {"unbound"} and listed["waiting_for_other_chain"] == 2
    assert "bound to no chain" in run_fednode(home, "chain", "status").stdout
    held = fed_json(home, "chain", "flush")
    assert held["sent"] == [] and held["held"] == 2 and held["queued"] == 2
    bad = run_fednode(home, "chain", "retarget", str(queued[0]["seq"]), "99", check=False)
    assert bad.returncode == 1
    assert_one_line_error(bad.stderr, "no queued item #99")
    assert status(home)["waiting_for_other_chain"] == 2  # nothing changed
    assert "retargeted 2 item(s) to embedded" in run_fednode(home, "chain", "retarget", "--all").stdout
    sent = fed_json(home, "chain", "flush")
    assert [s["op"] for s in sent["sent"]] == ["create_repo", "anchor"] and sent["queued"] == 0


def test_embedded_chain_errors_name_a_shared_chain(tmp_path: Path) -> None:
    """Each node's embedded chain is its own: a member cannot see the owner's anchors, the owner
    cannot see the member's. The errors say so and name `fednode devchain` or a cluster URL."""
    owner = make_home(tmp_path, "owner")
    m0, m1 = models(tmp_path, 2)
    run_fednode(owner, "repo", "create", "demo", "--from", m0)
    member = tmp_path / "member"
    copy_home(owner, member)  # the repository, before anything is anchored anywhere
    run_fednode(member, "init", "--force")
    run_fednode(owner, "anchor", "main")
    checked = run_fednode(member, "verify", "--chain", "main", check=False)
    assert checked.returncode == 1
    error = checked.stderr.splitlines()[-1]  # after the problem lines, as for every verify
    assert error.startswith("error: verify --chain failed") and "Traceback" not in checked.stderr
    for needle in ("not on chain", "its own embedded chain", "fednode devchain", "cluster URL"):
        assert needle in error
    refused = run_fednode(member, "anchor", "main", check=False)
    assert refused.returncode == 1
    assert_one_line_error(refused.stderr, "only its genesis author", "fednode devchain", "cluster URL")
    # The owner holds the member's branch: its commit is on no chain the owner can see.
    run_fednode(member, "branch", "alice", "main")
    run_fednode(member, "commit", "-b", "alice", "--from", m1, "-m", "member update")
    copy_branch(member, owner, "demo", "alice")
    report = run_fednode(owner, "chain", "verify", "alice", check=False)
    assert report.returncode == 1
    assert "commits by other nodes are not anchored on this chain" in report.stderr
    assert "fednode devchain" in report.stderr and "cluster URL" in report.stderr
