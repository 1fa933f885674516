"""A client of Kubo's RPC API (``POST /api/v0/...``) over httpx, for pinning on an operator's Kubo.

Not PyPI ``ipfshttpclient``: its last release (0.7.0) refuses every Kubo from 0.8 on
(``VERSION_MAXIMUM = "0.8.0"``, ``connect()`` raises ``VersionMismatch``), and current Kubo is
0.2x-0.3x. The few calls used here are plain HTTP: every one is a POST with ``arg`` query
parameters; success is HTTP 200 with a JSON object, failure HTTP 500 (or 400) with
``{"Message": ..., "Code": ..., "Type": "error"}``.
"""

from __future__ import annotations

from typing import Any

import httpx

from protocol.multiformats import CID, FormatError

PIN_TIMEOUT = 600.0  # seconds Kubo may take to fetch and pin one DAG (it fetches over bitswap)


class KuboError(Exception):
    """Kubo could not be reached or answered an error: worth retrying later."""


class PinMismatch(Exception):
    """Kubo pinned something else than the CID asked for: the pin failed, retrying cannot help."""


class KuboClient:
    def __init__(self, url: str, timeout: float = PIN_TIMEOUT) -> None:
        self.base = url.rstrip("/") + "/api/v0/"
        self.timeout = timeout

    async def call(self, command: str, params: list[tuple[str, str | int | float | bool | None]]) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10.0)) as client:
                resp = await client.post(self.base + command, params=params)
        except httpx.HTTPError as exc:
            raise KuboError(f"Kubo at {self.base} unreachable: {type(exc).__name__}: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200:
            msg = body.get("Message") if isinstance(body, dict) else None
            raise KuboError(f"Kubo {command}: HTTP {resp.status_code}: {msg or resp.text[:200]!s}")
        if not isinstance(body, dict):
            raise KuboError(f"Kubo {command}: the answer is not a JSON object")
        return body

    async def version(self) -> str:
        return str((await self.call("version", []))["Version"])

    async def swarm_connect(self, addr: str) -> None:
        """Dial ``addr`` (a multiaddr ending /p2p/ID): Kubo then fetches our blocks over bitswap."""
        await self.call("swarm/connect", [("arg", addr)])

    async def pin_add(self, cid: CID, recursive: bool = True) -> None:
        """Pin ``cid``; Kubo must answer exactly this CID, else ``PinMismatch``."""
        body = await self.call("pin/add", [("arg", str(cid)), ("recursive", "true" if recursive else "false")])
        pins = body.get("Pins")
        if not isinstance(pins, list) or len(pins) != 1 or not isinstance(pins[0], str):
            raise PinMismatch(f"Kubo pin/add {cid}: unexpected answer {str(body)[:200]}")
        try:
            theirs = CID.parse(pins[0])
        except FormatError:
            theirs = None
        if theirs != cid:
            raise PinMismatch(f"Kubo pinned {pins[0][:100]} instead of {cid}")

    async def pinned(self, cid: CID) -> bool:
        """Whether Kubo lists ``cid`` among its pins (``pin/ls?arg=``; an unpinned CID is a 500)."""
        try:
            body = await self.call("pin/ls", [("arg", str(cid))])
        except KuboError as exc:
            if "is not pinned" in str(exc):
                return False
            raise
        keys = body.get("Keys")
        return isinstance(keys, dict) and any(_same(k, cid) for k in keys)


def _same(text: str, cid: CID) -> bool:
    try:
        return CID.parse(text) == cid
    except FormatError:
        return False
