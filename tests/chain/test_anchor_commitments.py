"""Anchoring commits with their commitments (issue 15 item 2): an update's info["zk"]["commitment"],
a merge's C(d) with C(r); malformed or uncheckable zk info anchors without, never blocking the outbox."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from helpers import model_arrays, perturb
from test_chain_client import anchorer, elf, make_repo, program_cache  # noqa: F401 (fixtures)

from fednode import logs
from fednode.chain.anchoring import PACKET_DATA_SIZE, Anchorer, zk_commitments
from fednode.history import RepoInfo
from fednode.node import Node
from fednode.tensors.modelio import ArraySource
from fednode.workflows import merging
from fednode.zk import merge_check as mc
from fednode.zk import pedersen as pd
from protocol import chain as layout
from protocol.multiformats import CID
from protocol.objects import Commit

NOT_ON_CURVE = bytes(63) + b"\x01"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(logs, "_out", out)
    return out


def events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def update(node: Node, repo: RepoInfo, branch: str, seed: int, zk: dict[str, Any]) -> CID:
    """An update on a new branch from the genesis, carrying ``zk`` as its zk info (as given: the
    node's own commitments are made only for commits that bring none)."""
    node.history.create_branch(repo, branch, repo.genesis)
    source = ArraySource(perturb(model_arrays(0), seed))
    return node.history.commit(repo, source, branch, branch=branch, info={"zk": zk}).cid


def merge_commit(node: Node, repo: RepoInfo, inputs: list[CID], weights: list[int], zk: dict[str, Any],
                 into: str) -> CID:  # fmt: skip
    """A merge commit of ``inputs`` (branch ``into`` starts at the first) with the given zk info."""
    node.history.create_branch(repo, into, inputs[0])
    record = {"inputs": inputs, "weights": weights, "base": repo.genesis}
    source = ArraySource(perturb(model_arrays(0), 99))
    return node.history.commit(repo, source, into, branch=into, kind="merge", extra_parents=tuple(inputs[1:]),
                               info={"merge": record, "zk": zk}).cid  # fmt: skip


async def records(a: Anchorer, repo: RepoInfo, cids: list[CID]) -> list[layout.CommitAccount | None]:
    return await a.commit_records(repo.repo_id, [a.history.load_commit(c).commit_hash() for c in cids])


def carried(node: Node, cid: CID) -> bytes:
    """The commitment the stored commit carries (whatever the commit path put there)."""
    return node.history.load_commit(cid).info["zk"]["commitment"]


async def test_updates_and_merges_anchor_their_commitments(node: Node, elf: bytes,  # noqa: F811
                                                           logged: io.StringIO) -> None:  # fmt: skip
    repo, (g,) = make_repo(node, n_updates=0)
    rng = np.random.default_rng(3)
    qs = [rng.integers(-1000, 1000, 40) for _ in range(2)]
    u1 = update(node, repo, "a", 1, {"v": 1, "base": g, "commitment": pd.commit(qs[0])})
    u2 = update(node, repo, "b", 2, {"v": 1, "base": g, "commitment": pd.commit(qs[1])})
    bad = update(node, repo, "c", 3, {"v": 1, "base": g, "commitment": NOT_ON_CURVE})
    ws = [3, 5]
    # C(d) of some delta, C(r) = sum_k w_k C_k - W C(d): the relation the program checks holds for
    # the commitments the inputs carry, whatever produced them.
    cs = [carried(node, u1), carried(node, u2)]
    c_d = pd.commit(mc.fedavg_delta(qs, ws)[0])
    c_r = pd.combine([*cs, c_d], [*ws, -sum(ws)])
    linear = merge_commit(node, repo, [u1, u2], ws, {"v": 1, "base": g, "commitment": c_d, "remainder": c_r}, "m1")
    median = merge_commit(node, repo, [u1, u2], ws, {"v": 1, "base": g, "commitment": c_d}, "m2")
    wrong = merge_commit(node, repo, [u1, u2], ws, {"v": 1, "base": g, "commitment": c_d, "remainder": c_d}, "m3")
    a = anchorer(node.history, node.identity, elf)
    for cid, branch in ((linear, "m1"), (median, "m2"), (wrong, "m3"), (bad, "c")):
        await a.enqueue(repo, cid, branch)
    result = await a.flush()
    assert result.error is None and result.remaining == 0, result.error
    r1, r2, r_bad, r_lin, r_med, r_wrong = await records(a, repo, [u1, u2, bad, linear, median, wrong])
    assert r1 is not None and r1.commitment == cs[0] and r2 is not None and r2.commitment == cs[1]
    assert r_lin is not None and r_lin.commitment == c_d  # checked on chain as W C(d) + C(r)
    assert r_med is not None and r_med.commitment is None  # C(d) alone: the old rule would want C(S)
    assert r_wrong is not None and r_wrong.commitment is None  # would fail the check: sent without
    assert r_bad is not None and r_bad.commitment is None
    why = {e["cid"]: e["why"] for e in events(logged) if e["event"] == "anchor_without_commitment"}
    assert set(why) == {str(wrong), str(bad)}, why
    assert "not a point of BN254 G1" in why[str(bad)] and "W C(d) + C(r)" in why[str(wrong)]
    assert await a.verify(repo, linear) == (4, [])


async def test_merge_with_an_uncommitted_input_anchors_without(node: Node, elf: bytes,  # noqa: F811
                                                              logged: io.StringIO) -> None:  # fmt: skip
    """An input of nonzero weight anchored without a commitment (an old client, malformed zk info):
    the program would refuse C(d), C(r) (MISSING_INPUT_COMMITMENT), so the merge goes without."""
    repo, (g,) = make_repo(node, n_updates=0)
    u1 = update(node, repo, "a", 1, {"v": 1, "base": g, "commitment": pd.commit([1, 2])})
    u2 = update(node, repo, "b", 2, {"v": 1, "none": "the test's: no commitment"})
    c_d = pd.commit([1, 1])
    m = merge_commit(node, repo, [u1, u2], [1, 1], {"v": 1, "base": g, "commitment": c_d, "remainder": c_d}, "m")
    a = anchorer(node.history, node.identity, elf)
    await a.enqueue(repo, m, "m")
    assert (await a.flush()).remaining == 0
    (record,) = await records(a, repo, [m])
    assert record is not None and record.commitment is None
    assert [e["why"] for e in events(logged)] == ["an input of nonzero weight is anchored without a commitment"]


def test_zk_info_is_read_strictly() -> None:
    c = pd.commit([5])
    base: dict[str, Any] = {"v": 1, "base": "x"}

    def read(kind: str, zk: Any) -> tuple[tuple[bytes | None, bytes | None], str | None]:
        return zk_commitments(Commit(repo=None, parents=(), kind=kind, weights=CID.hash(0x71, b"w"), author=bytes(32),
                                     time_ms=1, message="", info={"zk": zk}))  # fmt: skip

    assert read("update", {**base, "commitment": c}) == ((c, None), None)
    assert read("update", {**base, "commitment": bytes(64)}) == ((bytes(64), None), None)  # C(0): infinity
    assert read("merge", {**base, "commitment": c, "remainder": c}) == ((c, c), None)
    assert read("merge", {**base, "commitment": c}) == ((None, None), None)
    assert read("update", {"v": 1, "none": "grid widened"}) == ((None, None), None)
    for kind, zk, why in (("update", {**base, "commitment": c[:63]}, "64 bytes"),
                          ("update", {**base, "commitment": "ab" * 64}, "not bytes"),
                          ("update", {"v": 2, "commitment": c}, "version-1"),
                          ("update", [c], "version-1"),
                          ("update", base, "no commitment"),
                          ("update", {**base, "commitment": c, "remainder": c}, "not a merge"),
                          ("merge", {**base, "remainder": c}, "no commitment")):  # fmt: skip
        pair, problem = read(kind, zk)
        assert pair == (None, None) and problem is not None and why in problem, (zk, problem)


def test_a_merge_too_large_with_its_remainder_goes_without(node: Node, elf: bytes,  # noqa: F811
                                                           logged: io.StringIO) -> None:  # fmt: skip
    """8 inputs with C(d) and C(r) take 1262 bytes: the merge is anchored without them (it fits then)."""
    a = anchorer(node.history, node.identity, elf)
    me = node.identity
    parents = tuple(CID.hash(0x71, bytes([k])) for k in range(8))
    c = pd.commit([7])
    record = {"inputs": list(parents), "weights": [1] * 8}
    unsigned = Commit(repo=None, parents=parents, kind="merge", weights=CID.hash(0x71, b"w"), author=me.public_key,
                      time_ms=1, message="", info={"merge": record, "zk": {"v": 1, "commitment": c, "remainder": c}},
                      parent_hashes=tuple(bytes([k]) * 32 for k in range(8)))  # fmt: skip
    commit = replace(unsigned, sig=bytes(me.keypair.sign_message(unsigned.commit_hash())))
    repo_id = bytes(32)
    ixs = a._anchor_ixs(repo_id, commit, "main", None)
    assert layout.decode_instruction(bytes(ixs[1].data)).commitment is None  # type: ignore[union-attr]
    assert "1262 bytes" in events(logged)[0]["why"]
    seven = replace(commit, parents=parents[:7], parent_hashes=commit.parent_hashes[:7])
    ixs = a._anchor_ixs(repo_id, seven, "main", None)
    sent = layout.decode_instruction(bytes(ixs[1].data))
    assert isinstance(sent, layout.Merge) and (sent.commitment, sent.remainder) == (c, c)
    assert len(events(logged)) == 1 and PACKET_DATA_SIZE == 1232


async def test_the_nodes_own_commitments_are_anchored_and_checked_on_chain(node: Node, elf: bytes,  # noqa: F811
                                                                          logged: io.StringIO) -> None:  # fmt: skip
    """End to end with the commitments the node makes (workflows/commitments.py): two updates from
    the genesis on their own branches, a FedAvg merge of both into main (main still at the genesis:
    a weight-0 parent without a commitment); the program checks W C(d) + C(r) and records C(d)."""
    repo, (g,) = make_repo(node, n_updates=0)
    ups = []
    for k, branch in enumerate(("a", "b")):
        node.history.create_branch(repo, branch, g)
        ups.append(node.history.commit(repo, ArraySource(perturb(model_arrays(0), k + 1)), branch, branch=branch).cid)
    merged = merging.merge(node.history, repo, ["a", "b"], "main", weighting="equal").result
    assert merged is not None
    commit = node.history.load_commit(merged.cid)
    assert len(commit.parents) == 3 and {"commitment", "remainder"} <= set(commit.info["zk"])
    a = anchorer(node.history, node.identity, elf)
    await a.enqueue(repo, merged.cid, "main")
    result = await a.flush()
    assert result.error is None and result.remaining == 0, result.error
    r1, r2, rm = await records(a, repo, [*ups, merged.cid])
    assert [r1 and r1.commitment, r2 and r2.commitment] == [carried(node, u) for u in ups]
    assert rm is not None and rm.commitment == commit.info["zk"]["commitment"]
    assert events(logged) == [] and await a.verify(repo, merged.cid) == (4, [])
