"""The trustless gateway (fednode/daemon/gateway.py) of a real daemon, asked over real HTTP.

One daemon (module fixture) holds a private repository and a public one (each a snapshot, then an
xor delta) and a file added with ``ipfs add``; its gateway listens on 127.0.0.1 (port 0, read back
from /status). Checked: raw blocks and their headers; CARs (dag-scope block, entity, all) read by
our reader and by npm's @ipld/car (tests/workflows/car_interop.mjs); a delta-stored state served
as raw and as a CAR; Helia's trustless-gateway block broker reassembling a file
(gateway_helia.mjs); every error status; every CID of the private repository answered 404; the
daemon stopping cleanly. A second daemon shows the per-client rate limit (429).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProc, daemons, make_home, open_nodes
from helia_node import check_installed
from helpers import ROOT, model_arrays, perturb, run_fednode

from fednode.daemon.gateway import gateway_config
from fednode.errors import FednodeError
from fednode.node import DEFAULT_CONFIG, parse_config
from fednode.tensors.modelio import ArraySource, np_dtype
from fednode.workflows.ipfsfiles import add_file
from protocol import car, dag
from protocol.multiformats import CID, RAW
from protocol.objects import TensorEntry
from protocol.unixfs import iter_file

RAW_TYPE, CAR_TYPE = "application/vnd.ipld.raw", "application/vnd.ipld.car"
Reply = tuple[int, dict[str, str], bytes]


def get(port: int, target: str, accept: str | None = None, method: str = "GET",
        headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, headers={**({"Accept": accept} if accept else {}), **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def enable_gateway(home: Path, **values: object) -> None:
    config = home / "config.toml"
    extra = "".join(f"\n{k} = {v!r}" for k, v in values.items())
    config.write_text(config.read_text().replace('listen = ""', 'listen = "127.0.0.1:0"' + extra, 1))


def closure(txn, roots: list[CID]) -> list[CID]:
    seen: dict[CID, None] = {}
    stack = list(roots)
    while stack:
        cid = stack.pop()
        if cid not in seen:
            seen[cid] = None
            stack.extend(dag.links(cid, txn.get_block(cid)))
    return list(seen)


def states(node, repo_id: bytes) -> dict[str, TensorEntry]:
    """The head commit's manifest entries (their ``state`` CIDs are what ``show`` prints)."""
    from fednode.history import objstore
    with node.store.read() as txn:
        head = CID.from_bytes(txn.get_ref(repo_id, "heads/main"))
        commit = objstore.load_commit(txn, head)
        return dict(objstore.load_manifest(txn, commit.weights).tensors)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("gateway")
    home = make_home(tmp, "owner")
    enable_gateway(home)
    (node,) = open_nodes(home)
    try:
        base = model_arrays(0)
        secret, _ = node.history.create_repo("secret", ArraySource(base))  # private: the default
        node.history.commit(secret, ArraySource(perturb(base, 1)), "round 1")
        public, _ = node.history.create_repo("open", ArraySource(model_arrays(7)), visibility="public")
        node.history.commit(public, ArraySource(perturb(model_arrays(7), 2)), "round 1")
        (tmp / "file.bin").write_bytes(np.random.default_rng(3).bytes(1 << 20))  # four distinct leaves and a root
        file_cid, _ = add_file(node.store, tmp / "file.bin")
        (tmp / "big.bin").write_bytes(np.random.default_rng(5).bytes(16 << 20))  # 64 leaves: Helia asks in parallel
        big_cid, _ = add_file(node.store, tmp / "big.bin")
        with node.store.read() as txn:
            heads = {r.repo_id: CID.from_bytes(txn.get_ref(r.repo_id, "heads/main")) for r in (secret, public)}
            data = {"secret_blocks": closure(txn, [heads[secret.repo_id]]),
                    "public_blocks": closure(txn, [heads[public.repo_id]])}
        data.update(tmp=tmp, home=home, node=node, file=file_cid, file_bytes=(tmp / "file.bin").read_bytes(),
                    big=big_cid, big_bytes=(tmp / "big.bin").read_bytes(),
                    public_head=heads[public.repo_id], secret_head=heads[secret.repo_id],
                    public_states=states(node, public.repo_id), secret_states=states(node, secret.repo_id))
        d = DaemonProc(home).start()
        with daemons(d):
            data.update(daemon=d, port=d.api("GET", "/status")["gateway_port"])
            yield data
            assert d.stop() == 0  # the gateway stops with the daemon
    finally:
        node.close()


