"""What pinning a commit on an operator's Kubo asks for, and the durable queue entry (``fednode pin``).

Pinned: every tensor's state CID (the UnixFS file of its full bytes, equal to Kubo's
``ipfs add --cid-version=1 --raw-leaves``: anyone can ``ipfs cat`` a pinned tensor), recursively;
then the manifest and the commit, directly (``recursive=false``): a recursive pin of the commit
would pull its whole ancestry and every delta. Kubo fetches them over bitswap from our daemon
(which rebuilds delta-stored states on demand), so the daemon pins, not the CLI.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fednode.errors import FednodeError
from fednode.history import History, RepoInfo
from fednode.storage import pinqueue
from fednode.storage.pinqueue import PinRequest
from protocol.multiformats import CID

if TYPE_CHECKING:
    from fednode.node import Node

PRIVATE = ("a private repository is never pinned in the clear: export a sealed backup with "
           "'fednode export' and pin that file, or let 'fednode pin --sealed' do both")


def check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) > 2048 or any(c.isspace() for c in url):
        raise FednodeError(f"not a Kubo RPC URL (http://HOST:PORT): {url[:100]!r}")
    return url.rstrip("/")


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
    url = check_url(kubo)
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
    from fednode.workflows.ipfsfiles import add_file
    from fednode.workflows.sealedcar import backup_readers, export_sealed

    url = check_url(kubo)
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
        root, size = add_file(node.store, path)
    with node.store.write() as txn:
        req = PinRequest(0, url, repo.repo_id.hex(), str(cid), [(str(root), True)], source="sealed",
                         time=time.time(), service=service)
        return pinqueue.append(txn, req), True, size


def auto_pin(history: History, kubo: str) -> list[PinRequest]:
    """Queue every merge commit that heads a branch of a public repository here and was never
    queued for ``kubo`` (``[ipfs] auto_pin``); the requests queued now."""
    url = check_url(kubo)
    with history.store.read() as txn:
        seen = {r.commit for r in pinqueue.items(txn) if r.kubo == url}
    out: list[PinRequest] = []
    for repo in history.repos():
        if history.is_private(repo.repo_id):
            continue  # never in the clear
        for head in set(history.branches(repo).values()):
            if str(head) in seen or history.load_commit(head).kind != "merge":
                continue
            req, new = enqueue(history, repo, head, url, source="auto")
            seen.add(str(head))
            if new:
                out.append(req)
    return out
