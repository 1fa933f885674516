"""The node's store: LMDB under the node home.

Databases: ``blocks`` (CID bytes -> block), ``refs`` (repo id + name -> value),
``repos`` (name -> repo id), ``commits`` (commit CID text -> repo id, for prefix
look-ups), ``hashes`` (commit hash -> commit CID), ``reflog`` (repo id + branch + NUL + sequence
number -> one branch move, logged when the writer names the reflog: see ``Txn.set_ref``), ``blockrepos``
(CID bytes + repo id -> empty: the repositories that hold a block, or ``PUBLIC`` for content of no
repository; the daemon serves a block only by this index). Every write is one LMDB
transaction, so a crash never exposes a half-written block or ref: a commit,
its manifest and the branch move become visible together or not at all. Large
tensor data may go in earlier transactions; until a ref reaches those blocks
they are unreferenced garbage for ``gc``, never a visible half object.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import lmdb

from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.storage.diskspace import DiskFull, DiskReservation
from protocol.multiformats import CID, FormatError
from protocol.objects import Commit

INITIAL_MAP_SIZE = 1 << 30  # grown on demand: the data file's apparent size is the map size
WRITE_HEADROOM = 1 << 28  # room every write transaction may use; bigger writes pass a hint
DISK_MARGIN = 1 << 20  # disk every write may touch beyond its values: copied B-tree pages, freelist, meta
# outbox and chain: on-chain anchoring (queue, local chain state); net: the daemon (peers, follows, fetches)
# reflog: every move of a branch, kept so that a reset or a forced move can be undone
# blockrepos: block -> the repositories holding it (read access control)
_DBS = ("blocks", "refs", "repos", "commits", "hashes", "meta", "outbox", "chain", "net", "reflog", "blockrepos")
PUBLIC = bytes(32)  # the "repository" of content that belongs to none (ipfs add/get, pins): served to anyone
REPO_ID_BYTES = 32
REFLOG_KEEP = 1000  # entries kept per branch; older ones are dropped


_DAMAGED = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadChecksumError, lmdb.InvalidError,
            lmdb.PanicError, lmdb.VersionMismatchError, lmdb.BadTxnError)


class Txn:
    """A write (or read) transaction over all databases."""

    def __init__(self, store: Store, txn: lmdb.Transaction, disk_end: int | None = None) -> None:
        self._store = store
        self._txn = txn
        self.new_bytes = 0
        self._disk_end = disk_end  # write transactions: end of the data file this one may have touched

    def _db(self, name: str) -> lmdb._Database:
        return self._store._dbs[name]

    def _room(self, key: bytes, value: bytes | memoryview) -> None:
        """Back the pages a put may write with disk blocks first (a full disk: DiskFull, not SIGBUS)."""
        if self._disk_end is not None:
            n = len(key) + len(value)
            self._disk_end += 2 * n + 64 if n < 2048 else n + 4096 + 64  # leaf entry (splits) or overflow pages
            self._store._disk.ensure(self._disk_end)

    # blocks
    def put_block(self, cid: CID, block: bytes | memoryview, trusted: bool = False) -> bool:
        """Store a block; False when it was already there (dedup).

        Untrusted blocks (from files or peers) are hash-checked first; ``trusted``
        is only for blocks whose CID this process has just computed itself.
        """
        if not trusted and not cid.verify(cast(bytes, block)):  # hashes any buffer, no copy
            raise Corrupt(f"block {cid} does not match its hash")
        key = bytes(cid)
        self._room(key, block)
        added = self._txn.put(key, block, db=self._db("blocks"), overwrite=False)
        if added:
            self.new_bytes += len(block)
        return added

    def get_block(self, cid: CID) -> bytes:
        block = self._txn.get(bytes(cid), db=self._db("blocks"))
        if block is None:
            raise NotFound(f"block {cid} is not in the store")
        return bytes(block)

    def block_size(self, cid: CID) -> int:
        """A block's length; copies nothing out of the map in a ``read(buffers=True)`` transaction."""
        block = self._txn.get(bytes(cid), db=self._db("blocks"))
        if block is None:
            raise NotFound(f"block {cid} is not in the store")
        return len(block)

    def has_block(self, cid: CID) -> bool:
        return self._txn.get(bytes(cid), db=self._db("blocks")) is not None

    def delete_block(self, cid: CID) -> int:
        block = self._txn.get(bytes(cid), db=self._db("blocks"))
        if block is None:
            return 0
        self._txn.delete(bytes(cid), db=self._db("blocks"))
        self.untag_block(cid)  # a deleted block is held by no repository
        return len(block)

    # blockrepos: which repositories hold a block (keys: CID bytes + 32-byte repo id; CIDs are
    # self-delimiting, so one CID's keys never mix with another's)
    def tag_block(self, cid: CID, repo_id: bytes) -> None:
        """Record that ``repo_id`` (or ``PUBLIC``) holds block ``cid``."""
        if len(repo_id) != REPO_ID_BYTES:
            raise ValueError("a repository id is 32 bytes")
        key = bytes(cid) + repo_id
        self._room(key, b"")
        self._txn.put(key, b"", db=self._db("blockrepos"))

    def block_repos(self, cid: CID) -> list[bytes]:
        """The repository ids (``PUBLIC`` among them for public content) that hold ``cid``; one seek."""
        prefix = bytes(cid)
        out: list[bytes] = []
        with self._txn.cursor(db=self._db("blockrepos")) as cursor:
            if not cursor.set_range(prefix):
                return out
            for key in cursor.iternext(keys=True, values=False):
                key = bytes(key)
                if not key.startswith(prefix) or len(key) != len(prefix) + REPO_ID_BYTES:
                    break
                out.append(key[len(prefix):])
        return out

    def untag_block(self, cid: CID, repo_id: bytes | None = None) -> int:
        """Drop ``repo_id``'s entry for ``cid`` (every entry when None); returns how many went."""
        repos = self.block_repos(cid) if repo_id is None else [repo_id]
        return sum(bool(self._txn.delete(bytes(cid) + r, db=self._db("blockrepos"))) for r in repos)

    def iter_block_cids(self) -> Iterator[CID]:
        with self._txn.cursor(db=self._db("blocks")) as cursor:
            for key in cursor.iternext(keys=True, values=False):
                try:
                    cid = CID.from_bytes(bytes(key))
                except FormatError:
                    raise Corrupt(f"the store {self._store.path} is damaged: a block key is not a CID") from None
                yield cid

    # refs: values are raw bytes under a name; the history owns the naming (fednode.history.refs)
    def set_ref(self, repo_id: bytes, name: str, value: bytes, reason: str | None = None,
                reflog: str | None = None) -> None:
        """Set a ref. With ``reflog`` (a branch's name: the history passes it for every branch write)
        a move gets an entry (old, new, reason) in that reflog in the same transaction; without
        ``reason`` one is read off the new commit (its kind and message)."""
        key = repo_id + name.encode()
        if reflog is not None:
            old = self.get_ref(repo_id, name)
            if old != value:
                self._log_move(repo_id, reflog, old, value, reason)
        self._room(key, value)
        self._txn.put(key, value, db=self._db("refs"))

    def get_ref(self, repo_id: bytes, name: str) -> bytes | None:
        value = self._txn.get(repo_id + name.encode(), db=self._db("refs"))
        return None if value is None else bytes(value)

    def delete_ref(self, repo_id: bytes, name: str, reason: str | None = None, reflog: str | None = None) -> bool:
        """Delete a ref; with ``reflog`` (see ``set_ref``) its deletion is logged there."""
        if reflog is not None:
            old = self.get_ref(repo_id, name)
            if old is not None:
                self._log_move(repo_id, reflog, old, None, reason or "branch deleted")
        return self._txn.delete(repo_id + name.encode(), db=self._db("refs"))

    # reflog: per repository and branch, oldest first in key order
    @staticmethod
    def _reflog_prefix(repo_id: bytes, branch: str) -> bytes:
        return repo_id + branch.encode() + b"\0"  # branch names never hold NUL (refs.check_name)

    def _move_reason(self, old: bytes | None, new: bytes | None) -> str:
        if new is None:
            return "moved"
        try:
            cid = CID.from_bytes(new)
            raw = self._txn.get(bytes(cid), db=self._db("blocks"))
            commit = Commit.decode(bytes(raw)) if raw is not None else None
        except Exception:  # a reason is a courtesy: it never stops a ref from moving
            commit = None
        if commit is None:
            return "moved"
        first_line = (commit.message.splitlines() or [""])[0][:200]
        if old is None:
            return f"created: {first_line}" if not commit.parents else "branch created"
        if commit.parents and bytes(commit.parents[0]) == old:
            return f"{commit.kind}: {first_line}"
        try:
            if self._descends(commit, old):
                return f"fast-forward: {first_line}"
        except Exception:  # as above: a damaged ancestor only costs the reason its detail
            pass
        return "moved"

    def _descends(self, commit: Commit, old: bytes, limit: int = 256) -> bool:
        """Whether ``old`` is among the first ``limit`` ancestors of ``commit`` (a fast-forward)."""
        seen: set[bytes] = set()
        todo = [bytes(p) for p in commit.parents]
        while todo and len(seen) < limit:
            cid = todo.pop()
            if cid == old:
                return True
            if cid in seen:
                continue
            seen.add(cid)
            raw = self._txn.get(cid, db=self._db("blocks"))
            if raw is not None:
                todo.extend(bytes(p) for p in Commit.decode(bytes(raw)).parents)
        return False

    def _log_move(self, repo_id: bytes, branch: str, old: bytes | None, new: bytes | None,
                  reason: str | None) -> None:
        prefix = self._reflog_prefix(repo_id, branch)
        seq = 0
        with self._txn.cursor(db=self._db("reflog")) as cursor:  # the last entry: one seek, not a scan
            found = cursor.prev() if cursor.set_range(prefix + b"\xff" * 9) else cursor.last()
            if found and bytes(cursor.key()).startswith(prefix):
                seq = struct.unpack(">Q", bytes(cursor.key())[len(prefix):])[0] + 1
        entry = {
            "time_ms": time.time_ns() // 1_000_000,
            "old": str(CID.from_bytes(old)) if old else None,
            "new": str(CID.from_bytes(new)) if new else None,
            "reason": reason if reason is not None else self._move_reason(old, new),
        }
        self.kv_put("reflog", prefix + struct.pack(">Q", seq), json.dumps(entry, sort_keys=True).encode())
        if seq >= REFLOG_KEEP:
            self._txn.delete(prefix + struct.pack(">Q", seq - REFLOG_KEEP), db=self._db("reflog"))

    def reflog(self, repo_id: bytes, branch: str) -> list[dict]:
        """The moves of ``branch``, newest first: {time_ms, old, new, reason} (CIDs as text, None
        for a branch created or deleted)."""
        prefix = self._reflog_prefix(repo_id, branch)
        return [json.loads(v) for _, v in reversed(self.kv_items("reflog", prefix))]

    def list_refs(self, repo_id: bytes, prefix: str = "") -> dict[str, bytes]:
        start = repo_id + prefix.encode()
        out: dict[str, bytes] = {}
        with self._txn.cursor(db=self._db("refs")) as cursor:
            if not cursor.set_range(start):
                return out
            for key, value in cursor:
                if not bytes(key).startswith(start):
                    break
                out[bytes(key[32:]).decode()] = bytes(value)
        return out

    def all_refs(self) -> Iterator[tuple[bytes, str, bytes]]:
        with self._txn.cursor(db=self._db("refs")) as cursor:
            for key, value in cursor:
                yield bytes(key[:32]), bytes(key[32:]).decode(), bytes(value)

    # repositories and commit indexes
    def put_repo(self, name: str, repo_id: bytes) -> None:
        self._room(name.encode(), repo_id)
        self._txn.put(name.encode(), repo_id, db=self._db("repos"))

    def get_repo(self, name: str) -> bytes | None:
        value = self._txn.get(name.encode(), db=self._db("repos"))
        return None if value is None else bytes(value)

    def list_repos(self) -> dict[str, bytes]:
        with self._txn.cursor(db=self._db("repos")) as cursor:
            return {bytes(k).decode(): bytes(v) for k, v in cursor}

    def index_commit(self, cid: CID, repo_id: bytes, commit_hash: bytes) -> None:
        self._room(str(cid).encode() + commit_hash, repo_id + bytes(cid))
        self._txn.put(str(cid).encode(), repo_id, db=self._db("commits"))
        self._txn.put(commit_hash, bytes(cid), db=self._db("hashes"))

    def unindex_commit(self, cid: CID, commit_hash: bytes) -> None:
        self._txn.delete(str(cid).encode(), db=self._db("commits"))
        self._txn.delete(commit_hash, db=self._db("hashes"))

    def commit_repo(self, cid: CID) -> bytes | None:
        value = self._txn.get(str(cid).encode(), db=self._db("commits"))
        return None if value is None else bytes(value)

    def commits_with_prefix(self, prefix: str, limit: int = 2) -> list[tuple[str, bytes]]:
        start = prefix.encode()
        out: list[tuple[str, bytes]] = []
        with self._txn.cursor(db=self._db("commits")) as cursor:
            if not cursor.set_range(start):
                return out
            for key, value in cursor:
                if not bytes(key).startswith(start) or len(out) >= limit:
                    break
                out.append((bytes(key).decode(), bytes(value)))
        return out

    # generic access to the outbox / chain / net databases (keys and values are raw bytes)
    def kv_get(self, db: str, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._db(db))
        return None if value is None else bytes(value)

    def kv_put(self, db: str, key: bytes, value: bytes) -> None:
        self._room(key, value)
        self._txn.put(key, value, db=self._db(db))

    def kv_delete(self, db: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._db(db))

    def kv_items(self, db: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Entries whose key starts with ``prefix``, in key order."""
        out: list[tuple[bytes, bytes]] = []
        with self._txn.cursor(db=self._db(db)) as cursor:
            if not cursor.set_range(prefix):
                return out
            for key, value in cursor:
                if not bytes(key).startswith(prefix):
                    break
                out.append((bytes(key), bytes(value)))
        return out

    def get_meta(self, key: str) -> bytes | None:
        value = self._txn.get(key.encode(), db=self._db("meta"))
        return None if value is None else bytes(value)

    def set_meta(self, key: str, value: bytes) -> None:
        self._room(key.encode(), value)
        self._txn.put(key.encode(), value, db=self._db("meta"))


class Store:
    def __init__(self, path: Path, readonly: bool = False, sync: bool = True,
                 map_size: int = INITIAL_MAP_SIZE) -> None:
        """``sync=False`` skips fsync at commit: still safe against a crashed or killed
        process (the OS has the pages), not against power loss or a kernel crash."""
        self.path = path
        if not path.exists() and readonly:
            raise FednodeError(f"no store at {path}")
        if path.exists() and not path.is_dir():
            raise FednodeError(f"the store {path} is not a directory: move that file away")
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise FednodeError(f"cannot create the store {path}: {exc.strerror}") from None
        _private(path)
        try:
            self._env = lmdb.open(
                str(path),
                mode=0o600,  # the files: private weights and repository keys, whatever the home's mode
                map_size=map_size,
                max_dbs=len(_DBS),
                subdir=True,
                readonly=False,
                lock=True,
                sync=sync,
                metasync=sync,
                writemap=True,  # writes land in the map directly: no malloc + pwrite copy
            )
        except lmdb.Error as exc:
            raise FednodeError(f"cannot open store {path}: {_one_line(exc)}") from None
        self._disk = DiskReservation(path / "data.mdb")
        try:
            with self._guard():
                with self._env.begin(write=True):  # the writer lock: the used size is current
                    self._disk.begin(self._used_bytes())
                    self._disk.ensure(self._used_bytes() + DISK_MARGIN)  # open_db may create the databases
                self._dbs = {name: self._env.open_db(name.encode()) for name in _DBS}
        except BaseException:
            self._env.close()
            raise

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _used_bytes(self) -> int:
        return (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]

    def has_room(self, extra: int) -> bool:
        """Whether a write of ``extra`` bytes fits without growing the map (a resize must not
        happen while another thread of this process has a transaction open)."""
        return self._used_bytes() + extra + WRITE_HEADROOM <= self._env.info()["map_size"]

    def _ensure_room(self, extra: int) -> None:
        size = self._env.info()["map_size"]
        need = self._used_bytes() + extra + WRITE_HEADROOM
        if need > size:
            while size < need:
                size *= 2
            self._env.set_mapsize(size)

    def _begin(self, write: bool, buffers: bool = False) -> lmdb.Transaction[Any]:
        try:
            return self._open(write, buffers)
        except lmdb.MapResizedError:  # another process (the daemon, the CLI) grew the map: adopt its size
            self._env.set_mapsize(0)
            return self._open(write, buffers)

    def _open(self, write: bool, buffers: bool) -> lmdb.Transaction[Any]:
        return self._env.begin(write=write, buffers=True) if buffers else self._env.begin(write=write)

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more bytes now (call with no transaction open)."""
        with self._guard():
            self._ensure_room(extra)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """LMDB's errors as one-line FednodeErrors: a damaged file, a full disk or map."""
        try:
            yield
        except lmdb.MapFullError:
            raise FednodeError(f"the store {self.path} is full (its map size); nothing was stored") from None
        except _DAMAGED as exc:
            raise Corrupt(f"the store {self.path} is damaged ({_one_line(exc)}); "
                          "restore it from a backup or clone its repositories again") from None
        except lmdb.Error as exc:
            if "No space left" in str(exc) or "Disk quota" in str(exc):
                raise DiskFull(f"no disk space left for the store at {self.path}; nothing was stored") from None
            raise FednodeError(f"store error at {self.path}: {_one_line(exc)}") from None

    @contextmanager
    def write(self, size_hint: int = 0, grow: bool = True) -> Iterator[Txn]:
        """One atomic write transaction: all of it is stored, or none.

        ``size_hint``: bytes the transaction may add beyond WRITE_HEADROOM.
        ``grow=False`` for writer threads: the map must have been reserved before.
        Every page it may write is backed by disk blocks first: a full disk raises DiskFull.
        """
        with self._guard():
            if grow:
                self._ensure_room(size_hint)
            with self._begin(write=True) as txn:
                used = self._used_bytes()  # we hold the writer lock: nobody else writes beyond this
                self._disk.begin(used)
                self._disk.ensure(used + DISK_MARGIN)
                try:
                    yield Txn(self, txn, used + DISK_MARGIN)
                except DiskFull:
                    self._disk.release(used)  # blocks this aborted transaction allocated go back to the disk
                    raise

    @contextmanager
    def read(self, buffers: bool = False) -> Iterator[Txn]:
        """``buffers=True``: LMDB hands out views into the map, so ``block_size`` copies nothing
        (every other ``Txn`` method still returns copies that outlive the transaction)."""
        with self._guard(), self._begin(write=False, buffers=buffers) as txn:
            yield Txn(self, txn)

    def get_block(self, cid: CID) -> bytes:
        with self.read() as txn:
            return txn.get_block(cid)

    def stat(self) -> dict[str, int]:
        with self._guard(), self._env.begin() as txn:
            blocks = txn.stat(self._dbs["blocks"])
        info = self._env.info()
        return {
            "blocks": blocks["entries"],
            "map_used_bytes": self._used_bytes(),
            "map_size": info["map_size"],
        }


def _private(path: Path) -> None:
    """The store directory 0700 and its files 0600, best effort (another owner's store is left as it
    is): a home made readable by others later must not expose private repositories' weights or keys."""
    for item, mode in ((path, 0o700), (path / "data.mdb", 0o600), (path / "lock.mdb", 0o600)):
        try:
            if item.exists() and item.stat().st_uid == os.getuid() and item.stat().st_mode & 0o077:
                os.chmod(item, mode)
        except OSError:
            pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
