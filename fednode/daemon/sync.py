"""Heads exchange, push/pull/clone and moving refs.

``/fednode/heads/1.0.0``: one frame ``{repo}`` in, one ``HeadsReply`` out: the genesis CID, our
freshly signed head announcements for our local branches, the latest announcements we
received from others, and the membership object. The receiver validates each of them
exactly like gossip (signature, membership, seq) before using it.

Refs: a verified announcement from the repository owner moves ``heads/<branch>`` when the
head and all its blocks are present, ``operations.verify`` passes and it is a fast-forward;
anything else (another announcer, a diverged branch) becomes ``remotes/<peer id>/<branch>``.
Commits that passed are recorded (``NetState.mark_verified``), so later heads verify only their new commits.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fednode.daemon import discovery, wire
from fednode.daemon.fairness import IDLE
from fednode.daemon.host import peer_id_of_key
from fednode.errors import FednodeError
from fednode.history import RepoInfo, repo_id_text
from fednode.history.repos import register_repo
from fednode.logs import log
from fednode.workflows import operations
from protocol import messages as m
from protocol.multiformats import CID, FormatError

if TYPE_CHECKING:
    from fednode.daemon.service import Daemon

HEADS = TProtocol(m.HEADS_PROTOCOL)
MAX_REPLY = 2 * 1024 * 1024


OWN_TTL = 30.0  # seconds one signed answer to heads queries is reused while our heads stay the same


def _heads(d: Daemon, repo_id: bytes) -> dict[str, bytes]:
    with d.node.store.read() as txn:
        return txn.list_refs(repo_id, "heads/")


def own_announcements(d: Daemon, repo_id: bytes, heads: dict[str, bytes] | None = None) -> list[m.HeadAnnouncement]:
    """Freshly signed announcements of our branches (each takes a new, persisted seq)."""
    ident = d.node.identity
    out = []
    heads = _heads(d, repo_id) if heads is None else heads
    for name, raw in sorted(heads.items()):
        seq = d.state.next_own_seq(repo_id, time.time_ns() // 1000)
        ann = m.HeadAnnouncement(repo_id, name[6:], CID.from_bytes(raw), seq, time.time_ns() // 1_000_000,
                                 ident.public_key)
        out.append(m.HeadAnnouncement(**{**ann.__dict__, "sig": ident.sign(ann.signing_hash())}))
    return out


def served_announcements(d: Daemon, repo_id: bytes) -> list[m.HeadAnnouncement]:
    """What heads queries get: the last signed set while our heads are unchanged and it is under
    OWN_TTL old, so queries cost no signatures and no store writes (a peer cannot make us write
    to disk by asking). Receivers accept an equal seq in a heads reply (no replay claim there)."""
    heads = _heads(d, repo_id)
    cached = d.own_cache.get(repo_id)
    if cached is not None and cached[0] == tuple(sorted(heads.items())) and time.monotonic() - cached[1] < OWN_TTL:
        return cached[2]
    return signed_announcements(d, repo_id, heads)


def signed_announcements(d: Daemon, repo_id: bytes, heads: dict[str, bytes]) -> list[m.HeadAnnouncement]:
    """Freshly signed announcements of ``heads``, remembered for heads queries (see above)."""
    anns = own_announcements(d, repo_id, heads)
    d.own_cache[repo_id] = (tuple(sorted(heads.items())), time.monotonic(), anns)
    return anns


async def serve_heads(d: Daemon, stream: INetStream) -> None:
    try:
        try:
            repo_id = m.decode_heads_query(await wire.read_frame(stream, 1024, wire.FIRST_FRAME_TIMEOUT))
        except FormatError:  # an honest peer never sends a query our decoder refuses
            d.penalize(stream.muxed_conn.peer_id, "malformed_request")
            raise
        except (wire.FrameTimeout, wire.FrameTooLarge) as exc:  # an idle stream, a 100 MB length prefix
            why = IDLE if isinstance(exc, wire.FrameTimeout) else "oversize_request"
            d.metrics.refused[why] += 1
            d.fair.misbehaved(stream.muxed_conn.peer_id, why)
            raise
        genesis = d.state.genesis(repo_id)
        heads = [a.encode() for a in served_announcements(d, repo_id)] if genesis else []
        heads += [a for a in d.state.announcements(repo_id)][: 256 - len(heads)]
        members = d.state.membership(repo_id)
        reply = m.HeadsReply(genesis, heads, members.encode() if members else None)
        await wire.write_frame(stream, reply.encode())
    except (wire.FrameError, FormatError, ValueError) as exc:
        log("heads_serve_error", "warning", error=str(exc))
    finally:
        try:
            await stream.close()
        except Exception:
            pass


async def query_heads(d: Daemon, peer: ID, repo_id: bytes) -> m.HeadsReply:
    with trio.fail_after(10):
        stream = await d.host.new_stream(peer, [HEADS])
    try:
        await wire.write_frame(stream, m.encode_heads_query(repo_id))
        return m.HeadsReply.decode(await wire.read_frame(stream, MAX_REPLY))
    finally:
        try:
            await stream.close()
        except Exception:
            pass


async def _create_repo(d: Daemon, repo_id: bytes, genesis: CID, peer: ID) -> None:
    """Fetch and check the genesis commit (its commit hash IS the repo id), then register the repo."""
    job = d.schedule_fetch(repo_id, genesis, [str(peer)], None)
    with trio.move_on_after(30):
        await job.done.wait()
    if not job.ok:
        why = {"too_large": ": it is larger than [network] max_fetch_bytes",
               "disk_full": ": the disk would fall below [network] min_free_bytes"}.get(job.budget.refused or "", "")
        raise FednodeError(f"could not fetch the genesis commit {genesis} from {peer}{why}")
    await register_clone(d, repo_id, genesis, f"peer {peer}")


async def register_clone(d: Daemon, repo_id: bytes, genesis: CID, source: str) -> None:
    """Check a fetched genesis commit (its commit hash IS the repo id) and register the repository;
    also run when a clone's fetch, interrupted by a restart, completes on its own."""
    commit = d.node.history.load_commit(genesis)
    if commit.kind != "init" or commit.commit_hash() != repo_id:
        raise FednodeError(f"{source} sent a genesis that is not repository {repo_id_text(repo_id)}")
    name = str(commit.settings["name"])
    info = RepoInfo(name, repo_id, genesis, commit.settings)
    # rehash=False: the fetcher hash-checked every block against its CID on arrival; in a worker
    # thread: a peer's data is verified while the event loop goes on serving
    report = await d.fetcher.run_reading(partial(operations.verify, d.node.history, info, genesis, rehash=False))
    if report.problems:
        raise FednodeError(f"genesis commit fails verification: {report.problems[0]}")
    d.state.mark_verified(repo_id, report.checked)
    with d.node.store.write() as txn:
        existing = txn.list_repos()
        if repo_id in existing.values():
            return
        if name in existing:
            name = f"{name}-{repo_id_text(repo_id)[:8]}"
        register_repo(txn, name, repo_id, genesis)
    log("repo_cloned", repo=repo_id_text(repo_id), name=name)
    d.spawn("provide", discovery.provide_all, d)  # we can serve it now


