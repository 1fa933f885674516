"""Files and answers from outside that once crashed, hung or misled: each now a one-line error.

Found by an audit of the CLI's input files and the local API (2026-12-05). The recursion limit is
raised as py_ecc raises it in a running node: then a parser that recurses per nesting level
overflows the C stack (a segmentation fault, not an exception) unless the depth is checked first.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fednode import safejson
from fednode.errors import FednodeError, first_line
from protocol.multiformats import FormatError


@pytest.fixture
def deep_recursion() -> Iterator[None]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def _utf16_nest(n: int) -> bytes:
    """Valid JSON, nested ``n`` deep, in UTF-16-LE: U+2200 is the bytes 00 22, a quote to a byte scanner."""
    return ('["\u2200",' + "[" * n + "]" * n + ',"x"]').encode("utf-16-le")


def test_safejson_measures_the_text_it_parses(deep_recursion: None) -> None:
    payload = _utf16_nest(200_000)
    with pytest.raises(ValueError):  # before: depth 1 measured, then json.loads recursed (139: SIGSEGV)
        safejson.loads(payload)
    with pytest.raises(ValueError):  # not UTF-8 at all: refused, never guessed
        safejson.loads(b"\xff\xfe" + payload)
    assert safejson.loads('{"a": ["\u2200"]}'.encode()) == {"a": ["\u2200"]}


def test_a_safetensors_header_in_utf16_is_refused(deep_recursion: None) -> None:
    from fednode.tensors.modelio import parse_header

    with pytest.raises(FednodeError, match="is not a safetensors file"):
        parse_header(_utf16_nest(200_000), 0, "m.safetensors")


def test_a_keypair_file_that_is_deep_or_huge_is_one_line(tmp_path: Path, deep_recursion: None) -> None:
    from fednode.identity import MAX_KEYPAIR_FILE, Identity

    for name, raw in (("deep.json", b"[" * 200_000), ("huge.json", b" " * (MAX_KEYPAIR_FILE + 1) + b"[]")):
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(FednodeError, match="invalid keypair file"):
            Identity.load(tmp_path / name)


def test_an_empty_or_truncated_torch_file_is_one_line(tmp_path: Path) -> None:
    from fednode.tensors.modelio import open_model

    for name, raw in (("empty.pt", b""), ("cut.pt", b"\x80\x02")):
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(FednodeError, match="is not a PyTorch state_dict: "):  # before: IndexError
            open_model(tmp_path / name)


def test_first_line_of_an_error() -> None:
    assert first_line(EOFError("")) == "EOFError"
    assert first_line(ValueError("\x1b[1mbold\x1b[0m and\x07 more\nsecond line")) == "bold and? more"
    assert len(first_line(ValueError("x" * 1000))) == 300


def test_the_api_token_file(tmp_path: Path) -> None:
    from fednode.daemon.api import ensure_token
    from fednode.daemon.pidfile import TOKEN_FILE

    token = ensure_token(tmp_path)
    path = tmp_path / TOKEN_FILE
    assert len(token) > 30 and path.read_text() == token and path.stat().st_mode & 0o777 == 0o600
    assert ensure_token(tmp_path) == token  # kept
    path.write_text("  \n")  # emptied by a crash of an older version: no request could ever match
    fresh = ensure_token(tmp_path)
    assert fresh.strip() and fresh != token and path.read_text() == fresh
    path.chmod(0o644)
    with pytest.raises(FednodeError, match="readable by others"):
        ensure_token(tmp_path)


def test_the_cli_sends_no_token_to_a_dead_daemons_port(tmp_path: Path) -> None:
    from fednode.daemon.api import ensure_token
    from fednode.daemon.api_client import Client
    from fednode.daemon.process import DAEMON_FILE

    ensure_token(tmp_path)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)  # a pid that is gone, as after a SIGKILL that left daemon.json behind
    (tmp_path / DAEMON_FILE).write_text(json.dumps({"pid": dead, "api_port": 9}))
    with pytest.raises(FednodeError, match="no daemon is running"):
        Client(tmp_path)
    (tmp_path / DAEMON_FILE).write_text(json.dumps({"pid": os.getpid(), "api_port": 9}))
    assert Client(tmp_path).base == "http://127.0.0.1:9"  # a live pid: used


def test_a_sealed_header_with_a_huge_reader_address_is_refused_at_once() -> None:
    from fednode.workflows.sealedcar import Header
    from protocol import dagcbor

    raw = dagcbor.encode({"repo_tag": bytes(32), "chunk": 1024, "readers": {"1" * 1_000_000: bytes(80)}})
    start = time.perf_counter()
    with pytest.raises(FormatError, match="not a wallet address"):
        Header.decode(raw)
    assert time.perf_counter() - start < 1  # before: base58 decoding, quadratic: minutes for 1 MB


def test_a_param_value_nested_deeply_stays_a_string(deep_recursion: None) -> None:
    from cli.context import parse_params

    deep = "[" * 200_000
    assert parse_params((f"x={deep}", "y=[1, 2]")) == {"x": deep, "y": [1, 2]}


def test_a_manifest_no_peer_could_take_is_refused_and_nothing_stored(cli, home: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A model of ~15,000 tensors made a manifest over the largest block peers, Kubo and CAR imports
    take: it committed, and its export could not be imported. Here the bound is lowered instead."""
    from helpers import assert_cli_refuses, model_arrays, write_model

    from fednode.history import objstore

    monkeypatch.setattr(objstore, "MAX_OBJECT_BYTES", 300)
    model = write_model(tmp_path / "m.safetensors", model_arrays(0))
    assert_cli_refuses(cli, home, "repo", "create", "r", "--from", model,
                       needles=("manifest would take", "too many for one commit"))


def test_the_store_is_private_whatever_the_homes_mode(tmp_path: Path) -> None:
    from fednode.storage.store import Store

    store = Store(tmp_path / "s", sync=False)
    store.close()
    for name in ("data.mdb", "lock.mdb"):  # before: 0644 under the umask, readable through a 0755 home
        assert (tmp_path / "s" / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    (tmp_path / "s" / "data.mdb").chmod(0o644)  # an older store, or a careless chmod
    Store(tmp_path / "s", sync=False).close()
    assert (tmp_path / "s" / "data.mdb").stat().st_mode & 0o777 == 0o600
