"""A py-libp2p network notifee that only cares about new connections (the other events do nothing)."""

from __future__ import annotations

from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from multiaddr import Multiaddr


class OnConnected(INotifee):
    """Subclasses implement ``connected``; py-libp2p calls every method of a notifee."""

    async def connected(self, network: INetwork, conn: INetConn) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass
