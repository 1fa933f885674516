"""Findable: public repositories' tensor states are provided in the DHT, private ones' never.

- A Helia node (js-libp2p with @libp2p/kad-dht in client mode) that knows only a state CID and one
  DHT server (a fednode daemon that does not hold the repository) finds the owner through the DHT,
  dials it and fetches the bytes, identical to ``fednode checkout``'s.
- The states of a private repository are not provided: neither the owner's log nor a DHT lookup
  lists them.
- Providing is bounded: keys per pass, provides per hour, a reprovide schedule; provides that
  reach no node only record us locally and cost nothing of the hourly budget
  (a stand-in DHT counts the calls; the clock is trio's mock clock).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import trio
import trio.testing
from daemon_harness import DaemonProc, daemons, make_home, network_config, open_nodes, wait_for
from helia_node import HELIA_DIR, PREAMBLE, check_installed
from helpers import model_arrays, perturb, run_fednode, write_model
from test_bitswap_states import _checkout, _show

from fednode.daemon import discovery
from fednode.nft.publish import publish_metadata
from fednode.storage.netstate import NetState
from fednode.tensors.modelio import ArraySource
from fednode.workflows.ipfsfiles import add_file, unpin

HELIA_FIND = PREAMBLE + """
const { writeFile } = await import('node:fs/promises')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { ping } = await import('@libp2p/ping')

