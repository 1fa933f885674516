"""A private repository made public by its owner's signed decision: History.publish, the
``published`` ref, and verify's rules for such commits."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import fixed_identity, model_arrays, perturb, store_state

from fednode.errors import FednodeError
from fednode.history import History, RepoInfo, objstore, refs, refstore, repos
from fednode.history.commits import PUBLISH_MESSAGE
from fednode.tensors.modelio import ArraySource
from fednode.workflows.fsck import fsck
from fednode.workflows.verify import verify
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, Manifest, TensorEntry


def _repo(history: History, visibility: str = "private") -> RepoInfo:
    v0 = model_arrays(0)
    info, _ = history.create_repo("m", ArraySource(v0), visibility=visibility)
    history.commit(info, ArraySource(perturb(v0, 1)), "one")  # an xor delta under the head
    return info


def test_publish_flips_visibility_and_changes_no_tensor(history: History) -> None:
    info = _repo(history)
    assert history.visibility(info.repo_id) == "private" and history.is_private(info.repo_id)
    head = history.branch_head(info, "main")
    result = history.publish(info)
    assert history.visibility(info.repo_id) == "public" and not history.is_private(info.repo_id)
    assert history.published(info.repo_id) == result.cid == history.branch_head(info, "main")
    commit = history.load_commit(result.cid)
    assert commit.kind == "update" and commit.info == {"visibility": "public"}
    assert commit.parents == (head,) and commit.message == PUBLISH_MESSAGE
    assert commit.author == history.identity.public_key and history.verify_commit_signature(commit)
    before = history.state(head)
    after = history.state(result.cid)
    assert set(before) == set(after)
    assert all(before[n][1].tobytes() == after[n][1].tobytes() for n in before)
    assert verify(history, info, result.cid).problems == []
    assert fsck(history).problems == []
    # the genesis still says private: the ref is what makes it public
    with history.store.read() as txn:
        assert objstore.load_commit(txn, info.genesis).settings["visibility"] == "private"
        assert repos.visibility(txn, info.repo_id) == "public"
        assert repos.visibility(txn, b"\x01" * 32) is None


def test_publish_refusals_store_nothing(history: History, tmp_path) -> None:
    info = _repo(history)
    history.publish(info)
    before = store_state(history.store)
    with pytest.raises(FednodeError, match="is already public"):
        history.publish(info)
    assert store_state(history.store) == before
    public, _ = history.create_repo("p", ArraySource(model_arrays(2)), visibility="public")
    with pytest.raises(FednodeError, match="is already public"):
        history.publish(public)
    stranger = History(history.store, fixed_identity(bytes(range(2, 34))))
    private, _ = history.create_repo("q", ArraySource(model_arrays(3)))
    before = store_state(history.store)
    with pytest.raises(FednodeError, match="only the owner"):
        stranger.publish(private)
    assert store_state(history.store) == before
    assert history.is_private(private.repo_id)


def _forged(history: History, info: RepoInfo, author_seed: bytes | None, change: bool) -> CID:
    """A publish commit on main's head, by another author or with a changed tensor; stored, the branch moved."""
    identity = fixed_identity(author_seed) if author_seed else history.identity
    head = history.branch_head(info, "main")
    parent = history.load_commit(head)
    tensors = {n: TensorEntry(e.dtype, e.shape, "same", e.depth + 1, state=e.state)
               for n, e in history.load_manifest(parent.weights).tensors.items()}
    if change:  # claim another state for one tensor: the weights change
        name = sorted(tensors)[0]
        other = history.load_manifest(history.load_commit(info.genesis).weights).tensors[name]
        tensors[name] = dataclasses.replace(tensors[name], state=other.state)
    manifest = Manifest(tensors)
    commit = objstore.sign(identity, Commit(
        repo=info.repo_id, parents=(head,), parent_hashes=(parent.commit_hash(),), kind="update",
        weights=CID.hash(DAG_CBOR, manifest.encode()), author=identity.public_key, time_ms=parent.time_ms + 1,
        message="make the repository public", metrics={}, info={"visibility": "public"}))
    with history.store.write() as txn:
        objstore.put_objects(txn, manifest, commit)
        refstore.set_branch(txn, info.repo_id, "main", commit.cid())
        txn.index_commit(commit.cid(), info.repo_id, commit.commit_hash())
    return commit.cid()


@pytest.mark.parametrize(("seed", "change", "needle"), [
    (bytes(range(2, 34)), False, "only the repository owner"),
    (None, True, "changes its weights"),
], ids=["not-the-owner", "changed-weights"])
def test_verify_rejects_bad_publish_commits(history: History, seed: bytes | None, change: bool, needle: str) -> None:
    info = _repo(history)
    cid = _forged(history, info, seed, change)
    problems = verify(history, info, cid).problems
    assert any(needle in p for p in problems), problems
    assert verify(history, info, cid, check_tensors=False).problems  # the rule needs no tensor data
    with history.store.read() as txn:
        assert txn.get_ref(info.repo_id, refs.PUBLISHED) is None


def test_verify_reports_a_valid_publish(history: History) -> None:
    info = _repo(history)
    cid = _forged(history, info, None, False)  # by the owner, nothing changed: valid
    report = verify(history, info, cid)
    assert report.problems == [] and report.publishes == [cid]


def test_after_a_sale_only_the_nft_holder_publishes(history: History) -> None:
    """Once the chain records another holder of the repository's NFT, the genesis author can neither
    publish (refused, nothing stored) nor get a publish commit of its own past verify; the holder's
    publish verifies, and a decision this node recorded before the sale stays valid."""
    from fednode.storage.netstate import NetState

    info = _repo(history)
    holder_seed = bytes(range(5, 37))
    holder = fixed_identity(holder_seed)
    NetState(history.store).set_controller(info.repo_id, holder.public_key, b"\x07" * 32, slot=9, sale_seq=1)
    before = store_state(history.store)
    with pytest.raises(FednodeError, match="only the holder of .* NFT"):
        history.publish(info)
    assert store_state(history.store) == before
    theirs = _forged(history, info, holder_seed, False)  # the holder's publish verifies
    report = verify(history, info, theirs)
    assert report.problems == [] and report.publishes == [theirs]
    former = _forged(history, info, None, False)  # the former owner's own publish, made after the sale
    problems = verify(history, info, former).problems
    assert len(problems) == 1 and "only the repository owner" in problems[0] and str(former) in problems[0]
    with history.store.write() as txn:  # a decision this node recorded (while it controlled): still valid
        txn.set_ref(info.repo_id, refs.PUBLISHED, bytes(former))
    assert verify(history, info, former).problems == []
