"""The block index (block -> the repositories holding it): written with every local commit, built once
for a store from before it, dropped with a collected block."""

from __future__ import annotations

from pathlib import Path

from helpers import fixed_identity, model_arrays, perturb

from fednode.history import History, blockindex
from fednode.storage.store import PUBLIC, Store
from fednode.tensors.modelio import ArraySource
from fednode.workflows.carfiles import export_car, import_car
from fednode.workflows.fsck import Marked, _walk, gc, mark
from fednode.workflows.ipfsfiles import add_file
from protocol.multiformats import CID, RAW


def _reachable(history: History) -> set[bytes]:
    with history.store.read() as txn:
        return mark(txn).reachable


def _tags(store: Store) -> dict[bytes, list[bytes]]:
    with store.read() as txn:
        return {bytes(cid): txn.block_repos(cid) for cid in txn.iter_block_cids()}


def _two_repos(history: History, tmp_path: Path) -> tuple[bytes, bytes, CID, CID]:
    """A private repository with two commits (delta-encoded), a public one, a pinned file and one
    stray block; returns (private id, public id, pinned root, stray block)."""
    base = model_arrays(0)
    mine, _ = history.create_repo("mine", ArraySource(base))
    history.commit(mine, ArraySource(perturb(base, 1)), "round 1")
    public, _ = history.create_repo("open", ArraySource(model_arrays(5)), visibility="public")
    (tmp_path / "f.bin").write_bytes(b"ipfs content " * 50_000)
    root, _ = add_file(history.store, tmp_path / "f.bin")
    stray = CID.hash(RAW, b"reachable from nothing")
    with history.store.write() as txn:
        txn.put_block(stray, b"reachable from nothing")
    return mine.repo_id, public.repo_id, root, stray


def _closure(history: History, repo_id: bytes) -> set[bytes]:
    """Every block the refs of ``repo_id`` reach (fsck's walk)."""
    out = Marked()
    with history.store.read() as txn:
        for name, value in txn.list_refs(repo_id).items():
            if name != "HEAD":
                root = CID.from_bytes(value)
                _walk(txn, root, out, False, (repo_id, root), fetch=False)
    return out.reachable


def test_every_block_a_commit_records_is_tagged_with_its_repository(history: History, tmp_path: Path) -> None:
    private, public, root, stray = _two_repos(history, tmp_path)
    tags = _tags(history.store)
    for rid in (private, public):
        closure = _closure(history, rid)
        assert len(closure) > 4
        assert {k for k, v in tags.items() if rid in v} == closure  # all it reaches, nothing else
    pinned = {k for k, v in tags.items() if PUBLIC in v}
    assert bytes(root) in pinned and len(pinned) > 1  # the file's root and its leaves
    assert tags[bytes(stray)] == []  # put without a repository: untagged, served to nobody
    assert all(tags[k] for k in _reachable(history))


def test_migration_tags_what_refs_and_pins_reach_and_nothing_else(history: History, tmp_path: Path) -> None:
    private, public, root, stray = _two_repos(history, tmp_path)
    before = _tags(history.store)
    # a store from before the index: no entries, no meta key
    with history.store.write() as txn:
        for cid in list(txn.iter_block_cids()):
            txn.untag_block(cid)
        txn.kv_delete("meta", blockindex.INDEX_META.encode())
    assert all(v == [] for v in _tags(history.store).values())
    path = history.store.path
    history.store.close()
    with Store(path) as store:
        tagged = blockindex.migrate(store)
        assert tagged == sum(len(v) for v in before.values())
        assert _tags(store) == before  # reachable: its repository's; pinned: PUBLIC; the stray: none
        assert blockindex.migrate(store) is None  # once
    history.store = Store(path)  # the fixture closes it


def test_gc_drops_the_index_entries_of_the_blocks_it_deletes(history: History, tmp_path: Path) -> None:
    private, _, _, stray = _two_repos(history, tmp_path)
    doomed = CID.hash(RAW, b"tagged, then unreachable")
    with history.store.write() as txn:
        txn.put_block(doomed, b"tagged, then unreachable")
        txn.tag_block(doomed, private)
    gc(history)
    with history.store.read() as txn:
        assert not txn.has_block(doomed) and txn.block_repos(doomed) == []
        assert not txn.has_block(stray)


def test_tag_checks_the_repository_id_length(tmp_path: Path) -> None:
    history = History(Store(tmp_path / "s"), fixed_identity())
    try:
        with history.store.write() as txn:
            try:
                txn.tag_block(CID.hash(RAW, b"x"), b"short")
            except ValueError:
                pass
            else:
                raise AssertionError("a 5-byte repository id was accepted")
    finally:
        history.store.close()


def test_a_car_import_tags_every_block_with_the_repository(history: History, tmp_path: Path) -> None:
    private, _, _, _ = _two_repos(history, tmp_path)
    repo = history.repo("mine")
    head = history.branch_head(repo, "main")
    assert head is not None
    export_car(history, repo, head, tmp_path / "all.car", ancestry=True)
    other = History(Store(tmp_path / "other"), fixed_identity(bytes(range(3, 35))))
    try:
        import_car(other, tmp_path / "all.car")
        tags = _tags(other.store)
        assert len(tags) > 10 and all(v == [private] for v in tags.values())  # every block the CAR held
    finally:
        other.store.close()
