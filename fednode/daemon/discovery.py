"""Discovery: Kademlia provider records for repositories (the key is the repository id)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from fednode.daemon.logs import log
from fednode.history import repo_id_text

if TYPE_CHECKING:
    from fednode.daemon.service import Daemon


def dht_key(repo_id: bytes) -> str:
    return "1220" + repo_id.hex()  # the repo id is a sha2-256 digest: use it as a multihash


async def provide_all(d: Daemon) -> None:
    """Announce every local repository (called on each new connection: cheap on small networks)."""
    for repo_id in d.state.local_repos().values():
        try:
            with trio.move_on_after(10):
                ok = await d.dht.provide(dht_key(repo_id))
                log("dht_provided", repo=repo_id_text(repo_id), ok=ok)
        except Exception as exc:
            log("dht_provide_failed", "warning", error=f"{type(exc).__name__}: {exc}")


async def find_providers(d: Daemon, repo_id: bytes) -> list[str]:
    """Dial the DHT's providers of ``repo_id``; returns the peer ids now connected."""
    found: list[str] = []
    infos = []
    with trio.move_on_after(15):
        infos = await d.dht.find_providers(dht_key(repo_id))
    for info in {i.peer_id: i for i in infos}.values():  # the DHT returns duplicates
        if info.peer_id == d.peer_id or not info.addrs:
            continue
        try:
            with trio.fail_after(10):
                await d.host.connect(info)
            found.append(str(info.peer_id))
            d.state.put_peer(str(info.peer_id), [str(a) for a in info.addrs])
        except Exception as exc:
            log("dial_failed", "warning", peer=str(info.peer_id), error=f"{type(exc).__name__}: {exc}")
    log("dht_providers", repo=repo_id_text(repo_id), found=found)
    return found
