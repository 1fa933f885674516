"""Gossip: one GossipSub topic per repository, its validator, and what follows an acceptance.

py-libp2p calls the topic validator for every message before it is forwarded. ``Validator.validate``
judges it and changes nothing; ``accept`` then does the bookkeeping, in one place: the seq is
claimed and the message stored (``NetState.record``), the commit stored, its fetch scheduled. Both
run in the same synchronous call, with no await between the check and the claim: trio runs one task
at a time, so two copies of one announcement arriving together are never both accepted.
"""

from __future__ import annotations

from collections.abc import Callable

from libp2p.abc import ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from fednode.daemon import guard
from fednode.daemon.abc import FetchScheduler, Penalizer, Spawner
from fednode.daemon.host import peer_id_of_key
from fednode.daemon.metrics import Metrics
from fednode.daemon.validate import PENALIZED, Validator, Verdict
from fednode.logs import log
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR

TopicValidator = Callable[[ID, rpc_pb2.Message], bool]


class Gossip:
    def __init__(self, store: Store, state: NetState, validator: Validator, metrics: Metrics, tasks: Spawner,
                 penalizer: Penalizer, fetches: FetchScheduler) -> None:
        self.store = store
        self.state = state
        self.validator = validator
        self.metrics = metrics
        self.tasks = tasks
        self.penalizer = penalizer
        self.fetches = fetches
        self.pubsub: Pubsub
        self.me: ID
        self.topics: dict[str, bytes] = {}  # topic -> repo id

    def start(self, pubsub: Pubsub, me: ID) -> None:
        self.pubsub, self.me = pubsub, me

    def repos(self) -> list[bytes]:
        """The repositories we follow on gossip."""
        return list(self.topics.values())

    def is_subscribed(self, repo_id: bytes, /) -> bool:
        return m.topic_for(repo_id) in self.topics

    async def subscribe(self, repo_id: bytes, /) -> None:
        topic = m.topic_for(repo_id)
        if topic in self.topics:
            return
        self.topics[topic] = repo_id
        self.pubsub.set_topic_validator(topic, self.validator_for(repo_id), False)
        sub = await self.pubsub.subscribe(topic)
        self.tasks.start_soon(self._drain, sub)

    async def publish(self, repo_id: bytes, data: bytes, /) -> None:
        await self.subscribe(repo_id)
        await self.pubsub.publish(m.topic_for(repo_id), data)

    async def _drain(self, sub: ISubscriptionAPI) -> None:
        # Work happens in the validator (hand-off to accept); the 32-slot queue must not fill.
        async for _ in sub:
            pass

    def validator_for(self, repo_id: bytes) -> TopicValidator:
        def topic_validator(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            try:
                return self._judge(repo_id, forwarder, msg)
            except Exception as exc:  # a bug met by this message: reject it, blame the forwarder
                # An honest peer runs the same checks before forwarding, so it would have met the
                # same exception and dropped the message: whoever forwards it is to blame.
                guard.report(self.metrics, "gossip_validator", exc, forwarder=str(forwarder))
                self.metrics.rejected["error"] += 1
                if forwarder != self.me:
                    self.penalizer.penalize(forwarder, "error")
                return False

        return topic_validator

    def _judge(self, repo_id: bytes, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """Validate, then accept or reject: whether py-libp2p may deliver and forward ``msg``."""
        source = ID(msg.from_id)
        from_self = source == self.me and forwarder == self.me
        verdict = self.validator.validate(msg.data, repo_id, from_self)
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
                txn.index_commit(cid, repo_id, commit.commit_hash())
            log("commit_received", cid=str(cid), author=commit.author.hex()[:16])
            self.fetches.schedule(repo_id, cid, providers, None)
        elif isinstance(msg, m.HeadAnnouncement | m.MergeProposal):
            self.fetches.schedule(repo_id, msg.head, providers, msg.encode())
        elif isinstance(msg, m.Membership):
            log("membership_updated", members=len(msg.members), public=msg.public)