def test_raw_blocks_with_their_headers(served: dict) -> None:
    port, head = served["port"], served["public_head"]
    for target, accept in ((f"/ipfs/{head}", RAW_TYPE), (f"/ipfs/{head}?format=raw&", None),
                           (f"/ipfs/{head}?format=raw", "text/html"),  # format wins over Accept
                           (f"/ipfs/{head}", f"text/html, {RAW_TYPE};q=0.9")):
        status, headers, body = get(port, target, accept)
        assert status == 200, (target, body)
        assert head.digest == hashlib.sha256(body).digest()  # the client's own check: the bytes hash to the CID
        assert headers["content-type"] == RAW_TYPE and headers["x-content-type-options"] == "nosniff"
        assert "immutable" in headers["cache-control"] and headers["etag"] == f'"{head}.raw"'
        assert headers["content-length"] == str(len(body)) and headers["content-disposition"].startswith("attachment")
    status, headers, body = get(port, f"/ipfs/{head}", RAW_TYPE, method="HEAD")
    assert (status, body, headers["content-type"]) == (200, b"", RAW_TYPE)
    status, _, body = get(port, f"/ipfs/{head}", RAW_TYPE, headers={"If-None-Match": f'"{head}.raw"'})
    assert (status, body) == (304, b"")
    v0 = CID(0, served["file"].codec, served["file"].digest)  # the CIDv0 of ipfs add's root: the same block
    status, _, body = get(port, f"/ipfs/{v0}?format=car")
    assert status == 200 and car.read_car(body)[0] == [v0] and str(v0).startswith("Qm")
    for cid in served["public_blocks"] + [served["file"], v0]:  # every block of the public repository, and ipfs add's
        status, _, body = get(port, f"/ipfs/{cid}?format=raw")
        assert status == 200 and cid.verify(body), cid


