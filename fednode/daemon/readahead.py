"""Read-ahead on the TCP connections of our hosts.

py-libp2p's Noise reader takes each message with two exact reads (its 2-byte length, then its
body) and each read is one ``receive_some`` of exactly that many bytes on the socket: every
64 KiB of a transfer costs at least two system calls and two trips through trio's I/O layer. A
raw py-libp2p stream between two processes carried 131-167 MB/s on this machine that way, and
216-267 MB/s when each socket read took up to READ_AHEAD bytes and later reads were served from
what it had read (measured 2026-12-04, same runs alternating).

``install(host)`` makes every connection the host opens or accepts read that way: before the
security handshake the raw connection's TCP stream is swapped for a ``ReadAheadTCPStream`` over the
same socket. Reads return at most the bytes asked for, as before (callers loop until they have
what they need), so every protocol above sees the same bytes in the same order; only the number
of socket reads changes. A connection holds at most READ_AHEAD bytes read but not yet asked for
(py-libp2p's yamux reader asks for more at once). Connections of any other kind are left as they are.
"""

from __future__ import annotations

import functools
from typing import Any

from libp2p.abc import IHost
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection

READ_AHEAD = 256 * 1024  # most bytes one socket read takes (4 full Noise messages)


class ReadAheadTCPStream(TrioTCPStream):
    """A ``TrioTCPStream`` whose socket reads take up to READ_AHEAD bytes; what the caller did not ask
    for is kept and handed out by the next reads."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._ahead = memoryview(b"")

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if not self._ahead:
            data = await super().read(max(n or 0, READ_AHEAD))
            if n is None or len(data) <= n:
                return data  # all of it: no copy
            self._ahead = memoryview(data)
        take = len(self._ahead) if n is None else min(n, len(self._ahead))
        out = bytes(self._ahead[:take])
        self._ahead = self._ahead[take:]
        return out


def _read_ahead(raw_conn: object) -> None:
    """Swap a fresh TCP connection's stream for a read-ahead one (before anything has read from it)."""
    if isinstance(raw_conn, RawConnection) and type(raw_conn.stream) is TrioTCPStream:
        raw_conn.stream = ReadAheadTCPStream(raw_conn.stream.stream)


def install(host: IHost) -> None:
    """Every connection ``host`` dials or accepts from now on reads ahead (module docstring)."""
    upgrader = getattr(host.get_network(), "upgrader", None)
    upgrade = getattr(upgrader, "upgrade_security", None)
    if upgrade is None or getattr(upgrade, "_fednode_read_ahead", False):
        return

    @functools.wraps(upgrade)
    async def upgrade_security(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
        _read_ahead(raw_conn)
        return await upgrade(raw_conn, is_initiator, peer_id)

    upgrade_security._fednode_read_ahead = True  # type: ignore[attr-defined]
    upgrader.upgrade_security = upgrade_security  # type: ignore[union-attr]
