"""FedAvg merges proven on chain through ``Anchorer`` (issue 15 item 2): under a genesis policy that names a
remainder key (``rvk``), the owner's flush seals it beside the update key (write_rvk, seal_rvk) and follows
the anchor of a merge carrying C(d), C(r) and its remainder proof with ``prove_merge``; verify reports a
FedAvg merge not proven on chain. Real proofs (n = 8 keys, snarkjs) made by the node's own merge path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from test_anchor_proofs import BASE, proving, record, source, update  # noqa: F401 (fixtures)
from test_chain_client import anchorer, elf, program_cache  # noqa: F401 (fixtures)

from fednode.chain import outbox
from fednode.chain.anchoring import Anchorer
from fednode.history import History, RepoInfo
from fednode.node import Node
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging, zkpolicy
from fednode.zk import policy as zpol
from protocol.multiformats import CID
from protocol.objects import Commit

BASE_STEPS = ([100, -200, 0, 50, 7, -9, 300, 1], [-40, 10, 20, 0, 0, 5, -6, 2])


def policy_repo(node: Node, keys: Path, name: str) -> tuple[RepoInfo, zpol.ZkPolicy]:
    entry, policy = zkpolicy.make_policy(keys, 0.5, source(BASE))
    assert policy.remainder_vk_bytes is not None  # the session's keys have remainder keys: rvk recorded
    repo, _ = node.history.create_repo(name, source(BASE), zk_policy=entry)
    return repo, policy


def fedavg(node: Node, repo: RepoInfo, policy: zpol.ZkPolicy) -> Commit:
    for branch, steps in zip("ab", BASE_STEPS, strict=True):
        update(node, repo, policy, branch, steps)
    merged = merging.merge(node.history, repo, ["a", "b"], "main", weighting="equal").result
    assert merged is not None and zpol.needs_remainder_proof(policy, merged.commit)
    assert zpol.check_merge(policy, merged.commit) is None  # the node proved it
    return merged.commit


async def anchor_only(a: Anchorer, repo: RepoInfo, cids: list[CID]) -> None:
    """Anchor as an older client would: the anchors alone, no proof instruction."""
    for cid in cids:
        commit = a.history.load_commit(cid)
        chain_repo = await a.repo_record(repo.repo_id)
        await a.send(a._anchor_ixs(repo.repo_id, commit, "main" if commit.kind == "merge" else None, chain_repo))


async def test_flush_seals_both_keys_and_proves_the_merge(node: Node, elf: bytes, proving: Path) -> None:  # noqa: F811
    repo, policy = policy_repo(node, proving, "fedavg")
    merge = fedavg(node, repo, policy)
    a = anchorer(node.history, node.identity, elf)
    queued = await a.enqueue(repo, merge.cid(), "main")
    result = await a.flush()
    assert result.error is None and result.remaining == 0, result.error
    assert len(result.sent[0]["key_transactions"]) == 4  # type: ignore[arg-type]  # 2 per key
    chain_repo = await a.repo_record(repo.repo_id)
    rkey = await a.zkvk_record(repo.repo_id, remainder=True)
    assert chain_repo is not None and chain_repo.requires_proofs and chain_repo.has_remainder_key
    assert rkey is not None and (rkey.sealed, rkey.vk, rkey.key_id, rkey.bound2) == (
        True, policy.remainder_vk_bytes, policy.remainder_key_id, 0)
    rm = await record(a, repo, merge.cid())
    assert rm.proven and rm.commitment == merge.info["zk"]["commitment"]
    cu = result.sent[-1]["prove_compute_units"]
    assert isinstance(cu, int) and cu <= 300_000
    print(f"prove_merge of a 3-parent FedAvg merge (base weight 0): {cu} CU")
    assert await a.verify(repo, merge.cid()) == (4, [])
    # a crash before the merge's item left the queue: its replay finds it PROVEN and sends nothing
    with node.store.write() as txn:
        outbox.append(txn, queued[-1])
    replay = await a.flush()
    assert replay.error is None and replay.remaining == 0 and "prove_signature" not in replay.sent[0]


async def test_an_older_clients_repository_gets_its_remainder_key_and_merges_proven(
        node: Node, elf: bytes, proving: Path) -> None:  # noqa: F811
    """Created and anchored without the remainder key or prove_merge: verify reports the missing key; the next
    flush seals it; verify then reports the merge not proven, enqueue queues it again and the flush proves
    it. A merge carrying another commit's remainder proof is refused by the program (PROOF_GROTH16_FAILS)
    and not queued again once dropped."""
    repo, policy = policy_repo(node, proving, "older")
    merge = fedavg(node, repo, policy)
    a = anchorer(node.history, node.identity, elf)
    await a.ensure_funds()
    await a.send(a._create_repo_ixs(repo.repo_id))
    me = node.identity.keypair.pubkey()
    for ixs in a.program.set_vk(me, repo.repo_id, policy.vk_bytes, policy.bound2):  # the update key only
        await a.send(ixs)
    await anchor_only(a, repo, [repo.genesis])
    inputs = list(merge.parents[1:])
    await a.enqueue(repo, inputs[-1], "b")
    await a.enqueue(repo, inputs[0], "a")
    queued = [i.op for i in a.queue()]
    assert queued[0] == "create_repo", queued  # the remainder key is missing
    result = await a.flush()
    assert result.error is None and len(result.sent[0]["key_transactions"]) == 2, result  # type: ignore[arg-type]
    await anchor_only(a, repo, [merge.cid()])
    _, problems = await a.verify(repo, merge.cid())
    assert problems == [f"commit {str(merge.cid())[:16]}: FedAvg merge not proven on chain "
                        "(no valid remainder proof sent)"]  # fmt: skip
    assert [i.cid for i in await a.enqueue(repo, merge.cid(), "main")] == [str(merge.cid())]
    result = await a.flush()
    assert result.error is None and "prove_signature" in result.sent[0], result
    assert await a.verify(repo, merge.cid()) == (4, [])

    # the same merge on another branch with the first one's proof (bound to its proof hash, not this one's)
    node.history.create_branch(repo, "moved", merge.parents[0])
    state = node.history.state(merge.cid())
    values = ArraySource({n: (e.dtype, arr.reshape(e.shape)) for n, (e, arr) in state.items()})
    bare = {k: v for k, v in merge.info["zk"].items() if k != "proof"}
    moved = History(node.store, node.identity).commit(
        repo, values, "moved", branch="moved", kind="merge", extra_parents=merge.parents[1:],
        info={**merge.info, "zk": {**bare, "proof": merge.info["zk"]["proof"]}}, exact=True).commit
    assert moved.cid() != merge.cid() and "Groth16" in (zpol.check_merge(policy, moved) or "")
    await a.enqueue(repo, moved.cid(), "moved")
    result = await a.flush()
    assert result.error is not None and "PROOF_GROTH16_FAILS" in result.error, result.error
    assert not (await record(a, repo, moved.cid())).proven
    with node.store.write() as txn:
        outbox.drop(txn, a.queue()[0].seq)
    assert await a.enqueue(repo, moved.cid(), "moved") == []  # its proof fails here too: not queued again
    assert "FedAvg merge not proven on chain" in " ".join((await a.verify(repo, moved.cid()))[1])


async def test_verify_reports_a_remainder_key_the_genesis_does_not_name(
        node: Node, elf: bytes, proving: Path) -> None:  # noqa: F811
    """A policy without rvk whose owner sealed a remainder key anyway, and one naming another key."""
    entry, policy = zkpolicy.make_policy(proving, 0.5, source(BASE))
    plain = {k: v for k, v in entry.items() if k != "rvk"}
    repo, _ = node.history.create_repo("no-rvk", source(BASE), zk_policy=plain)
    a = anchorer(node.history, node.identity, elf)
    await a.enqueue(repo, repo.genesis, "main")
    result = await a.flush()
    assert result.error is None and len(result.sent[0]["key_transactions"]) == 2  # type: ignore[arg-type]
    assert policy.remainder_vk_bytes is not None
    me = node.identity.keypair.pubkey()
    for ixs in a.program.set_vk(me, repo.repo_id, policy.remainder_vk_bytes, 0, remainder=True):
        await a.send(ixs)
    assert (await a.verify(repo, repo.genesis))[1] == [
        "the repository on chain has a remainder key, but its genesis policy names none"]
    other = dataclasses.replace(policy, remainder_vk_bytes=policy.vk_bytes)
    assert await a._remainder_key_problems(repo, (await a.repo_record(repo.repo_id)), other) == [  # type: ignore[arg-type]
        "the remainder key on chain is not the genesis policy's"]