def test_car_scopes_read_by_two_readers(served: dict) -> None:
    port, head, tmp = served["port"], served["public_head"], served["tmp"]
    status, headers, body = get(port, f"/ipfs/{head}", CAR_TYPE)  # dag-scope=all: the whole history
    assert status == 200, body
    assert headers["content-type"] == f"{CAR_TYPE}; version=1; order=dfs; dups=n"
    assert int(headers["content-length"]) == len(body) and headers["x-content-type-options"] == "nosniff"
    roots, sections = car.read_car(body)  # strict: every block hash-checked
    assert roots == [head] and [s.cid for s in sections][0] == head
    assert {s.cid for s in sections} == set(served["public_blocks"]) and len(sections) == len(served["public_blocks"])
    (tmp / "all.car").write_bytes(body)
    done = subprocess.run(["node", str(ROOT / "tests/workflows/car_interop.mjs"), "read", str(tmp / "all.car")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout)
    assert theirs["roots"] == [str(head)] and theirs["version"] == 1
    assert [b[0] for b in theirs["blocks"]] == [str(s.cid) for s in sections]
    assert all(hashlib.sha256(s.block).hexdigest() == b[1] for s, b in zip(sections, theirs["blocks"], strict=True))
    # block: the root only; entity of a commit (DAG-CBOR): the block; entity of a file: all of it
    for scope, root, expect in (("block", head, [head]), ("entity", head, [head]),
                                ("block", served["file"], [served["file"]])):
        status, _, body = get(port, f"/ipfs/{root}?format=car&dag-scope={scope}")
        assert status == 200 and [s.cid for s in car.read_car(body)[1]] == expect, scope
    status, _, body = get(port, f"/ipfs/{served['file']}?dag-scope=entity", CAR_TYPE)
    roots, sections = car.read_car(body)
    blocks = {s.cid: s.block for s in sections}
    assert len(sections) == 5 and b"".join(iter_file(blocks.__getitem__, served["file"])) == served["file_bytes"]
    status, headers, body = get(port, f"/ipfs/{head}?format=car", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_a_delta_stored_state_is_served_as_raw_and_as_car(served: dict) -> None:
    entries = served["public_states"]
    deltas = [e for e in entries.values() if e.encoding not in ("raw", "same")]
    assert deltas and deltas[0].state is not None, entries
    state, entry = deltas[0].state, deltas[0]
    status, _, body = get(served["port"], f"/ipfs/{state}?format=raw")
    assert status == 200 and state.verify(body)  # generated on demand: nothing in the store has this CID
    status, _, body = get(served["port"], f"/ipfs/{state}?format=car")
    assert status == 200, body
    blocks = {s.cid: s.block for s in car.read_car(body)[1]}
    nbytes = int(np.prod(entry.shape)) * np_dtype(entry.dtype).itemsize
    assert len(b"".join(iter_file(blocks.__getitem__, state))) == nbytes


def test_helia_reads_files_through_the_gateway(served: dict) -> None:
    """Helia with the trustless gateway block broker as its only way to blocks, default rate limits."""
    check_installed()
    out = served["tmp"] / "helia.bin"
    for cid, expected in ((served["file"], served["file_bytes"]), (served["big"], served["big_bytes"])):
        done = subprocess.run(["node", str(ROOT / "tests/daemon/gateway_helia.mjs"), str(served["port"]), str(cid),
                               str(out)], cwd=ROOT, capture_output=True, text=True, timeout=90)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines, done.stderr[-3000:]
        result = json.loads(lines[-1])
        assert result["ok"], result
        assert out.read_bytes() == expected and result["bytes"] == len(expected)


def test_connections_per_client_are_bounded(served: dict) -> None:
    """Eight idle connections from one IP hold all its slots: its ninth waits (is answered once they
    close); another client is answered at once."""
    port, head = served["port"], served["public_head"]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.3)  # all eight accepted
        request = f"GET /ipfs/{head}?format=raw HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        ninth = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        ninth.sendall(request)
        with pytest.raises(TimeoutError):
            ninth.recv(100)  # queued: no answer while the eight hold their slots
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)) as other:
            other.sendall(request)
            assert other.recv(100).startswith(b"HTTP/1.1 200 OK")
        for sock in idle:
            sock.close()
        ninth.settimeout(5)
        assert ninth.recv(100).startswith(b"HTTP/1.1 200 OK")
        ninth.close()
    finally:
        for sock in idle:
            sock.close()


def test_errors(served: dict) -> None:
    port, head = served["port"], served["public_head"]
    cases = [("/ipfs/not-a-cid?format=raw", None, 400, "bad CID"),
             (f"/ipfs/{head}?format=tar", None, 400, "unsupported format"),
             (f"/ipfs/{head}?format=car&dag-scope=some", None, 400, "dag-scope"),
             (f"/ipfs/{head}?format=car&entity-bytes=0:10", None, 400, "entity-bytes"),
             (f"/ipfs/{head}/path", RAW_TYPE, 400, "paths"),
             (f"/ipfs/{head}", None, 406, "Accept"),
             (f"/ipfs/{head}", "text/html, */*", 406, "Accept"),
             (f"/ipfs/{head}", f"{CAR_TYPE}; version=2", 406, "Accept"),
             (f"/ipfs/{head}", f"{RAW_TYPE};q=0", 406, "Accept"),
             (f"/ipfs/{CID.hash(RAW, b'held by nobody')}?format=raw", None, 404, "not held"),
             (f"/ipfs/{CID.hash(RAW, b'held by nobody')}?format=car", None, 404, "not held"),
             ("/ipns/example.com", RAW_TYPE, 404, "only /ipfs/"),
             (f"/ipfs/{head}?" + "&".join(f"p{i}=1" for i in range(17)), RAW_TYPE, 400, "query parameters")]
    for target, accept, status, needle in cases:
        got, headers, body = get(port, target, accept)
        assert got == status and needle in json.loads(body)["error"], (target, got, body)
        assert len(body.splitlines()) == 1
    got, headers, _ = get(port, f"/ipfs/{head}?format=raw", method="POST")
    assert got == 405 and headers["allow"] == "GET, HEAD"


