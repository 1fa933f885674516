"""Tensor states served over bitswap although the store holds them as deltas.

Every manifest entry records ``state``, the UnixFS CID of the tensor's full bytes (what ``show``
prints, ``ipfs add --cid-version=1 --raw-leaves``). For a snapshot those blocks are in the store;
for a delta (``xor``, ``fixed``, ...) nothing in the store has that CID. ``StateBlocks.get`` is the
bitswap server's fallback for a block the store does not hold:

- ``StateIndex``: state CID -> (repository, commit, tensor) for the non-snapshot entries of every
  commit a ref reaches (branches, tags, remotes, proposals and all their ancestors: every commit
  ``log`` and ``show`` reach), kept in memory and rebuilt from the refs (the truth, in LMDB) at start
  and on a miss (at most once per ``INDEX_REFRESH_SECONDS``): commits made by the CLI while the
  daemon runs are found without hooks. A commit is immutable, so its states and parents are read
  once and kept while a ref reaches it; a refresh walks the rest in memory.
- On a wanted state root the tensor is rebuilt along its delta chain (a worker thread), laid out as
  a UnixFS DAG by the same builder as ``add_bytes``, and served only if the root equals the recorded
  ``state``. Its blocks go to ``StateCache`` (in memory, never LMDB: history stays compact), so the
  children Kubo asks for next are answered from it. One rebuild per state at a time, ``MAX_REBUILDS``
  at once. A child of an evicted state rebuilds its state again (``KNOWN_BLOCKS`` remembers whose).
- Anything else stays unanswered (DONT_HAVE), as before.
- A state larger than the cache is rebuilt once into an anonymous temporary file (``StateSpill``:
  the blocks appended as the builder emits them, offsets kept in memory, a block served by one
  ``pread``), bounded by ``[network] bitswap_spill_bytes`` (4 GiB by default) with LRU eviction by
  state; memory then holds only the offsets, not the state. The rebuild itself still holds the
  tensor (as any checkout does); larger than the spill bound, a state is not served.
- Cost: the bytes rebuilt are charged to the asker (``_afford``: REBUILD_RATE a second after
  REBUILD_BURST; more debt than MAX_REBUILD_WAIT seconds is refused until paid), so asking in turn
  for more states than the cache holds cannot keep the rebuild threads busy for free.
- Read access: ``get`` takes the asker's rule (``access.Reader.allows``); a state (its root and
  every child) is served only if a repository whose commits record it may be read by the asker: a
  private repository's states go to its members only, generated or cached.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio

from fednode.daemon.abc import ReaderThreads
from fednode.daemon.ratelimit import TokenBuckets
from fednode.errors import FednodeError
from fednode.history import History
from fednode.history.states import tensor_bytes
from fednode.logs import log
from fednode.storage.store import Txn
from fednode.tensors.modelio import np_dtype
from protocol.multiformats import CID
from protocol.unixfs import UnixFSBuilder

# 256 MiB: four 64 MiB tensors, or one layer of a 7B model, stay servable while peers fetch them;
# a state larger than the cache is not served (it could not be held while its blocks are asked for)
DEFAULT_CACHE_BYTES = 256 << 20
# a miss re-reads the refs unless they were read this recently: a flood of unknown CIDs costs at most
# 4 scans of the refs a second (one LMDB cursor over them; manifests are read only for new targets)
INDEX_REFRESH_SECONDS = 0.25
# Bytes of states rebuilt per second for one asker (a peer, a gateway client IP), after a burst: a
# rebuild reads and decodes the delta chain and hashes the result (~0.1-0.3 s of CPU per 64 MiB).
# Past MAX_REBUILD_WAIT seconds of debt a rebuild is refused (DONT_HAVE, or a 404) until it is paid.
REBUILD_RATE = 64 << 20
REBUILD_BURST = 1 << 30
MAX_REBUILD_WAIT = 10.0
# 4 GiB of disk: states larger than the cache, spilled to anonymous temporary files (gone at exit)
DEFAULT_SPILL_BYTES = 4 << 30
MAX_REBUILDS = 2  # states rebuilt at once: each holds its tensor (and a parent) in memory meanwhile
KNOWN_BLOCKS = 1 << 16  # block -> state roots remembered after eviction (16 GiB of 256 KiB leaves)

Block = bytes | memoryview


def cache_bytes(config: dict[str, Any]) -> int:
    """``[network] bitswap_cache_bytes`` from a node config, checked (a one-line error if wrong)."""
    value = config.get("network", {}).get("bitswap_cache_bytes", DEFAULT_CACHE_BYTES)
    if type(value) is not int or value < 0:
        raise FednodeError(f"[network] bitswap_cache_bytes must be an integer >= 0, not {value!r}")
    return value


def spill_bytes(config: dict[str, Any]) -> int:
    """``[network] bitswap_spill_bytes`` from a node config, checked (a one-line error if wrong)."""
    value = config.get("network", {}).get("bitswap_spill_bytes", DEFAULT_SPILL_BYTES)
    if type(value) is not int or value < 0:
        raise FednodeError(f"[network] bitswap_spill_bytes must be an integer >= 0, not {value!r}")
    return value


@dataclass(frozen=True)
class StateSource:
    """Where a state is rebuilt from: a tensor of a commit, and its size in bytes."""

    repo_id: bytes
    commit: CID
    name: str
    nbytes: int


class StateIndex:
    """state CID -> ``StateSource`` for the delta-stored tensors of every commit the refs reach."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.sources: dict[CID, StateSource] = {}
        self.holders: dict[CID, list[bytes]] = {}  # state -> every repository whose commits record it
        self._targets: frozenset[tuple[bytes, CID]] = frozenset()
        self._per_commit: dict[tuple[bytes, CID], CommitStates] = {}

    def refresh(self) -> bool:
        """Re-read the refs (blocking: run it in a worker thread); whether the index changed."""
        with self.history.store.read() as txn:
            targets = frozenset(_ref_targets(txn))
            if targets == self._targets:
                return False
            per_commit: dict[tuple[bytes, CID], CommitStates] = {}
            todo = list(targets)
            while todo:  # every commit the refs reach, each read from the store once while reached
                key = todo.pop()
                if key in per_commit:
                    continue
                known = self._per_commit.get(key) or _commit_states(self.history, txn, *key)
                if known is None:
                    continue
                per_commit[key] = known
                todo.extend((key[0], parent) for parent in known.parents)
        self._per_commit, self._targets = per_commit, targets
        self.sources = {state: src for known in per_commit.values() for state, src in known.states.items()}
        holders: dict[CID, set[bytes]] = {}
        for known in per_commit.values():
            for state, src in known.states.items():
                holders.setdefault(state, set()).add(src.repo_id)
        self.holders = {state: sorted(repos) for state, repos in holders.items()}
        return True


