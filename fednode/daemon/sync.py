"""Heads exchange, push, pull and clone.

``/fednode/heads/1.0.0``: one frame ``{repo}`` in, one ``HeadsReply`` out: the genesis CID, our
freshly signed head announcements for our local branches, the latest announcements we
received from others, and the membership object. The receiver validates each of them
exactly like gossip (signature, membership, seq) before using it; a completed fetch applies
them (``apply.Applier``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fednode.daemon import privacy, wire
from fednode.daemon.abc import (
    Applying,
    FetchScheduler,
    Misbehaviour,
    PeerView,
    Penalizer,
    ProvideRequests,
    ProviderFinder,
    Subscriptions,
)
from fednode.daemon.access import PRIVATE_HINT, Reader
from fednode.daemon.discovery import repo_key
from fednode.daemon.exchange import is_genesis_of
from fednode.daemon.fairness import IDLE
from fednode.daemon.jobs import Job
from fednode.daemon.metrics import Metrics
from fednode.daemon.validate import Validator
from fednode.errors import FednodeError
from fednode.history import History, refs, repo_id_text
from fednode.identity import Identity
from fednode.logs import log
from fednode.storage.netstate import NetState
from protocol import messages as m
from protocol.multiformats import CID, FormatError

HEADS = TProtocol(m.HEADS_PROTOCOL)
MAX_REPLY = 2 * 1024 * 1024
OWN_TTL = 30.0  # seconds one signed answer to heads queries is reused while our heads stay the same
CONFIRM_SECONDS = 3.0  # how long push asks the topic's peers whether they accepted its announcements
CONFIRM_EVERY = 0.3  # between two asks of one peer (its heads limit allows 4 a second)
# penalized in a heads reply: nothing an honest peer relays (older announcements are normal there)
MAX_REFUSALS_LOGGED = 4096  # (repo, peer) refusals remembered, so each is logged once; then again
BAD_REPLY = frozenset({"malformed", "bad_signature", "wrong_repo"})
GENESIS_REFUSED = {"too_large": ": it is larger than [network] max_fetch_bytes",
                   "too_many_blocks": ": it links more blocks than a fetch may follow (exchange.MAX_FETCH_LINKS)",
                   "disk_full": ": the disk would fall below [network] min_free_bytes"}
OwnCache = dict[bytes, tuple[tuple[tuple[str, bytes], ...], float, list[m.HeadAnnouncement]]]


@dataclass
class SyncRound:
    """One ``sync_repo`` call's results so far."""

    jobs: list[Job] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answered: int = 0  # peers that answered with the repository's genesis or heads
    refused: int = 0  # peers that refused: the repository is private and we are no member


