"""Fetch jobs: one per (repository, root commit), each fetching the root's closure from peers,
then applying the announcements that were waiting on it.

Jobs are recorded in the store until done (``NetState.add_fetch``): a restart resumes them, and
one unfinished for ``fetch_expiry`` seconds is dropped. At most MAX_CONCURRENT_FETCHES run at once,
newest first (slots.py); a failed attempt asks the DHT for more providers and retries with backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from fednode.daemon import exchange, guard
from fednode.daemon.abc import FetchFollowUp, PeerView, ProviderFinder, Spawner
from fednode.daemon.discovery import cid_key
from fednode.daemon.metrics import Metrics
from fednode.daemon.slots import NewestFirstSlots
from fednode.errors import FednodeError, NotFound
from fednode.history import History
from fednode.logs import log
from fednode.storage.netstate import NetState
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, FormatError

FETCH_RETRIES = 4
MAX_CONCURRENT_FETCHES = 4  # fetch jobs running at once (each holds up to exchange.IN_MEMORY batches)


@dataclass
class Job:
    repo: bytes
    root: CID
    providers: list[str]
    thens: list[bytes] = field(default_factory=list)  # encoded head announcements / proposals
    budget: exchange.Budget = field(default_factory=exchange.Budget)
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    order: int = 0  # when it was scheduled: newer jobs get fetch slots first (slots.NewestFirstSlots)


class FetchJobs:
    def __init__(self, history: History, state: NetState, fetcher: exchange.Fetcher, metrics: Metrics,
                 tasks: Spawner, peers: PeerView, finder: ProviderFinder, follow_up: FetchFollowUp,
                 max_fetch_bytes: int, fetch_expiry: float) -> None:
        self.history = history
        self.state = state
        self.fetcher = fetcher
        self.metrics = metrics
        self.tasks = tasks
        self.peers = peers
        self.finder = finder
        self.follow_up = follow_up
        self.max_fetch_bytes = max_fetch_bytes
        self.fetch_expiry = fetch_expiry  # unfinished fetches older than this are dropped
        self.jobs: dict[tuple[bytes, CID], Job] = {}  # live jobs only: a finished one is dropped
        self.slots = NewestFirstSlots(MAX_CONCURRENT_FETCHES)
        self.scheduled = 0

    def pending(self) -> int:
        return sum(1 for j in self.jobs.values() if not j.done.is_set())

    def expire(self) -> None:
        """Drop the recorded fetches older than ``fetch_expiry`` (see NetState.expire_fetches)."""
        self.state.expire_fetches(self.fetch_expiry)

    def resume(self) -> None:
        """Restart the recorded fetches (after the expired ones are dropped: a restart revives none)."""
        self.expire()
        for repo, root, providers, thens in self.state.fetches():
            log("fetch_resumed", root=str(root))
            self.schedule(repo, root, providers, thens)

    def schedule(self, repo: bytes, root: CID, providers: list[str], then: bytes | list[bytes] | None, /) -> Job:
        """Fetch ``root``'s closure, then apply ``then`` (announcements); recorded until done."""
        thens = [then] if isinstance(then, bytes) else list(then or [])
        key = (repo, root)
        job = self.jobs.get(key)
        if job is not None and not job.done.is_set():
            job.providers = list(dict.fromkeys(providers + job.providers))
            job.thens = newest(job.thens + [t for t in thens if t not in job.thens])
        else:
            self.scheduled += 1
            job = Job(repo, root, list(dict.fromkeys(providers)), newest(thens), exchange.Budget(self.max_fetch_bytes),
                      order=self.scheduled)
            self.jobs[key] = job
            self.tasks.start_soon(self._job_task, job)
        self.state.add_fetch(repo, root, job.providers, job.thens)
        return job

    async def fetch_block(self, repo: bytes, cid: CID, peer: ID, accept: Callable[[bytes], bool], /) -> bytes | None:
        block = await self.fetcher.fetch_block(cid, peer)
        if block is not None and accept(block):  # stored: the job that follows does not ask again
            await self.fetcher.check_and_store(repo, [(cid, block)])
        return block

    def _providers(self, job: Job) -> list[ID]:
        return self.peers.providers(job.providers, job.repo)

    async def _job_task(self, job: Job) -> None:
        try:
            with guard.last_resort(self.metrics, "fetch_job", root=str(job.root)):
                await self._run(job)
        finally:
            job.done.set()  # waiters (a clone, a pull) never hang on a job that died
            if self.jobs.get((job.repo, job.root)) is job:  # a daemon runs for months: keep only live jobs
                del self.jobs[(job.repo, job.root)]

    async def _run(self, job: Job) -> None:
        await self._fetch(job)
        if job.budget.refused:  # no retries; a too-large job is also forgotten (a full disk is not)
            self.metrics.rejected["fetch_" + job.budget.refused] += 1
            log("fetch_refused", "warning", root=str(job.root), reason=job.budget.refused,
                stored=job.budget.used, limit=job.budget.limit)
            if job.budget.refused in ("too_large", "too_many_blocks"):
                self.state.done_fetch(job.repo, job.root)
        if job.ok:
            await self._completed(job)
        job.done.set()  # a failed job stays in the net db: resumed at restart or by the next pull

    async def _fetch(self, job: Job) -> None:
        """Up to FETCH_RETRIES attempts, with more providers from the DHT and backoff between them."""
        delay = 0.5
        for _ in range(FETCH_RETRIES):
            try:
                async with self.slots.slot(job.order):
                    job.ok = await self.fetcher.fetch(job.repo, job.root, lambda: self._providers(job), job.budget)
            except Exception as exc:
                log("fetch_error", "error", root=str(job.root), error=f"{type(exc).__name__}: {exc}")
                job.ok = False
            if job.ok or job.budget.refused:
                return
            await self._more_providers(job)
            await trio.sleep(delay)
            delay *= 2

    async def _completed(self, job: Job) -> None:
        if self.state.genesis(job.repo) is None and self._is_genesis(job.repo, job.root):
            # a clone's fetch resumed after a restart: nobody waits to register the repository
            try:
                await self.follow_up.register_clone(job.repo, job.root, "a resumed fetch")
            except FednodeError as exc:
                log("resumed_clone_failed", "warning", root=str(job.root), error=str(exc))
        self.state.done_fetch(job.repo, job.root)
        log("fetch_complete", root=str(job.root))
        for raw in job.thens:  # one bad announcement must not keep the others from being applied
            with guard.last_resort(self.metrics, "apply", root=str(job.root)):
                await self.follow_up.apply(job.repo, raw)

    def _is_genesis(self, repo_id: bytes, root: CID) -> bool:
        """Whether ``root`` is the genesis commit of ``repo_id`` (``exchange.is_genesis_of``)."""
        if root.codec != DAG_CBOR:  # POST /fetch may fetch any block
            return False
        with self.history.store.read() as txn:
            try:
                block = txn.get_block(root)
            except NotFound:
                return False
        return exchange.is_genesis_of(repo_id, bytes(block))

    async def _more_providers(self, job: Job) -> None:
        """After a failed attempt: dial whoever the DHT says provides the job's root commit."""
        try:
            found = await self.finder.find_providers(cid_key(job.root), f"commit {job.root}")
        except Exception as exc:  # the DHT is a help here, never a reason to give up
            log("dht_lookup_failed", "warning", root=str(job.root), error=f"{type(exc).__name__}: {exc}")
            return
        job.providers = list(dict.fromkeys(job.providers + found))


def newest(thens: list[bytes]) -> list[bytes]:
    """The newest announcement (highest seq) of each (kind, announcer, branch), in first-seen order:
    an older one would be superseded when applied anyway, and a member re-announcing a head that
    is still being fetched grew the job's list (rewritten in the net db each time) without bound."""
    best: dict[tuple[str, bytes, str] | bytes, tuple[int, bytes]] = {}
    for raw in thens:
        try:
            msg = m.decode(raw)
        except FormatError:
            msg = None
        if not isinstance(msg, m.HeadAnnouncement | m.MergeProposal):
            best.setdefault(raw, (0, raw))  # anything else is kept as it is (apply judges it)
            continue
        key = (msg.kind, msg.announcer, msg.branch)
        if key not in best or msg.seq >= best[key][0]:
            best[key] = (msg.seq, raw)
    return [raw for _, raw in best.values()]
