"""Inbound streams: who is served, and a last resort around each handler."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from libp2p.abc import INetStream

from fednode.daemon import guard
from fednode.daemon.abc import BanList
from fednode.daemon.fairness import FairServing
from fednode.daemon.metrics import Metrics
from fednode.daemon.ratelimit import TokenBuckets


class StreamServer:
    """Refuses banned peers, peers over their rate (not penalized: an eager honest peer is not
    hostile) and anything beyond the fair share of serving slots (``FairServing``)."""

    def __init__(self, bans: BanList, fair: FairServing, metrics: Metrics) -> None:
        self.bans = bans
        self.fair = fair
        self.metrics = metrics

    async def serve(self, stream: INetStream, work: Coroutine[Any, Any, None],
                    rate: TokenBuckets | None = None) -> None:
        peer = stream.muxed_conn.peer_id
        refused = "banned" if self.bans.is_banned(peer) else None
        if refused is None and rate is not None and not rate.take(str(peer)):
            refused = "rate_limited"
        if refused is None:
            refused = self.fair.admit(peer)  # busy / peer_busy: the asker goes on with its next provider
        if refused is not None:
            self.metrics.refused[refused] += 1
            work.close()
            await _reset(stream)
            return
        try:
            await work
        except Exception as exc:  # never into py-libp2p: the asker sees a reset, we see the cause
            guard.report(self.metrics, "stream_handler", exc, peer=str(peer))
            await _reset(stream)
        finally:
            self.fair.release(peer)


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass
