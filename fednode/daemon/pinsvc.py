"""A client of the IPFS Pinning Service API (https://ipfs.github.io/pinning-services-api-spec/).

``POST /pins`` ``{cid, name, origins}`` with ``Authorization: Bearer <token>`` answers a PinStatus
``{requestid, status: queued|pinning|pinned|failed, created, pin: {cid, ...}, delegates, info}``
(HTTP 202 or 200); ``GET /pins/{requestid}`` answers the same; ``GET /pins?cid=&name=&status=``
lists requests as ``{count, results: [PinStatus]}``. Errors are 4xx/5xx with
``{"error": {"reason": ..., "details": ...}}``. ``origins`` lists our daemon's multiaddrs: the
service fetches the DAG from us over bitswap. The CID in every answer must be the one asked for.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fednode.daemon.kubo import KuboError, PinMismatch, bounded_request, parse_json
from protocol.multiformats import CID, FormatError

STATUSES = ("queued", "pinning", "pinned", "failed")


class PinningService:
    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.base = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = timeout

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        status, raw = await bounded_request(method, self.base + path, self.timeout, "pinning service", json=body,
                                            headers=self.headers)
        answer = parse_json(raw)
        if status not in (200, 202):
            err = answer.get("error") if isinstance(answer, dict) else None
            reason = (f"{err.get('reason')}: {err.get('details', '')}"[:200] if isinstance(err, dict)
                      else raw[:200].decode(errors="replace"))
            raise KuboError(f"pinning service {method} {path}: HTTP {status}: {reason}")
        if not isinstance(answer, dict):
            raise KuboError(f"pinning service {method} {path}: the answer is not a JSON object")
        return answer

    @staticmethod
    def _status(answer: dict[str, Any], cid: CID) -> tuple[str, str]:
        """(requestid, status) of a PinStatus, checked to be about ``cid``."""
        pin = answer.get("pin")
        rid, status = answer.get("requestid"), answer.get("status")
        if not isinstance(pin, dict) or not isinstance(rid, str) or not _is_request_id(rid) or \
                status not in STATUSES:
            raise KuboError(f"pinning service: not a PinStatus: {str(answer)[:200]}")
        try:
            theirs = CID.parse(str(pin.get("cid")))
        except FormatError:
            theirs = None
        if theirs != cid:
            raise PinMismatch(f"the pinning service pins {str(pin.get('cid'))[:100]} instead of {cid}")
        return rid, str(status)

    async def add(self, cid: CID, name: str, origins: list[str]) -> tuple[str, str]:
        return self._status(await self._call("POST", "/pins", {"cid": str(cid), "name": name, "origins": origins}), cid)

    async def status(self, requestid: str, cid: CID) -> tuple[str, str]:
        return self._status(await self._call("GET", f"/pins/{requestid}"), cid)

    async def find(self, cid: CID, name: str) -> tuple[str, str] | None:
        """(requestid, status) of a pin request of ``cid`` named ``name`` the service already holds
        (``GET /pins?cid=&name=&status=``: the spec's listing), or None."""
        query = urlencode({"cid": str(cid), "name": name, "status": ",".join(STATUSES), "limit": "1"})
        answer = await self._call("GET", f"/pins?{query}")
        results = answer.get("results")
        if not isinstance(results, list) or not results or not isinstance(results[0], dict):
            return None
        return self._status(results[0], cid)


def _is_request_id(rid: str) -> bool:
    """A requestid we will put in a URL path (``/pins/{requestid}``): short, printable ASCII, no
    character that would change the path or the query."""
    return 0 < len(rid) <= 256 and rid.isascii() and rid.isprintable() and \
        not any(c in "/?#%\\ " for c in rid)
