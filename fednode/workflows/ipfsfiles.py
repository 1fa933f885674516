"""Plain files as IPFS UnixFS DAGs in the store: ``fednode ipfs add``, the reading side of
``ipfs get`` (the daemon fetches; this writes the file out), and pins."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fednode.atomic import atomic_file, fsync_dir
from fednode.errors import FednodeError
from fednode.storage import pins as pinning
from fednode.storage.store import PUBLIC, Store, Txn
from protocol.hamt import build_hamt, needs_sharding
from protocol.multiformats import CID, DAG_PB, FormatError
from protocol.symlinks import SYMLINK, check_target, decode_symlink, encode_symlink, inside
from protocol.unixfs import (
    CHUNK_SIZE,
    DirEntry,
    UnixFSBuilder,
    directory_entries,
    encode_directory,
    entry_name,
    is_directory_node,
    iter_file,
    unixfs_type,
)

READ_BYTES = 32 * CHUNK_SIZE  # 8 MiB read at a time
Progress = Callable[[int], None]  # bytes done so far


def add_file(store: Store, path: Path, progress: Progress | None = None) -> tuple[CID, int]:
    """Store ``path`` as Kubo's ``ipfs add --cid-version=1 --raw-leaves`` would (256 KiB raw leaves,
    174 links per node, the same CID) and pin it; one transaction. Returns (root, size)."""
    try:  # O_NONBLOCK: a FIFO is refused below instead of blocking the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FednodeError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as source:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):  # a FIFO, a device (/dev/zero never ends)
            raise FednodeError(f"{path} is not a regular file")
        size = before.st_size
        with store.write(size_hint=size + size // 64 + CHUNK_SIZE) as txn:
            root, done = put_file(txn, source, "add", progress)
            after = os.fstat(fd)
            if (done, after.st_size, after.st_mtime_ns) != (size, size, before.st_mtime_ns):
                raise FednodeError(f"{path} changed while it was being added: nothing stored")
        return root, done


MAX_TREE_ENTRIES = 1 << 16  # files and directories in a tree: what `ipfs get` takes back (its MAX_ENTRIES)


@dataclass
class _Tree:
    """A directory to add, read and checked before anything is stored."""

    name: str  # its entry's name in the directory above (a followed link's own name)
    path: Path  # where it is read from
    dirs: list[_Tree]
    files: list[tuple[str, Path, os.stat_result]]  # (entry name, where it is read from, its stat)
    links: list[tuple[str, str]]  # symbolic links kept as links: (entry name, target)


class _Scanner:
    """Reads a tree for ``add -r`` (hidden entries skipped unless ``hidden``, as Kubo's ``add -r``),
    checking everything before anything is stored. A symbolic link is kept as a link, as Kubo keeps
    it, when ``ipfs get`` would write it back (relative, leading to a path inside the tree:
    ``protocol.symlinks``); with ``follow``, every link is read as what it points to. Refused in one
    line: a link that leads out of the tree (unless followed), one followed to nothing or back to a
    directory above it, a FIFO or device, a name ``ipfs get`` could not write back, more than 64
    levels, or more than MAX_TREE_ENTRIES entries in all."""

    def __init__(self, hidden: bool, follow: bool, top: Path) -> None:
        self.hidden, self.follow = hidden, follow
        self.top = os.path.realpath(top)
        self.entries = 0
        self.above: list[tuple[int, int]] = []  # (device, inode) of the directories being read
        self.parts: list[str] = []  # names of the directories from the top down to the one being read

    def scan(self, name: str, path: Path, st: os.stat_result) -> tuple[_Tree, int, int]:
        if len(self.above) > 64:
            raise FednodeError(f"{path}: directories nested deeper than 64 levels")
        tree, total, count = _Tree(name, path, [], [], []), 0, 0
        try:
            children = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            raise FednodeError(f"cannot read {path}: {exc.strerror}") from None
        children = [c for c in children if self.hidden or not c.name.startswith(".")]
        self.entries += len(children)
        if self.entries > MAX_TREE_ENTRIES:
            raise FednodeError(f"{path}: the tree holds more than {MAX_TREE_ENTRIES} files and directories, "
                               "more than `ipfs get` takes: nothing added")
        self.above.append((st.st_dev, st.st_ino))
        for child in children:
            try:  # the rule every directory entry fednode reads is held to: what `ipfs get` could write back
                entry_name(child.name.encode("utf-8"))
            except (UnicodeEncodeError, FormatError) as exc:
                reason = "the name is not UTF-8" if isinstance(exc, UnicodeEncodeError) else str(exc)
                raise FednodeError(f"{Path(child.path)!r}: a name `ipfs get` could not write back "
                                   f"({reason})") from None
            where, sub_st = self._stat(child)
            if isinstance(where, str):  # a link kept as a link: its target
                tree.links.append((child.name, where))
                continue
            if stat.S_ISDIR(sub_st.st_mode):
                if (sub_st.st_dev, sub_st.st_ino) in self.above:  # only through a followed link
                    raise FednodeError(f"{child.path} is a directory above it, reached again through a symbolic "
                                       "link: nothing added")
                self.parts.append(child.name)
                sub, size, n = self.scan(child.name, where, sub_st)
                self.parts.pop()
                tree.dirs.append(sub)
                total, count = total + size, count + n
            elif stat.S_ISREG(sub_st.st_mode):
                tree.files.append((child.name, where, sub_st))
                total, count = total + sub_st.st_size, count + 1
            else:
                raise FednodeError(f"{child.path} is not a regular file or directory: nothing added")
        self.above.pop()
        return tree, total, count

    def _stat(self, child: os.DirEntry[str]) -> tuple[Path | str, os.stat_result]:
        """Where ``child`` is read from and its stat: a symbolic link's target when following; for a
        link kept as a link, its target's text instead of a path (checked here)."""
        try:
            st = child.stat(follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                return Path(child.path), st
            if not self.follow:
                return self._kept_link(child.path), st
            target = Path(os.path.realpath(child.path))
            return target, target.stat()
        except OSError as exc:  # gone since the listing; a link to nothing
            raise FednodeError(f"cannot read {child.path}: {exc.strerror}") from None

    def _kept_link(self, path: str) -> str:
        """The target of a link kept as a link, which must be one ``ipfs get`` writes back: relative
        and inside the tree, by its text and by where it really leads (through other links too)."""
        try:
            target = check_target(os.fsencode(os.readlink(path)))
            ok = inside(self.parts, target) and \
                os.path.commonpath([self.top, os.path.realpath(path)]) == self.top
        except FormatError as exc:
            raise FednodeError(f"{path}: {exc}: nothing added (-L adds what links point to)") from None
        if not ok:
            raise FednodeError(f"{path} is a symbolic link out of the tree: nothing added (-L adds what "
                               "links point to)")
        return target


@dataclass
class ScannedTree:
    """A directory read and checked by ``scan_tree``, ready for ``store_tree``."""

    tree: _Tree
    size: int  # bytes of its files
    files: int


def scan_tree(path: Path, hidden: bool = False, follow: bool = False) -> ScannedTree:
    """Read and check the directory ``path`` (``_Scanner``) without storing anything; ``follow``:
    symbolic links, ``path`` itself too, are read as what they point to (``add -r -L``)."""
    try:
        st = path.stat() if follow else path.lstat()
    except OSError as exc:
        raise FednodeError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FednodeError(f"{path} is not a directory")
    where = Path(os.path.realpath(path)) if follow else path
    return ScannedTree(*_Scanner(hidden, follow, where).scan(path.name, where, st))


def store_tree(store: Store, scanned: ScannedTree, raw_leaves: bool = True,
               progress: Progress | None = None) -> CID:
    """Store a scanned tree as Kubo's ``ipfs add -r --cid-version=1 --raw-leaves`` would (the same
    CIDs; ``raw_leaves=False``: its default CIDv0 layout, for comparison) and pin it; one
    transaction, everything or nothing. ``progress``: told the bytes of files stored so far."""
    total, count = scanned.size, scanned.files
    done = [0]
    with store.write(size_hint=total + total // 64 + CHUNK_SIZE * (count + 1)) as txn:
        root, _ = _put_tree(txn, scanned.tree, raw_leaves, progress, done)
        pinning.pin(txn, root, total, "add")
    return root


def add_tree(store: Store, path: Path, hidden: bool = False, raw_leaves: bool = True,
             follow: bool = False) -> tuple[CID, int, int]:
    """``scan_tree`` then ``store_tree``: (root, bytes of its files, files)."""
    scanned = scan_tree(path, hidden, follow)
    return store_tree(store, scanned, raw_leaves), scanned.size, scanned.files


def _put(txn: Txn, cid: CID, block: bytes | memoryview) -> None:
    txn.put_block(cid, block)
    txn.tag_block(cid, PUBLIC)  # added by hand: content of no repository, served to anyone


def _pb_cid(block: bytes, raw_leaves: bool) -> CID:
    """A tree's DAG-PB node's CID: v1 with raw leaves (``--cid-version=1``), else Kubo's default v0."""
    return CID(1 if raw_leaves else 0, DAG_PB, CID.hash(DAG_PB, block).digest)


def _put_tree(txn: Txn, tree: _Tree, raw_leaves: bool, progress: Progress | None,
              done: list[int]) -> tuple[CID, int]:
    """Store ``tree`` bottom-up; its root CID and Tsize (the bytes of all its blocks)."""
    entries = []
    for sub in tree.dirs:
        cid, tsize = _put_tree(txn, sub, raw_leaves, progress, done)
        entries.append(DirEntry(sub.name, cid, tsize))
    for name, file, before in tree.files:
        try:
            fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as exc:
            raise FednodeError(f"cannot read {file}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as source:
            builder = UnixFSBuilder(lambda c, b: _put(txn, c, b), raw_leaves=raw_leaves)
            read = 0
            while chunk := source.read(READ_BYTES):
                builder.write(chunk)
                read += len(chunk)
                done[0] += len(chunk)
                if progress is not None:
                    progress(done[0])
            after = os.fstat(fd)
        if (read, after.st_size, after.st_mtime_ns, after.st_ino) != \
                (before.st_size, before.st_size, before.st_mtime_ns, before.st_ino):
            raise FednodeError(f"{file} changed while it was being added: nothing stored")
        link = builder.finish()
        entries.append(DirEntry(name, link.cid, link.tsize))
    for name, target in tree.links:
        block = encode_symlink(target)
        cid = _pb_cid(block, raw_leaves)
        _put(txn, cid, block)
        entries.append(DirEntry(name, cid, len(block)))
    version = 1 if raw_leaves else 0
    if needs_sharding(entries):  # as Kubo: a HAMT once its links' names and CIDs reach 256 KiB
        try:
            shards = build_hamt(entries, version)
        except FormatError as exc:  # two names of one 64-bit hash: Kubo cannot store them either
            raise FednodeError(f"{tree.path}: {exc}: nothing added") from None
        for cid, block, _ in shards:
            _put(txn, cid, block)
        return shards[-1][0], shards[-1][2]
    block = encode_directory(entries)
    cid = _pb_cid(block, raw_leaves)
    _put(txn, cid, block)
    return cid, len(block) + sum(e.tsize or 0 for e in entries)


def put_file(txn: Txn, source: BinaryIO, pin_source: str, progress: Progress | None = None) -> tuple[CID, int]:
    """Store what ``source`` reads as a UnixFS file in ``txn`` (Kubo's CID, as ``add_file``), every
    block tagged PUBLIC, and pin it under ``pin_source``. Returns (root, size)."""
    def put(cid: CID, block: bytes | memoryview) -> None:
        txn.put_block(cid, block)
        txn.tag_block(cid, PUBLIC)  # added by hand: content of no repository, served to anyone

    builder = UnixFSBuilder(put)
    done = 0
    while chunk := source.read(READ_BYTES):
        builder.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    root = builder.finish().cid
    pinning.pin(txn, root, done, pin_source)
    return root, done


def write_file(store: Store, root: CID, out: Path | None, progress: Progress | None = None) -> int:
    """Write the stored file ``root`` to ``out`` (stdout when None), every block hash-checked
    (``iter_file``); ``out`` appears whole or not at all (a temporary file renamed at the end)."""
    if out is None:
        return _copy(store, root, sys.stdout.buffer, progress)
    with atomic_file(out) as sink:
        return _copy(store, root, sink, progress)


def is_directory(store: Store, root: CID) -> bool:
    """Whether the stored ``root`` is a UnixFS directory (plain or HAMT-sharded)."""
    return root.codec == DAG_PB and is_directory_node(store.get_block(root))


def write_tree(store: Store, root: CID, out: Path, progress: Progress | None = None) -> int:
    """Write the stored UnixFS directory ``root`` as a new directory ``out`` (which must not exist),
    every block hash-checked; the bytes of its files. Built under a temporary name beside ``out``,
    each file fsynced, then renamed: ``out`` appears whole or not at all. Entry names were checked
    as one safe path component each (``decode_directory``) and are checked again here."""
    if os.path.lexists(out):
        raise FednodeError(f"{out} exists: a directory is written to a new path only")
    parent = out.absolute().parent
    temp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".partial"))
    done = [0]
    try:
        umask = os.umask(0o22)
        os.umask(umask)
        temp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700: the tree's top as mkdir would make it
        links: list[Path] = []
        _write_dir(store, root, temp, progress, done, [], links)
        _links_stay_inside(temp, links)
        os.rename(temp, out)
    except OSError as exc:  # a full disk; names that collide on a case-insensitive file system
        shutil.rmtree(temp, ignore_errors=True)
        raise FednodeError(f"cannot write {out}: {exc.strerror or exc} ({exc.filename or out}); nothing "
                           "written") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_dir(parent)
    return done[0]


def _links_stay_inside(top: Path, links: list[Path]) -> None:
    """Each written link, followed through any other links on disk, leads inside ``top``; a chain
    of links, each fine by its text (``symlinks.inside``), can still lead out."""
    real_top = os.path.realpath(top)
    for link in links:
        if os.path.commonpath([real_top, os.path.realpath(link)]) != real_top:
            raise FednodeError(f"the symbolic link {link.relative_to(top)} leads out of the tree through other "
                               "links: nothing written")


def _write_dir(store: Store, cid: CID, into: Path, progress: Progress | None, done: list[int], parts: list[str],
               links: list[Path]) -> None:
    """Write the directory ``cid`` into ``into`` (``parts``: its names below the tree's top); the
    links written are added to ``links``."""
    if len(parts) > 64:
        raise FednodeError(f"directory {cid}: nested too deep")
    try:
        entries = directory_entries(store.get_block, cid)
    except FormatError as exc:
        raise FednodeError(f"directory {cid}: {exc}") from None
    for entry in entries:
        path = into / entry.name
        if path.parent != into or entry.name in (".", ".."):  # decode_directory refused these: never outside
            raise FednodeError(f"directory {cid}: entry {entry.name!r} is not a file name")
        if is_directory(store, entry.cid):
            path.mkdir()
            _write_dir(store, entry.cid, path, progress, done, [*parts, entry.name], links)
        elif entry.cid.codec == DAG_PB and unixfs_type(node := store.get_block(entry.cid)) == SYMLINK:
            try:
                target = decode_symlink(node)
            except FormatError as exc:
                raise FednodeError(f"directory {cid}: {entry.name!r}: {exc}") from None
            if not inside(parts, target):
                raise FednodeError(f"directory {cid}: the symbolic link {entry.name!r} leads out of the tree "
                                   f"({target[:60]!r})")
            os.symlink(target, path)
            links.append(path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as sink:
                done[0] += _copy(store, entry.cid, sink, _offset(progress, done[0]))
                sink.flush()
                os.fsync(sink.fileno())
    fsync_dir(into)


def _offset(progress: Progress | None, base: int) -> Progress | None:
    """``progress`` told the bytes of the files before this one too."""
    if progress is None:
        return None
    report = progress
    return lambda n: report(base + n)


def _copy(store: Store, root: CID, sink: BinaryIO, progress: Progress | None) -> int:
    done = 0
    try:
        for piece in iter_file(store.get_block, root):
            sink.write(piece)
            done += len(piece)
            if progress is not None:
                progress(done)
    except FormatError as exc:
        raise FednodeError(f"file {root}: {exc}") from None
    return done


def list_pins(store: Store) -> list[pinning.Pin]:
    with store.read() as txn:
        return pinning.pins(txn)


def unpin(store: Store, root: CID) -> None:
    """Drop the pin (its blocks go at the next ``fednode gc`` unless something else reaches them)."""
    with store.write() as txn:
        if not pinning.unpin(txn, root):
            raise FednodeError(f"{root} is not pinned (see 'fednode ipfs pins')")