def test_a_private_repository_is_not_served(served: dict) -> None:
    """Every block and every state of the private repository is a 404, as a block not held; the
    same requests for the public repository are served (the check is what refuses)."""
    port = served["port"]
    with served["node"].store.read() as txn:
        assert all(txn.has_block(cid) for cid in served["secret_blocks"])  # held, all of them
    states_ = [e.state for e in served["secret_states"].values() if e.state is not None]
    assert any(e.encoding not in ("raw", "same") for e in served["secret_states"].values())  # a generated state too
    for cid in served["secret_blocks"] + states_:
        for fmt in ("raw", "car"):
            status, _, body = get(port, f"/ipfs/{cid}?format={fmt}")
            assert status == 404 and "not held" in json.loads(body)["error"], (cid, fmt, status)


def test_car_size_bound_and_rate_limit_per_client(tmp_path: Path) -> None:
    home = make_home(tmp_path, "limited")
    enable_gateway(home, rate=0.2, burst=5, max_car_bytes=300_000)
    (tmp_path / "big.bin").write_bytes(np.random.default_rng(4).bytes(1 << 20))
    (node,) = open_nodes(home)
    try:
        big, _ = add_file(node.store, tmp_path / "big.bin")
    finally:
        node.close()
    with daemons(DaemonProc(home).start()) as (d,):
        port = d.api("GET", "/status")["gateway_port"]
        status, headers, body = get(port, f"/ipfs/{big}?format=car")  # 1 MiB: refused before any block is sent
        assert status == 413 and "larger than this gateway's limit of 300000 bytes" in json.loads(body)["error"]
        status, _, body = get(port, f"/ipfs/{big}?format=car&dag-scope=block")  # its root alone fits
        assert status == 200 and [s.cid for s in car.read_car(body)[1]] == [big]
        nobody = CID.hash(RAW, b"x")
        statuses = [get(port, f"/ipfs/{nobody}?format=raw")[0] for _ in range(3)]
        status, headers, body = get(port, f"/ipfs/{nobody}?format=raw")  # the sixth request within a second
        assert statuses == [404] * 3 and status == 429 and headers["retry-after"] == "1"
        assert "requests a second from 127.0.0.1" in json.loads(body)["error"]
        assert d.stop() == 0


def test_config_off_by_default_and_checked(tmp_path: Path) -> None:
    assert gateway_config(parse_config(DEFAULT_CONFIG.format(name="n"), "config.toml")) is None
    on = gateway_config({"gateway": {"listen": "8080"}})
    assert on is not None and (on.host, on.port) == ("127.0.0.1", 8080)  # a bare port: loopback only
    for bad in ('listen = "nope"', 'listen = 8080', "rate = 0", 'max_car_bytes = "1"'):
        with pytest.raises(FednodeError, match=r"\[gateway\]"):
            parse_config(f"[gateway]\n{bad}\n", "config.toml")
    home = make_home(tmp_path, "off")
    with daemons(DaemonProc(home).start()) as (d,):
        assert d.api("GET", "/status")["gateway_port"] is None


