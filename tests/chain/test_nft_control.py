"""Ownership is control, end to end (issue 14, node side): a real `fednode devchain`, three real
daemons on it, the NFT minted and bound with `fednode nft mint` and transferred with
`fednode nft transfer` (Token-2022 transfer_checked + the program's sync_holder). After the
transfer the daemons read the new holder from the chain; an observer accepts the new holder's
signed membership and refuses the former owner's (its daemon never read the binding and comes
back from the transfer unable to reach the chain, so it signs and publishes as if it still owned
the repository); the new holder's merge
anchors through the Anchorer with the four trailing NFT accounts (and moves the metadata head),
while the former owner's merge is refused by the program with NOT_HOLDER."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from daemon_harness import DaemonProc, daemons, network_config, wait_for
from helpers import assert_one_line_error, copy_home, model_arrays, perturb, run_fednode, write_model
from solders.keypair import Keypair
from test_devchain import devchain, fed_json, program_cache  # noqa: F401  (fixtures)

from fednode.chain.anchoring import Anchorer
from fednode.chain.backend import ChainError
from fednode.chain.config import DEV_PROGRAM_ID
from fednode.chain.rpc import RpcBackend
from fednode.node import open_node
from fednode.storage.netstate import NetState
from protocol.chain import ErrorCode
from protocol.multiformats import b58decode, b58encode

DEAD_URL = "http://127.0.0.1:9"  # nothing listens there: a chain the stale daemon cannot read


def use_devchain(home: Path, url: str, refresh_s: float) -> None:
    run_fednode(home, "chain", "use", "rpc", "--url", url)
    config = home / "config.toml"
    config.write_text(config.read_text().replace("[chain]\n", f"[chain]\nnft_refresh_s = {refresh_s}\n", 1))


def controller(home: Path, repo_id: bytes) -> bytes | None:
    node = open_node(home)
    try:
        ctl = NetState(node.store).controller(repo_id)
        return None if ctl is None else ctl.holder
    finally:
        node.close()


def membership(home: Path, repo_id: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
    node = open_node(home)
    try:
        msg = NetState(node.store).membership(repo_id)
        return None if msg is None else (msg.announcer, msg.members)
    finally:
        node.close()


async def former_owner_sends_merge(home: Path, url: str, repo_id: bytes, branch: str) -> ChainError:
    """What a former owner's client that skips our checks would send: its merge, as a holder would."""
    node = open_node(home)
    backend = RpcBackend(url, DEV_PROGRAM_ID, faucet=True)
    try:
        a = Anchorer(node.history, node.identity, backend)
        _, cid = node.history.resolve(branch, node.history.repo("demo"))
        merge = node.history.load_commit(cid)
        assert merge.kind == "merge"
        chain_repo = await a.repo_record(repo_id)
        with pytest.raises(ChainError) as refused:
            await a.send(a._anchor_ixs(repo_id, merge, "main", chain_repo, holds=True))
        return refused.value
    finally:
        await backend.aclose()
        node.close()


