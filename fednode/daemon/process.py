"""``fednode daemon``: run the node until SIGINT/SIGTERM; publish its addresses in the home. SIGHUP
reopens the log file (``logs.reopen``: after an outside logrotate moved it)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
from pathlib import Path

import trio

from fednode import logs
from fednode.chain.autoflush import flush_loop
from fednode.daemon import allocator
from fednode.daemon import host as hostmod
from fednode.daemon.api import Api, ensure_token
from fednode.daemon.bans import BAN_SECONDS, BAN_THRESHOLD
from fednode.daemon.exchange import MAX_FETCH_BYTES, MIN_FREE_BYTES
from fednode.daemon.pidfile import DAEMON_FILE, running_pid
from fednode.daemon.service import SYNC_INTERVAL, Daemon
from fednode.errors import FednodeError
from fednode.logs import log
from fednode.node import open_node


def _write_info(home: Path, info: dict[str, object]) -> None:
    tmp = home / (DAEMON_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(home / DAEMON_FILE)


def _api_error(port: int, exc: OSError) -> FednodeError:
    why = "address already in use (by another process)" if exc.errno == errno.EADDRINUSE else exc.strerror
    return FednodeError(f"cannot serve the API on 127.0.0.1:{port}: {why}; "
                        "choose another with --api-port or [api] port")


def _probe_api(port: int) -> None:
    """Refuse a taken API port before the node joins the network (trio's listener also sets
    SO_REUSEADDR and no SO_REUSEPORT, so this bind fails exactly when the real one would)."""
    if port == 0:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise _api_error(port, exc) from None


async def _run(home: Path, listen: list[str] | None, api_port: int | None, bootstrap: list[str],
               mdns: bool) -> None:
    node = open_node(home)
    try:
        net = node.config.get("network", {})
        api_cfg = node.config.get("api", {})
        if api_cfg.get("host", "127.0.0.1") not in ("127.0.0.1", "localhost"):
            log("api_host_ignored", "warning", configured=api_cfg.get("host"))  # loopback only, always
        listen = listen or list(net.get("listen", ["/ip4/127.0.0.1/tcp/4001"]))
        api_port = int(api_cfg.get("port", 5710)) if api_port is None else api_port
        # a port already taken is refused here, in one line, before anything starts (issue 11 item 7)
        hostmod.probe_listen(listen)
        _probe_api(api_port)
        daemon = Daemon(node, listen,
                        list(net.get("bootstrap", [])) + bootstrap, bool(net.get("mdns", False)) or mdns,
                        int(net.get("ban_threshold", BAN_THRESHOLD)), float(net.get("sync_interval", SYNC_INTERVAL)),
                        float(net.get("ban_seconds", BAN_SECONDS)),
                        int(net.get("max_fetch_bytes", MAX_FETCH_BYTES)),
                        int(net.get("min_free_bytes", MIN_FREE_BYTES)))
        token = ensure_token(home)
        api = Api(daemon, token)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                missing = hostmod.not_listening(daemon.host, listen)
                if missing:  # the probe passed but the listener failed (a race, or not this host's address)
                    raise FednodeError(f"cannot listen on {', '.join(missing)}: taken, or not an address of this host")
                shared = hostmod.shared_ports(listen)
                if shared:  # another daemon passed its probe at the same moment: connections would be split
                    raise FednodeError(f"cannot listen on {', '.join(shared)}: address already in use (another "
                                       "process listens on it too); choose another port with --listen")
                await nursery.start(flush_loop, node, log)  # anchoring requests go out whenever the chain answers
                try:
                    port = await nursery.start(api.serve, api_port)
                except OSError as exc:  # taken since the probe
                    raise _api_error(api_port, exc) from None
                _write_info(home, {"pid": os.getpid(), "peer_id": str(daemon.peer_id), "addrs": daemon.addrs(),
                                   "api": f"http://127.0.0.1:{port}", "api_port": port})
                log("api_listening", port=port)
                async for signum in signals:
                    if signum == signal.SIGHUP:  # an outside logrotate moved the file: write a new one
                        log("log_reopened" if logs.reopen() else "log_not_reopened")
                        continue
                    log("shutdown", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        try:
            (home / DAEMON_FILE).unlink()
        except FileNotFoundError:
            pass
        node.close()
        log("stopped")


def run_daemon(home: Path, listen: list[str] | None = None, api_port: int | None = None,
               bootstrap: list[str] | None = None, log_file: Path | None = None, mdns: bool = False,
               log_max_bytes: int = logs.MAX_BYTES, log_keep: int = logs.KEEP) -> None:
    pid = running_pid(home)
    if pid is not None:
        raise FednodeError(f"a daemon (pid {pid}) already runs for {home}")
    try:
        logs.setup(log_file, log_max_bytes, log_keep)
    except OSError as exc:
        raise FednodeError(f"cannot write the log file {log_file}: {exc.strerror}") from None
    allocator.tune()  # before the first block moves (allocator.py)
    trio.run(_run, home, listen, api_port, bootstrap or [], mdns)