def test_a_taken_port_stops_the_daemon_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        home = make_home(tmp_path, "taken")
        config = home / "config.toml"
        config.write_text(config.read_text().replace('listen = ""', f'listen = "{sock.getsockname()[1]}"', 1))
        out = run_fednode(home, "daemon", "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0", check=False,
                          timeout=60)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if not line.startswith("{")]  # beside the JSON log lines
    assert len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith("error: cannot serve the gateway on 127.0.0.1:")
    assert "Address already in use" in errors[0] and "Traceback" not in out.stderr


async def test_a_car_walk_is_paid_for_as_it_goes(tmp_path: Path) -> None:
    """A CAR's plan walks the whole DAG before the 200 (its length, every block present), for a HEAD
    as for a GET: each WALK_STEP blocks walked cost the client one more request, so a client out of
    requests has its walk wait and its next request refused. In process: a real store and a real
    socket to the gateway (the daemon's own gateway tests are above)."""
    import trio

    from fednode.daemon.gateway import WALK_STEP, Gateway, GatewayConfig
    from fednode.storage.store import PUBLIC, Store
    from protocol.multiformats import DAG_PB
    from protocol.unixfs import Link, encode_node

    leaves = [b"leaf %d" % i for i in range(2 * WALK_STEP + 10)]
    links = [Link(CID.hash(RAW, leaf), len(leaf), len(leaf)) for leaf in leaves]
    node = encode_node(links, b"\x08\x02")  # a UnixFS file node
    root = CID.hash(DAG_PB, node)
    store = Store(tmp_path / "s", sync=False)
    with store.write() as txn:
        for link, leaf in zip(links, leaves, strict=True):
            txn.put_block(link.cid, leaf)
            txn.tag_block(link.cid, PUBLIC)
        txn.put_block(root, node)
        txn.tag_block(root, PUBLIC)

    async def request(port: int, method: str) -> tuple[int, float]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        await stream.send_all(f"{method} /ipfs/{root}?format=car HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        await stream.aclose()
        return int(data.split()[1]), trio.current_time() - start

    try:
        gateway = Gateway(store, GatewayConfig("127.0.0.1", 0, rate=1.0, burst=2.0))
        async with trio.open_nursery() as nursery:
            port = await nursery.start(gateway.serve)
            with trio.fail_after(20):
                status, took = await request(port, "HEAD")  # 1 request + 2 steps: 1 token short
                assert status == 200 and took >= 1.0 - 0.02, took  # 1 token at 1 a second
                assert (await request(port, "HEAD"))[0] == 429  # nothing left meanwhile
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_the_entity_of_a_directory_is_its_node_and_of_a_hamt_its_shards() -> None:
    """dag-scope=entity (the Trustless Gateway spec): a file's blocks; a plain directory's node alone;
    a HAMT-sharded directory's shards (what enumerating it takes), not the entries below them."""
    from fednode.daemon.gateway import _children
    from protocol.multiformats import DAG_PB, RAW
    from protocol.unixfs import DirEntry, _bytes_field, _field, encode_directory, encode_varint

    leaf = CID.hash(RAW, b"x")
    plain = encode_directory([DirEntry("a", leaf, 1)])
    assert _children(CID.hash(DAG_PB, plain), plain, "entity") == []
    assert _children(CID.hash(DAG_PB, plain), plain, "all") == [leaf]
    hamt = b"\x08\x05" + _field(5, 0) + encode_varint(0x22) + _field(6, 0) + encode_varint(256)
    sub = CID.hash(DAG_PB, b"a sub-shard")
    links = b"".join(_bytes_field(2, _bytes_field(1, bytes(c)) + _bytes_field(2, n) + _field(3, 0) + encode_varint(1))
                     for n, c in ((b"00entry", leaf), (b"7C", sub)))
    shard = links + _bytes_field(1, hamt)
    assert _children(CID.hash(DAG_PB, shard), shard, "entity") == [sub]
    assert _children(CID.hash(DAG_PB, shard), shard, "all") == [leaf, sub]