def test_after_a_transfer_the_holder_controls_and_the_former_owner_is_refused(tmp_path: Path,
                                                                            devchain: str) -> None:  # noqa: F811
    a_home, b_home, c_home = (tmp_path / n for n in ("former", "holder", "observer"))
    arrays = model_arrays(0)
    models = [write_model(tmp_path / f"m{k}.safetensors", perturb(arrays, k) if k else arrays) for k in range(5)]
    run_fednode(a_home, "init")
    # the former owner's daemon reads the chain at start only (before the mint): it stays stale
    use_devchain(a_home, devchain, 1e6)
    run_fednode(a_home, "repo", "create", "demo", "--public", "--from", models[0])
    repo_id = b58decode(fed_json(a_home, "repo", "list")[0]["id"])
    run_fednode(a_home, "branch", "side", "main")
    run_fednode(a_home, "commit", "-b", "side", "--from", models[1], "-m", "side")
    run_fednode(a_home, "branch", "amerge", "main")
    run_fednode(a_home, "commit", "-b", "amerge", "--from", models[4], "-m", "owner's own line")
    for branch in ("main", "side", "amerge"):
        assert fed_json(a_home, "anchor", branch)["error"] is None
    # a merge of anchored inputs the owner keeps unanchored: it tries to anchor it after the transfer
    fed_json(a_home, "merge", "side", "--into", "amerge", "--weights", "equal")
    for home in (b_home, c_home):  # copies of the repository, each with a wallet of its own
        copy_home(a_home, home)
        run_fednode(home, "init", "--force")
        use_devchain(home, devchain, 0.5)
        network_config(home, sync_interval=1.0)
    a_key, b_key = (b58decode(fed_json(h, "id")["address"]) for h in (a_home, b_home))
    x_key, y_key = bytes(Keypair().pubkey()), bytes(Keypair().pubkey())
    a = DaemonProc(a_home).start()
    c = DaemonProc(c_home, (a.addr,)).start()
    b = DaemonProc(b_home, (a.addr, c.addr)).start()
    with daemons(a, b, c):
        minted = fed_json(a_home, "nft", "mint", "demo")
        wait_for(lambda: controller(c_home, repo_id) == a_key, 15, "the observer to read the first holder")
        # the former owner's daemon is down during the transfer and comes back unable to read the chain
        a.stop()
        run_fednode(a_home, "nft", "transfer", "demo", fed_json(b_home, "id")["address"])
        config = a_home / "config.toml"
        config.write_text(config.read_text().replace(devchain, DEAD_URL))
        stale = DaemonProc(a_home, (c.addr, b.addr)).start()
        with daemons(stale):
            for home in (b_home, c_home):
                wait_for(lambda h=home: controller(h, repo_id) == b_key, 15, f"{home.name} to read the new holder")
            # the new holder's daemon signs the membership it inherits at once; the observer accepts it,
            # and the one the holder signs next
            wait_for(lambda: membership(c_home, repo_id) == (b_key, ()), 15, "the holder's first membership")
            assert any(e["event"] == "nft_taken_over" for e in b.log_events())
            added = run_fednode(b_home, "members", "add", b58encode(x_key)).stdout  # chain (holder-gated) + network
            assert "network: 1 member(s)" in added and "chain: added 1 member(s)" in added
            wait_for(lambda: membership(c_home, repo_id) == (b_key, (x_key,)), 15, "the holder's membership")

            # the stale daemon still takes its node for the owner: it signs and publishes a membership
            # when asked; the observer refuses it (not penalized) and keeps the holder's
            def former_owner_refused() -> bool:
                stale.api("POST", "/members", {"repo": "demo", "members": [b58encode(y_key)]})
                return c.metrics()["rejected"].get("not_holder", 0) >= 1

            wait_for(former_owner_refused, 20, "the observer to refuse the former owner's membership", interval=1.0)
            assert controller(a_home, repo_id) is None  # it never read the binding
            assert membership(c_home, repo_id) == (b_key, (x_key,))
            assert membership(a_home, repo_id) == (a_key, (y_key,))  # what it believed it could do
            assert not c.metrics()["rejected"].get("not_owner")  # refusals of the former holder are not penalized
            config.write_text(config.read_text().replace(DEAD_URL, devchain))
            # with the chain back, the former owner's CLI is refused before anything changes
            refused = run_fednode(a_home, "members", "add", b58encode(y_key), check=False)
            assert_one_line_error(refused.stderr, "only the", b58encode(b_key))
        # the holder's merge anchors through the Anchorer (its update on main, its branch commit, the
        # merge, in order; the holder-gated instructions carry the NFT accounts) and moves the NFT's head
        run_fednode(b_home, "commit", "--from", models[2], "-m", "holder update")
        run_fednode(b_home, "branch", "b1", "side")
        run_fednode(b_home, "commit", "-b", "b1", "--from", models[3], "-m", "holder branch")
        merged = fed_json(b_home, "merge", "b1", "--weights", "equal")
        sent = fed_json(b_home, "anchor", "main")
        assert sent["error"] is None and sent["sent"][-1]["cid"] == merged["cid"]
        head = fed_json(b_home, "show", "main")["commit_hash"]
        shown = fed_json(b_home, "nft", "show", "demo")
        assert shown["holder"] == b58encode(b_key) and shown["head"] == head != minted["head"]
        # the former owner: refused by its own node before anything is sent, and by the program
        refused = run_fednode(a_home, "anchor", "amerge", check=False)
        assert_one_line_error(refused.stderr, "can only be anchored by the repository owner", "holder of its NFT")
        error = trio.run(former_owner_sends_merge, a_home, devchain, repo_id, "amerge")
        assert error.code == ErrorCode.NOT_HOLDER, error

