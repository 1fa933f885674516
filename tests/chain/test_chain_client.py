"""Anchoring real fednode repositories on the embedded chain (LiteSVM persisted in the node's store)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import trio
from helpers import model_arrays, perturb, write_model
from solders.account import Account
from solders.keypair import Keypair

from fednode.chain import embedded, outbox
from fednode.chain.anchoring import Anchorer
from fednode.chain.backend import ChainError
from fednode.chain.config import DEV_PROGRAM_ID, program_elf
from fednode.chain.embedded import EmbeddedBackend
from fednode.chain.program import FederityProgram, ed25519_proof
from fednode.errors import FednodeError
from fednode.history import History, RepoInfo
from fednode.identity import Identity
from fednode.node import Node, open_node
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging
from protocol import chain as layout
from protocol.chain import ErrorCode, Kind
from protocol.multiformats import CID


@pytest.fixture(autouse=True)
def program_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the program into this session's temp dir, not the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from fednode.chain.elf import federity_elf

    return federity_elf(tmp_path_factory.mktemp("programs"))


def anchorer(history: History, identity: Identity, elf: bytes) -> Anchorer:
    return Anchorer(history, identity, EmbeddedBackend(history.store, DEV_PROGRAM_ID, elf))


def make_repo(node: Node | History, n_updates: int = 1, name: str = "demo") -> tuple[RepoInfo, list[CID]]:
    """A repository with a genesis and ``n_updates`` updates on main; returns the CIDs."""
    history = node if isinstance(node, History) else node.history
    arrays = model_arrays(0)
    info, genesis = history.create_repo(name, ArraySource(arrays))
    cids = [genesis.cid]
    for k in range(n_updates):
        arrays = perturb(arrays, k + 1)
        cids.append(history.commit(info, ArraySource(arrays), f"update {k}").cid)
    return info, cids


PDA_TRY_CU = 1_500  # compute units of one bump tried by sol_try_find_program_address


def hashes(history: History, cids: list[CID]) -> list[bytes]:
    return [history.load_commit(c).commit_hash() for c in cids]


async def test_anchor_repo_with_merge_parents_first(node: Node, elf: bytes) -> None:
    info, (g, u1) = make_repo(node)
    node.history.create_branch(info, "side", g)
    u2 = node.history.commit(info, ArraySource(perturb(model_arrays(0), 9)), "side work", branch="side").cid
    merged = merging.merge(node.history, info, ["side"], "main", weighting="equal").result
    assert merged is not None and merged.commit.kind == "merge"
    a = anchorer(node.history, node.identity, elf)
    queued = await a.enqueue(info, merged.cid, "main")
    assert [i.op for i in queued] == ["create_repo", "anchor", "anchor", "anchor", "anchor"]
    order = [CID.parse(i.cid) for i in queued[1:]]
    assert order[0] == g and order[-1] == merged.cid  # parents before children
    assert order.index(u1) < order.index(merged.cid) and order.index(u2) < order.index(merged.cid)
    result = await a.flush()
    assert result.error is None and result.remaining == 0 and len(result.sent) == 5
    records = await a.commit_records(info.repo_id, hashes(node.history, [g, u1, u2, merged.cid]))
    assert all(r is not None for r in records)
    g_rec, _, _, m_rec = records
    assert g_rec.kind == Kind.INIT and g_rec.index == 0 and g_rec.author == node.identity.public_key
    assert m_rec.kind == Kind.MERGE and m_rec.n_parents == 2 and m_rec.index == 3
    assert m_rec.parents_digest == layout.parents_digest(hashes(node.history, list(merged.commit.parents)))
    repo = await a.repo_record(info.repo_id)
    assert repo.owner == node.identity.public_key and repo.commit_count == 4
    assert repo.branches[layout.branch_hash("main")] == merged.commit.commit_hash()  # merge moved main
    n, problems = await a.verify(info, merged.cid)
    assert (n, problems) == (4, [])
    # Anchoring again is a no-op: nothing new queued, nothing sent.
    assert await a.enqueue(info, merged.cid, "main") == []
    # Each record's PDA is found by a canonical bump search: 1,500 CU (Solana's
    # create_program_address cost) for every bump tried below 255, which depends on the commit hash
    # (a merge anchor took 18,420 CU at bump 255 and 30,420 at bump 247 once in CI). Bounded without it:
    by_cid = dict(zip([g, u1, u2, merged.cid], records, strict=True))
    cu = [item["compute_units"] - PDA_TRY_CU * (255 - by_cid[c].bump)
          for item, c in zip(result.sent[1:], order, strict=True)]
    assert all(0 < c < 30_000 for c in cu), cu


async def test_embedded_state_persists_across_reopen(home: Path, elf: bytes) -> None:
    with open_node(home) as node:
        info, cids = make_repo(node)
        a = anchorer(node.history, node.identity, elf)
        await a.enqueue(info, cids[-1], "main")
        assert (await a.flush()).remaining == 0
        repo = await a.repo_record(info.repo_id)
        assert repo.branches == {layout.branch_hash("main"): hashes(node.history, cids)[-1]}  # head tracked
        balance = await a.backend.balance(node.identity.keypair.pubkey())
        acc = (await a.repo_record(info.repo_id)).accumulator
    with open_node(home) as node:  # a new process would see exactly this: a fresh LiteSVM from the store
        a = anchorer(node.history, node.identity, elf)
        assert await a.backend.balance(node.identity.keypair.pubkey()) == balance
        assert (await a.repo_record(info.repo_id)).accumulator == acc
        assert await a.verify(info, cids[-1]) == (2, [])
        new = node.history.commit(info, ArraySource(perturb(model_arrays(0), 5)), "after reopen").cid
        assert len(await a.enqueue(info, new, "main")) == 1  # the rest is known to be anchored
        assert (await a.flush()).remaining == 0
        record = (await a.commit_records(info.repo_id, hashes(node.history, [new])))[0]
        repo = await a.repo_record(info.repo_id)
        assert record.index == 2 and repo.commit_count == 3
        assert repo.branches[layout.branch_hash("main")] == record.commit_hash  # fast-forwarded


async def test_outbox_survives_reopen_and_sends_in_order(home: Path, elf: bytes) -> None:
    with open_node(home) as node:
        info, cids = make_repo(node, n_updates=3)
        a = anchorer(node.history, node.identity, elf)
        await a.enqueue(info, cids[2], "main")  # queued, not flushed: as if the process died here
        await a.enqueue(info, cids[3], "main")
    with open_node(home) as node:
        a = anchorer(node.history, node.identity, elf)
        queue = a.queue()
        assert [i.seq for i in queue] == sorted(i.seq for i in queue)
        assert [i.op for i in queue] == ["create_repo"] + ["anchor"] * 4
        assert [CID.parse(i.cid) for i in queue[1:]] == cids
        result = await a.flush()
        assert result.remaining == 0
        assert [item["index"] for item in result.sent[1:]] == [0, 1, 2, 3]


async def test_members_merges_and_foreign_commits(node: Node, elf: bytes) -> None:
    """Two wallets on one embedded chain: owner (the node) and alice (same store, own identity)."""
    info, (g, u1) = make_repo(node)
    owner = anchorer(node.history, node.identity, elf)
    await owner.enqueue(info, g, "main")
    assert (await owner.flush()).remaining == 0
    alice_id = Identity(Keypair.from_seed(bytes([42]) * 32))
    alice_history = History(node.store, alice_id)
    alice = Anchorer(alice_history, alice_id, owner.backend)  # same chain, other wallet
    await owner.backend.airdrop(alice_id.keypair.pubkey(), 10**9)
    node.history.create_branch(info, "alice", g)
    a1 = alice_history.commit(info, ArraySource(perturb(model_arrays(0), 7)), "alice", branch="alice").cid
    with pytest.raises(FednodeError, match="not a member"):
        await alice.enqueue(info, a1, "alice")
    assert alice.queue() == []  # nothing queued on error
    await owner.set_member(info, alice_id.keypair.pubkey(), add=True)
    assert (await owner.members(info))["members"] == [alice_id.address]
    with pytest.raises(FednodeError, match="already a member"):
        await owner.set_member(info, alice_id.keypair.pubkey(), add=True)
    with pytest.raises(FednodeError, match="only the repository owner"):
        await alice.set_member(info, Keypair().pubkey(), add=True)
    await alice.enqueue(info, a1, "alice")
    assert (await alice.flush()).remaining == 0
    # Main's update is the owner's to anchor: alice cannot, and is told so.
    with pytest.raises(FednodeError, match="only its author can anchor it"):
        await alice.enqueue(info, u1, "main")
    await owner.enqueue(info, u1, "main")
    assert (await owner.flush()).remaining == 0
    # A merge made by alice can never be anchored: the merge instruction is owner-signed.
    node.history.create_branch(info, "alice-merge", a1)
    alice_merge = merging.merge(alice_history, info, ["main"], "alice-merge", weighting="equal").result
    with pytest.raises(FednodeError, match="only be anchored by the repository owner"):
        await alice.enqueue(info, alice_merge.cid, "alice")
    # The owner merges alice's work; its inputs are anchored, so only the merge is queued.
    merged = merging.merge(node.history, info, ["alice"], "main", weighting="equal").result
    queued = await owner.enqueue(info, merged.cid, "main")
    assert [i.kind for i in queued] == ["merge"]
    assert (await owner.flush()).remaining == 0
    assert await owner.verify(info, merged.cid) == (4, [])
    assert (await owner.repo_record(info.repo_id)).commit_count == 4
    await owner.set_member(info, alice_id.keypair.pubkey(), add=False)
    assert (await owner.members(info))["members"] == []


def test_chain_verify_detects_a_mismatched_record(home: Path, elf: bytes, cli) -> None:
    """Sync test: the CLI part runs its own trio loop."""
    with open_node(home) as node:
        info, (g, u1, u2) = make_repo(node, n_updates=2)
        a = anchorer(node.history, node.identity, elf)

        async def setup_and_check() -> None:
            await a.enqueue(info, u1, "main")
            assert (await a.flush()).remaining == 0
            # Anchoring u2 by hand with the wrong parent (the genesis instead of u1) and its valid
            # signature: the program recomputes the hash from those parents, which nobody signed.
            commit = node.history.load_commit(u2)
            h, me = commit.commit_hash(), node.identity.keypair.pubkey()
            body = layout.AnchorCommit(commit.body_digest(), Kind.UPDATE, layout.ZERO32, (info.repo_id,))
            program = FederityProgram(DEV_PROGRAM_ID)
            ixs = [ed25519_proof(me, commit.sig, h), program.anchor_commit(me, info.repo_id, body, as_owner=True)]
            with pytest.raises(ChainError) as refused:
                await a.backend.send(ixs, [node.identity.keypair])
            assert refused.value.code == ErrorCode.SIGNATURE_PROOF_MISMATCH
            # So a differing record can only come from a chain that lies: anchor u2 properly, then
            # rewrite its record's parents digest in the embedded chain's stored state.
            await a.enqueue(info, u2, "main")
            assert (await a.flush()).remaining == 0
            address = bytes(program.commit_address(info.repo_id, h))
            with node.store.write() as txn:
                key = embedded._ACCOUNT + address
                account = Account.from_bytes(txn.kv_get(embedded.DB, key))
                data = bytearray(account.data)
                data[104:136] = layout.parents_digest([info.repo_id])
                txn.kv_put(embedded.DB, key, bytes(Account(account.lamports, bytes(data), account.owner,
                                                           account.executable, account.rent_epoch)))
                version = struct.unpack("<Q", txn.kv_get(embedded.DB, embedded._VERSION))[0]
                txn.kv_put(embedded.DB, embedded._VERSION, struct.pack("<Q", version + 1))  # reload
            n, problems = await a.verify(info, u2)
            assert n == 3 and problems == [f"commit {str(u2)[:16]}: anchored record differs (parents)"]
            assert (await a.verify(info, u1)) == (2, [])  # the accumulator still checks out

        trio.run(setup_and_check)
    result = cli("chain", "verify", "main", "-r", "demo", ok=False)
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: chain verify failed: 1 problem(s), first: commit {str(u2)[:16]}")
    # the same check through `fednode verify --chain`; without --chain the local history is fine
    assert "verify: 3 commits ok" in cli("verify", "main", "-r", "demo").output
    result = cli("verify", "main", "-r", "demo", "--chain", ok=False)
    assert result.exit_code == 1 and f"chain: commit {str(u2)[:16]}: anchored record differs" in result.stderr
    assert "verify --chain: 2 commits ok" in cli("verify", f"{u1}", "-r", "demo", "--chain").output
    # Anchoring u2 properly is now impossible (its hash is taken): said, not silently skipped.
    result = cli("anchor", "main", "-r", "demo", ok=False)
    assert result.exit_code == 1 and "anchored record differs (parents)" in result.stderr


def test_cli_anchor_status_flush_members(tmp_path: Path, cli) -> None:
    m0 = write_model(tmp_path / "m0.safetensors", model_arrays(0))
    m1 = write_model(tmp_path / "m1.safetensors", perturb(model_arrays(0), 1))
    cli("repo", "create", "demo", "--from", m0)
    cli("commit", "--from", m1, "-m", "one")
    queued = json.loads(cli("anchor", "main", "--no-flush", "--json").stdout)
    assert [i["op"] for i in queued["queued_now"]] == ["create_repo", "anchor", "anchor"] and queued["queued"] == 3
    status = json.loads(cli("chain", "status", "--json").stdout)
    assert status["backend"] == "embedded" and status["program_id"] == str(DEV_PROGRAM_ID)
    assert status["program_deployed"] is True
    assert status["queue_length"] == 3 and [i["seq"] for i in status["queue"]] == [1, 2, 3]
    flushed = json.loads(cli("chain", "flush", "--json").stdout)
    assert [s["index"] for s in flushed["sent"][1:]] == [0, 1] and flushed["queued"] == 0
    status = json.loads(cli("chain", "status", "--json").stdout)
    assert status["queue_length"] == 0 and 0 < status["balance_lamports"] <= 2 * 10**9
    assert "nothing new to anchor" in cli("anchor", "main").stdout
    assert "2 commits match" in cli("chain", "verify", "main").stdout
    member = str(Keypair.from_seed(bytes([3]) * 32).pubkey())
    cli("chain", "members", "add", member)
    assert json.loads(cli("chain", "members", "list", "--json").stdout)["members"] == [member]
    cli("chain", "members", "remove", member)
    assert json.loads(cli("chain", "members", "list", "--json").stdout)["members"] == []


@pytest.mark.parametrize("args, needle", [
    (("anchor", "nosuchbranch"), "unknown revision"),
    (("chain", "verify", "nosuchbranch"), "unknown revision"),
    (("chain", "use", "embedded", "--url", "http://127.0.0.1:1"), "--url is for the rpc backend"),
    (("chain", "members", "add", "not-an-address"), "invalid address"),
    (("chain", "drop", "7"), "no queued item #7"),
    (("chain", "use", "rpc"), "needs --url"),
])  # fmt: skip
def test_cli_bad_input_one_line_error_nothing_queued(tmp_path: Path, cli, args: tuple[str, ...],
                                                     needle: str) -> None:  # fmt: skip
    cli("repo", "create", "demo", "--from", write_model(tmp_path / "m0.safetensors", model_arrays(0)))
    result = cli(*args, ok=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert json.loads(cli("chain", "status", "--json").stdout)["queue_length"] == 0


def test_outbox_keys_sort_numerically(node: Node) -> None:
    with node.store.write() as txn:
        for _ in range(300):  # past one byte: big-endian keys keep numeric order
            outbox.append(txn, outbox.OutboxItem(0, "anchor", "00" * 32))
        seqs = [i.seq for i in outbox.items(txn)]
    assert seqs == list(range(1, 301))


def test_program_elf_is_cached(tmp_path: Path) -> None:
    assert program_elf() == program_elf()  # second call reads the cache built by the first


async def test_flush_after_crash_between_send_and_dequeue(node: Node, elf: bytes) -> None:
    """A transaction that landed but whose item was never removed is counted as done, not resent."""
    info, (g, u1) = make_repo(node)
    a = anchorer(node.history, node.identity, elf)
    await a.enqueue(info, u1, "main")
    create, first, second = a.queue()
    await a.ensure_funds()
    await a.send(a._create_repo_ixs(info.repo_id))
    commit = node.history.load_commit(g)
    await a.send(a._anchor_ixs(info.repo_id, commit, None, await a.repo_record(info.repo_id)))
    result = await a.flush()  # both already on chain: recorded, dequeued, nothing resent
    assert result.remaining == 0 and result.error is None
    by_seq = {s["seq"]: s for s in result.sent}
    assert "signature" not in by_seq[create.seq] and by_seq[first.seq]["signature"] is None
    assert by_seq[second.seq]["signature"] and by_seq[second.seq]["index"] == 1
    assert await a.verify(info, u1) == (2, [])


async def test_rejected_item_blocks_only_its_repository(node: Node, elf: bytes) -> None:
    """X's items were queued under a wallet the node no longer uses (as after `fednode init --force`
    between `anchor --no-flush` and `chain flush`): only X's genesis author can create X on chain,
    so X's items stay queued with the reason; repository Y is anchored anyway; `drop` clears X's items."""
    x, _ = make_repo(node, name="x")
    old = anchorer(node.history, node.identity, elf)
    await old.enqueue(x, node.history.branch_head(x, "main"), "main")
    new_id = Identity(Keypair.from_seed(bytes([43]) * 32))
    new_history = History(node.store, new_id)
    y, y_cids = make_repo(new_history, name="y")
    a = Anchorer(new_history, new_id, old.backend)
    await a.enqueue(y, y_cids[-1], "main")
    result = await a.flush()
    assert result.error is not None and "only the genesis author" in result.error
    assert result.remaining == 3 and [s["op"] for s in result.sent] == ["create_repo", "anchor", "anchor"]
    assert await a.repo_record(x.repo_id) is None
    stuck = a.queue()
    assert {i.repo_id for i in stuck} == {x.repo_id.hex()} and stuck[0].attempts == 1 and stuck[0].error
    assert await a.verify(y, y_cids[-1]) == (2, [])
    with node.store.write() as txn:
        for item in stuck:
            assert outbox.drop(txn, item.seq) == item
        assert outbox.drop(txn, stuck[0].seq) is None
    assert a.queue() == []


async def test_only_the_genesis_author_can_create_the_repository_on_chain(node: Node, elf: bytes) -> None:
    """A node that is not the genesis author cannot put the repository on chain: the client says so
    in one line and queues nothing, and the program refuses the transactions it could build."""
    info, (g, _) = make_repo(node)
    bob_id = Identity(Keypair.from_seed(bytes([44]) * 32))
    bob = anchorer(History(node.store, bob_id), bob_id, elf)
    await bob.backend.airdrop(bob_id.keypair.pubkey(), 10**9)
    with pytest.raises(FednodeError, match="only its genesis author") as refused:
        await bob.enqueue(info, g, "main")
    assert "\n" not in str(refused.value) and node.identity.address in str(refused.value)
    assert bob.queue() == []
    with pytest.raises(ChainError, match="only the genesis author"):
        bob._create_repo_ixs(info.repo_id)
    me, genesis = bob_id.keypair.pubkey(), node.history.load_commit(g)
    create = bob.program.create_repo(me, info.repo_id, genesis.body_digest())
    # The program recomputes the repo id with bob as the genesis author: it is not his, whatever he proves.
    for proof in ([], [ed25519_proof(me, bytes(bob_id.keypair.sign_message(info.repo_id)), info.repo_id)]):
        with pytest.raises(ChainError) as squat:
            await bob.send([*proof, create])
        assert squat.value.code == ErrorCode.COMMIT_HASH_MISMATCH
    with pytest.raises(ChainError) as replayed:  # the genesis signature is not bob's: the precompile fails
        await bob.send([ed25519_proof(me, genesis.sig, info.repo_id), create])
    assert replayed.value.index == 0
    assert await bob.repo_record(info.repo_id) is None
    owner = Anchorer(node.history, node.identity, bob.backend)
    await owner.enqueue(info, g, "main")
    assert (await owner.flush()).remaining == 0
    assert (await owner.repo_record(info.repo_id)).owner == node.identity.public_key


async def test_two_embedded_backends_on_one_store_stay_consistent(node: Node, elf: bytes) -> None:
    """Two processes on one node (CLI next to a daemon): each backend reloads what the other wrote."""
    info, (g, u1, u2) = make_repo(node, n_updates=2)
    first = anchorer(node.history, node.identity, elf)
    second = anchorer(node.history, node.identity, elf)  # opened before anything was anchored
    await first.enqueue(info, g, "main")
    assert (await first.flush()).remaining == 0
    await second.enqueue(info, u1, "main")  # second's VM is stale: it must reload, not overwrite
    assert [s["index"] for s in (await second.flush()).sent] == [1]
    await first.enqueue(info, u2, "main")
    assert [s["index"] for s in (await first.flush()).sent] == [2]
    for a in (first, second):
        assert await a.verify(info, u2) == (3, [])
        assert (await a.repo_record(info.repo_id)).commit_count == 3


class _FlushesFirst:
    """A backend whose first send lets another flush of the same queue run to completion first:
    the CLI's ``fednode anchor`` and the daemon's flush loop overlapping (the demo hit it)."""

    def __init__(self, inner, other: Anchorer) -> None:
        self.inner, self.other, self.raced = inner, other, None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def send(self, ixs, signers):
        if self.raced is None:
            self.raced = await self.other.flush()
        return await self.inner.send(ixs, signers)


async def test_overlapping_flushes_anchor_once_and_both_succeed(node: Node, elf: bytes) -> None:
    """The flush that loses the race gets COMMIT_ALREADY_ANCHORED from the program; it checks the
    record the winner left against its commit and counts the item done instead of stopping."""
    info, (g, u1) = make_repo(node)
    winner = anchorer(node.history, node.identity, elf)
    await winner.enqueue(info, g, "main")
    assert (await winner.flush()).remaining == 0
    await winner.enqueue(info, u1, "main")
    racing = _FlushesFirst(anchorer(node.history, node.identity, elf).backend, winner)
    loser = Anchorer(node.history, node.identity, racing)
    result = await loser.flush()
    assert racing.raced is not None and [s["index"] for s in racing.raced.sent] == [1]  # the winner sent it
    assert result.error is None and result.remaining == 0
    assert [(s["index"], s["signature"]) for s in result.sent] == [(1, None)]  # counted, not resent
    assert (await loser.repo_record(info.repo_id)).commit_count == 2
    assert await loser.verify(info, u1) == (2, [])


async def test_merge_too_large_for_one_transaction_is_refused(node: Node, elf: bytes) -> None:
    info, (g,) = make_repo(node, n_updates=0)
    names = [f"b{k}" for k in range(10)]
    for k, name in enumerate(names):
        node.history.create_branch(info, name, g)
        node.history.commit(info, ArraySource(perturb(model_arrays(0), 100 + k)), name, branch=name)
    merged = merging.merge(node.history, info, names, "main", weighting="equal").result
    assert len(merged.commit.parents) == 11
    a = anchorer(node.history, node.identity, elf)
    with pytest.raises(FednodeError, match=r"would be \d+ bytes, over Solana's 1232-byte limit"):
        await a.enqueue(info, merged.cid, "main")
    assert a.queue() == []
    nine = merging.merge(node.history, info, names[:8], "b9", weighting="equal").result  # 9 parents: fits
    await a.enqueue(info, nine.cid, "b9")
    result = await a.flush()
    assert result.remaining == 0 and result.sent[-1]["cid"] == str(nine.cid)


async def test_a_fresh_member_finds_itself_and_the_network_members_on_chain(node: Node, elf: bytes,
                                                                           tmp_path: Path) -> None:
    """A member that has committed nothing and added no one (its own store: a clone) still lists
    itself, and the members of the signed network membership it is given, from the chain (there
    is no on-chain member index: before, it printed 'owner only')."""
    info, (g, _) = make_repo(node)
    owner = anchorer(node.history, node.identity, elf)
    await owner.enqueue(info, g, "main")
    assert (await owner.flush()).remaining == 0
    bob, carol = (Identity(Keypair.from_seed(bytes([s]) * 32)) for s in (43, 44))
    for who in (bob, carol):
        await owner.set_member(info, who.keypair.pubkey(), add=True)
    with Store(tmp_path / "bob") as bob_store:
        with node.store.read() as src, bob_store.write() as dst:  # a clone: blocks and refs, nothing else
            for cid in src.iter_block_cids():
                dst.put_block(cid, src.get_block(cid))
            dst.put_repo(info.name, info.repo_id)
            for name, value in src.list_refs(info.repo_id).items():
                dst.set_ref(info.repo_id, name, value)
        bob_anchorer = Anchorer(History(bob_store, bob), bob, owner.backend)  # same chain, bob's wallet
        assert (await bob_anchorer.members(info))["members"] == [bob.address]
        listed = (await bob_anchorer.members(info, [carol.public_key]))["members"]
        assert sorted(listed) == sorted([bob.address, carol.address])
