"""CAR files: ``export_car`` writes a commit (and with ``ancestry`` its whole history) as a CARv1;
``import_car`` checks a CAR completely and then stores all of it in one transaction, or nothing.

Export order: the root commit first; each commit is followed by its manifest and tensor blocks
(depth-first, in link order); with ``ancestry`` the commits it links to (parents in order, then
merge inputs or a revert target) follow depth-first, each with its own blocks. A block is written
once. Without ``ancestry`` the importer must already hold the parents (deltas rebuild on them).

Import, in this order, all before anything is written: (1) the file size against the limit;
(2) the CAR read strictly, every block hash-checked against its CID (``protocol.car``); an index
of offsets is kept, not the blocks; (3) the structure: every root is a commit in the CAR; from the
roots every commit is decoded and its signature checked, every link is followed through the CAR
and the store, a link found in neither refuses the CAR, and so does a block no root reaches;
(4) the repository: one per CAR, known here by its id or registered from the genesis the CAR
holds; (5) ``workflows.verify.verify`` of every root over the store seen together with the CAR
(hashes, signatures, parents' commit hashes, tensor reconstructions, merges, reverts); (6) one
write transaction: every block (hash-checked again as it is put), the commits indexed, a new
repository registered as a clone registers it, and a verified owner's decision to make the
repository public (a ``publish`` commit, see ``history.commits.publish``) recorded as its
``published`` ref when none is recorded yet, as the daemon does for one it fetched. An imported
commit gets no branch: the caller names one (``fednode branch NAME CID``); until a ref reaches it,
``gc`` may collect it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from fednode.atomic import atomic_file
from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.history import History, RepoInfo, refs, repo_id_text
from fednode.history.objstore import signature_valid
from fednode.history.repos import register_repo, repo_info
from fednode.storage.store import Store, Txn
from fednode.workflows.verify import verify
from protocol.car import CarReader, encode_header, encode_section
from protocol.dag import links
from protocol.multiformats import CID, FormatError
from protocol.objects import Commit

DEFAULT_MAX_BYTES = 64 << 30  # a CAR import reads at most this much unless the caller says otherwise
# distinct blocks a CAR import holds an index entry for (~0.4 KB each): 1-byte blocks made 64 GiB of
# CAR about 1.7 billion entries; 2^21 blocks of 256 KiB chunks are 512 GiB
MAX_CAR_BLOCKS = 1 << 21


@dataclass
class ExportReport:
    root: CID
    path: Path
    commits: int = 0
    blocks: int = 0
    bytes: int = 0  # of the CAR
    readers: int = 0  # sealed for this many readers (workflows/sealedcar.py); 0: a plain CAR
    file_bytes: int = 0  # of the file written: the CAR's, or the sealed backup's


@dataclass
class ImportReport:
    roots: list[CID]
    repo: RepoInfo
    registered: bool  # the repository was new here and is now registered
    commits: list[CID] = field(default_factory=list)
    blocks: int = 0  # distinct blocks in the CAR
    new_blocks: int = 0  # of which the store did not hold yet
    bytes: int = 0  # bytes newly stored
    published: CID | None = None  # the owner's publish decision this import recorded (now public)


# --- export ----------------------------------------------------------------------------------


def export_car(history: History, repo: RepoInfo, root: CID, path: Path, ancestry: bool = False) -> ExportReport:
    """Write ``root`` of ``repo`` (with ``ancestry``, every commit it reaches) and every block its
    checkout and verification need as a CARv1 at ``path``, atomically: a failure leaves no file."""
    history.check_in_repo(repo, root)
    report = ExportReport(root, path)
    with atomic_file(path.resolve()) as out, history.store.read() as txn:
        write_car(out, txn, root, ancestry, report)
    report.file_bytes = report.bytes
    return report


def write_car(out: BinaryIO, txn: Txn, root: CID, ancestry: bool, report: ExportReport) -> None:
    """The CARv1 of ``root`` written block by block into ``out`` (a file, or a sealing writer), counted
    in ``report``; memory holds one block at a time."""
    report.bytes += out.write(encode_header([root]))
    for cid, block, is_commit in _export_blocks(txn, root, ancestry):
        report.bytes += out.write(encode_section(cid, block))
        report.blocks += 1
        report.commits += is_commit


def _export_blocks(txn: Txn, root: CID, ancestry: bool) -> Iterator[tuple[CID, bytes, bool]]:
    """(CID, block, is a commit) in export order (see the module's docstring), each hash-checked."""
    written: set[CID] = set()
    commits = [root]
    while commits:
        cid = commits.pop()
        if cid in written:
            continue
        block = _stored(txn, cid)
        commit = Commit.decode(block)
        written.add(cid)
        yield cid, block, True
        stack = [commit.weights]
        while stack:
            child = stack.pop()
            if child in written:
                continue
            data = _stored(txn, child)
            written.add(child)
            yield child, data, False
            stack.extend(reversed(links(child, data)))
        if ancestry:
            commits.extend(reversed([c for c in links(cid, block) if c != commit.weights]))


def _stored(txn: Txn, cid: CID) -> bytes:
    block = txn.get_block(cid)
    if not cid.verify(block):
        raise Corrupt(f"block {cid} does not match its hash (run 'fednode fsck --repair')")
    return block


# --- import: staging -------------------------------------------------------------------------


class _Staged:
    """The blocks of a CAR file, indexed by CID (offset, size) and read back from the file, hash-checked
    on every read: memory holds the index, never the blocks."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.index: dict[CID, tuple[int, int]] = {}
        self.roots: list[CID] = []
        self.total = 0

    def __contains__(self, cid: CID) -> bool:
        return cid in self.index

    def read(self, cid: CID) -> bytes:
        offset, size = self.index[cid]
        block = os.pread(self._fd, size, offset)
        if len(block) != size or not cid.verify(block):
            raise Corrupt(f"the CAR file changed while it was imported (block {cid})")
        return block


def _stage(fd: int, max_bytes: int) -> _Staged:
    staged = _Staged(fd)
    os.lseek(fd, 0, os.SEEK_SET)  # the dup below shares the offset: read from the start
    with os.fdopen(os.dup(fd), "rb") as stream:
        reader = CarReader(stream, max_bytes)
        staged.roots = reader.roots
        for section in reader:
            if len(staged.index) >= MAX_CAR_BLOCKS:  # each costs memory until the import ends
                raise FormatError(f"the CAR holds more than {MAX_CAR_BLOCKS} blocks")
            staged.index[section.cid] = (section.offset, len(section.block))
            staged.total += len(section.block)
    if not staged.roots:
        raise FormatError("the CAR names no root commit")
    return staged


class _StagedTxn:
    """A read transaction of the store that also sees the staged blocks (for ``verify``); it has
    no write methods."""

    def __init__(self, txn: Txn, staged: _Staged) -> None:
        self._txn = txn
        self._staged = staged

    def get_block(self, cid: CID) -> bytes:
        return self._staged.read(cid) if cid in self._staged else self._txn.get_block(cid)

    def block_size(self, cid: CID) -> int:
        return self._staged.index[cid][1] if cid in self._staged else self._txn.block_size(cid)

    def has_block(self, cid: CID) -> bool:
        return cid in self._staged or self._txn.has_block(cid)

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("put", "set", "delete", "index", "unindex", "kv_put", "kv_delete")):
            raise AttributeError(f"the staged view of a CAR import is read-only ({name})")
        return getattr(self._txn, name)


class _StagedStore:
    """The store as ``verify`` reads it, with a CAR's blocks in it: reads only."""

    def __init__(self, store: Store, staged: _Staged) -> None:
        self._store = store
        self._staged = staged
        self.path = store.path

    @contextmanager
    def read(self, buffers: bool = False) -> Iterator[Txn]:
        with self._store.read(buffers) as txn:
            yield cast(Txn, _StagedTxn(txn, self._staged))


# --- import: checks and the one write --------------------------------------------------------


def import_car(history: History, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> ImportReport:
    """Check the CAR at ``path`` completely (see the module's docstring), then store it in one
    transaction; on any failure a one-line FednodeError and nothing stored."""
    size = path.stat().st_size
    if size > max_bytes:
        raise FednodeError(f"{path} is {size} bytes, over the limit of {max_bytes} (--max-bytes)")
    fd = os.open(path, os.O_RDONLY)
    try:
        return import_car_fd(history, fd, path.name, max_bytes)
    finally:
        os.close(fd)


def import_car_fd(history: History, fd: int, name: str, max_bytes: int = DEFAULT_MAX_BYTES,
                  check_repo: Callable[[bytes], None] | None = None) -> ImportReport:
    """``import_car`` of the CAR open at ``fd`` (read from its start, whatever its offset), ``name``
    naming it in errors; ``check_repo`` may refuse the repository id the CAR turns out to hold."""
    try:
        staged = _stage(fd, max_bytes)
    except FormatError as exc:
        raise Corrupt(f"{name} is not a valid CAR: {exc}") from None
    with history.store.read() as txn:
        commits = _check_structure(txn, staged)
        repo, genesis = _repository(txn, staged, commits)
    if check_repo is not None:
        check_repo(repo.repo_id)
    staged_history = History(cast(Store, _StagedStore(history.store, staged)))
    publishes: list[CID] = []  # verified: from the owner, changing no tensor
    done: set[CID] = set()  # each commit verified once, whichever roots lead to it (a header may
    for root in dict.fromkeys(staged.roots):  # repeat a root or list a whole chain: no N^2 walks)
        report = verify(staged_history, repo, root, verified=done.__contains__)
        if report.problems:
            raise Corrupt(f"commit {root} fails verification: {report.problems[0]}")
        publishes += report.publishes
        done.update(report.checked)
    return _store(history, staged, commits, repo, genesis, publishes[0] if publishes else None)


def _check_structure(txn: Txn, staged: _Staged) -> dict[CID, Commit]:
    """Walk from the roots through the CAR and the store: commits decoded and their signatures
    checked, every link present somewhere, every CAR block reached. Returns the CAR's commits."""
    commits: dict[CID, Commit] = {}
    reached: set[tuple[CID, bool]] = set()
    for root in staged.roots:
        if root not in staged:
            raise Corrupt(f"the CAR's root {root} is not in it")
    stack = [(root, True) for root in reversed(staged.roots)]
    while stack:
        cid, is_commit = stack.pop()
        if (cid, is_commit) in reached:
            continue
        reached.add((cid, is_commit))
        if cid not in staged:
            if txn.has_block(cid):
                continue  # the store's own: verify checks what a new commit needs of it
            hint = " (export it with --ancestry)" if is_commit else ""
            raise Corrupt(f"the CAR is incomplete: block {cid} is neither in it nor in the store{hint}")
        block = staged.read(cid)
        if is_commit:
            commit = _commit(cid, block)
            commits[cid] = commit
            stack.append((commit.weights, False))
            stack.extend((c, True) for c in links(cid, block) if c != commit.weights)
        else:
            try:
                stack.extend((c, False) for c in links(cid, block))
            except FormatError as exc:
                raise Corrupt(f"block {cid} in the CAR is malformed: {exc}") from None
    stray = set(staged.index) - {cid for cid, _ in reached}
    if stray:
        raise Corrupt(f"block {min(stray)} in the CAR is not reachable from its roots")
    return commits


def _commit(cid: CID, block: bytes) -> Commit:
    try:
        commit = Commit.decode(block)
    except FormatError as exc:
        raise Corrupt(f"block {cid} in the CAR is not a valid commit: {exc}") from None
    if not signature_valid(commit):
        raise Corrupt(f"commit {cid} in the CAR has an invalid signature")
    return commit


def _repository(txn: Txn, staged: _Staged, commits: dict[CID, Commit]) -> tuple[RepoInfo, CID | None]:
    """The one repository of the CAR's commits: known here, or new with its genesis in the CAR
    (then also returns that genesis, to register)."""
    ids = {c.repo if c.repo is not None else c.commit_hash() for c in commits.values()}
    if len(ids) != 1:
        raise Corrupt("the CAR holds commits of more than one repository")
    repo_id = ids.pop()
    for name, rid in txn.list_repos().items():
        if rid == repo_id:
            return repo_info(txn, name, rid), None
    for cid, commit in commits.items():
        if commit.kind == "init" and commit.commit_hash() == repo_id:
            return RepoInfo(str(commit.settings["name"]), repo_id, cid, commit.settings), cid
    raise NotFound(f"the repository {repo_id_text(repo_id)} of commit {staged.roots[0]} is not here and the "
                   "CAR does not hold its genesis: export it with --ancestry")


def _store(history: History, staged: _Staged, commits: dict[CID, Commit], repo: RepoInfo,
           genesis: CID | None, publish: CID | None) -> ImportReport:
    """The one write: every block, the commits indexed, a new repository registered, ``publish``
    (a verified decision to make it public) recorded unless one is already (the first one counts)."""
    report = ImportReport(list(staged.roots), repo, genesis is not None, list(commits), len(staged.index))
    with history.store.write(size_hint=staged.total) as txn:
        for cid in staged.index:
            if txn.put_block(cid, staged.read(cid)):  # hash-checked again: the file is outside our control
                report.new_blocks += 1
            txn.tag_block(cid, repo.repo_id)  # every block is reachable from the one repository's commits
        report.bytes = txn.new_bytes
        for cid, commit in commits.items():
            txn.index_commit(cid, repo.repo_id, commit.commit_hash())
        existing = txn.list_repos()
        if genesis is not None and repo.repo_id not in existing.values():  # not registered meanwhile
            name = repo.name
            if name in existing:  # as a clone names a repository whose name is taken
                name = f"{name}-{repo_id_text(repo.repo_id)[:8]}"
            if name in existing:
                raise FednodeError(f"a repository named {name!r} exists already: rename it first")
            register_repo(txn, name, repo.repo_id, genesis)
            report.repo = RepoInfo(name, repo.repo_id, genesis, repo.settings)
        if publish is not None and txn.get_ref(repo.repo_id, refs.PUBLISHED) is None:
            txn.set_ref(repo.repo_id, refs.PUBLISHED, bytes(publish))
            report.published = publish
    return report