const [dhtAddr, cid, dest, timeoutMs] = process.argv.slice(1)
// the one DHT server is the only peer this node knows; loopback addresses are kept (the default
// mapper drops private addresses, as on the public Amino DHT)
const helia = withBitswap(withLibp2pLight(createHeliaLight(), {
  addresses: { listen: [] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping(), dht: kadDHT({ clientMode: true, peerInfoMapper: passthroughMapper }) }
}))
await helia.start()
const signal = AbortSignal.timeout(Number(timeoutMs))
try {
  await helia.libp2p.dial(multiaddr(dhtAddr), { signal })
  while (helia.libp2p.services.dht.routingTable.size === 0) await new Promise(r => setTimeout(r, 20))
  const before = helia.libp2p.getPeers().map(String)
  const t0 = Date.now()
  const providers = []
  for await (const p of helia.libp2p.contentRouting.findProviders(CID.parse(cid), { signal })) {
    providers.push(p.id.toString())
    break
  }
  const t1 = Date.now()
  const chunks = []
  for await (const chunk of unixfs(helia).cat(CID.parse(cid), { signal })) chunks.push(chunk)
  await writeFile(dest, Buffer.concat(chunks))
  console.log(JSON.stringify({ ok: true, before, providers, find_ms: t1 - t0, fetch_ms: Date.now() - t1 }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err) }))
} finally {
  await helia.stop()
  process.exit(0)
}
"""


def helia_find(dht_addr: str, cid: str, dest: Path, timeout: float) -> dict[str, object]:
    done = subprocess.run(["node", "--input-type=module", "-e", HELIA_FIND, dht_addr, cid, str(dest),
                           str(int(timeout * 1000))], cwd=HELIA_DIR, capture_output=True, text=True,
                          timeout=timeout + 30)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1])


def _with_p2p(d: DaemonProc) -> str:
    return d.addr if "/p2p/" in d.addr else f"{d.addr}/p2p/{d.peer_id}"


def _provided(d: DaemonProc, what: str) -> bool:
    return any(e["event"] == "dht_provided" and e["ok"] and e["what"] == what for e in d.log_events())


def test_helia_finds_a_public_state_through_the_dht_and_private_states_are_not_provided(tmp_path: Path) -> None:
    check_installed()
    home = make_home(tmp_path, "owner")
    w0 = np.random.default_rng(3).standard_normal(300_000).astype(np.float32)
    run_fednode(home, "repo", "create", "demo", "--public", "--from",
                write_model(tmp_path / "m0.safetensors", {"w": ("F32", w0)}))
    w1 = w0.copy()
    w1[::40] += 0.5
    run_fednode(home, "commit", "--from", write_model(tmp_path / "m1.safetensors", {"w": ("F32", w1)}), "-m", "xor")
    public = _show(home, "main")["w"]
    assert public["encoding"] == "xor"  # a delta: the daemon rebuilds the state for bitswap
    expected = _checkout(home, "main", tmp_path / "out.safetensors")
    s0 = np.random.default_rng(4).standard_normal(1000).astype(np.float32)
    run_fednode(home, "repo", "create", "secret", "--from", write_model(tmp_path / "s0.safetensors",
                                                                        {"s": ("F32", s0)}))
    secret = json.loads(run_fednode(home, "show", "main", "-r", "secret", "--json").stdout)["tensors"][0]["state"]

    scan = tmp_path / "scan.bin"
    scan.write_bytes(b"an x-ray, say\n" * 50_000)
    added = run_fednode(home, "ipfs", "add", str(scan)).stdout.strip()
    (owner,) = open_nodes(home)
    with owner:  # what `fednode nft mint` stores and pins before it mints (no chain needed for that)
        document = publish_metadata(owner.history, owner.history.repo("demo"), "main").document_cid

    b = DaemonProc(make_home(tmp_path, "dht")).start()  # the one DHT server: holds no repository
    a = DaemonProc(home, (b.addr,))
    with daemons(a, b):
        a.start()
        wait_for(lambda: _provided(a, f"state {public['state']}"), 20, "the owner to provide the public state")
        for cid, source in ((added, "add"), (document, "nft")):  # files by CID: what IPFS users look up too
            what = f"file {cid} ({source})"
            wait_for(lambda what=what: _provided(a, what), 20, f"the owner to provide {what}")
            assert [p["peer_id"] for p in b.api("POST", "/providers", {"cid": str(cid)})] == [a.peer_id]
        found = wait_for(lambda: [p for p in b.api("POST", "/providers", {"cid": public["state"]})
                                  if p["peer_id"] == a.peer_id], 15, "the DHT server to list the owner")
        assert found[0]["addrs"]
        # the private repository's state: never provided, and no lookup finds the owner for it
        assert not any(e["event"] == "dht_provided" and secret in e.get("what", "") for e in a.log_events())
        assert b.api("POST", "/providers", {"cid": secret}) == []

        dest = tmp_path / "helia.bin"
        got = helia_find(_with_p2p(b), public["state"], dest, timeout=45)
        assert got["ok"] is True, got
        assert got["before"] == [b.peer_id]  # it knew only the DHT server
        assert got["providers"] == [a.peer_id]
        assert dest.read_bytes() == expected == w1.tobytes()
        print(f"helia: provider found in {got['find_ms']} ms, state fetched in {got['fetch_ms']} ms")


def test_ipfs_get_finds_a_provider_through_the_dht(tmp_path: Path) -> None:
    """`fednode ipfs get CID` on a node connected only to a DHT server: the connected peers lack it,
    so after a second the DHT's providers of the CID are looked up, dialled and asked, as Kubo does."""
    owner = make_home(tmp_path, "owner")
    data = np.random.default_rng(11).integers(0, 256, 1_500_000, dtype=np.uint8).tobytes()
    (tmp_path / "scan.bin").write_bytes(data)
    cid = run_fednode(owner, "ipfs", "add", str(tmp_path / "scan.bin")).stdout.strip()
    b = DaemonProc(make_home(tmp_path, "dht")).start()  # the one DHT server: holds nothing
    a = DaemonProc(owner, (b.addr,))
    c = DaemonProc(make_home(tmp_path, "reader"), (b.addr,))
    with daemons(a, b, c):
        a.start()
        wait_for(lambda: _provided(a, f"file {cid} (add)"), 20, "the owner to provide the file")
        c.start()
        wait_for(lambda: b.peer_id in [p["peer_id"] for p in c.api("GET", "/peers")], 15, "the reader to join")
        assert a.peer_id not in [p["peer_id"] for p in c.api("GET", "/peers")]  # it knows only the DHT server
        out = tmp_path / "got.bin"
        run_fednode(c.home, "ipfs", "get", cid, "--out", str(out), "--timeout", "60")
        assert out.read_bytes() == data
        asked = [e["providers"] for e in c.log_events() if e["event"] == "dht_providers_asked"]
        assert asked == [[a.peer_id]]


