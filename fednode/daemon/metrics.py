"""Counters of the daemon, also rendered in Prometheus text format for /metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Metrics:
    accepted: Counter[str] = field(default_factory=Counter)  # from peers, by message kind
    published: Counter[str] = field(default_factory=Counter)  # our own, by message kind
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    refused: Counter[str] = field(default_factory=Counter)  # inbound block/heads streams reset, by reason
    errors: Counter[str] = field(default_factory=Counter)  # exceptions caught by a last-resort guard, by place
    penalties: Counter[str] = field(default_factory=Counter)  # strikes against peers (Bans.penalize), by reason
    bytes_in: int = 0
    bytes_out: int = 0
    blocks_in: int = 0
    blocks_out: int = 0
    fetches_done: int = 0
    fetches_failed: int = 0
    refusals: int = 0  # block requests a provider refused (reset before any answer)
    fetch_seconds: float = 0.0
    bans: int = 0
    loop_lag_max: float = 0.0  # longest the event loop was late to wake a sleeping task (seconds)
    loop_stalls: int = 0  # times it was late by more than service.STALL_SECONDS

    def snapshot(self) -> dict[str, object]:
        return {
            "accepted": dict(self.accepted),
            "published": dict(self.published),
            "rejected": dict(self.rejected),
            "refused_streams": dict(self.refused),
            "errors": dict(self.errors),
            "penalties": dict(self.penalties),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "blocks_in": self.blocks_in,
            "blocks_out": self.blocks_out,
            "fetches_done": self.fetches_done,
            "fetches_failed": self.fetches_failed,
            "provider_refusals": self.refusals,
            "fetch_seconds": round(self.fetch_seconds, 6),
            "bans": self.bans,
            "loop_lag_max_seconds": round(self.loop_lag_max, 6),
            "loop_stalls": self.loop_stalls,
        }

    def prometheus(self, peers: int) -> str:
        lines = [
            "# TYPE fednode_peers gauge",
            f"fednode_peers {peers}",
            "# TYPE fednode_messages_accepted_total counter",
            *(f'fednode_messages_accepted_total{{kind="{k}"}} {v}' for k, v in sorted(self.accepted.items())),
            "# TYPE fednode_messages_published_total counter",
            *(f'fednode_messages_published_total{{kind="{k}"}} {v}' for k, v in sorted(self.published.items())),
            "# TYPE fednode_messages_rejected_total counter",
            *(f'fednode_messages_rejected_total{{reason="{k}"}} {v}' for k, v in sorted(self.rejected.items())),
            "# TYPE fednode_streams_refused_total counter",
            *(f'fednode_streams_refused_total{{reason="{k}"}} {v}' for k, v in sorted(self.refused.items())),
            "# TYPE fednode_unhandled_errors_total counter",
            *(f'fednode_unhandled_errors_total{{where="{k}"}} {v}' for k, v in sorted(self.errors.items())),
            "# TYPE fednode_peer_penalties_total counter",
            *(f'fednode_peer_penalties_total{{reason="{k}"}} {v}' for k, v in sorted(self.penalties.items())),
            "# TYPE fednode_block_bytes_in_total counter",
            f"fednode_block_bytes_in_total {self.bytes_in}",
            "# TYPE fednode_block_bytes_out_total counter",
            f"fednode_block_bytes_out_total {self.bytes_out}",
            "# TYPE fednode_fetch_seconds summary",
            f"fednode_fetch_seconds_sum {self.fetch_seconds:.6f}",
            f"fednode_fetch_seconds_count {self.fetches_done}",
            "# TYPE fednode_provider_refusals_total counter",
            f"fednode_provider_refusals_total {self.refusals}",
            "# TYPE fednode_fetches_failed_total counter",
            f"fednode_fetches_failed_total {self.fetches_failed}",
            "# TYPE fednode_peers_banned_total counter",
            f"fednode_peers_banned_total {self.bans}",
            "# TYPE fednode_loop_lag_max_seconds gauge",
            f"fednode_loop_lag_max_seconds {self.loop_lag_max:.6f}",
            "# TYPE fednode_loop_stalls_total counter",
            f"fednode_loop_stalls_total {self.loop_stalls}",
        ]
        return "\n".join(lines) + "\n"