def _ref_targets(txn: Txn) -> Iterator[tuple[bytes, CID]]:
    """(repository, commit) for every ref of a local repository that names a commit."""
    local = set(txn.list_repos().values())
    for repo_id, _name, value in txn.all_refs():
        if repo_id in local:
            try:
                yield repo_id, CID.from_bytes(value)
            except Exception:  # HEAD holds a branch name, not a CID
                continue


@dataclass(frozen=True)
class CommitStates:
    """What the index keeps of one commit: its delta-stored states and its parents (for the walk)."""

    states: dict[CID, StateSource]
    parents: tuple[CID, ...]


def _commit_states(history: History, txn: Txn, repo_id: bytes, commit: CID) -> CommitStates | None:
    """The delta-stored states and the parents of a commit; None if it cannot be read (tried again later)."""
    try:
        loaded = history.load_commit(commit, txn)
        manifest = history.load_manifest(loaded.weights, txn)
    except Exception:  # a ref to a commit not (yet) complete here: nothing to serve now
        return None
    out = {}
    for name, entry in manifest.tensors.items():
        if entry.encoding != "raw" and entry.state is not None:
            nbytes = math.prod(entry.shape) * np_dtype(entry.dtype).itemsize
            out[entry.state] = StateSource(repo_id, commit, name, nbytes)
    return CommitStates(out, tuple(loaded.parents))


class HeldState(Protocol):
    """One generated state as a cache holds it: its blocks' CIDs, their bytes, what it costs."""

    size: int

    def cids(self) -> Iterable[CID]: ...

    def read(self, cid: CID) -> bytes: ...

    def close(self) -> None: ...


class MemoryState:
    """A state's blocks in memory (raw leaves are views of one rebuilt tensor)."""

    def __init__(self, blocks: dict[CID, Block]) -> None:
        self.blocks = blocks
        self.size = sum(len(block) for block in blocks.values())

    def cids(self) -> Iterable[CID]:
        return self.blocks

    def read(self, cid: CID) -> bytes:
        return bytes(self.blocks[cid])

    def close(self) -> None:
        pass


class SpillFile:
    """One state's blocks in an anonymous temporary file (deleted when closed or at exit)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(buffering=0)  # unbuffered: read back by pread at once
        self.offsets: dict[CID, tuple[int, int]] = {}
        self.size = 0

    def write(self, cid: CID, block: Block) -> None:
        if cid not in self.offsets:
            self.offsets[cid] = (self.size, len(block))
            self.file.write(block)
            self.size += len(block)

    def cids(self) -> Iterable[CID]:
        return self.offsets

    def read(self, cid: CID) -> bytes:
        offset, length = self.offsets[cid]
        return os.pread(self.file.fileno(), length, offset)

    def close(self) -> None:
        self.file.close()


class StateLru:
    """Generated states, LRU by state, bounded by bytes: in memory (``StateCache``) or spilled to
    disk (``StateSpill``).

    The unit is a state, not a block: a state's raw leaves are views of one rebuilt tensor, so
    dropping one leaf would free nothing; and a peer asks for all of a state's blocks in turn.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._states: OrderedDict[CID, HeldState] = OrderedDict()
        self._owner: dict[CID, CID] = {}  # block -> its state's root, for the states held

    def __contains__(self, root: CID) -> bool:
        return root in self._states

    def root_of(self, cid: CID) -> CID | None:
        """The state whose held blocks include ``cid``."""
        return self._owner.get(cid)

    def get(self, cid: CID) -> bytes | None:
        root = self._owner.get(cid)
        if root is None:
            return None
        self._states.move_to_end(root)
        return self._states[root].read(cid)

    def hold(self, root: CID, state: HeldState) -> bool:
        """Hold ``state``, evicting the least recently used states; False (and closed) if it cannot fit."""
        if state.size > self.max_bytes:
            state.close()
            return False
        self.drop(root)
        while self.bytes + state.size > self.max_bytes:
            self.drop(next(iter(self._states)))
        self._states[root] = state
        self.bytes += state.size
        for cid in state.cids():
            self._owner.setdefault(cid, root)  # a block shared by two states stays with the first
        return True

    def drop(self, root: CID) -> None:
        state = self._states.pop(root, None)
        if state is None:
            return
        self.bytes -= state.size
        for cid in state.cids():
            if self._owner.get(cid) == root:
                del self._owner[cid]
        state.close()


class StateCache(StateLru):
    """Generated states' blocks in memory."""

    def put(self, root: CID, blocks: dict[CID, Block]) -> bool:
        return self.hold(root, MemoryState(blocks))


class StateSpill(StateLru):
    """States larger than the cache, on disk (each a ``SpillFile``)."""

    def put(self, root: CID, spilled: SpillFile) -> bool:
        return self.hold(root, spilled)


class StateBlocks:
    """The bitswap server's source for blocks the store does not hold (module docstring)."""

    def __init__(self, history: History, threads: ReaderThreads, max_cache_bytes: int = DEFAULT_CACHE_BYTES,
                 max_spill_bytes: int = DEFAULT_SPILL_BYTES) -> None:
        self.history = history
        self.threads = threads
        self.index = StateIndex(history)
        self.cache = StateCache(max_cache_bytes)
        self.spill = StateSpill(max_spill_bytes)
        self._known: OrderedDict[CID, CID] = OrderedDict()  # block -> state root, generated before
        self._building: dict[CID, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(MAX_REBUILDS)
        self.budget = TokenBuckets(REBUILD_RATE, REBUILD_BURST)  # bytes rebuilt, per asker
        self._refresh_lock = trio.Lock()
        self._refreshed_at = -math.inf
        self.generated = 0  # states rebuilt and served (reported in logs and tests)
        self.deferred = 0  # rebuilds refused: the asker was over its budget

    async def refresh(self, min_age: float = 0.0) -> None:
        """Rebuild the index from the refs (at start, and on a miss), unless the last refresh ended less
        than ``min_age`` seconds ago. A call during a refresh waits for it: a peer asking while the index
        is being built is answered from the built index, not told DONT_HAVE (Kubo would not ask again)."""
        async with self._refresh_lock:
            if trio.current_time() - self._refreshed_at < min_age:
                return
            changed = await self.threads.run_reading(self.index.refresh)
            self._refreshed_at = trio.current_time()
        if changed:
            log("state_index", states=len(self.index.sources))

    async def get(self, cid: CID, allows: Callable[[list[bytes]], bool] | None = None, asker: str = "") -> bytes | None:
        """A generated block (a delta-stored state's root or child), or None: not ours to serve, or
        ``allows`` (the asker's read rule, given the repositories recording the state) says no, or
        ``asker`` (a peer, a gateway client) had more rebuilt lately than its budget (``_afford``)."""
        for store in (self.cache, self.spill):
            held = store.root_of(cid)
            if held is not None:
                if allows is not None and not allows(self.index.holders.get(held, [])):
                    return None
                return store.get(cid)
        root = self._known.get(cid, cid)
        source = self.index.sources.get(root)
        if source is None:
            await self.refresh(min_age=INDEX_REFRESH_SECONDS)
            source = self.index.sources.get(root)
        if source is None:
            return None
        if allows is not None and not allows(self.index.holders.get(root, [])):
            return None  # refused before any rebuild: a non-member cannot make us work for it
        if not await self._afford(root, source, asker):
            return None
        try:
            await self._generate(root, source)
        except Exception as exc:  # a damaged chain is logged and not served; the peer gets DONT_HAVE
            log("state_failed", "warning", state=str(root), error=f"{type(exc).__name__}: {exc}")
        got = self.cache.get(cid)
        return got if got is not None else self.spill.get(cid)

    async def _afford(self, root: CID, source: StateSource, asker: str) -> bool:
        """Charge a rebuild's bytes to ``asker`` (REBUILD_RATE a second after REBUILD_BURST): one that
        asks for more waits for it, up to MAX_REBUILD_WAIT, else is refused (it may ask again later).
        A state cached or being rebuilt costs nothing. Asking in turn for more states than the cache
        holds forced a rebuild each time, at no cost to the asker."""
        if root in self.cache or root in self.spill or root in self._building:
            return True
        if self.budget.available(asker) - source.nbytes < -MAX_REBUILD_WAIT * REBUILD_RATE:
            self.deferred += 1
            log("state_rebuild_deferred", "warning", state=str(root), asker=asker, bytes=source.nbytes)
            return False
        wait = self.budget.pace(asker, source.nbytes)
        if wait:
            await trio.sleep(wait)
        return True

    async def _generate(self, root: CID, source: StateSource) -> None:
        """Rebuild ``root`` into the cache; a request for a state being rebuilt waits for that rebuild."""
        running = self._building.get(root)
        if running is not None:
            await running.wait()
            return
        if root in self.cache or root in self.spill:
            return
        spill = source.nbytes > self.cache.max_bytes
        if spill and source.nbytes > self.spill.max_bytes:
            log("state_too_large", "warning", state=str(root), bytes=source.nbytes, cache_bytes=self.cache.max_bytes,
                spill_bytes=self.spill.max_bytes)
            return
        done = self._building[root] = trio.Event()
        try:
            async with self._limiter:
                start = trio.current_time()
                if spill:
                    spilled = await self.threads.run_reading(partial(self._rebuild_spilled, root, source))
                    held = spilled is not None and self.spill.put(root, spilled)
                    cids: Iterable[CID] = spilled.offsets if spilled is not None else ()
                else:
                    blocks = await self.threads.run_reading(partial(self._rebuild, root, source))
                    held = blocks is not None and self.cache.put(root, blocks)
                    cids = blocks or {}
            if held:
                self.generated += 1
                self._remember(root, cids)
                log("state_generated", state=str(root), tensor=source.name, commit=str(source.commit),
                    bytes=source.nbytes, spilled=spill, seconds=round(trio.current_time() - start, 3))
        finally:
            del self._building[root]
            done.set()

    def _rebuild(self, root: CID, source: StateSource) -> dict[CID, Block] | None:
        """The state's UnixFS blocks (blocking, in a worker thread), or None if its CID is not ``root``."""
        arr = self.history.tensor_array(source.commit, source.name)
        arr.flags.writeable = False  # read-only: the builder keeps views of the leaves, no copies
        blocks: dict[CID, Block] = {}
        builder = UnixFSBuilder(blocks.__setitem__)
        builder.write(tensor_bytes(arr))
        got = builder.finish().cid
        if got != root:
            log("state_mismatch", "error", state=str(root), rebuilt=str(got), tensor=source.name,
                commit=str(source.commit))
            return None
        return blocks

    def _rebuild_spilled(self, root: CID, source: StateSource) -> SpillFile | None:
        """Like ``_rebuild``, the blocks written to a temporary file as they are built, not kept."""
        arr = self.history.tensor_array(source.commit, source.name)
        spilled = SpillFile()
        try:
            builder = UnixFSBuilder(spilled.write)
            builder.write(tensor_bytes(arr))
            got = builder.finish().cid
        except BaseException:
            spilled.close()
            raise
        del arr
        if got != root:
            spilled.close()
            log("state_mismatch", "error", state=str(root), rebuilt=str(got), tensor=source.name,
                commit=str(source.commit))
            return None
        return spilled

    def _remember(self, root: CID, blocks: Iterable[CID]) -> None:
        for cid in blocks:
            self._known[cid] = root
            self._known.move_to_end(cid)
        while len(self._known) > KNOWN_BLOCKS:
            self._known.popitem(last=False)


__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_SPILL_BYTES", "SpillFile", "StateBlocks", "StateCache", "StateIndex",
           "StateSource", "StateSpill", "cache_bytes", "spill_bytes"]
