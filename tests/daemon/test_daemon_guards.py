"""The daemon's last-resort guards (fednode/daemon/guard.py), in process on a real Daemon.

A bug is injected where peer input meets our code (the validator, a stream handler, a background task,
a fetch job's apply): the daemon logs and counts it, blames the forwarder where one is to blame, and
keeps running. Without the guards each of these exceptions would reach py-libp2p or the nursery and
stop the daemon. The real attacks, with real processes, are in test_daemon_attacks.py.
"""

from __future__ import annotations

from pathlib import Path

import trio
from daemon_harness import make_home
from helpers import model_arrays
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from fednode.daemon.service import Daemon
from fednode.daemon.validate import Validator
from fednode.identity import Identity
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected bug")


async def test_exceptions_at_entry_points_are_logged_counted_and_contained(tmp_path: Path, monkeypatch) -> None:
    node = open_node(make_home(tmp_path, "a"))
    try:
        info, _ = node.history.create_repo("m", ArraySource(model_arrays(0)))
        d = Daemon(node, ["/ip4/127.0.0.1/tcp/0"], [])
        async with trio.open_nursery() as nursery:
            await nursery.start(d.run)
            stranger = ID.from_base58(Identity.generate().peer_id)
            # a peer the peerstore has no address of yet (it dialled us; identify is still running)
            assert d.peers.known_addrs(stranger) == []

            # gossip: the message is rejected, the forwarder gets a strike, the validator returns normally
            monkeypatch.setattr(Validator, "validate", _boom)
            msg = rpc_pb2.Message(from_id=stranger.to_bytes(), data=b"\xa0", seqno=b"1")
            assert d.gossip.validator_for(info.repo_id)(stranger, msg) is False
            assert d.metrics.errors["gossip_validator"] == 1 and d.metrics.penalties["error"] == 1
            assert d.metrics.rejected["error"] == 1
            monkeypatch.undo()

            # a background task that raises ends alone; the nursery (the daemon) goes on
            d.spawn("test_task", _async_boom)
            await trio.sleep(0.05)
            assert d.metrics.errors["test_task"] == 1

            # a fetch job whose apply raises: counted, the job still ends (a clone waiting on it returns)
            monkeypatch.setattr(d.applier, "apply", _boom)
            job = d.jobs.schedule(info.repo_id, info.genesis, [], b"announcement")
            with trio.fail_after(5):
                await job.done.wait()
            assert job.ok and d.metrics.errors["apply"] == 1
            monkeypatch.undo()

            assert d.status()["metrics"]["errors"] == {"gossip_validator": 1, "test_task": 1, "apply": 1}
            assert 'fednode_unhandled_errors_total{where="apply"} 1' in d.metrics.prometheus(0)
            nursery.cancel_scope.cancel()
    finally:
        node.close()


async def _async_boom() -> None:
    await trio.sleep(0)
    raise RuntimeError("injected bug")
