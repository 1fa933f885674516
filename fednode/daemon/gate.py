"""Connection gating by peer id: a banned peer's connection is closed as soon as it is set up.

py-libp2p's own ``ConnectionGate`` filters by IP address only, and the pubsub blacklist only
ignores a peer's gossip: without this a banned peer could reconnect at once and keep opening
streams, each refused only after a handshake and a protocol negotiation.
"""

from __future__ import annotations

from collections.abc import Callable

from libp2p.abc import INetConn, INetwork
from libp2p.peer.id import ID

from fednode.daemon.metrics import Metrics
from fednode.daemon.notifee import OnConnected
from fednode.logs import log


class BanGate(OnConnected):
    def __init__(self, is_banned: Callable[[ID], bool], metrics: Metrics) -> None:
        self.is_banned = is_banned
        self.metrics = metrics

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self.is_banned(peer):
            self.metrics.refused["banned_connection"] += 1
            log("banned_peer_hung_up", peer=str(peer))
            await conn.close()
