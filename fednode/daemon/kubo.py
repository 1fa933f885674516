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
import trio

from fednode import safejson
from fednode.logs import shown_url
from protocol.multiformats import CID, FormatError

PIN_TIMEOUT = 600.0  # seconds Kubo may take to fetch and pin one DAG (it fetches over bitswap)
CONNECT_TIMEOUT = 30.0  # seconds for one swarm/connect (each of our addresses is tried in turn)
MAX_ANSWER = 1 << 20  # bytes of an answer read at most: ours are small JSON objects


class KuboError(Exception):
    """Kubo could not be reached or answered an error: worth retrying later."""


class PinMismatch(Exception):
    """Kubo pinned something else than the CID asked for: the pin failed, retrying cannot help."""


class KuboClient:
    def __init__(self, url: str, timeout: float = PIN_TIMEOUT) -> None:
        self.base = url.rstrip("/") + "/api/v0/"
        self.timeout = timeout

    async def call(self, command: str, params: list[tuple[str, str | int | float | bool | None]],
                   timeout: float | None = None) -> dict[str, Any]:
        status, raw = await bounded_request("POST", self.base + command, timeout or self.timeout, "Kubo",
                                            params=params)
        body = parse_json(raw)
        if status != 200:
            msg = body.get("Message") if isinstance(body, dict) else None
            raise KuboError(f"Kubo {command}: HTTP {status}: {str(msg or raw[:200].decode(errors='replace'))[:200]}")
        if not isinstance(body, dict):
            raise KuboError(f"Kubo {command}: the answer is not a JSON object")
        return body

    async def version(self) -> str:
        return str((await self.call("version", []))["Version"])

    async def swarm_connect(self, addr: str) -> None:
        """Dial ``addr`` (a multiaddr ending /p2p/ID): Kubo then fetches our blocks over bitswap."""
        await self.call("swarm/connect", [("arg", addr)], min(self.timeout, CONNECT_TIMEOUT))

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


async def bounded_request(method: str, url: str, timeout: float, who: str, **kwargs: Any) -> tuple[int, bytes]:
    """(HTTP status, body) of one request, the whole exchange within ``timeout`` seconds (httpx's
    own timeouts bound each read, so a server that trickles bytes would hold us forever) and the
    body at most MAX_ANSWER bytes; anything that goes wrong is a ``KuboError`` naming ``who``."""
    try:
        with trio.fail_after(timeout):
            async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))) as client:
                async with client.stream(method, url, **kwargs) as resp:
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER:
                            raise KuboError(f"{who} at {shown_url(url)}: an answer over {MAX_ANSWER} bytes")
                    return resp.status_code, bytes(body)
    except trio.TooSlowError:
        raise KuboError(f"{who} at {shown_url(url)}: no whole answer within {timeout:.0f} s") from None
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError, ValueError) as exc:  # bad URLs and tokens too
        raise KuboError(f"{who} at {shown_url(url)} unreachable: {type(exc).__name__}: {exc}") from None


def parse_json(raw: bytes) -> Any:
    """The JSON value of ``raw``, or None (not JSON, or nested too deep: ``safejson``, since the
    stdlib's parser crashes the process on deep nesting once py_ecc has raised the recursion limit)."""
    try:
        return safejson.loads(raw)
    except (ValueError, RecursionError):
        return None