async def sync_repo(d: Daemon, repo_id: bytes, peers: list[ID], create: bool, wait: bool = True,
                    timeout: float = 60, wait_dht: bool = False) -> dict[str, object]:
    """Ask ``peers`` for their heads of ``repo_id``; fetch and apply what validates.

    A clone that no connected peer can serve asks the DHT for the repository's providers.
    """
    await d.subscribe(repo_id)
    jobs = []
    errors = []
    for peer in peers:
        try:
            reply = await query_heads(d, peer, repo_id)
        except Exception as exc:
            if isinstance(exc, FormatError):  # not a timeout or a reset: the peer answered garbage
                d.penalize(peer, "malformed_reply")
            errors.append(f"{peer}: {type(exc).__name__}: {exc}")
            continue
        if d.state.genesis(repo_id) is None:
            if not create or reply.genesis is None:
                continue
            await _create_repo(d, repo_id, reply.genesis, peer)
        if reply.members is not None:
            verdict = d.validator.check(reply.members, repo_id, from_self=False)
            if verdict.ok:
                d.state.put_membership(verdict.msg)
        for raw in reply.heads:
            verdict = d.validator.check(raw, repo_id, from_self=False, claim=False)
            if verdict.reason in ("malformed", "bad_signature", "wrong_repo"):  # nothing an honest peer relays
                d.penalize(peer, verdict.reason)
            if not verdict.ok or not isinstance(verdict.msg, m.HeadAnnouncement):
                continue  # older announcements are normal here: several peers relay the same ones
            ann = verdict.msg
            if ann.announcer == d.node.identity.public_key:  # our own, relayed back: our refs are the truth
                continue
            d.state.claim_seq(ann.kind, repo_id, ann.announcer, ann.branch, ann.seq)
            d.state.put_announcement(ann)
            if not applied(d, repo_id, ann):  # anti-entropy rounds mostly find nothing new
                jobs.append(d.schedule_fetch(repo_id, ann.head, [str(peer)], raw))
    if d.state.genesis(repo_id) is None and create and not wait_dht:
        found = [ID.from_base58(p) for p in await discovery.find_providers(d, discovery.dht_key(repo_id),
                                                                       f"repo {repo_id_text(repo_id)}")]
        if found:
            return await sync_repo(d, repo_id, found, create, wait, timeout, wait_dht=True)
    if d.state.genesis(repo_id) is None:
        raise FednodeError(f"no peer knows repository {repo_id_text(repo_id)}" + (f" ({errors[0]})" if errors else ""))
    if wait:
        with trio.move_on_after(timeout):
            for job in jobs:
                await job.done.wait()
    with d.node.store.read() as txn:
        refs = {k: str(CID.from_bytes(v)) for k, v in txn.list_refs(repo_id).items() if k != "HEAD"}
    return {"repo": repo_id_text(repo_id), "fetched": sum(j.ok for j in jobs), "pending": sum(not j.ok for j in jobs),
            "refs": refs, "errors": errors}


