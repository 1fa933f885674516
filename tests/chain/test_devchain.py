"""`fednode devchain` as a real process on 127.0.0.1: a stock solana-py client, two fednode nodes
(separate processes, separate wallets) anchoring to it, and a queue that waits for it to come up."""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from helpers import ROOT, assert_one_line_error, copy_home, fednode_cmd, model_arrays, perturb, run_fednode, write_model
from solana.rpc.async_api import AsyncClient
from solana.rpc.core import RPCException
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

from fednode.chain.config import DEV_PROGRAM_ID, program_elf
from fednode.chain.devchain import DevChain, make_server
from fednode.errors import FednodeError
from fednode.history import History
from fednode.storage.store import Store
from protocol.multiformats import b58encode

START_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def program_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def start_devchain(port: int = 0, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `fednode devchain`; return the process and its URL once it listens (bounded wait)."""
    proc = subprocess.Popen([*fednode_cmd(), "devchain", "--port", str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ.copy())  # fmt: skip
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()  # type: ignore[union-attr]
                if line.startswith("devchain listening on "):
                    url = line.split()[3]
                    assert line.split()[5] == str(DEV_PROGRAM_ID)
                    return proc, url
                if not line:
                    break
            if proc.poll() is not None:
                break
    finally:
        sel.close()
    stop(proc)
    raise AssertionError(f"devchain did not start: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


@pytest.fixture
def devchain() -> Iterator[str]:
    proc, url = start_devchain()
    try:
        yield url
    finally:
        stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_status(client: AsyncClient, sig: object) -> object:
    with trio.fail_after(10):
        while (status := (await client.get_signature_statuses([sig])).value[0]) is None:  # type: ignore[list-item]
            await trio.sleep(0.02)
    return status


async def test_stock_solana_py_client(devchain: str) -> None:
    client = AsyncClient(devchain)
    try:
        assert await client.is_connected()  # getHealth
        assert (await client.get_version()).value.solana_core
        first = (await client.get_latest_blockhash()).value.blockhash
        payer, dest = Keypair(), Keypair().pubkey()
        sig = (await client.request_airdrop(payer.pubkey(), 10**9)).value
        assert (await wait_status(client, sig)).err is None  # type: ignore[attr-defined]
        assert (await client.get_balance(payer.pubkey())).value == 10**9
        program = (await client.get_account_info(DEV_PROGRAM_ID)).value
        assert program is not None and program.executable
        assert (await client.get_minimum_balance_for_rent_exemption(216)).value > 0
        slot0 = (await client.get_slot()).value
        # The same transfer twice: each gets a fresh blockhash, so the two do not collide.
        for _ in range(2):
            blockhash = (await client.get_latest_blockhash()).value.blockhash
            assert blockhash != first
            tx = Transaction([payer], Message([transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest,
                                                                       lamports=1_000_000))], payer.pubkey()),
                             blockhash)  # fmt: skip
            sig = (await client.send_raw_transaction(bytes(tx))).value
            assert (await wait_status(client, sig)).err is None  # type: ignore[attr-defined]
        assert (await client.get_balance(dest)).value == 2_000_000
        meta = (await client.get_transaction(sig, "base64")).value.transaction.meta
        assert meta.fee == 5000 and meta.compute_units_consumed > 0 and meta.err is None
        assert (await client.get_slot()).value > slot0
        accounts = (await client.get_multiple_accounts([dest, Keypair().pubkey()])).value
        assert accounts[0].lamports == 2_000_000 and accounts[1] is None
        # An unknown blockhash is refused like a validator's preflight would.
        bad = Transaction([payer], Message([transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest,
                                                                    lamports=1))], payer.pubkey()), Hash.new_unique())
        with pytest.raises(RPCException):
            await client.send_raw_transaction(bytes(bad))
    finally:
        await client.close()
    # base58 transactions (the JSON-RPC default encoding) over plain HTTP
    async with httpx.AsyncClient() as http:
        async def rpc(method: str, *params: object) -> dict:
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
            return (await http.post(devchain, json=body)).json()

        blockhash = (await rpc("getLatestBlockhash"))["result"]["value"]["blockhash"]
        tx = Transaction([payer], Message([transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest,
                                                                   lamports=5))], payer.pubkey()),
                         Hash.from_string(blockhash))  # fmt: skip
        sent = await rpc("sendTransaction", b58encode(bytes(tx)))
        assert sent["result"] == str(tx.signatures[0])
        again = await rpc("sendTransaction", base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"})
        assert again["error"]["code"] == -32002  # the identical transaction: already processed
        assert (await rpc("getBalance", str(dest)))["result"]["value"] == 2_000_005
        assert (await rpc("noSuchMethod"))["error"]["code"] == -32601


def copy_branch(src: Path, dst: Path, repo: str, branch: str) -> None:
    """Hand a branch's objects from one node home to another (what the network layer will do)."""
    with Store(src / "store") as s, Store(dst / "store") as d:
        history = History(s)
        info = history.repo(repo)
        head = history.branch_head(info, branch)
        commits = [(c, cm.commit_hash()) for c, cm in history.walk([head])]
        with s.read() as rt:
            blocks = [(cid, rt.get_block(cid)) for cid in rt.iter_block_cids()]
        with d.write() as wt:
            for cid, block in blocks:
                wt.put_block(cid, block)
            for cid, h in commits:
                wt.index_commit(cid, info.repo_id, h)
            wt.set_ref(info.repo_id, "heads/" + branch, bytes(head))


def fed_json(home: Path, *args: str) -> dict:
    return json.loads(run_fednode(home, *args, "--json").stdout)


def test_owner_and_member_anchor_to_one_devchain(tmp_path: Path, devchain: str) -> None:
    owner, member = tmp_path / "owner", tmp_path / "member"
    arrays = model_arrays(0)
    m0, m1, m2, m3 = (write_model(tmp_path / f"m{k}.safetensors", perturb(arrays, k) if k else arrays)
                      for k in range(4))  # fmt: skip
    run_fednode(owner, "init")
    run_fednode(owner, "chain", "use", "rpc", "--url", devchain)
    run_fednode(owner, "repo", "create", "demo", "--from", m0)
    run_fednode(owner, "commit", "--from", m1, "-m", "owner update")
    sent = fed_json(owner, "anchor", "main")
    assert [s["op"] for s in sent["sent"]] == ["create_repo", "anchor", "anchor"] and sent["error"] is None
    assert all(s["compute_units"] > 0 and s["fee"] >= 5000 for s in sent["sent"])  # from getTransaction
    # The member starts from a copy of the owner's repository, with its own wallet.
    copy_home(owner, member)
    run_fednode(member, "init", "--force")
    run_fednode(member, "chain", "use", "rpc", "--url", devchain)
    member_addr = fed_json(member, "id")["address"]
    assert member_addr != fed_json(owner, "id")["address"]
    run_fednode(member, "branch", "alice", "main")
    run_fednode(member, "commit", "-b", "alice", "--from", m2, "-m", "member update")
    refused = run_fednode(member, "anchor", "alice", check=False)
    assert refused.returncode == 1
    assert_one_line_error(refused.stderr, "not a member")
    assert "not a member" in refused.stderr
    assert fed_json(member, "chain", "status")["queue_length"] == 0
    run_fednode(owner, "chain", "members", "add", member_addr)
    assert fed_json(owner, "chain", "members", "list")["members"] == [member_addr]
    sent = fed_json(member, "anchor", "alice")
    assert [(s["op"], s["index"]) for s in sent["sent"]] == [("anchor", 2)]
    assert "3 commits match" in run_fednode(member, "chain", "verify", "alice").stdout
    denied = run_fednode(member, "chain", "members", "add", str(Keypair().pubkey()), check=False)
    assert denied.returncode == 1 and "only the repository owner" in denied.stderr
    # The owner receives the member's branch, commits, merges and anchors the merge.
    copy_branch(member, owner, "demo", "alice")
    run_fednode(owner, "commit", "--from", m3, "-m", "owner update 2")
    merged = fed_json(owner, "merge", "alice", "--weights", "equal")
    sent = fed_json(owner, "anchor", "main")
    assert [(s["cid"], s["index"]) for s in sent["sent"]][-1] == (merged["cid"], 4)
    assert len(sent["sent"]) == 2 and sent["queued"] == 0
    report = fed_json(owner, "chain", "verify", "main")
    assert report == {"ok": True, "commits": 5, "problems": []}
    status = fed_json(owner, "chain", "status")
    assert status["reachable"] and status["backend"] == "rpc" and status["balance_lamports"] > 0
    assert status["program_deployed"] is True
    (repo,) = status["repos"]
    assert repo["commit_count"] == 5 and set(repo["heads"]) == {"main"}  # the member could not create "alice"
    assert repo["heads"]["main"] == fed_json(owner, "show", "main")["commit_hash"]


def test_queue_while_chain_down_then_flush(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    run_fednode(home, "init")
    run_fednode(home, "chain", "use", "rpc", "--url", f"http://127.0.0.1:{port}")
    run_fednode(home, "repo", "create", "demo", "--from", write_model(tmp_path / "m0.safetensors", model_arrays(0)))
    run_fednode(home, "commit", "--from", write_model(tmp_path / "m1.safetensors", perturb(model_arrays(0), 1)),
                "-m", "one")  # fmt: skip
    queued = run_fednode(home, "anchor", "main")  # nothing listens: queued, not lost, not an error
    assert "unreachable" in queued.stdout and "3 item(s) stay queued" in queued.stdout
    status = fed_json(home, "chain", "status")
    assert not status["reachable"] and status["queue_length"] == 3
    assert status["queue"][0]["attempts"] == 1 and "unreachable" in status["queue"][0]["error"]
    assert fed_json(home, "chain", "flush")["queued"] == 3  # still down: still queued
    proc, _ = start_devchain(port)
    try:
        flushed = fed_json(home, "chain", "flush")
        assert [s["op"] for s in flushed["sent"]] == ["create_repo", "anchor", "anchor"] and flushed["queued"] == 0
        assert fed_json(home, "chain", "verify", "main")["ok"]
        # A program id with nothing deployed is reported, not silently used.
        run_fednode(home, "chain", "use", "rpc", "--url", f"http://127.0.0.1:{port}", "--program-id",
                    str(Keypair().pubkey()))  # fmt: skip
        assert fed_json(home, "chain", "status")["program_deployed"] is False
    finally:
        stop(proc)


def test_devchain_refuses_non_loopback(tmp_path: Path) -> None:
    proc = subprocess.run([*fednode_cmd(), "devchain", "--host", "0.0.0.0", "--port", "0"], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, "loopback")


def test_ledger_keeps_accounts_across_restart(tmp_path: Path) -> None:
    """`devchain --ledger DIR`: anchors, balances and the genesis hash survive the process being
    stopped (SIGTERM: no clean shutdown) and started again; anchoring goes on from there."""
    home, port, ledger = tmp_path / "home", free_port(), tmp_path / "ledger"
    arrays = model_arrays(0)
    run_fednode(home, "init")
    run_fednode(home, "repo", "create", "demo", "--from", write_model(tmp_path / "m0.safetensors", arrays))
    run_fednode(home, "commit", "--from", write_model(tmp_path / "m1.safetensors", perturb(arrays, 1)), "-m", "one")
    proc, url = start_devchain(port, "--ledger", str(ledger))
    try:
        run_fednode(home, "chain", "use", "rpc", "--url", url)
        sent = fed_json(home, "anchor", "main")
        assert [s["op"] for s in sent["sent"]] == ["create_repo", "anchor", "anchor"] and sent["queued"] == 0
        before = fed_json(home, "chain", "status")
        assert before["repos"][0]["commit_count"] == 2 and before["chain"]["genesis"]
        # One devchain per ledger: a second one is refused while the first runs.
        second = subprocess.run([*fednode_cmd(), "devchain", "--port", "0", "--ledger", str(ledger)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert second.returncode == 1
        assert_one_line_error(second.stderr, "in use by another devchain")
    finally:
        stop(proc)
    proc, url2 = start_devchain(port, "--ledger", str(ledger))
    try:
        assert url2 == url
        after = fed_json(home, "chain", "status")
        assert after["chain"]["genesis"] == before["chain"]["genesis"]  # the same chain, not a new one
        assert after["repos"] == before["repos"] and after["balance_lamports"] == before["balance_lamports"]
        assert after["slot"] >= before["slot"] and after["queue_length"] == 0
        assert fed_json(home, "chain", "verify", "main") == {"ok": True, "commits": 2, "problems": []}
        run_fednode(home, "commit", "--from", write_model(tmp_path / "m2.safetensors", perturb(arrays, 2)),
                    "-m", "two")  # fmt: skip
        sent = fed_json(home, "anchor", "main")
        assert [(s["op"], s["index"]) for s in sent["sent"]] == [("anchor", 2)]
    finally:
        stop(proc)
    # Without --ledger every start is a new chain: a new genesis hash and none of the anchors.
    proc, _ = start_devchain(port)
    try:
        fresh = fed_json(home, "chain", "status")
        assert fresh["chain"]["genesis"] != before["chain"]["genesis"] and fresh["repos"] == [
            {"name": "demo", "on_chain": False}]
    finally:
        stop(proc)


def test_endpoint_that_cannot_name_its_chain_gets_nothing(tmp_path: Path) -> None:
    """An RPC endpoint without getGenesisHash cannot say which chain it is: nothing is sent to it."""
    class Anonymous(DevChain):
        rpc_getGenesisHash = None  # answered "Method not found"

    server = make_server(Anonymous(DEV_PROGRAM_ID, program_elf()), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        home = tmp_path / "home"
        run_fednode(home, "init")
        run_fednode(home, "chain", "use", "rpc", "--url", f"http://127.0.0.1:{server.server_address[1]}")
        run_fednode(home, "repo", "create", "demo", "--from", write_model(tmp_path / "m0.safetensors", model_arrays(0)))
        refused = run_fednode(home, "anchor", "main", check=False)
        assert refused.returncode == 1
        assert_one_line_error(refused.stderr, "does not answer getGenesisHash", "nothing is sent")
        status = fed_json(home, "chain", "status")
        assert status["queue_length"] == 2 and status["repos"] == [{"name": "demo", "on_chain": False}]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_ledger_replays_to_the_same_balances(tmp_path: Path) -> None:
    """In process: after airdrops, a transfer and a failing transaction (which still charges its
    fee), a chain rebuilt from the ledger has the same balances; a torn last record is dropped."""
    elf, ledger = program_elf(), tmp_path / "ledger"
    payer, dest = Keypair(), Keypair().pubkey()
    chain = DevChain(DEV_PROGRAM_ID, elf, ledger=ledger)

    def send(lamports: int) -> None:
        blockhash = chain.rpc_getLatestBlockhash()["value"]["blockhash"]
        ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest, lamports=lamports))
        tx = Transaction([payer], Message([ix], payer.pubkey()), Hash.from_string(blockhash))
        chain.handle("sendTransaction", [base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"}])

    def balances(c: DevChain) -> list[int]:
        return [c.rpc_getBalance(str(k))["value"] for k in (payer.pubkey(), dest)]

    chain.rpc_requestAirdrop(str(payer.pubkey()), 10**9)
    send(2_000_000)
    with pytest.raises(Exception, match="simulation failed"):
        send(10**12)  # more than it holds: rejected, but the fee is charged
    before, genesis = balances(chain), chain.genesis
    assert before[0] < 10**9 - 2_000_000 - 5000  # two fees paid
    chain.close()
    restarted = DevChain(DEV_PROGRAM_ID, elf, ledger=ledger)
    assert balances(restarted) == before and restarted.genesis == genesis
    restarted.rpc_requestAirdrop(str(dest), 10**9)
    restarted.close()
    log = ledger / "accounts.log"
    log.write_bytes(log.read_bytes()[:-3])  # the last record torn, as by a crash mid-write
    again = DevChain(DEV_PROGRAM_ID, elf, ledger=ledger)
    assert balances(again) == before and log.stat().st_size == 0  # compacted into the snapshot
    again.close()
    snap = ledger / "accounts.snap"
    damaged = bytearray(snap.read_bytes())
    damaged[20] ^= 1  # not a torn write (the snapshot is replaced whole): refused, and left as it is
    snap.write_bytes(bytes(damaged))
    with pytest.raises(FednodeError, match="accounts.snap is damaged"):
        DevChain(DEV_PROGRAM_ID, elf, ledger=ledger)
    assert snap.read_bytes() == bytes(damaged)
