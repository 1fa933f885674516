"""What pinning a commit on an operator's Kubo asks for, and the durable queue entry (``fednode pin``).

Pinned: every tensor's state CID (the UnixFS file of its full bytes, equal to Kubo's
``ipfs add --cid-version=1 --raw-leaves``: anyone can ``ipfs cat`` a pinned tensor), recursively;
then the manifest and the commit, directly (``recursive=false``): a recursive pin of the commit
would pull its whole ancestry and every delta. Kubo fetches them over bitswap from our daemon
(which rebuilds delta-stored states on demand), so the daemon pins, not the CLI.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fednode.errors import FednodeError
from fednode.history import History, RepoInfo
from fednode.logs import log
from fednode.storage import pinqueue
from fednode.storage.pinqueue import PinRequest
from protocol.multiformats import CID

if TYPE_CHECKING:
    from fednode.node import Node

PRIVATE = ("a private repository is never pinned in the clear: export a sealed backup with "
           "'fednode export' and pin that file, or let 'fednode pin --sealed' do both")


def url_problem(url: str, bearer: bool = False) -> str | None:
    """Why ``url`` is not a base URL we can call (None if it is): http(s), a host name or address
    and maybe a port and path, nothing HTTP clients would refuse later. ``bearer``: a token goes
    with every request, so plain http only to this machine."""
    if len(url) > 2048 or not url.isascii() or not url.isprintable() or " " in url:
        return "at most 2048 printable ASCII characters, no spaces"
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number in 0..65535 raises
    except ValueError as exc:
        return str(exc)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return "http://HOST[:PORT] or https://HOST[:PORT]"
    if parts.query or parts.fragment:
        return "no ?query or #fragment"
    if port == 0:
        return "port 0"
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(0 < len(x) <= 63 and x.replace("-", "").replace("_", "").isalnum()
                                      for x in labels):
            return f"{host[:60]!r} is no host name"
    if bearer and parts.scheme == "http" and not (host == "localhost" or (address and address.is_loopback)):
        return "https (plain http only to this machine: the bearer token would cross the network in clear)"
    return None


def check_url(url: str, bearer: bool = False) -> str:
    if problem := url_problem(url, bearer):
        raise FednodeError(f"not a usable URL {url[:100]!r}: {problem}")
    return url.rstrip("/")


def read_token(path: str | Path) -> str:
    """The bearer token in the first line of ``path`` ([ipfs] pinning_service_token_file): the file
    must be readable by its owner only, the token printable ASCII without spaces."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777
            token = f.readline(4097).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FednodeError(f"cannot read the pinning service token {path}: "
                           f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    if mode & 0o077:
        raise FednodeError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    if not token or len(token) > 4096 or not token.isascii() or not token.isprintable() or " " in token:
        raise FednodeError(f"{path}: the first line is no token (printable ASCII, no spaces, at most 4096)")
    return token


def targets(history: History, repo: RepoInfo, cid: CID) -> list[tuple[CID, bool]]:
    """(CID, recursive) to pin for commit ``cid``, states first, the commit last."""
    if history.is_private(repo.repo_id):
        raise FednodeError(PRIVATE)
    commit = history.load_commit(cid)
    manifest = history.load_manifest(commit.weights)
    out: list[tuple[CID, bool]] = []
    for name, entry in sorted(manifest.tensors.items()):
        if entry.state is None:
            raise FednodeError(f"tensor {name!r} of {cid} records no state CID: nothing to pin")
        if (entry.state, True) not in out:
            out.append((entry.state, True))
    return [*out, (commit.weights, False), (cid, False)]


def enqueue(history: History, repo: RepoInfo, cid: CID, kubo: str, source: str = "cli",
            service: str = "kubo") -> tuple[PinRequest, bool]:
    """Queue the pin of commit ``cid`` on ``kubo`` (a Kubo RPC URL, or with ``service="psa"`` an IPFS
    Pinning Service API URL); (the request, whether it is new)."""
    url = check_url(kubo, bearer=service == "psa")
    wanted = [(str(c), r) for c, r in targets(history, repo, cid)]
    with history.store.write() as txn:
        old = pinqueue.find(txn, url, str(cid))
        if old is not None:
            return old, False
        req = PinRequest(0, url, repo.repo_id.hex(), str(cid), wanted, source=source, time=time.time(),
                         service=service)
        return pinqueue.append(txn, req), True


def enqueue_sealed(node: Node, repo: RepoInfo, cid: CID, kubo: str,
                   service: str = "kubo") -> tuple[PinRequest, bool, int]:
    """Queue the pin of a sealed backup of private repository ``repo`` at ``cid`` (with its ancestry,
    readable by the owner and members only: ``fednode import``). The backup is added to our store as
    ``fednode ipfs add`` does (pinned here, served to anyone: it is ciphertext) and its CID queued.
    (the request, whether it is new, the backup's size in bytes)."""
    from fednode.workflows.ipfsfiles import put_file
    from fednode.workflows.sealedcar import backup_readers, export_sealed
    from protocol.unixfs import CHUNK_SIZE

    url = check_url(kubo, bearer=service == "psa")
    if not node.history.is_private(repo.repo_id):
        raise FednodeError(f"{repo.name} is public: pin it in the clear (without --sealed)")
    node.history.check_in_repo(repo, cid)
    with node.store.read() as txn:
        old = pinqueue.find(txn, url, str(cid))
    if old is not None:
        return old, False, 0
    with tempfile.TemporaryDirectory(dir=node.home, prefix=".pin-") as tmp:
        path = Path(tmp) / "backup.sealed"
        export_sealed(node.history, repo, cid, path, backup_readers(node, repo), ancestry=True)
        size = path.stat().st_size
        # the backup's blocks, their local pin and the queue entry in one transaction: all or nothing
        with path.open("rb") as source, node.store.write(size_hint=size + size // 64 + CHUNK_SIZE) as txn:
            old = pinqueue.find(txn, url, str(cid))  # queued meanwhile by another `pin --sealed`
            if old is not None:
                return old, False, 0
            root, size = put_file(txn, source, "add")
            req = PinRequest(0, url, repo.repo_id.hex(), str(cid), [(str(root), True)], source="sealed",
                             time=time.time(), service=service)
            return pinqueue.append(txn, req), True, size


def auto_pin(history: History, kubo: str, skipped: set[str] | None = None) -> list[PinRequest]:
    """Queue every merge commit that heads a branch of a public repository here and was never
    queued for ``kubo`` (``[ipfs] auto_pin``); the requests queued now. A head that cannot be
    pinned (a tensor without a state CID) is logged once, added to ``skipped`` and passed over: it
    does not stop the other repositories."""
    url = check_url(kubo)
    skipped = set() if skipped is None else skipped
    with history.store.read() as txn:
        seen = {r.commit for r in pinqueue.items(txn) if r.kubo == url} | skipped
    out: list[PinRequest] = []
    for repo in history.repos():
        if history.is_private(repo.repo_id):
            continue  # never in the clear
        for head in set(history.branches(repo).values()):
            if str(head) in seen or history.load_commit(head).kind != "merge":
                continue
            seen.add(str(head))
            try:
                req, new = enqueue(history, repo, head, url, source="auto")
            except FednodeError as exc:
                skipped.add(str(head))
                log("kubo_auto_pin_skipped", "warning", repo=repo.name, commit=str(head), error=str(exc))
                continue
            if new:
                out.append(req)
    return out
