"""A daemon refuses to start, in one line and with exit status 1, when it could not serve as
configured: a listen port another process holds (py-libp2p's listener sets SO_REUSEPORT, so a
second daemon used to share the port with the first), an address it cannot listen on, an API port
in use. Real daemon processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProc, daemons, make_home, wait_for
from helpers import ROOT, assert_one_line_error, fednode_cmd, run_fednode

from fednode.daemon.host import shared_ports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FixedPortDaemon(DaemonProc):
    """A DaemonProc listening on one fixed TCP port only (DaemonProc listens on tcp/0)."""

    def __init__(self, home: Path, port: int, bootstrap: tuple[str, ...] = ()) -> None:
        super().__init__(home, bootstrap)
        self.port = port

    def start(self, timeout: float = 30) -> FixedPortDaemon:
        args = [*fednode_cmd(), "--home", str(self.home), "daemon", "--listen", f"/ip4/127.0.0.1/tcp/{self.port}",
                "--api-port", "0", "--log-file", str(self.home / "daemon.log")]
        for b in self.bootstrap:
            args += ["--bootstrap", b]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

        def ready() -> dict[str, Any] | None:
            assert self.proc is not None and self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:]
            try:
                info = json.loads((self.home / "daemon.json").read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == self.proc.pid else None

        self.info = wait_for(ready, timeout, f"daemon {self.home.name} to start")
        return self


@contextmanager
def held_port() -> Iterator[int]:
    """A port some other program listens on (a plain socket: no SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def refused(home: Path, *args: str) -> str:
    """Run ``fednode daemon ARGS``: it must exit 1 at once with one line, leaving no daemon.json."""
    proc = run_fednode(home, "daemon", *args, "--log-file", str(home / "daemon.log"), check=False, timeout=30)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert_one_line_error(proc.stderr)
    assert not (home / "daemon.json").exists()
    return proc.stderr


def test_second_daemon_on_the_same_port_is_refused_and_the_first_serves_on(tmp_path: Path) -> None:
    port = free_port()
    a, b, c = (make_home(tmp_path, n) for n in "abc")
    with daemons(FixedPortDaemon(a, port)) as (da,):
        da.start()
        line = refused(b, "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--api-port", "0")
        assert f"/tcp/{port}" in line and "already in use" in line
        # every connection to the port still reaches the first daemon (none is handed to another process)
        with daemons(DaemonProc(c, bootstrap=(da.addr,))) as (dc,):
            dc.start()
            wait_for(lambda: da.peer_id in {p["peer_id"] for p in dc.api("GET", "/peers")}, 10, "c connected to a")
        assert da.api("GET", "/status")["addrs"] == da.info["addrs"]


def test_listen_port_held_by_another_program_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path, "a")
    with held_port() as port:
        line = refused(home, "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--api-port", "0")
    assert f"cannot listen on /ip4/127.0.0.1/tcp/{port}" in line and "--listen" in line
    events = (home / "daemon.log").read_text() if (home / "daemon.log").exists() else ""
    assert "daemon_started" not in events  # refused before the node joined anything


def test_api_port_in_use_is_refused_before_the_node_starts(tmp_path: Path) -> None:
    home = make_home(tmp_path, "a")
    with held_port() as port:
        line = refused(home, "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", str(port))
    assert f"cannot serve the API on 127.0.0.1:{port}" in line and "--api-port" in line
    events = (home / "daemon.log").read_text() if (home / "daemon.log").exists() else ""
    assert "daemon_started" not in events  # its libp2p host never listened nor dialled


@pytest.mark.parametrize("addr,needle", [
    ("garbage", "invalid listen address"),
    ("/ip4/127.0.0.1/udp/4001", "unsupported listen address"),  # py-libp2p listened on nothing
    ("/dns4/localhost/tcp/0", "unsupported listen address"),  # py-libp2p listened on 0.0.0.0
    ("/ip4/192.0.2.1/tcp/0", "cannot listen on /ip4/192.0.2.1/tcp/0"),  # not this host's: no listener
])
def test_listen_address_it_cannot_serve_is_refused(tmp_path: Path, addr: str, needle: str) -> None:
    line = refused(make_home(tmp_path, "a"), "--listen", addr, "--api-port", "0")
    assert needle in line


def test_a_port_shared_through_so_reuseport_is_detected() -> None:
    """What the probe cannot see: two listeners that both set SO_REUSEPORT (two daemons whose
    probes ran at the same moment) share a port; ours alone, or 0.0.0.0 + :: of one config, do not."""
    with socket.socket() as first, socket.socket() as second, socket.socket(socket.AF_INET6) as v6:
        for sock in (first, second, v6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        first.bind(("0.0.0.0", 0))
        first.listen()
        port = first.getsockname()[1]
        v6.bind(("::", port))
        v6.listen()
        both = [f"/ip4/0.0.0.0/tcp/{port}", f"/ip6/::/tcp/{port}"]
        assert shared_ports(both) == []
        second.bind(("127.0.0.1", port))
        second.listen()
        assert shared_ports(both) == both
        assert shared_ports([f"/ip4/127.0.0.1/tcp/{port}"]) == [f"/ip4/127.0.0.1/tcp/{port}"]


def test_two_daemons_started_at_once_on_one_port_never_both_run(tmp_path: Path) -> None:
    port = free_port()
    homes = [make_home(tmp_path, n) for n in "ab"]
    procs = [subprocess.Popen([*fednode_cmd(), "--home", str(h), "daemon", "--listen", f"/ip4/127.0.0.1/tcp/{port}",
                               "--api-port", "0", "--log-file", str(h / "daemon.log")], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for h in homes]
    try:
        settled = lambda: all(p.poll() is not None or (h / "daemon.json").exists()  # noqa: E731
                              for p, h in zip(procs, homes, strict=True))
        wait_for(settled, 30, "both daemons to start or exit")
        running = [p for p in procs if p.poll() is None]
        assert len(running) <= 1
        for p in procs:
            if p.poll() is not None:
                assert p.returncode == 1
                assert_one_line_error(p.communicate(timeout=5)[1], "already in use")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=10)
