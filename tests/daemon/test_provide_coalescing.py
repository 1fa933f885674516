"""DHT provides are coalesced: one pass at a time, and passes asked for meanwhile fold into one.

A burst of pushes (each spawning ``Discovery.provide_new``) and new connections (each ``provide_all``)
made the owner provide the same keys dozens of times, concurrently, in the 10-daemon bench.
The real DHT is exercised by tests/daemon/test_daemon_dht.py; here a stand-in DHT counts the calls.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import trio

from fednode.daemon import discovery
from fednode.storage.store import Store


class CountingDHT:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active = 0
        self.max_active = 0
        self.provider_store = SimpleNamespace(providing_keys=set(), providers={})  # republisher kept off

    def get_routing_table_size(self) -> int:
        return 1  # a node to reach

    async def provide(self, key: str) -> bool:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await trio.sleep(0.01)
            self.calls.append(key)
            return True
        finally:
            self.active -= 1


async def test_concurrent_provide_requests_fold_into_one_more_pass(tmp_path: Path) -> None:
    repo_id = b"r" * 32
    with Store(tmp_path / "s", sync=False) as store:
        dht = CountingDHT()
        d = discovery.Discovery(store, SimpleNamespace(local_repos=lambda: {"m": repo_id}),  # type: ignore[arg-type]
                                None, None, None)  # type: ignore[arg-type]
        d.start(dht)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            for _ in range(20):  # a burst of pushes
                nursery.start_soon(d.provide_new)
            for _ in range(5):  # and new connections
                nursery.start_soon(d.provide_all)
        key = discovery.dht_key(repo_id)
        assert dht.max_active == 1  # never two provides at once
        # the first pass provides the repository; the 24 requests meanwhile fold into one more
        # pass, a provide_all one (a connection asked), which provides it once more: 2, not 25
        assert dht.calls == [key, key]
        await d.provide_new()  # nothing new: nothing provided
        assert dht.calls == [key, key]
