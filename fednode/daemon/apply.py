"""What a completed fetch does: apply an announcement or proposal, or register a clone.

Refs: a verified announcement from the repository owner (its controller, ``Validator.owner``: the
holder of its NFT once it is bound, else the genesis author; after a sale the former holder's
announcements are kept as its remote refs like anyone's) moves ``heads/<branch>`` when the
head and all its blocks are present, ``verify`` passes and it is a fast-forward; anything else
(another announcer, a diverged branch) becomes ``remotes/<peer id>/<branch>``; a merge proposal
becomes ``proposals/<peer id>/<branch>``. Commits that passed are recorded
(``NetState.mark_verified``), so later heads verify only their new commits; a verified owner's
decision to make the repository public among them sets the ``published`` ref (before they are
marked: a verified commit is never looked at again). Verification runs in
a worker thread (``ReaderThreads``): the event loop never waits on a peer's data.
"""

from __future__ import annotations

from functools import partial

from fednode.daemon.abc import Penalizer, ProvideRequests, ReaderThreads
from fednode.daemon.host import peer_id_of_key
from fednode.daemon.metrics import Metrics
from fednode.daemon.validate import Validator
from fednode.errors import FednodeError
from fednode.history import History, RepoInfo, refs, refstore, repo_id_text
from fednode.history.repos import register_repo
from fednode.logs import log
from fednode.storage.netstate import NetState
from fednode.workflows import merging, zkcheck  # noqa: F401  (below)
from fednode.workflows.verify import verify
from protocol import messages as m
from protocol.multiformats import CID

# ``verify`` imports merging and zkcheck at its first merge or commitment check (commands that
# never check one start without them); a daemon verifies every fetch, so it loads them once at
# start rather than inside its first clone (44 ms of a 64 MiB clone's 0.7 s, measured).


