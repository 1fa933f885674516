"""Two daemons anchoring to one `fednode devchain`: queued anchors go out from the daemons' own
flush loops (nobody runs `chain flush`), and a member's commit cloned over libp2p is anchored by
the member's daemon after the owner admits it on chain."""

from __future__ import annotations

from pathlib import Path

from daemon_harness import DaemonProc, daemons, make_home, wait_for
from helpers import model_arrays, perturb, run_fednode, write_model
from test_devchain import devchain, fed_json, program_cache  # noqa: F401  (fixtures)


def use_devchain(home: Path, url: str) -> None:
    run_fednode(home, "chain", "use", "rpc", "--url", url)
    config = home / "config.toml"
    config.write_text(config.read_text().replace("[chain]\n", "[chain]\nflush_interval = 0.3\n", 1))


def test_two_daemons_anchor_through_one_devchain(tmp_path: Path, devchain: str) -> None:  # noqa: F811
    owner, member = make_home(tmp_path, "owner"), make_home(tmp_path, "member")
    for home in (owner, member):
        use_devchain(home, devchain)
    arrays = model_arrays(0)
    run_fednode(owner, "repo", "create", "demo", "--from", write_model(tmp_path / "m0.safetensors", arrays))
    repo_id = fed_json(owner, "repo", "list")[0]["id"]
    member_addr = fed_json(member, "id")["address"]
    with daemons(DaemonProc(owner).start()) as (a,):
        queued = fed_json(owner, "anchor", "main", "--no-flush")
        assert queued["queued"] == 2  # create_repo + genesis, left to the daemon

        def owner_flushed() -> bool:
            status = fed_json(owner, "chain", "status")
            return status["queue_length"] == 0 and status["repos"] and status["repos"][0]["commit_count"] == 1

        wait_for(owner_flushed, 30, "the owner's daemon to anchor the genesis")
        added = run_fednode(owner, "members", "add", member_addr).stdout
        assert "network: 1 member(s)" in added and "chain: added 1 member(s)" in added
        listed = fed_json(owner, "members", "list")
        assert listed["network"]["members"] == [member_addr] and listed["chain"]["members"] == [member_addr]
        with daemons(DaemonProc(member, bootstrap=(a.addr,)).start()) as (b,):
            b.api("POST", "/clone", {"repo": repo_id, "peers": [a.addr]})
            run_fednode(member, "repo", "use", "demo")
            refused = run_fednode(member, "members", "add", member_addr, check=False)
            assert refused.returncode == 1 and "only the repository owner" in refused.stderr
            run_fednode(member, "branch", "alice", "main")
            run_fednode(member, "commit", "-b", "alice", "--from",
                        write_model(tmp_path / "m1.safetensors", perturb(arrays, 1)), "-m", "member update")
            assert fed_json(member, "anchor", "alice", "--no-flush")["queued"] == 1

            def member_flushed() -> bool:
                return fed_json(member, "chain", "status")["queue_length"] == 0

            wait_for(member_flushed, 30, "the member's daemon to anchor its commit")
            assert "2 commits match" in run_fednode(member, "chain", "verify", "alice").stdout
            status = fed_json(owner, "chain", "status")
            assert status["repos"][0]["commit_count"] == 2
