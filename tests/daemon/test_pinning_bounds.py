"""What a broken or hostile Kubo or pinning service can make the pin queue do, and bad pin input.

Against the faithful local fakes of tests/daemon/kubo_fake.py (real HTTP on 127.0.0.1): a request
whose URL the HTTP client refuses no longer holds up the requests queued after it; a Kubo that
trickles its answer or sends a huge one is cut off; a service that keeps a pin "queued" is asked
less and less often and the request fails after ``pin_pending_seconds``; error texts with terminal
escapes are stored harmless; the queue is bounded; URLs and the token file are checked before
anything is queued.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio
from helpers import assert_cli_refuses, model_arrays, perturb, write_model
from kubo_fake import FakeKubo, FakePinningService
from test_pinning import ADDR, _public_repo, _queue_of, _use_service

from fednode.daemon import pinning
from fednode.daemon.kubo import MAX_ANSWER, KuboClient, KuboError, parse_json
from fednode.daemon.pinning import PinWorker
from fednode.node import open_node
from fednode.storage import pinqueue


async def test_a_request_no_client_can_send_fails_alone_and_the_next_is_pinned(cli, home: Path, tmp_path: Path,
                                                                              kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    cli("pin", "main", "--kubo", kubo.url)
    cli("pin", "main~1", "--kubo", kubo.url)
    with open_node(home) as node:
        first = _queue_of(node)[0]
        first.kubo = "http://x:abc"  # as queued by an older fednode, which did not check ports
        with node.store.write() as txn:
            pinqueue.save(txn, first)
        worker = PinWorker(node.store, lambda: [ADDR], max_attempts=2, retry_base=0.01)
        await worker.run_once()
        first, second = _queue_of(node)
        assert first.state == "queued" and first.attempts == 1 and "abc" in (first.error or "")
        assert second.state == "pinned"  # not held up behind the first
        await trio.sleep(0.05)
        await worker.run_once()
        first, _ = _queue_of(node)
    assert first.state == "failed" and "gave up after 2 attempts" in (first.error or "")


async def test_any_error_counts_as_an_attempt(cli, home: Path, tmp_path: Path, kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    cli("pin", "main", "--kubo", kubo.url)

    def broken(url: str) -> KuboClient:
        raise RecursionError("a deeply nested answer")

    with open_node(home) as node:
        await PinWorker(node.store, lambda: [ADDR], client=broken).run_once()
        (req,) = _queue_of(node)
    assert req.state == "queued" and req.attempts == 1 and req.error == "RecursionError: a deeply nested answer"


async def test_a_trickling_or_huge_answer_is_cut_off(kubo: FakeKubo) -> None:
    client = KuboClient(kubo.url, timeout=1.0)
    assert (await client.version()) == "0.29.0"
    kubo.drip = True
    t0 = time.monotonic()
    with pytest.raises(KuboError, match="no whole answer within 1 s"):
        await client.version()
    assert time.monotonic() - t0 < 5  # httpx's own read timeout alone waited forever: a byte every 0.1 s
    kubo.drip, kubo.huge = False, True
    with pytest.raises(KuboError, match=f"an answer over {MAX_ANSWER} bytes"):
        await client.version()
    kubo.huge = False
    kubo.fail["version"], kubo.message = 1, "x" * 100_000  # a long error text: cut short
    with pytest.raises(KuboError, match="HTTP 500: xxx") as err:
        await client.version()
    assert len(str(err.value)) < 300
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # as py_ecc sets it in a daemon: json.loads then overflows the C stack
    try:
        assert parse_json(b"[" * 100_000) is None  # refused by its depth: no answer, no crash
    finally:
        sys.setrecursionlimit(limit)


async def test_error_texts_are_stored_without_control_characters(cli, home: Path, tmp_path: Path,
                                                                 kubo: FakeKubo) -> None:
    _public_repo(cli, tmp_path)
    cli("pin", "main", "--kubo", kubo.url)
    kubo.fail["pin/add"], kubo.message = 1, "\x1b[2Jcleared\x07"
    with open_node(home) as node:
        await PinWorker(node.store, lambda: [ADDR]).run_once()
        (req,) = _queue_of(node)
    assert req.error is not None and "?[2Jcleared?" in req.error and "\x1b" not in req.error
    assert "\x1b" not in cli("pin", "--status").stdout


async def test_a_pin_the_service_never_finishes_fails_after_the_limit(cli, home: Path, tmp_path: Path) -> None:
    service = FakePinningService("s3cret")
    try:
        _public_repo(cli, tmp_path)
        _use_service(home, tmp_path, service.url, extra="pin_retry_seconds = 0.01\npin_pending_seconds = 0.5\n")
        cli("pin", "main", "--service")
        service.stuck = True
        with open_node(home) as node:
            worker = PinWorker.from_config(node.history, lambda: [ADDR], node.config)
            gaps = []
            deadline = time.monotonic() + 10
            while _queue_of(node)[0].state == "queued" and time.monotonic() < deadline:
                await worker.run_once()
                req = _queue_of(node)[0]
                gaps.append(req.next_at - time.time())
                await trio.sleep(max(0.0, req.next_at - time.time()) + 0.01)
            (req,) = _queue_of(node)
    finally:
        service.down()
    assert req.state == "failed" and req.error == "the pinning service has not pinned it in 0.5 s"
    assert req.attempts == 0
    assert req.polls >= 3 and gaps[2] > gaps[0]  # asked less and less often


def test_backoff_never_overflows() -> None:
    worker = PinWorker(None, lambda: [])  # type: ignore[arg-type]
    assert worker._backoff(1) == pinning.RETRY_BASE
    assert worker._backoff(2_000) == worker._backoff(10**9) == pinning.RETRY_MAX


def test_the_queue_is_bounded(cli, home: Path, tmp_path: Path, kubo: FakeKubo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _public_repo(cli, tmp_path)
    monkeypatch.setattr(pinqueue, "MAX_QUEUED", 1)
    cli("pin", "main", "--kubo", kubo.url)
    err = assert_cli_refuses(cli, home, "pin", "main~1", "--kubo", kubo.url, needles=("already holds 1 waiting",))
    assert err.count("\n") == 1 and len(json.loads(cli("pin", "--status", "--json").stdout)) == 1
    with open_node(home) as node:
        with node.store.write() as txn:
            for seq in (1, 2, 3):  # three finished requests: the oldest two go
                pinqueue.save(txn, pinqueue.PinRequest(seq + 10, kubo.url, "00", f"c{seq}", [], state="pinned"))
            assert pinqueue.prune(txn, keep=1) == 2
        assert [(r.seq, r.state) for r in _queue_of(node)] == [(1, "queued"), (13, "pinned")]


@pytest.mark.parametrize(("url", "why"), [
    ("http://x:abc", "Port could not be cast"),
    ("http://" + "a" * 300, "is no host name"),
    ("http://127.0.0.1:5001?x=1", "no ?query"),
    ("http://h\u00e9.example", "printable ASCII"),
])
def test_urls_clients_would_refuse_are_refused_before_queueing(cli, home: Path, tmp_path: Path, url: str,
                                                                why: str) -> None:
    _public_repo(cli, tmp_path)
    assert_cli_refuses(cli, home, "pin", "main", "--kubo", url, needles=(why,))
    assert "no pin requests" in cli("pin", "--status").stdout


def test_the_service_token_and_url_are_checked_before_queueing(cli, home: Path, tmp_path: Path) -> None:
    _public_repo(cli, tmp_path)
    token = tmp_path / "token"
    config = home / "config.toml"
    original = config.read_text()
    config.write_text(original + f'\n[ipfs]\npinning_service = "http://127.0.0.1:1"\n'
                                 f'pinning_service_token_file = "{token}"\n')
    assert_cli_refuses(cli, home, "pin", "main", "--service", needles=("cannot read the pinning service token",))
    token.write_text("s3cret\n")
    token.chmod(0o644)
    assert_cli_refuses(cli, home, "pin", "main", "--service", needles=("readable by others", "chmod 600"))
    token.chmod(0o600)
    token.write_text("s3 cret\n")
    err = assert_cli_refuses(cli, home, "pin", "main", "--service", needles=("the first line is no token",))
    assert "s3" not in err  # never the token itself
    assert "no pin requests" in cli("pin", "--status").stdout
    # a token crosses the network only over https
    config.write_text(original + f'\n[ipfs]\npinning_service = "http://pins.example.com"\n'
                                 f'pinning_service_token_file = "{token}"\n')
    assert_cli_refuses(cli, home, "pin", "--status", needles=("[ipfs] pinning_service must be an https URL",))


def test_auto_pin_passes_over_a_head_it_cannot_pin(cli, home: Path, tmp_path: Path, kubo: FakeKubo,
                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fednode.errors import FednodeError
    from fednode.workflows import pinning as wp

    base = model_arrays(1)
    merged = {}
    for name in ("a", "b"):
        cli("repo", "create", name, "--public", "--from", write_model(tmp_path / "g.safetensors", base))
        for i, branch in enumerate(("h1", "h2")):
            cli("branch", branch, "main", "-r", name)
            update = write_model(tmp_path / f"{branch}.safetensors", perturb(base, 10 + i))
            cli("commit", name, "--from", update, "-m", "local", "-b", branch)
        cli("switch", "main", "-r", name)
        merged[name] = json.loads(cli("merge", "h1", "h2", "-r", name, "--weights", "equal", "--json").stdout)["cid"]
    real = wp.targets

    def broken_a(history, repo, cid):  # type: ignore[no-untyped-def]
        if repo.name == "a":
            raise FednodeError("tensor 'w' records no state CID: nothing to pin")
        return real(history, repo, cid)

    monkeypatch.setattr(wp, "targets", broken_a)
    skipped: set[str] = set()
    with open_node(home) as node:
        got = wp.auto_pin(node.history, kubo.url, skipped)  # before: the error ended the scan, every 5 s
        assert [r.commit for r in got] == [merged["b"]] and skipped == {merged["a"]}
        assert wp.auto_pin(node.history, kubo.url, skipped) == []  # passed over, not tried again


async def test_a_crash_after_posting_a_pin_does_not_post_it_twice(cli, home: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fednode.daemon.pinsvc import PinningService

    service = FakePinningService("s3cret")
    try:
        _public_repo(cli, tmp_path)
        _use_service(home, tmp_path, service.url, extra="pin_retry_seconds = 0.01\n")
        req = json.loads(cli("pin", "main", "--service", "--json").stdout)
        states = [c for c, r in req["targets"] if r]
        real_add = PinningService.add

        async def add_then_die(self, cid, name, origins):  # type: ignore[no-untyped-def]
            await real_add(self, cid, name, origins)
            raise RuntimeError("killed before the requestid was recorded")

        with open_node(home) as node:
            worker = PinWorker.from_config(node.history, lambda: [ADDR], node.config)
            monkeypatch.setattr(PinningService, "add", add_then_die)
            await worker.run_once()  # the service holds the first pin; we recorded no requestid
            assert len(service.posts) == 1 and _queue_of(node)[0].posting == [states[0]]
            monkeypatch.setattr(PinningService, "add", real_add)
            deadline = time.monotonic() + 10
            while _queue_of(node)[0].state == "queued" and time.monotonic() < deadline:
                await trio.sleep(0.05)
                await worker.run_once()
            (done,) = _queue_of(node)
    finally:
        service.down()
    assert done.state == "pinned" and done.posting == [] and sorted(done.done) == sorted(states)
    assert [p["cid"] for p in service.posts] == states  # each posted once: the first found, not posted again


def test_a_sealed_pin_that_cannot_be_queued_stores_nothing(cli, home: Path, tmp_path: Path, kubo: FakeKubo,
                                                           monkeypatch) -> None:  # type: ignore[no-untyped-def]
    base = model_arrays(1)
    cli("repo", "create", "secret", "--from", write_model(tmp_path / "a.safetensors", base))
    monkeypatch.setattr(pinqueue, "MAX_QUEUED", 0)  # the queue is full
    assert_cli_refuses(cli, home, "pin", "main", "--sealed", "--kubo", kubo.url, needles=("already holds 0",))
    assert json.loads(cli("ipfs", "pins", "--json").stdout) == []  # before: the backup stayed, pinned


async def test_a_malformed_or_lying_pin_listing_is_not_believed() -> None:
    """``PinningService.find`` (the listing read after a crash) against answers of the wrong shape."""
    from fednode.daemon.kubo import PinMismatch
    from fednode.daemon.pinsvc import PinningService
    from protocol.multiformats import CID, RAW

    service = FakePinningService("s3cret")
    cid = CID.hash(RAW, b"pinned")
    other = CID.hash(RAW, b"something else")
    status = {"requestid": "r1", "status": "pinned", "created": "2026-12-05T00:00:00Z", "pin": {"cid": str(cid)},
              "delegates": []}
    try:
        svc = PinningService(service.url, "s3cret", timeout=5)
        for listing in ({"count": 1, "results": "not a list"}, {"count": 1, "results": []},
                        {"count": 1, "results": [["nested"]]}, {"results": [7]}, {"count": 0}):
            service.listing = listing
            assert await svc.find(cid, "fednode x") is None  # no pin found: a POST follows
        service.listing = {"count": 1, "results": [{**status, "pin": {"cid": str(other)}}]}
        with pytest.raises(PinMismatch):  # about another CID: a lying service
            await svc.find(cid, "fednode x")
        for rid in ("../pins", "a b", "x" * 300, "", 7):
            service.listing = {"count": 1, "results": [{**status, "requestid": rid}]}
            with pytest.raises(KuboError, match="not a PinStatus"):  # it would go into a URL path
                await svc.find(cid, "fednode x")
        service.listing = {"count": 1, "results": [status]}
        assert await svc.find(cid, "fednode x") == ("r1", "pinned")
    finally:
        service.down()