def applied(d: Daemon, repo_id: bytes, ann: m.HeadAnnouncement) -> bool:
    """Whether the ref this announcement would set already points at its head."""
    peer = str(peer_id_of_key(ann.announcer))
    names = [f"remotes/{peer}/{ann.branch}"]
    if ann.announcer == d.validator.owner(repo_id):
        names.append("heads/" + ann.branch)
    with d.node.store.read() as txn:
        return any(txn.get_ref(repo_id, n) == bytes(ann.head) for n in names)


async def apply(d: Daemon, repo_id: bytes, raw: bytes) -> None:
    """After a fetch completed: move a branch or record a remote-tracking ref. The new commits are
    verified in a worker thread (``Fetcher.run_reading``): the event loop never waits on a peer's
    data. A head that fails is the announcer's doing (it signed the announcement): penalized."""
    msg = m.decode(raw)
    if not isinstance(msg, m.HeadAnnouncement | m.MergeProposal):
        return
    if msg.announcer == d.node.identity.public_key:  # never remotes/<our peer id>/...: see sync_repo
        return
    if isinstance(msg, m.HeadAnnouncement) and msg.seq < d.state.last_seq(msg.kind, repo_id, msg.announcer,
                                                                           msg.branch):
        return  # fetches end out of order: a newer announcement of this branch came since (its job applies it)
    history = d.node.history
    try:
        repo = history.repo_by_id(repo_id)
    except FednodeError:
        return
    # Only the commits not verified before are checked (O(new commits), not O(history)); rehash=False:
    # the fetcher hash-checked every block against its CID on arrival.
    report = await d.fetcher.run_reading(partial(
        operations.verify, history, repo, msg.head, verified=lambda cid: d.state.is_verified(repo_id, cid),
        rehash=False))
    if report.problems:
        d.metrics.rejected["verify_failed"] += 1
        log("head_verify_failed", "warning", head=str(msg.head), problem=report.problems[0])
        d.penalize(peer_id_of_key(msg.announcer), "verify_failed")
        return
    d.state.mark_verified(repo_id, report.checked)
    peer = str(peer_id_of_key(msg.announcer))
    if isinstance(msg, m.MergeProposal):
        with d.node.store.write() as txn:
            txn.set_ref(repo_id, f"proposals/{peer}/{msg.branch}", bytes(msg.head))
        log("proposal_recorded", head=str(msg.head), branch=msg.branch, peer=peer)
        return
    ref = "heads/" + msg.branch
    if msg.announcer == d.validator.owner(repo_id):
        with d.node.store.read() as txn:
            cur_raw = txn.get_ref(repo_id, ref)
        cur = CID.from_bytes(cur_raw) if cur_raw else None
        if cur == msg.head:
            return
        # the walk back from the new head reads every new commit: in a worker thread too
        if cur is None or await d.fetcher.run_reading(partial(d.node.history.is_ancestor, cur, msg.head)):
            with d.node.store.write() as txn:
                if txn.get_ref(repo_id, ref) == cur_raw:  # compare-and-swap against local commits
                    txn.set_ref(repo_id, ref, bytes(msg.head))
                    log("branch_moved", branch=msg.branch, head=str(msg.head))
                    d.spawn("provide", discovery.provide_new, d)
                    return
    with d.node.store.write() as txn:
        txn.set_ref(repo_id, f"remotes/{peer}/{msg.branch}", bytes(msg.head))
    log("remote_ref", branch=msg.branch, head=str(msg.head), peer=peer)


