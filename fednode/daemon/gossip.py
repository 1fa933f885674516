"""Gossip: one GossipSub topic per repository, its validator, and what follows an acceptance.

py-libp2p calls the topic validator for every message before it is forwarded. ``Validator.validate``
judges it and changes nothing; ``accept`` then does the bookkeeping, in one place: the seq is
claimed and the message stored (``NetState.record``), the commit stored, its fetch scheduled. Both
run in the same synchronous call, with no await between the check and the claim: trio runs one task
at a time, so two copies of one announcement arriving together are never both accepted.

A private repository has an opaque topic, and what we publish on it is sealed (``privacy.py``); a
repository's topic is re-read from the store at each ``subscribe`` (every push, pull and sync
round), so a private repository its owner published moves to the public topic then.

Rejections cost work (a decode, signature checks, a log line) and not all of them cost the forwarder
a strike (a message it relays from another signer, an unknown repository): each such rejection
spends one of the forwarder's REJECT_BURST tokens, refilled at REJECT_RATE a second, and a forwarder
out of tokens has its messages dropped unread (``rejected["rate_limited"]``) until it has one again.
The ROUTINE rejections honest relays cause all the time (replays, duplicates, boxes sealed for
others) spend nothing: they are caught before any signature check. py-libp2p's own per-peer
limit counts only messages that passed validation.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from libp2p.abc import ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from fednode.daemon import guard, privacy
from fednode.daemon.abc import FetchScheduler, Penalizer, Spawner
from fednode.daemon.host import peer_id_of_key
from fednode.daemon.metrics import Metrics
from fednode.daemon.ratelimit import TokenBuckets
from fednode.daemon.validate import PENALIZED, Validator, Verdict
from fednode.identity import Identity
from fednode.logs import log
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR

TopicValidator = Callable[[ID, rpc_pb2.Message], bool]
IGNORED = frozenset({"sealed_unreadable", "sealed_stale"})  # not for us: counted, not logged one by one
# Rejections honest relays cause all the time (copies of one message from several forwarders,
# GossipSub re-sending messages up to 48 s old, sealed boxes for other members): not budgeted.
# They cost little: a replay is caught by its seq and a duplicate commit by its hash, both before
# any signature check (validate.py), and a box we cannot open by one failed decryption.
ROUTINE = IGNORED | {"replay", "duplicate"}
# Our subscriptions, sent again to every pubsub peer (idempotent where known): py-libp2p builds a new
# peer's hello before it registers the peer, so a topic joined in between reached neither the hello
# nor the broadcast, and that peer never learned it (seen in CI: a test's owner never saw a follower
# on the topic). Sent ANNOUNCE_SOON seconds after each subscribe, then every ANNOUNCE_EVERY seconds.
ANNOUNCE_SOON, ANNOUNCE_EVERY = 2.0, 30.0
REJECT_RATE = 10.0  # other rejected messages a second a forwarder may cost us, after a burst of
REJECT_BURST = 100.0  # (honest relays rarely cause them)


def _drop(forwarder: ID, msg: rpc_pb2.Message) -> bool:
    """The validator of a topic we left."""
    return False


class Gossip:
    def __init__(self, store: Store, state: NetState, validator: Validator, metrics: Metrics, tasks: Spawner,
                 penalizer: Penalizer, fetches: FetchScheduler, identity: Identity | None = None) -> None:
        self.store = store
        self.identity = identity  # None: takes no keys (tests of public repositories)
        self.state = state
        self.validator = validator
        self.metrics = metrics
        self.tasks = tasks
        self.penalizer = penalizer
        self.fetches = fetches
        self.pubsub: Pubsub
        self.me: ID
        self.topics: dict[str, bytes] = {}  # topic -> repo id
        self.rejections = TokenBuckets(REJECT_RATE, REJECT_BURST)

    def start(self, pubsub: Pubsub, me: ID) -> None:
        self.pubsub, self.me = pubsub, me

    def repos(self) -> list[bytes]:
        """The repositories we follow on gossip."""
        return list(self.topics.values())

    def topic_of(self, repo_id: bytes, /) -> str:
        """``repo_id``'s topic now: the opaque one while it is private (one place decides)."""
        return privacy.topic_of(self.store, repo_id)

    def is_subscribed(self, repo_id: bytes, /) -> bool:
        return self.topic_of(repo_id) in self.topics

    async def subscribe(self, repo_id: bytes, /) -> None:
        """Follow ``repo_id``'s topic; leaves its former topic if the repository changed visibility
        (a clone learns it is private once the genesis is in; an owner's publish makes it public)."""
        private = privacy.is_private(self.store, repo_id)
        topic = m.topic_for(repo_id, private)
        if topic in self.topics:
            return
        former = [t for t, r in self.topics.items() if r == repo_id]
        # the maps change before any await: a second call meanwhile sees the new topic taken
        self.topics[topic] = repo_id
        self.pubsub.set_topic_validator(topic, self.validator_for(repo_id, private), False)
        for old in former:
            del self.topics[old]
        sub = await self.pubsub.subscribe(topic)
        self.tasks.start_soon(self._drain, sub)
        self.tasks.spawn("gossip_announce", self._announce_later, ANNOUNCE_SOON)
        for old in former:
            # a message of the old topic already taken in must not pass unjudged: it is dropped
            self.pubsub.set_topic_validator(old, _drop, False)
            await self.pubsub.unsubscribe(old)
            log("topic_left", topic=old)

    async def publish(self, repo_id: bytes, data: bytes, /) -> None:
        """Publish ``data`` on ``repo_id``'s topic, sealed there if the repository is private (all but
        its membership and key messages, sent without their repo id). FednodeError, nothing sent, for
        a member without a key."""
        await self.subscribe(repo_id)
        private = privacy.is_private(self.store, repo_id)
        if private and m.decode(data).kind in m.CLEAR_KINDS:
            data = m.without_repo(data)
        elif private:
            me = self.identity.public_key if self.identity is not None else None
            data = privacy.seal_message(self.validator.keyring, repo_id, data, self.validator.owner(repo_id) == me)
        await self.pubsub.publish(m.topic_for(repo_id, private), data)

    async def announce(self) -> None:
        """Tell every pubsub peer every topic we follow, in one RPC (see ANNOUNCE_SOON)."""
        if not self.topics:
            return
        packet = rpc_pb2.RPC()
        packet.subscriptions.extend(rpc_pb2.RPC.SubOpts(subscribe=True, topicid=t) for t in self.topics)
        await self.pubsub.message_all_peers(packet.SerializeToString())

    async def _announce_later(self, delay: float) -> None:
        await trio.sleep(delay)
        await self.announce()

    async def announce_loop(self) -> None:
        while True:
            await trio.sleep(ANNOUNCE_EVERY)
            try:
                await self.announce()
            except Exception as exc:  # a peer queue that closed meanwhile: the next round goes on
                log("gossip_announce_failed", "warning", error=f"{type(exc).__name__}: {exc}")

    async def _drain(self, sub: ISubscriptionAPI) -> None:
        # Work happens in the validator (hand-off to accept); the 32-slot queue must not fill.
        async for _ in sub:
            pass

    def validator_for(self, repo_id: bytes, private: bool = False) -> TopicValidator:
        def topic_validator(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            try:
                return self._judge(repo_id, forwarder, msg, private)
            except Exception as exc:  # a bug met by this message: reject it, blame the forwarder
                # An honest peer runs the same checks before forwarding, so it would have met the
                # same exception and dropped the message: whoever forwards it is to blame.
                guard.report(self.metrics, "gossip_validator", exc, forwarder=str(forwarder))
                self.metrics.rejected["error"] += 1
                if forwarder != self.me:
                    self.penalizer.penalize(forwarder, "error")
                return False

        return topic_validator

    def _judge(self, repo_id: bytes, forwarder: ID, msg: rpc_pb2.Message, private: bool = False) -> bool:
        """Validate, then accept or reject: whether py-libp2p may deliver and forward ``msg``."""
        key = str(forwarder)
        if forwarder != self.me and self.rejections.available(key) < 1:
            self.metrics.rejected["rate_limited"] += 1  # too many rejected lately: not even read
            return False
        source = ID(msg.from_id)
        from_self = source == self.me and forwarder == self.me
        verdict = self.validator.validate_gossip(msg.data, repo_id, from_self, private)
        if verdict.reason is not None and verdict.reason not in ROUTINE:
            self.rejections.take(key)
        if verdict.reason in IGNORED:  # sealed for others (or for an epoch we left behind): not forwarded
            self.metrics.rejected[verdict.reason] += 1
            return False
        if verdict.reason is not None:
            self.metrics.rejected[verdict.reason] += 1
            log("gossip_rejected", reason=verdict.reason, forwarder=str(forwarder), source=str(source))
            relayed = verdict.signer is not None and peer_id_of_key(verdict.signer) != forwarder
            if verdict.reason in PENALIZED and not relayed:
                self.penalizer.penalize(forwarder, verdict.reason)
            return False
        assert verdict.msg is not None  # an accepting verdict carries its message
        if from_self:
            self.metrics.published[verdict.msg.kind] += 1
            return True
        if not self._claim(verdict.msg):
            self.metrics.rejected["replay"] += 1
            log("gossip_rejected", reason="replay", forwarder=str(forwarder), source=str(source))
            return False
        self.metrics.accepted[verdict.msg.kind] += 1
        with guard.last_resort(self.metrics, "gossip_handle"):  # ours to fix (a full disk...), not the peer's
            self.accept(repo_id, verdict, [str(forwarder), str(source)])
        return True

    def _claim(self, msg: m.Message) -> bool:
        """Claim a signed message's seq and store it (False: a replay); a commit has no seq."""
        if isinstance(msg, m.Sealed):  # never: the validator hands on what it opened
            return False
        return isinstance(msg, m.CommitEnvelope) or self.state.record(msg)

    def accept(self, repo_id: bytes, verdict: Verdict, providers: list[str]) -> None:
        """What follows an accepted message (its seq already claimed): store the commit, fetch
        what the message points at."""
        msg = verdict.msg
        if isinstance(msg, m.CommitEnvelope):
            cid = CID.hash(DAG_CBOR, msg.block)
            commit = verdict.commit
            assert commit is not None  # an accepted envelope carries its decoded commit
            with self.store.write() as txn:
                txn.put_block(cid, msg.block)
                txn.tag_block(cid, repo_id)  # the repository's own commit: its members may read it
                txn.index_commit(cid, repo_id, commit.commit_hash())
            log("commit_received", cid=str(cid), author=commit.author.hex()[:16])
            self.fetches.schedule(repo_id, cid, providers, None)
        elif isinstance(msg, m.HeadAnnouncement | m.MergeProposal):
            self.fetches.schedule(repo_id, msg.head, providers, msg.encode())
        elif isinstance(msg, m.Membership):
            log("membership_updated", members=len(msg.members), public=msg.public)
        elif isinstance(msg, m.RepoKeys) and self.identity is not None:
            privacy.take_keys(self.validator.keyring, self.identity.seed, self.identity.public_key, msg)
