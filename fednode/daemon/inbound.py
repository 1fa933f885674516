"""Catch-up on inbound connections: a node that is only ever dialled still announces itself.

``Peers.connect`` starts the catch-up (DHT routing table, provider records, heads exchange) for
the connections we dial. Without this notifee a node that others dial (a bootstrap node, one
behind a port others know) never added its peers to the DHT nor provided its repositories.
"""

from __future__ import annotations

from collections.abc import Callable

from libp2p.abc import INetConn, INetwork
from libp2p.peer.id import ID
from libp2p.rcmgr import Direction

from fednode.daemon.notifee import OnConnected


class InboundCatchUp(OnConnected):
    """Calls ``start(peer)`` once for each inbound connection (outbound ones: ``Peers.connect``)."""

    def __init__(self, start: Callable[[ID], None]) -> None:
        self.start = start

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        if getattr(conn, "direction", None) == Direction.INBOUND:
            self.start(conn.muxed_conn.peer_id)