class CountingDHT:
    """A stand-in KadDHT: counts provides; ``peers`` is its routing table's size."""

    def __init__(self, peers: int = 1) -> None:
        self.peers = peers
        self.calls: list[str] = []
        self.local: list[bytes] = []
        self.provider_store = SimpleNamespace(providing_keys=set(), providers={},
                                              add_provider=lambda key, info: self.local.append(key))

    def get_routing_table_size(self) -> int:
        return self.peers

    async def provide(self, key: str) -> bool:
        self.provider_store.providing_keys.add(bytes.fromhex(key))
        self.calls.append(key)
        return True


async def test_states_of_public_heads_are_wanted_private_ones_not_and_providing_is_bounded(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    (node,) = open_nodes(make_home(tmp_path, "n"))
    try:
        arrays = model_arrays(0)
        pub, _ = node.history.create_repo("pub", ArraySource(arrays), visibility="public")
        node.history.commit(pub, ArraySource(perturb(arrays, 1)), "update")
        priv, _ = node.history.create_repo("priv", ArraySource(model_arrays(5)))
        dht = CountingDHT(peers=0)
        host = SimpleNamespace(get_id=lambda: "me", get_addrs=lambda: [])
        d = discovery.Discovery(node.store, NetState(node.store), host, None,  # type: ignore[arg-type]
                                None, discovery.ProvideLimits(reprovide_seconds=100, per_hour=5, per_pass=4))  # type: ignore[arg-type]
        d.start(dht)  # type: ignore[arg-type]
        wanted = d.wanted()
        kinds = [w.what.split()[0] for w in wanted]
        with node.store.read() as txn:
            pub_head = discovery.CID.from_bytes(next(iter(txn.list_refs(pub.repo_id, "heads/").values())))
            priv_head = discovery.CID.from_bytes(next(iter(txn.list_refs(priv.repo_id, "heads/").values())))
            pub_states = discovery.head_states(txn, pub_head)
            priv_states = discovery.head_states(txn, priv_head)
        assert len(pub_states) == len(arrays) and priv_states  # every tensor's state
        assert {w.what for w in wanted if w.what.startswith("state ")} == {f"state {s}" for s in pub_states}
        assert kinds.count("repo") == 2 and kinds.count("head") == 2
        assert not {f"state {s}" for s in priv_states} & {w.what for w in wanted}
        total = len(wanted)
        assert total > 5

        # no node to reach: recorded locally only, the hourly budget untouched, nothing marked provided
        await d.provide_new()
        assert dht.calls == [] and len(dht.local) == 4 and not d.provided and not d.sent
        await d.provide_new()  # the next 4; those recorded already are not recorded again
        assert len(dht.local) == min(8, total)

        # a node connects: at most per_pass keys a pass, at most per_hour in any hour
        dht.peers = 1
        await d.provide_all()
        assert len(dht.calls) == 4 and dht.calls[:2] == [w.key for w in wanted if w.small][:2]
        assert not dht.provider_store.providing_keys  # py-libp2p's own republisher is kept off them
        await d.provide_new()
        assert len(dht.calls) == 5  # the budget: 5 an hour
        mock_clock.jump(discovery.HOUR)
        while len(d.provided) < total:
            before = len(dht.calls)
            await d.provide_new()
            assert len(dht.calls) - before <= 4
            if len(dht.calls) == before:
                mock_clock.jump(discovery.HOUR)
        assert len(set(dht.calls)) == total
        # reprovided on schedule only: nothing is due before reprovide_seconds
        calls = len(dht.calls)
        mock_clock.jump(50)
        await d.provide_new()
        assert len(dht.calls) == calls  # provided less than reprovide_seconds ago: not due
        mock_clock.jump(discovery.HOUR)  # the schedule has passed, and the budget is back
        await d.provide_new()
        assert len(dht.calls) == calls + 4  # everything due again, a pass at a time
    finally:
        node.close()


def test_pinned_files_are_wanted_nft_metadata_too_until_unpinned(tmp_path: Path) -> None:
    """What IPFS users look up besides states: files added or fetched by CID, and an NFT's image and
    metadata document (pinned with source "nft"): their roots are provided, once each."""
    home = make_home(tmp_path, "n")
    (node,) = open_nodes(home)
    try:
        repo, _ = node.history.create_repo("priv", ArraySource(model_arrays(5)))  # private: states not provided
        published = publish_metadata(node.history, repo, "main")
        src = tmp_path / "scan.bin"
        src.write_bytes(np.random.default_rng(9).integers(0, 256, 600_000, dtype=np.uint8).tobytes())
        added, _ = add_file(node.store, src)
        d = discovery.Discovery(node.store, NetState(node.store), None, None, None)  # type: ignore[arg-type]
        files = {w.what for w in d.wanted() if w.what.startswith("file ")}
        assert files == {f"file {added} (add)", f"file {published.document_cid} (nft)",
                         f"file {published.image_cid} (nft)"}
        assert all(not w.small for w in d.wanted() if w.what.startswith("file "))
        unpin(node.store, added)
        assert f"file {added} (add)" not in {w.what for w in d.wanted()}
    finally:
        node.close()


def test_provide_limits_from_config() -> None:
    assert discovery.provide_limits({}) == discovery.ProvideLimits()
    got = discovery.provide_limits({"network": {"dht_reprovide_interval": 60, "dht_provides_per_hour": 0,
                                                "dht_provides_per_pass": 1}})
    assert got == discovery.ProvideLimits(60.0, 0, 1) and got.tick == 15.0
    for key, bad in (("dht_reprovide_interval", 0), ("dht_reprovide_interval", "1h"),
                     ("dht_provides_per_hour", -1), ("dht_provides_per_pass", 0), ("dht_provides_per_pass", 1.5)):
        with pytest.raises(discovery.FednodeError, match=f"network. {key} must be"):
            discovery.provide_limits({"network": {key: bad}})


def test_daemon_refuses_a_bad_provide_limit(tmp_path: Path) -> None:
    home = make_home(tmp_path, "n")
    network_config(home, dht_provides_per_pass=0)
    out = run_fednode(home, "daemon", "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0", check=False, timeout=60)
    assert out.returncode == 1
    assert "dht_provides_per_pass must be an integer >= 1" in out.stderr and "Traceback" not in out.stderr


def test_a_peer_that_dials_the_owner_gets_its_state_records(tmp_path: Path) -> None:
    """The owner dials nobody: alone, it records its states locally (a peer dialling it can ask it); the
    DHT node that dials it gets them provided (inbound connections announce too)."""
    home = make_home(tmp_path, "owner")
    w = np.random.default_rng(8).standard_normal(5000).astype(np.float32)
    run_fednode(home, "repo", "create", "demo", "--public", "--from", write_model(tmp_path / "m.safetensors",
                                                                                  {"w": ("F32", w)}))
    state = _show(home, "main")["w"]["state"]
    a = DaemonProc(home).start()
    b = DaemonProc(make_home(tmp_path, "dht"), (a.addr,))
    with daemons(a, b):
        wait_for(lambda: any(e["event"] == "dht_provide_pass" and e["local"] > 0 for e in a.log_events()), 15,
                 "the owner to record its states locally")
        assert not _provided(a, f"state {state}")  # nobody to send them to yet
        b.start()
        wait_for(lambda: _provided(a, f"state {state}"), 15, "the owner to provide to the peer that dialled it")
        assert [p["peer_id"] for p in b.api("POST", "/providers", {"cid": state})] == [a.peer_id]
        assert not any(e["event"] == "dht_provided" for e in b.log_events())  # B holds nothing to provide


def test_helia_asking_the_owner_itself_finds_it(tmp_path: Path) -> None:
    """The owner is the Helia node's one DHT server: it answers GET_PROVIDERS from its local records."""
    check_installed()
    home = make_home(tmp_path, "owner")
    w = np.random.default_rng(9).standard_normal(100_000).astype(np.float32)
    run_fednode(home, "repo", "create", "demo", "--public", "--from", write_model(tmp_path / "m.safetensors",
                                                                                  {"w": ("F32", w)}))
    state = _show(home, "main")["w"]["state"]
    with daemons(DaemonProc(home).start()) as (a,):
        wait_for(lambda: any(e["event"] == "dht_provide_pass" for e in a.log_events()), 15, "a first provide pass")
        got = helia_find(_with_p2p(a), state, tmp_path / "helia.bin", timeout=45)
        assert got["ok"] is True and got["providers"] == [a.peer_id], got
        assert (tmp_path / "helia.bin").read_bytes() == w.tobytes()


def test_a_published_repository_gets_its_states_provided(tmp_path: Path) -> None:
    """Private: its states are not wanted; once its owner publishes it, they are (read from the refs each pass)."""
    (node,) = open_nodes(make_home(tmp_path, "n"))
    try:
        info, _ = node.history.create_repo("later", ArraySource(model_arrays(2)))
        d = discovery.Discovery(node.store, NetState(node.store), None, None, None)  # type: ignore[arg-type]
        assert not [w for w in d.wanted() if w.what.startswith("state ")]
        node.history.publish(info)
        states = [w for w in d.wanted() if w.what.startswith("state ")]
        assert len(states) == len(model_arrays(2))
    finally:
        node.close()


def test_provider_records_others_store_with_us_are_bounded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """py-libp2p's provider store bounds ADD_PROVIDERs per peer and providers per key, not keys: past
    MAX_PROVIDER_KEYS the oldest keys others stored are forgotten, ours kept. A real KadDHT's store."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    from fednode.daemon.host import build_host

    monkeypatch.setattr(discovery, "MAX_PROVIDER_KEYS", 5)
    host = build_host(create_new_key_pair())
    dht = KadDHT(host, DHTMode.SERVER)
    d = discovery.Discovery(None, None, host, None, None)  # type: ignore[arg-type]
    d.start(dht)
    other = PeerInfo(ID.from_pubkey(create_new_key_pair().public_key), [Multiaddr("/ip4/127.0.0.1/tcp/1")])
    keys = [bytes([i]) * 32 for i in range(8)]
    dht.provider_store.add_provider(keys[0], PeerInfo(host.get_id(), [Multiaddr("/ip4/127.0.0.1/tcp/2")]))  # ours
    for key in keys[1:]:
        dht.provider_store.add_provider(key, other)
    assert d.prune_records() == 3
    assert list(dht.provider_store.providers) == [keys[0], *keys[4:]]  # ours, and the newest of others'
    assert d.prune_records() == 0


async def test_a_failing_dht_lookup_leaves_the_fetch_to_its_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup `ipfs get` makes after a second without blocks may fail (no routing table, a
    broken peer): that is logged, and the fetch goes on with the peers it has."""
    import io

    from fednode import logs
    from fednode.daemon import bitswap
    from protocol.multiformats import CID, RAW

    logged = io.StringIO()
    monkeypatch.setattr(logs, "_out", logged)
    monkeypatch.setattr(bitswap, "FIND_AFTER", 0.01)
    wants = bitswap._Wants(handle=None, asked=[])  # type: ignore[arg-type]
    wants.outstanding.append(CID.hash(RAW, b"x"))

    async def broken() -> list:  # type: ignore[type-arg]
        raise RuntimeError("no peer in the routing table")

    with trio.fail_after(5):
        await wants.find_later(broken)  # returns: nothing raised into the fetch
    assert wants.asked == []
    assert [json.loads(line)["event"] for line in logged.getvalue().splitlines()] == ["dht_lookup_failed"]