CONFIRM_SECONDS = 3.0  # how long push asks the topic's peers whether they accepted its announcements
CONFIRM_EVERY = 0.3  # between two asks of one peer (its heads limit allows 4 a second)


async def accepted_by(d: Daemon, repo_id: bytes, anns: list[m.HeadAnnouncement], peers: list[ID],
                      timeout: float = CONFIRM_SECONDS) -> list[ID]:
    """The peers whose heads reply holds each of ``anns`` (or a newer announcement of ours): they
    validated and stored it. Gossip acknowledges nothing, so push asks, for at most ``timeout``."""
    me = d.node.identity.public_key
    wanted = {a.branch: a.seq for a in anns}
    accepted: list[ID] = []

    async def ask(peer: ID) -> None:
        with trio.move_on_after(timeout):
            while True:
                try:
                    reply = await query_heads(d, peer, repo_id)
                except Exception:  # a reset, a refusal, garbage: not (yet) accepted
                    reply = None
                have: dict[str, int] = {}
                for raw in reply.heads if reply else []:
                    try:
                        msg = m.decode(raw)
                    except (FormatError, ValueError):
                        continue
                    if isinstance(msg, m.HeadAnnouncement) and msg.announcer == me:
                        have[msg.branch] = max(have.get(msg.branch, -1), msg.seq)
                if all(have.get(b, -1) >= seq for b, seq in wanted.items()):
                    accepted.append(peer)
                    return
                await trio.sleep(CONFIRM_EVERY)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(ask, peer)
    return accepted


async def push(d: Daemon, repo_id: bytes, confirm: bool = True) -> dict[str, object]:
    """Publish the head commit of every local branch, then a signed announcement of each; then ask
    the topic's peers whether they accepted them. Refused (nothing published) for a non-member:
    every peer would reject its commits."""
    me = d.node.identity.public_key
    members, _ = d.validator.members(repo_id)
    if me not in members:
        raise FednodeError(f"not a member of {d.node.history.repo_by_id(repo_id).name}: peers reject its "
                           f"commits (the owner adds you with 'fednode members add {d.node.identity.address}')")
    await d.subscribe(repo_id)
    anns = signed_announcements(d, repo_id, _heads(d, repo_id))
    pushed = []
    for ann in anns:
        with d.node.store.read() as txn:
            block = txn.get_block(ann.head)
        envelope = m.CommitEnvelope(block).encode()
        sent = len(envelope) <= m.MAX_GOSSIP_BYTES  # else peers fetch it after the announcement
        if sent:
            await d.publish(repo_id, envelope)
        await d.publish(repo_id, ann.encode())
        pushed.append({"branch": ann.branch, "head": str(ann.head), "seq": ann.seq, "envelope": sent})
    d.spawn("provide", discovery.provide_new, d)  # the pushed heads can now be found in the DHT
    topic_peers = list(d.pubsub.peer_topics.get(m.topic_for(repo_id), set()))
    accepted = len(await accepted_by(d, repo_id, anns, topic_peers)) if confirm else None
    return {"repo": repo_id_text(repo_id), "pushed": pushed, "topic_peers": len(topic_peers),
            "accepted_by": accepted}


async def publish_signed(d: Daemon, repo_id: bytes, msg: m.Membership | m.MergeProposal) -> None:
    signed = type(msg)(**{**msg.__dict__, "sig": d.node.identity.sign(msg.signing_hash())})
    verdict = d.validator.check(signed.encode(), repo_id, from_self=True)
    if not verdict.ok:
        raise FednodeError(f"refusing to publish: {verdict.reason}")
    if isinstance(signed, m.Membership):
        d.state.put_membership(signed)
    await d.publish(repo_id, signed.encode())


def peer_list(d: Daemon) -> list[ID]:
    return [p for p in d.host.get_connected_peers() if not d.pubsub.is_peer_blacklisted(p)]
