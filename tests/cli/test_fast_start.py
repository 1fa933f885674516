"""Fast start (issue 11, item 14): commands that neither train nor merge import no heavy module.

Timing is for ``bench/bench_start.py``; this test guards the cause instead: which modules a command
loads. numpy alone takes about 0.14 s to import here, trio 0.08 s, solana/libp2p/torch far more.
Each command runs in a fresh interpreter, through the real click group, on a real home.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, model_arrays, run_fednode, write_model

HEAVY = ("numpy", "torch", "trio", "libp2p", "solana", "py_ecc", "httpx", "safetensors", "rich.progress")
PROBE = """
import sys
from cli.app import main
try:
    main(sys.argv[1:], prog_name="fednode", standalone_mode=False)
except SystemExit:
    pass
print("LOADED=" + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fast")
    home = tmp / "home"
    run_fednode(home, "init")
    run_fednode(home, "repo", "create", "r", "--from", write_model(tmp / "m.safetensors", model_arrays(0)))
    return home


@pytest.mark.parametrize("args", [["--version"], ["log"], ["log", "--oneline", "--all"], ["show", "HEAD"],
                                  ["status"], ["branch"], ["repo", "list"], ["-h"], ["chain", "-h"]])
def test_everyday_commands_import_no_heavy_module(home: Path, args: list[str]) -> None:
    env = {**os.environ, "FEDNODE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("LOADED=")]
    assert loaded, proc.stdout + proc.stderr
    assert loaded[-1] == "LOADED=", f"fednode {' '.join(args)} imported {loaded[-1][7:]}"
    assert "Traceback" not in proc.stderr


def test_numpy_loads_on_first_use_and_once(home: Path) -> None:
    """The stand-in hands out the real numpy's attributes and imports it once, thread-safely."""
    code = (
        "import sys, threading\n"
        "from fednode import history\n"
        "from fednode.tensors import fixedpoint\n"
        "assert 'numpy' not in sys.modules\n"
        "out = []\n"
        "def use():\n"
        "    out.append(fixedpoint.np.float32(1.5) * 2)\n"
        "ts = [threading.Thread(target=use) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "import numpy\n"
        "assert out == [3.0] * 8 and fixedpoint.np.ndarray is numpy.ndarray\n"
        "assert history.np.frombuffer is numpy.frombuffer\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_commands_that_ask_the_daemon_load_only_its_client(home: Path, tmp_path: Path) -> None:
    """``ipfs get`` (like ``members``, ``pin``) talks to the daemon through ``api_client``, which loads
    nothing of the daemon itself (importing ``fednode.daemon.api`` for the token file's name once
    cost each such command 1.3 s: the daemon's routes, libp2p, solana). A daemon.json naming a live
    pid (this test's) and a port nobody listens on: the command fails to reach it, after its imports."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (home / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "api_port": port}))
    (home / "api.token").write_text("t")
    (home / "api.token").chmod(0o600)
    try:
        heavy = ("fednode.daemon.api", "fednode.daemon.service", "libp2p", "solana", "torch", "py_ecc")
        env = {**os.environ, "FEDNODE_HOME": str(home)}
        cid = "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"
        args = ["ipfs", "get", cid, "--out", str(tmp_path / "out.bin")]
        proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=heavy), *args], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=60)
    finally:
        (home / "daemon.json").unlink()
        (home / "api.token").unlink()
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("LOADED=")]
    assert loaded, proc.stdout + proc.stderr
    assert loaded[-1] == "LOADED=", loaded[-1]
    assert "does not answer" in proc.stdout + proc.stderr
