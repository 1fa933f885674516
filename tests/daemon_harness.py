"""Harness for the daemon tests: real ``fednode daemon`` processes on 127.0.0.1 (no tests here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import forkserver
import httpx
import numpy as np
from helpers import ROOT
from solders.keypair import Keypair

from fednode.node import Node, init_home, open_node
from protocol.multiformats import CID


def big_model(seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """6 MB of float32 weights: 23 UnixFS chunks, enough to interrupt a transfer midway."""
    rng = np.random.default_rng(seed)
    return {"w": ("F32", rng.standard_normal(1_500_000).astype(np.float32))}


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def make_home(tmp: Path, name: str) -> Path:
    home = tmp / name
    key = tmp / f"{name}.key.json"
    key.write_text(Keypair().to_json())
    init_home(home, key)
    return home


def no_commitments(home: Path) -> Path:
    """``[zk] commitments = false``: for tests of moving big models (not of commitments), whose 1.5M
    parameters would otherwise derive a generator table once (~50 s) and check it in every process."""
    config = home / "config.toml"
    text = config.read_text()
    assert "commitments = true" in text
    config.write_text(text.replace("commitments = true", "commitments = false"))
    return home


def kill_process(proc: subprocess.Popen | None) -> None:
    """Stop a test's helper process (a hostile peer, a liar) if it still runs."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def network_config(home: Path, **values: object) -> None:
    """Add ``[network]`` settings to a home's config.toml (e.g. ``ban_threshold=2``)."""
    config = home / "config.toml"
    lines = "".join(f"\n{k} = {v!r}" for k, v in values.items())
    config.write_text(config.read_text().replace("mdns = false", "mdns = false" + lines, 1))


class DaemonProc:
    """One daemon process; ``start`` waits for its daemon.json, ``stop`` sends SIGTERM."""

    def __init__(self, home: Path, bootstrap: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.bootstrap = bootstrap
        self.env = env or {}
        self.args = args
        self.proc: subprocess.Popen | forkserver.ForkedProcess | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 30) -> DaemonProc:
        args = ["--home", str(self.home), "daemon", "--listen", "/ip4/127.0.0.1/tcp/0",
                "--api-port", "0", "--log-file", str(self.home / "daemon.log")]
        for b in self.bootstrap:
            args += ["--bootstrap", b]
        args += self.args
        self.proc = forkserver.spawn(args, {**os.environ, **self.env}, ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        info_path = self.home / "daemon.json"

        def ready() -> dict[str, Any] | None:
            assert self.proc is not None and self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:]
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == self.proc.pid else None  # not a stale file of a killed daemon

        self.info = wait_for(ready, timeout, f"daemon {self.home.name} to start")
        return self

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 60,
            expect: int = 200) -> Any:
        token = (self.home / "api.token").read_text().strip()
        resp = httpx.request(method, f"http://127.0.0.1:{self.info['api_port']}{path}", json=body,
                             headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
        assert resp.status_code == expect, resp.text
        return resp.json() if resp.headers["content-type"].startswith("application/json") else resp.text

    def metrics(self) -> dict[str, Any]:
        return self.api("GET", "/status")["metrics"]

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=10)
            if rc != 0 and self.proc.stderr is not None:
                print(f"daemon {self.home.name} exited {rc}:", self.proc.stderr.read().decode()[-3000:])
            return rc
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_events(self) -> list[dict[str, Any]]:
        path = self.home / "daemon.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def daemons(*procs: DaemonProc) -> Iterator[tuple[DaemonProc, ...]]:
    """Every process is stopped at the end, whatever happens."""
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
            if p.proc is not None and p.proc.stderr is not None:
                p.proc.stderr.close()


def ref(node: Node, repo_id: bytes, name: str) -> CID | None:
    with node.store.read() as txn:
        raw = txn.get_ref(repo_id, name)
    return None if raw is None else CID.from_bytes(raw)


def has_block(node: Node, cid: CID) -> bool:
    with node.store.read() as txn:
        return txn.has_block(cid)


def open_nodes(*homes: Path) -> list[Node]:
    return [open_node(h) for h in homes]