class HeadsSync:
    def __init__(self, history: History, identity: Identity, state: NetState, validator: Validator, host: IHost,
                 metrics: Metrics, topics: Subscriptions, peers: PeerView, fetches: FetchScheduler,
                 applier: Applying, finder: ProviderFinder, provides: ProvideRequests, penalizer: Penalizer,
                 misbehaviour: Misbehaviour) -> None:
        self.history = history
        self.store = history.store
        self.identity = identity
        self.state = state
        self.validator = validator
        self.host = host
        self.metrics = metrics
        self.topics = topics
        self.peers = peers
        self.fetches = fetches
        self.applier = applier
        self.finder = finder
        self.provides = provides
        self.penalizer = penalizer
        self.misbehaviour = misbehaviour
        # repo -> (our heads, when signed, the announcements signed for them): see served_announcements
        self.own_cache: OwnCache = {}
        self.refusals_logged: set[tuple[bytes, ID]] = set()  # (repo, peer) refusals logged once

    # --- our announcements ------------------------------------------------------------------
    def _heads(self, repo_id: bytes) -> dict[str, bytes]:
        with self.store.read() as txn:
            return txn.list_refs(repo_id, refs.BRANCHES)

    def own_announcements(self, repo_id: bytes, heads: dict[str, bytes] | None = None) -> list[m.HeadAnnouncement]:
        """Freshly signed announcements of our branches (each takes a new, persisted seq)."""
        ident = self.identity
        out = []
        heads = self._heads(repo_id) if heads is None else heads
        for ref, raw in sorted(heads.items()):
            branch = refs.branch_name(ref)
            assert branch is not None  # listed under refs.BRANCHES
            seq = self.state.next_own_seq(repo_id, time.time_ns() // 1000)
            ann = m.HeadAnnouncement(repo_id, branch, CID.from_bytes(raw), seq, time.time_ns() // 1_000_000,
                                     ident.public_key)
            out.append(m.HeadAnnouncement(**{**ann.__dict__, "sig": ident.sign(ann.signing_hash())}))
        return out

    def served_announcements(self, repo_id: bytes) -> list[m.HeadAnnouncement]:
        """What heads queries get: the last signed set while our heads are unchanged and it is under
        OWN_TTL old, so queries cost no signatures and no store writes (a peer cannot make us write
        to disk by asking). Receivers accept an equal seq in a heads reply (no replay claim there)."""
        heads = self._heads(repo_id)
        cached = self.own_cache.get(repo_id)
        if cached is not None and cached[0] == tuple(sorted(heads.items())) and time.monotonic() - cached[1] < OWN_TTL:
            return cached[2]
        return self.signed_announcements(repo_id, heads)

    def signed_announcements(self, repo_id: bytes, heads: dict[str, bytes]) -> list[m.HeadAnnouncement]:
        """Freshly signed announcements of ``heads``, remembered for heads queries (see above)."""
        anns = self.own_announcements(repo_id, heads)
        self.own_cache[repo_id] = (tuple(sorted(heads.items())), time.monotonic(), anns)
        return anns

    # --- the heads protocol -----------------------------------------------------------------
    async def serve_heads(self, stream: INetStream) -> None:
        try:
            repo_id = await self._read_query(stream)
            if not Reader(self.store, stream.muxed_conn.peer_id).may_read_repo(repo_id):  # members-only
                await wire.write_frame(stream, m.HeadsReply(None, refused="private").encode())
                return
            genesis = self.state.genesis(repo_id)
            heads = [a.encode() for a in self.served_announcements(repo_id)] if genesis else []
            heads += [a for a in self.state.announcements(repo_id)][: 256 - len(heads)]
            members = self.state.membership(repo_id)
            keys = self.state.keys_message(repo_id)
            reply = m.HeadsReply(genesis, heads, members.encode() if members else None,
                                 keys=keys.encode() if keys else None)
            await wire.write_frame(stream, reply.encode())
        except (wire.FrameError, FormatError, ValueError) as exc:
            log("heads_serve_error", "warning", error=str(exc))
        finally:
            try:
                await stream.close()
            except Exception:
                pass

    async def _read_query(self, stream: INetStream) -> bytes:
        peer = stream.muxed_conn.peer_id
        try:
            return m.decode_heads_query(await wire.read_frame(stream, 1024, wire.FIRST_FRAME_TIMEOUT))
        except FormatError:  # an honest peer never sends a query our decoder refuses
            self.penalizer.penalize(peer, "malformed_request")
            raise
        except (wire.FrameTimeout, wire.FrameTooLarge) as exc:  # an idle stream, a 100 MB length prefix
            why = IDLE if isinstance(exc, wire.FrameTimeout) else "oversize_request"
            self.metrics.refused[why] += 1
            self.misbehaviour.misbehaved(peer, why)
            raise

    async def query_heads(self, peer: ID, repo_id: bytes) -> m.HeadsReply:
        with trio.fail_after(10):
            stream = await self.host.new_stream(peer, [HEADS])
        try:
            await wire.write_frame(stream, m.encode_heads_query(repo_id))
            return m.HeadsReply.decode(await wire.read_frame(stream, MAX_REPLY))
        finally:
            try:
                await stream.close()
            except Exception:
                pass

    # --- pull and clone ---------------------------------------------------------------------
    async def sync_repo(self, repo_id: bytes, peers: list[ID], create: bool, wait: bool = True,
                        timeout: float = 60, wait_dht: bool = False) -> dict[str, object]:
        """Ask ``peers`` for their heads of ``repo_id``; fetch and apply what validates.

        A clone that no connected peer can serve asks the DHT for the repository's providers. A clone
        subscribes once it holds the genesis: before, it cannot know whether the repository is private,
        and the public topic's name would tell every peer the id of a private repository it wants.
        """
        if self.state.genesis(repo_id) is not None:
            await self.topics.subscribe(repo_id)  # also moves a repository published since to its public topic
        done = SyncRound()
        for peer in peers:
            await self._sync_with(repo_id, peer, create, done)
        if self.state.genesis(repo_id) is not None:
            await self.topics.subscribe(repo_id)  # a clone now knows whether the repository is private
        if self.state.genesis(repo_id) is None and create and not wait_dht:
            found = await self._find_repo(repo_id)
            if found:
                return await self.sync_repo(repo_id, found, create, wait, timeout, wait_dht=True)
        if done.refused and not done.answered and (wait or self.state.genesis(repo_id) is None):
            raise FednodeError(self.private_error(repo_id))
        if self.state.genesis(repo_id) is None:
            raise FednodeError(f"no peer knows repository {repo_id_text(repo_id)}"
                               + (f" ({done.errors[0]})" if done.errors else ""))
        if wait:
            with trio.move_on_after(timeout):
                for job in done.jobs:
                    await job.done.wait()
        return self._summary(repo_id, done)

    async def _find_repo(self, repo_id: bytes) -> list[ID]:
        """The DHT's providers of ``repo_id``: under its private key first (we cannot know which
        one its providers use before we hold its genesis), then under its public one."""
        for private in (True, False):
            found = await self.finder.find_providers(repo_key(repo_id, private), f"repo {repo_id_text(repo_id)}")
            if found:
                return [ID.from_base58(p) for p in found]
        return []

    async def _sync_with(self, repo_id: bytes, peer: ID, create: bool, done: SyncRound) -> None:
        """One peer's heads: the repository itself for a clone, its membership, then its announcements."""
        try:
            reply = await self.query_heads(peer, repo_id)
        except Exception as exc:
            if isinstance(exc, FormatError):  # not a timeout or a reset: the peer answered garbage
                self.penalizer.penalize(peer, "malformed_reply")
            done.errors.append(f"{peer}: {type(exc).__name__}: {exc}")
            return
        if reply.refused is not None:
            self._refused(repo_id, peer, done)
            return
        if reply.genesis is not None or reply.heads:  # a peer that knows nothing of it answers nothing
            done.answered += 1
        if self.state.genesis(repo_id) is None:
            if not create or reply.genesis is None:
                return
            await self._create_repo(repo_id, reply.genesis, peer)
        if reply.members is not None:
            verdict = self.validator.validate(reply.members, repo_id, from_self=False)
            if isinstance(verdict.msg, m.Membership) and verdict.ok:
                self.state.record(verdict.msg)
        if reply.keys is not None:  # a private repository's key message: ours to unwrap if we are a member
            self._take_keys(repo_id, peer, reply.keys)
        for raw in reply.heads:
            job = self._take_announcement(repo_id, peer, raw)
            if job is not None:
                done.jobs.append(job)

    def _take_keys(self, repo_id: bytes, peer: ID, raw: bytes) -> None:
        """A heads reply's key message, validated exactly like gossip; keeps the key it wraps for us."""
        verdict = self.validator.validate(raw, repo_id, from_self=False, heads_reply=True)
        if verdict.reason in BAD_REPLY:
            self.penalizer.penalize(peer, verdict.reason)
        if verdict.ok and isinstance(verdict.msg, m.RepoKeys):
            self.state.record(verdict.msg, replay_ok=True)
            privacy.take_keys(self.validator.keyring, self.identity.seed, self.identity.public_key, verdict.msg)

    def private_error(self, repo_id: bytes) -> str:
        return (f"repository {repo_id_text(repo_id)} is private: "
                + PRIVATE_HINT.format(address=self.identity.address))

    def _refused(self, repo_id: bytes, peer: ID, done: SyncRound) -> None:
        """A peer will not give us a private repository's heads: an error for a clone or a pull, logged
        once per peer and repository (at info: anti-entropy asks again every round)."""
        done.refused += 1
        done.errors.append(f"{peer}: {self.private_error(repo_id)}")
        if (repo_id, peer) not in self.refusals_logged:
            if len(self.refusals_logged) >= MAX_REFUSALS_LOGGED:  # every new peer id would add one
                self.refusals_logged.clear()
            self.refusals_logged.add((repo_id, peer))
            log("heads_refused_private", repo=repo_id_text(repo_id), peer=str(peer))

    def _take_announcement(self, repo_id: bytes, peer: ID, raw: bytes) -> Job | None:
        """Validate one announcement of a heads reply, record it, and fetch its head unless applied."""
        verdict = self.validator.validate(raw, repo_id, from_self=False, heads_reply=True)
        if verdict.reason in BAD_REPLY:
            self.penalizer.penalize(peer, verdict.reason)
        ann = verdict.msg
        if not verdict.ok or not isinstance(ann, m.HeadAnnouncement):
            return None  # older announcements are normal here: several peers relay the same ones
        if ann.announcer == self.identity.public_key:  # our own, relayed back: our refs are the truth
            return None
        self.state.record(ann, replay_ok=True)
        if self.applier.applied(repo_id, ann):  # anti-entropy rounds mostly find nothing new
            return None
        return self.fetches.schedule(repo_id, ann.head, [str(peer)], raw)

    async def _create_repo(self, repo_id: bytes, genesis: CID, peer: ID) -> None:
        """Check the genesis commit the peer names (its commit hash IS the repo id) before anything it
        reaches is fetched, then fetch its closure and register the repo. Before the check, any peer
        answering a clone's heads query could name any DAG-CBOR block, and we fetched up to
        max_fetch_bytes of its closure, tagged as the repository's, before finding out."""
        block = await self.fetches.fetch_block(repo_id, genesis, peer, lambda b: is_genesis_of(repo_id, b))
        if block is None:
            raise FednodeError(f"could not fetch the genesis commit {genesis} from {peer}")
        if not is_genesis_of(repo_id, block):
            self.penalizer.penalize(peer, "bad_genesis")
            raise FednodeError(f"{peer} named {genesis} as the genesis of {repo_id_text(repo_id)}, which it is "
                               "not (an init commit whose hash is the repository id, signed by its author)")
        job = self.fetches.schedule(repo_id, genesis, [str(peer)], None)
        with trio.move_on_after(30):
            await job.done.wait()
        if not job.ok:
            why = GENESIS_REFUSED.get(job.budget.refused or "", "")
            raise FednodeError(f"could not fetch the genesis commit {genesis} from {peer}{why}")
        await self.applier.register_clone(repo_id, genesis, f"peer {peer}")

    def _summary(self, repo_id: bytes, done: SyncRound) -> dict[str, object]:
        with self.store.read() as txn:
            heads = {k: str(CID.from_bytes(v)) for k, v in txn.list_refs(repo_id).items() if k != refs.HEAD}
        return {"repo": repo_id_text(repo_id), "fetched": sum(j.ok for j in done.jobs),
                "pending": sum(not j.ok for j in done.jobs), "refs": heads, "errors": done.errors}

    # --- push and publish -------------------------------------------------------------------
    async def accepted_by(self, repo_id: bytes, anns: list[m.HeadAnnouncement], peers: list[ID],
                          timeout: float = CONFIRM_SECONDS) -> list[ID]:
        """The peers whose heads reply holds each of ``anns`` (or a newer announcement of ours): they
        validated and stored it. Gossip acknowledges nothing, so push asks, for at most ``timeout``."""
        wanted = {a.branch: a.seq for a in anns}
        accepted: list[ID] = []

        async def ask(peer: ID) -> None:
            with trio.move_on_after(timeout):
                while True:
                    try:
                        reply: m.HeadsReply | None = await self.query_heads(peer, repo_id)
                    except Exception:  # a reset, a refusal, garbage: not (yet) accepted
                        reply = None
                    have = self._our_seqs(reply)
                    if all(have.get(b, -1) >= seq for b, seq in wanted.items()):
                        accepted.append(peer)
                        return
                    await trio.sleep(CONFIRM_EVERY)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
        return accepted

    def _our_seqs(self, reply: m.HeadsReply | None) -> dict[str, int]:
        """branch -> the newest seq of our announcements in ``reply``."""
        have: dict[str, int] = {}
        for raw in reply.heads if reply else []:
            try:
                msg = m.decode(raw)
            except (FormatError, ValueError):
                continue
            if isinstance(msg, m.HeadAnnouncement) and msg.announcer == self.identity.public_key:
                have[msg.branch] = max(have.get(msg.branch, -1), msg.seq)
        return have

    async def push(self, repo_id: bytes, confirm: bool = True) -> dict[str, object]:
        """Publish the head commit of every local branch, then a signed announcement of each; then ask
        the topic's peers whether they accepted them. Refused (nothing published) for a non-member:
        every peer would reject its commits."""
        members, _ = self.validator.members(repo_id)
        if self.identity.public_key not in members:
            name = self.history.repo_by_id(repo_id).name
            raise FednodeError(f"not a member of {name}: peers reject its commits (the owner adds you with "
                               f"'fednode members add {self.identity.address}')")
        await self.topics.subscribe(repo_id)
        anns = self.signed_announcements(repo_id, self._heads(repo_id))
        pushed = []
        for ann in anns:
            with self.store.read() as txn:
                block = txn.get_block(ann.head)
            envelope = m.CommitEnvelope(block).encode()
            sent = len(envelope) <= m.MAX_GOSSIP_BYTES  # else peers fetch it after the announcement
            if sent:
                await self.topics.publish(repo_id, envelope)
            await self.topics.publish(repo_id, ann.encode())
            pushed.append({"branch": ann.branch, "head": str(ann.head), "seq": ann.seq, "envelope": sent})
        self.provides.provide_new_soon()  # the pushed heads can now be found in the DHT
        topic_peers = self.peers.topic_peers(repo_id)
        accepted = len(await self.accepted_by(repo_id, anns, topic_peers)) if confirm else None
        return {"repo": repo_id_text(repo_id), "pushed": pushed, "topic_peers": len(topic_peers),
                "accepted_by": accepted}

    async def publish_signed(self, repo_id: bytes, msg: m.Membership | m.MergeProposal | m.RepoKeys) -> None:
        signed = type(msg)(**{**msg.__dict__, "sig": self.identity.sign(msg.signing_hash())})
        verdict = self.validator.validate(signed.encode(), repo_id, from_self=True)
        if not verdict.ok:
            raise FednodeError(f"refusing to publish: {verdict.reason}")
        if isinstance(signed, m.Membership):
            self.state.put_membership(signed)
        elif isinstance(signed, m.RepoKeys):
            self.state.put_keys_message(signed)
        await self.topics.publish(repo_id, signed.encode())

