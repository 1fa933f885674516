"""Every failure the CLI meets is one line on stderr and a non-zero exit, never a traceback or a
signal: a table of real broken situations, each run through the real console script."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, model_arrays, run_fednode
from test_store_full import fill, small_fs

from cli.app import main as cli_main
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource
from fednode.workflows import checkout as checkout_workflow

OTHER_UID = 12345

# a case: (home with repository "m", tmp dir, exit stack) -> (home to use, CLI args, words the line must hold)
Case = Callable[[Path, Path, ExitStack], tuple[Path, list[str], tuple[str, ...]]]


def out_below_a_file(home: Path, tmp: Path, _: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    (tmp / "afile").write_text("x")
    out = str(tmp / "afile" / "x.safetensors")
    return home, ["checkout", "main", "-r", "m", "--out", out], ("afile is not a directory",)


def out_in_proc(home: Path, tmp: Path, _: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    return home, ["checkout", "main", "-r", "m", "--out", "/proc/fednode-test.safetensors"], ("cannot write /proc/",)


def out_is_a_directory(home: Path, tmp: Path, _: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    (tmp / "model.safetensors").mkdir()  # --out DIR writes DIR/model.safetensors: here a directory
    return home, ["checkout", "main", "-r", "m", "--out", str(tmp)], ("is a directory",)


def store_is_a_file(home: Path, tmp: Path, _: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    shutil.rmtree(home / "store")
    (home / "store").write_text("not a store")
    return home, ["log", "m"], ("store", "not a directory")


def corrupt_page_headers(home: Path, tmp: Path, _: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    env = lmdb.open(str(home / "store"), readonly=True, max_dbs=16)
    last, psize = env.info()["last_pgno"], env.stat()["psize"]
    env.close()
    with open(home / "store" / "data.mdb", "r+b") as fh:
        for page in range(2, last + 1):  # every page but the two meta pages
            fh.seek(page * psize)
            fh.write(b"\xff" * 16)
    return home, ["log", "m"], ("damaged",)


def init_on_a_full_disk(home: Path, tmp: Path, stack: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    mnt = stack.enter_context(small_fs(tmp, "4m"))
    fill(mnt, 0)  # (a disk with a little room left, too little for the store: test_store_full.py)
    return mnt / "home", ["init"], ("cannot write keypair", "no space left")


def home_of_another_user(home: Path, tmp: Path, _: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    os.chown(home, OTHER_UID, -1)
    return home, ["id"], ("owned by another user", f"uid {OTHER_UID}")


def key_of_another_user(home: Path, tmp: Path, _: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    os.chown(home / "keypair.json", OTHER_UID, -1)
    return home, ["log", "m"], ("keypair.json is owned by another user", "chown")


def daemon_api_port_taken(home: Path, tmp: Path, stack: ExitStack) -> tuple[Path, list[str], tuple[str, ...]]:
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    args = ["daemon", "--api-port", str(sock.getsockname()[1]), "--listen", "/ip4/127.0.0.1/tcp/0",
            "--log-file", str(tmp / "daemon.log")]
    return home, args, ("address already in use",)  # raised in a trio task: inside an exception group


CASES: list[Case] = [out_below_a_file, out_in_proc, out_is_a_directory, store_is_a_file, corrupt_page_headers,
                     init_on_a_full_disk, home_of_another_user, key_of_another_user, daemon_api_port_taken]


@pytest.fixture
def repo_home(home: Path) -> Path:
    with open_node(home) as node:
        node.history.create_repo("m", ArraySource(model_arrays(0)))
    return home


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_one_line_error(case: Case, repo_home: Path, tmp_path: Path) -> None:
    if case in (home_of_another_user, key_of_another_user) and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    with ExitStack() as stack:
        home, args, needles = case(repo_home, tmp_path, stack)
        proc = run_fednode(home, *args, check=False)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)  # not a signal, not a crash
        assert_one_line_error(proc.stderr, *needles)


def test_a_bug_of_ours_is_one_line_unless_debugging(repo_home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> int:
        raise KeyError("boom")

    monkeypatch.setattr(checkout_workflow, "checkout", broken)
    args = ["--home", str(repo_home), "checkout", "main", "-r", "m", "--out", str(tmp_path / "x.safetensors")]
    monkeypatch.delenv("FEDNODE_DEBUG", raising=False)
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 2 and not isinstance(result.exception, KeyError)
    assert_one_line_error(result.stderr, "unexpected KeyError", "FEDNODE_DEBUG=1")
    monkeypatch.setenv("FEDNODE_DEBUG", "1")
    assert isinstance(CliRunner().invoke(cli_main, args).exception, KeyError)  # the traceback, for us