class Applier:
    def __init__(self, history: History, own_key: bytes, state: NetState, validator: Validator, metrics: Metrics,
                 threads: ReaderThreads, penalizer: Penalizer, provides: ProvideRequests) -> None:
        self.history = history
        self.store = history.store
        self.own_key = own_key  # our public key: our own announcements, relayed back, are never applied
        self.state = state
        self.validator = validator
        self.metrics = metrics
        self.threads = threads
        self.penalizer = penalizer
        self.provides = provides

    def applied(self, repo_id: bytes, ann: m.HeadAnnouncement) -> bool:
        """Whether the ref this announcement would set already points at its head."""
        names = [refs.remote(str(peer_id_of_key(ann.announcer)), ann.branch)]
        if ann.announcer == self.validator.owner(repo_id):
            names.append(refs.branch(ann.branch))
        with self.store.read() as txn:
            return any(txn.get_ref(repo_id, n) == bytes(ann.head) for n in names)

    async def apply(self, repo_id: bytes, raw: bytes, /) -> None:
        """After a fetch completed: move a branch or record a peer's ref. A head that fails
        verification is the announcer's doing (it signed the announcement): penalized."""
        msg = m.decode(raw)
        if not isinstance(msg, m.HeadAnnouncement | m.MergeProposal):
            return
        if msg.announcer == self.own_key:  # never remotes/<our peer id>/...: our refs are the truth
            return
        if self._superseded(repo_id, msg):
            return  # fetches end out of order: a newer announcement of this branch came since (its job applies it)
        try:
            repo = self.history.repo_by_id(repo_id)
        except FednodeError:
            return
        if not await self._verified(repo_id, repo, msg):
            return
        peer = str(peer_id_of_key(msg.announcer))
        if isinstance(msg, m.MergeProposal):
            with self.store.write() as txn:
                txn.set_ref(repo_id, refs.proposal(peer, msg.branch), bytes(msg.head))
            log("proposal_recorded", head=str(msg.head), branch=msg.branch, peer=peer)
            return
        if msg.announcer == self.validator.owner(repo_id) and await self._fast_forward(repo_id, msg):
            return
        # checked again with no await before the write: while this head was verified, a newer
        # announcement's job may have moved the branch past it (not a fast-forward any more, yet
        # no divergence: a remote ref here would be stale, as CI once saw after a burst)
        if self._superseded(repo_id, msg):
            return
        with self.store.write() as txn:
            txn.set_ref(repo_id, refs.remote(peer, msg.branch), bytes(msg.head))
        log("remote_ref", branch=msg.branch, head=str(msg.head), peer=peer)

    def _superseded(self, repo_id: bytes, msg: m.HeadAnnouncement | m.MergeProposal) -> bool:
        """Whether a newer announcement of the same branch by the same announcer was accepted since."""
        return isinstance(msg, m.HeadAnnouncement) and \
            msg.seq < self.state.last_seq(msg.kind, repo_id, msg.announcer, msg.branch)

    async def _verified(self, repo_id: bytes, repo: RepoInfo, msg: m.HeadAnnouncement | m.MergeProposal) -> bool:
        """Verify the commits not verified before (O(new commits), not O(history)) and record them;
        rehash=False: the fetcher hash-checked every block against its CID on arrival."""
        report = await self.threads.run_reading(partial(
            verify, self.history, repo, msg.head, verified=lambda cid: self.state.is_verified(repo_id, cid),
            rehash=False))
        if report.problems:
            self.metrics.rejected["verify_failed"] += 1
            log("head_verify_failed", "warning", head=str(msg.head), problem=report.problems[0])
            self.penalizer.penalize(peer_id_of_key(msg.announcer), "verify_failed")
            return False
        if report.publishes:  # before mark_verified: a verified commit is never looked at again
            self._mark_published(repo_id, report.publishes[0])
        self.state.mark_verified(repo_id, report.checked)
        return True

    def _mark_published(self, repo_id: bytes, cid: CID) -> None:
        """Record the owner's verified decision to make a repository public (the first one counts)."""
        with self.store.write() as txn:
            if txn.get_ref(repo_id, refs.PUBLISHED) is not None:
                return
            txn.set_ref(repo_id, refs.PUBLISHED, bytes(cid))
        log("repo_published", repo=repo_id_text(repo_id), commit=str(cid))

    async def _fast_forward(self, repo_id: bytes, ann: m.HeadAnnouncement) -> bool:
        """Move the owner's branch to ``ann.head`` if that is a fast-forward; whether it points there now."""
        ref = refs.branch(ann.branch)
        with self.store.read() as txn:
            cur_raw = txn.get_ref(repo_id, ref)
        cur = CID.from_bytes(cur_raw) if cur_raw else None
        if cur == ann.head:
            return True
        # the walk back from the new head reads every new commit: in a worker thread too
        if cur is None or await self.threads.run_reading(partial(self.history.is_ancestor, cur, ann.head)):
            with self.store.write() as txn:
                if txn.get_ref(repo_id, ref) == cur_raw:  # compare-and-swap against local commits
                    refstore.set_branch(txn, repo_id, ann.branch, ann.head)  # in the branch's reflog too
                    log("branch_moved", branch=ann.branch, head=str(ann.head))
                    self.provides.provide_new_soon()
                    return True
        return False

    async def register_clone(self, repo_id: bytes, genesis: CID, source: str, /) -> None:
        """Check a fetched genesis commit (its commit hash IS the repo id) and register the repository;
        also run when a clone's fetch, interrupted by a restart, completes on its own."""
        commit = self.history.load_commit(genesis)
        if commit.kind != "init" or commit.commit_hash() != repo_id:
            raise FednodeError(f"{source} sent a genesis that is not repository {repo_id_text(repo_id)}")
        name = str(commit.settings["name"])
        info = RepoInfo(name, repo_id, genesis, commit.settings)
        # rehash=False: the fetcher hash-checked every block against its CID on arrival; in a worker
        # thread: a peer's data is verified while the event loop goes on serving
        report = await self.threads.run_reading(partial(verify, self.history, info, genesis, rehash=False))
        if report.problems:
            raise FednodeError(f"genesis commit fails verification: {report.problems[0]}")
        self.state.mark_verified(repo_id, report.checked)
        with self.store.write() as txn:
            existing = txn.list_repos()
            if repo_id in existing.values():
                return
            if name in existing:
                name = f"{name}-{repo_id_text(repo_id)[:8]}"
            register_repo(txn, name, repo_id, genesis)
        log("repo_cloned", repo=repo_id_text(repo_id), name=name)
        self.provides.provide_all_soon()  # we can serve it now
