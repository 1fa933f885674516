"""Anchoring a repository that requires update proofs (issue 15 item 4) through ``Anchorer``: the owner's
flush seals the genesis policy's verifying key (and its remainder key) on chain, every update is anchored
and proven (prove_commit), merges of proven updates go through (a FedAvg merge is proven too:
prove_merge), ``verify`` is clean; an update whose proof the program refuses stops its repository's
queue with the program's named error. Real proofs (n = 8 keys, snarkjs) made by the node's own commit
path (ZkHistory under the policy, $FEDNODE_ZK_KEYS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_chain_client import anchorer, elf, make_repo, program_cache  # noqa: F401 (fixtures)

from fednode.chain import outbox
from fednode.chain.anchoring import Anchorer
from fednode.history import RepoInfo
from fednode.node import Node
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging, zkpolicy, zkprove
from fednode.zk import pedersen
from fednode.zk import policy as zpol
from protocol import chain as layout
from protocol.multiformats import CID

BASE = np.array([0.5, -0.25, 1.0, 0.0, 0.125, 2.0, -1.0, 0.75], dtype=np.float32)


@pytest.fixture
def proving(monkeypatch: pytest.MonkeyPatch, zk_policy_keys: Path) -> Path:
    monkeypatch.setenv(zkpolicy.KEYS_ENV, str(zk_policy_keys))
    return zk_policy_keys


def source(values: np.ndarray) -> ArraySource:
    return ArraySource({"w": ("F32", values.astype(np.float32))})


def policy_repo(node: Node, keys: Path, name: str = "proven") -> tuple[RepoInfo, zpol.ZkPolicy]:
    entry, policy = zkpolicy.make_policy(keys, 0.5, source(BASE))
    repo, _ = node.history.create_repo(name, source(BASE), zk_policy=entry)
    return repo, policy


def update(node: Node, repo: RepoInfo, policy: zpol.ZkPolicy, branch: str, steps: list[int],
           info: dict[str, Any] | None = None) -> CID:  # fmt: skip
    """An update from the genesis on its own branch: ``steps`` grid steps per value (proven by the node)."""
    node.history.create_branch(repo, branch, repo.genesis)
    new = BASE.astype(np.float64) + np.array(steps, dtype=np.float64) * 2.0**-policy.grid_bits
    return node.history.commit(repo, source(new), branch, branch=branch, info=info).cid


async def record(a: Anchorer, repo: RepoInfo, cid: CID) -> layout.CommitAccount:
    (rec,) = await a.commit_records(repo.repo_id, [a.history.load_commit(cid).commit_hash()])
    assert rec is not None
    return rec


async def test_flush_seals_the_key_proves_updates_and_merges(node: Node, elf: bytes,  # noqa: F811
                                                             proving: Path) -> None:  # fmt: skip
    repo, policy = policy_repo(node, proving)
    u1 = update(node, repo, policy, "a", [100, -200, 0, 50, 7, -9, 300, 1])
    u2 = update(node, repo, policy, "b", [-40, 10, 20, 0, 0, 5, -6, 2])
    assert zpol.check_update(policy, node.history.load_commit(u1)) is None  # the node proved it
    merged = merging.merge(node.history, repo, ["a", "b"], "main", weighting="equal").result
    assert merged is not None
    a = anchorer(node.history, node.identity, elf)
    queued = await a.enqueue(repo, merged.cid, "main")
    assert [i.op for i in queued] == ["create_repo", "anchor", "anchor", "anchor", "anchor"]
    result = await a.flush()
    assert result.error is None and result.remaining == 0, result.error
    assert len(result.sent[0]["key_transactions"]) == 4  # type: ignore[arg-type]  # update key, remainder key
    assert sum("prove_signature" in s for s in result.sent) == 3  # both updates, and the FedAvg merge
    chain_repo = await a.repo_record(repo.repo_id)
    key = await a.zkvk_record(repo.repo_id)
    assert chain_repo is not None and chain_repo.requires_proofs
    assert key is not None and (key.sealed, key.vk, key.key_id, key.bound2) == (
        True, policy.vk_bytes, policy.key_id, policy.bound2)
    r1, r2, rm = [await record(a, repo, c) for c in (u1, u2, merged.cid)]
    assert r1.proven and r2.proven and rm.proven  # the merge by its remainder proof (prove_merge)
    # the merge on the policy's grid carries C(d) and C(r): checked on chain against the proven inputs
    assert rm.commitment is not None and rm.commitment == merged.commit.info["zk"]["commitment"]
    assert await a.verify(repo, merged.cid) == (4, [])
    # a crash before the items left the queue: their replays find everything done and send nothing
    with node.store.write() as txn:
        for item in queued[:2]:
            outbox.append(txn, item)
    replay = await a.flush()
    assert replay.error is None and replay.remaining == 0
    assert "key_transactions" not in replay.sent[0] and "prove_signature" not in replay.sent[1]


async def test_a_refused_proof_stops_the_queue_with_the_programs_error(node: Node, elf: bytes,  # noqa: F811
                                                                       proving: Path) -> None:  # fmt: skip
    """An update carrying a proof bound to another hash (info["zk"] made here, not by the node): anchored
    with its commitment, refused by prove_commit (PROOF_GROTH16_FAILS), the item stays queued and verify
    says the update is not proven. An update with no proof at all is anchored unproven, and a merge of
    it is refused (INPUT_NOT_PROVEN)."""
    repo, policy = policy_repo(node, proving)
    keys = zkprove.load_keys(proving)
    steps = [1, 2, 3, 4, 5, 6, 7, 8]
    zk = {"v": 1, "base": repo.genesis, "grid": {"w": policy.grid_bits}, "commitment": pedersen.commit(steps)}
    wrong = zkprove.prove(keys, steps, 0, bytes(32), policy.bound2)
    bad = update(node, repo, policy, "bad", steps, info={"zk": {**zk, "proof": wrong}})
    a = anchorer(node.history, node.identity, elf)
    await a.enqueue(repo, bad, "bad")
    result = await a.flush()
    assert result.error is not None and "PROOF_GROTH16_FAILS" in result.error, result.error
    assert result.remaining == 1 and a.queue()[0].cid == str(bad)
    assert not (await record(a, repo, bad)).proven
    _, problems = await a.verify(repo, bad)
    assert problems == [f"commit {str(bad)[:16]}: not proven on chain"]

    bare = update(node, repo, policy, "bare", steps, info={"zk": zk})  # no proof: nothing to prove with
    with node.store.write() as txn:
        outbox.drop(txn, a.queue()[0].seq)
    assert await a.enqueue(repo, bad, "bad") == []  # its proof fails here too: not queued again
    await a.enqueue(repo, bare, "bare")
    assert (await a.flush()).remaining == 0
    assert not (await record(a, repo, bare)).proven
    node.history.create_branch(repo, "m", repo.genesis)
    m = node.history.commit(repo, source(BASE), "m", branch="m", kind="merge", extra_parents=(bare,),
                            info={"merge": {"inputs": [bare], "weights": [1], "base": repo.genesis}}).cid
    await a.enqueue(repo, m, "m")
    result = await a.flush()
    assert result.error is not None and "INPUT_NOT_PROVEN" in result.error, result.error


async def test_an_interrupted_key_upload_is_finished_by_the_next_flush(node: Node, elf: bytes,  # noqa: F811
                                                                       proving: Path) -> None:  # fmt: skip
    """The repository was created, a wrong first chunk written and an update anchored before the key was
    sealed (a crash, an older client): enqueue queues the key again and the flush rewrites what differs
    and seals it; the next enqueue queues the anchored update again, to prove it."""
    repo, policy = policy_repo(node, proving)
    u = update(node, repo, policy, "a", [3, 1, 4, 1, 5, 9, 2, 6])
    a = anchorer(node.history, node.identity, elf)
    await a.ensure_funds()
    await a.send(a._create_repo_ixs(repo.repo_id))
    me = node.identity.keypair.pubkey()
    await a.send([a.program.write_vk(me, repo.repo_id, 0, bytes(100) + policy.vk_bytes[100:768])])
    for cid in (repo.genesis, u):
        chain_repo = await a.repo_record(repo.repo_id)
        await a.send(a._anchor_ixs(repo.repo_id, node.history.load_commit(cid), None, chain_repo))
    _, problems = await a.verify(repo, u)
    assert any("does not (its verifying key is not sealed" in p for p in problems), problems
    queued = await a.enqueue(repo, u, "a")
    assert [i.op for i in queued] == ["create_repo"]
    result = await a.flush()
    assert result.error is None and result.remaining == 0, result.error
    assert len(result.sent[0]["key_transactions"]) == 4  # type: ignore[arg-type]  # update key, remainder key
    key = await a.zkvk_record(repo.repo_id)
    assert key is not None and key.sealed and key.vk == policy.vk_bytes
    assert (await a.verify(repo, u))[1] == [f"commit {str(u)[:16]}: not proven on chain"]
    assert [i.cid for i in await a.enqueue(repo, u, "a")] == [str(u)]
    result = await a.flush()
    assert result.error is None and "prove_signature" in result.sent[0], result
    assert await a.verify(repo, u) == (2, [])


async def test_verify_reports_a_chain_key_the_genesis_does_not_name(node: Node, elf: bytes,  # noqa: F811
                                                                    proving: Path) -> None:  # fmt: skip
    """A repository without a policy whose owner sealed a key anyway: the chain enforces what the
    genesis does not say; verify reports it."""
    repo, (g,) = make_repo(node, n_updates=0, name="plain")
    a = anchorer(node.history, node.identity, elf)
    await a.enqueue(repo, g, "main")
    assert (await a.flush()).remaining == 0
    keys = zkprove.load_keys(proving)
    for ixs in a.program.set_vk(node.identity.keypair.pubkey(), repo.repo_id, keys.vk.encode(), 1):
        await a.send(ixs)
    assert (await a.verify(repo, g))[1] == [
        "the repository on chain requires update proofs, but its genesis has no proof policy"]
