"""The daemon's pinning task: works through the durable Kubo pin queue (storage/pinqueue.py).

For each due request: ask the operator's Kubo to dial us (``swarm/connect``, so it can fetch our
blocks over bitswap), then ``pin/add`` each target not yet confirmed, recording each confirmation
at once (a restart resumes after the last one). Kubo down or answering an error: retried with
exponential backoff (``RETRY_BASE`` doubling up to ``RETRY_MAX``), failed after ``MAX_ATTEMPTS``;
so is any other error a request meets (a URL or token httpx refuses), so that no request can hold
up the ones queued after it. Kubo answering another CID than the one asked: failed at once
(``PinMismatch``). A pinning service still fetching is asked again, less and less often (the same
backoff), and the request fails once it has been pending ``PENDING_LIMIT`` seconds. Error texts
from Kubo or a service are stored with their control characters replaced (they are printed by
``fednode pin --status``). Finished requests beyond the newest ``pinqueue.KEEP_FINISHED`` are
dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from fednode.daemon.kubo import PIN_TIMEOUT, KuboClient, KuboError, PinMismatch
from fednode.daemon.pinsvc import PinningService
from fednode.errors import FednodeError, printable
from fednode.history import History
from fednode.logs import log, shown_url
from fednode.storage import pinqueue
from fednode.storage.pinqueue import DEFAULT_KUBO, PinRequest
from fednode.storage.store import Store
from fednode.workflows.pinning import auto_pin, read_token
from protocol.multiformats import CID, FormatError

POLL_SECONDS = 1.0
RETRY_BASE = 2.0
RETRY_MAX = 600.0
MAX_ATTEMPTS = 12
PENDING_LIMIT = 86400.0  # seconds a pinning service may stay "queued" or "pinning" ([ipfs] pin_pending_seconds)
MAX_ERROR = 300  # characters of an error text kept
AUTO_SECONDS = 5.0  # how often branch heads are scanned for new merges ([ipfs] auto_pin)


class PinWorker:
    def __init__(self, store: Store, addrs: Callable[[], list[str]], retry_base: float = RETRY_BASE,
                 retry_max: float = RETRY_MAX, max_attempts: int = MAX_ATTEMPTS,
                 client: Callable[[str], KuboClient] = KuboClient, history: History | None = None,
                 auto_kubo: str | None = None, service_token: str | None = None,
                 pending_limit: float = PENDING_LIMIT) -> None:
        self.store = store
        self.pending_limit = pending_limit
        self.service_token = service_token  # the IPFS Pinning Service API's bearer token
        self.history, self.auto_kubo = history, auto_kubo  # auto-pin merged heads on this Kubo
        self.auto_skipped: set[str] = set()  # merged heads auto-pin cannot pin (logged once)
        self.addrs = addrs  # our multiaddrs with /p2p/ID, for Kubo to dial
        self.retry_base, self.retry_max, self.max_attempts = retry_base, retry_max, max_attempts
        self.client = client

    @classmethod
    def from_config(cls, history: History, addrs: Callable[[], list[str]], config: dict[str, Any]) -> PinWorker:
        ipfs = config.get("ipfs", {})
        auto = str(ipfs.get("kubo_api", DEFAULT_KUBO)) if ipfs.get("auto_pin", False) else None
        timeout = float(ipfs.get("pin_timeout_seconds", PIN_TIMEOUT))
        return cls(history.store, addrs, float(ipfs.get("pin_retry_seconds", RETRY_BASE)),
                   max_attempts=int(ipfs.get("pin_max_attempts", MAX_ATTEMPTS)), history=history, auto_kubo=auto,
                   client=lambda url: KuboClient(url, timeout), service_token=service_token(ipfs),
                   pending_limit=float(ipfs.get("pin_pending_seconds", PENDING_LIMIT)))

    async def run(self) -> None:
        scanned = 0.0
        while True:
            if self.auto_kubo is not None and self.history is not None and \
                    time.monotonic() - scanned >= AUTO_SECONDS:
                scanned = time.monotonic()
                try:  # a repository that cannot be scanned does not hold up the queue below
                    for req in auto_pin(self.history, self.auto_kubo, self.auto_skipped):
                        log("kubo_pin_queued", seq=req.seq, commit=req.commit, kubo=shown_url(req.kubo), source="auto")
                except Exception as exc:
                    log("kubo_auto_pin_failed", "warning", error=f"{type(exc).__name__}: {exc}")
            try:  # one bad round (a full disk) is logged; the queue goes on
                await self.run_once()
            except Exception as exc:
                log("kubo_pins_round_failed", "warning", error=f"{type(exc).__name__}: {exc}")
            await trio.sleep(POLL_SECONDS)

    async def run_once(self) -> int:
        """Try every due request once; the number tried."""
        now = time.time()
        with self.store.read() as txn:
            due = [r for r in pinqueue.items(txn) if r.state == "queued" and r.next_at <= now]
        for req in due:
            try:
                await self.process(req)
            except FormatError as exc:  # a damaged entry: failed, the others go on
                self._finish(req, "failed", f"unreadable request: {exc}")
            except Exception as exc:  # whatever it is, it counts as a failed attempt of this request only
                self._retry(req, f"{type(exc).__name__}: {exc}")
        if due:
            with self.store.write() as txn:
                pinqueue.prune(txn)
        return len(due)

    async def process(self, req: PinRequest) -> None:
        try:
            pending = await (self._service(req) if req.service == "psa" else self._kubo(req))
        except PinMismatch as exc:
            self._finish(req, "failed", str(exc))
            return
        except KuboError as exc:
            self._retry(req, str(exc))
            return
        if pending:  # the pinning service is still fetching: ask again later (not a failure), for so long
            now = time.time()
            req.pending_since = req.pending_since or now
            if now - req.pending_since >= self.pending_limit:
                self._finish(req, "failed", f"the pinning service has not pinned it in {self.pending_limit:g} s")
                return
            req.polls += 1
            req.next_at = now + self._backoff(req.polls)
            self._save(req)
            return
        self._finish(req, "pinned", None)

    async def _kubo(self, req: PinRequest) -> bool:
        kubo = self.client(req.kubo)
        await self._connect(kubo)
        for text, recursive in req.targets:
            if text not in req.done:
                await kubo.pin_add(CID.parse(text), recursive)
                req.done.append(text)
                self._save(req)
        return False

    async def _service(self, req: PinRequest) -> bool:
        """One round with a pinning service; True while some pin is still queued or pinning there.
        Its pins are recursive: the states are pinned (the commit would pull its whole ancestry)."""
        if self.service_token is None:
            raise KuboError("no [ipfs] pinning_service_token_file: the pinning service needs a token")
        svc = PinningService(req.kubo, self.service_token)
        pending = False
        for text, recursive in req.targets:
            if text in req.done or not recursive:
                continue
            cid, rid, name = CID.parse(text), req.remote.get(text), f"fednode {req.commit}"
            if rid is None and text in req.posting:  # posted before a crash? then the service has it
                found = await svc.find(cid, name)
                if found is not None:
                    rid = found[0]
                    req.remote[text] = rid
                    req.posting.remove(text)
                    self._save(req)
            if rid is None:
                if text not in req.posting:  # recorded before the POST: a crash after it is found above
                    req.posting.append(text)
                    self._save(req)
                rid, status = await svc.add(cid, name, self.addrs())
                req.remote[text] = rid
                req.posting.remove(text)
                self._save(req)
            else:
                _, status = await svc.status(rid, cid)
            if status == "failed":
                raise PinMismatch(f"the pinning service failed to pin {text} (request {rid})")
            if status == "pinned":
                req.done.append(text)
                self._save(req)
            pending = pending or status != "pinned"
        return pending

    async def _connect(self, kubo: KuboClient) -> None:
        """Kubo dials one of our addresses (an unreachable one is skipped; Kubo may know us already)."""
        for addr in self.addrs():
            try:
                await kubo.swarm_connect(addr)
                return
            except KuboError as exc:
                log("kubo_connect_failed", "warning", addr=addr, error=str(exc))

    def _backoff(self, n: int) -> float:
        """Seconds before try ``n + 1``: RETRY_BASE doubling, at most RETRY_MAX."""
        return min(self.retry_base * 2.0 ** min(n - 1, 64), self.retry_max)

    def _retry(self, req: PinRequest, error: str) -> None:
        req.attempts += 1
        error = printable(error, MAX_ERROR)
        req.error = error
        if req.attempts >= self.max_attempts:
            self._finish(req, "failed", f"gave up after {req.attempts} attempts: {error}")
            return
        req.next_at = time.time() + self._backoff(req.attempts)
        log("kubo_pin_retry", "warning", seq=req.seq, attempts=req.attempts, error=error)
        self._save(req)

    def _finish(self, req: PinRequest, state: str, error: str | None) -> None:
        req.state, req.error = state, None if error is None else printable(error, MAX_ERROR)
        log("kubo_pin_" + state, "info" if state == "pinned" else "warning", seq=req.seq, commit=req.commit,
            kubo=shown_url(req.kubo), error=req.error)
        self._save(req)

    def _save(self, req: PinRequest) -> None:
        with self.store.write() as txn:
            pinqueue.save(txn, req)


def service_token(ipfs: dict[str, Any]) -> str | None:
    """The pinning service's token: the first line of ``[ipfs] pinning_service_token_file`` (None, and
    a warning, if it is missing, open to others or no token: service pins then fail with that)."""
    path = ipfs.get("pinning_service_token_file")
    if path is None:
        return None
    try:
        return read_token(path)
    except FednodeError as exc:
        log("pinning_token_unusable", "warning", path=str(path), error=str(exc))
        return None

