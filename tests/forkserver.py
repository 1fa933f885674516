"""A fork server for the tests: `fednode` commands and daemons as forks of one warm interpreter.

A fresh `fednode` process spends 0.5-4 s of CPU importing (click, numpy, lmdb; libp2p and trio for a
daemon; torch for `train`) before it does anything, and the suite starts about a thousand CLI
processes and a few hundred daemons on two cores. So each pytest worker starts one server (this
file run as a script) that imports all of that once, then forks a child per command. A child is an
ordinary process of its own (pid, file descriptors, environment, working directory, signals, exit
status) that runs what the console script runs, ``cli.app:main(args)``.

What could differ from a fresh interpreter, and how it is handled:
- state computed at import: fednode reads its environment variables when it uses them, not at
  import (FEDNODE_BATCH_BYTES and FEDNODE_BLOCK_SERVE_DELAY were changed for this); the server
  starts with COLUMNS=200, which is what ``helpers.run_fednode`` passes (rich reads it at import);
- random state: ``random`` and ``tempfile`` reseed in a forked child by themselves; numpy's and
  torch's global generators are reseeded here from the OS;
- signals: a child starts with a fresh interpreter's handlers (the server's SIGCHLD handler and
  wakeup fd are removed); an uncaught KeyboardInterrupt ends it by SIGINT, as Python does;
- exit: non-daemon threads are joined and atexit handlers run, then the streams are flushed and
  the child exits with the status ``sys.exit`` was given (2 on a usage error, 1 on a traceback).

``FEDNODE_TEST_FORKSERVER=0`` makes ``run``/``spawn`` start fresh processes instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
ENABLED = os.environ.get("FEDNODE_TEST_FORKSERVER", "1") != "0"
SERVER_COLUMNS = "200"
START_TIMEOUT = 120.0
# imported once by the server; each is something a fednode command or daemon loads
WARM = ("numpy", "lmdb", "httpx", "trio", "libp2p", "solders", "solana.rpc.api", "safetensors.numpy", "torch",
        "torch.optim", "torch._dynamo", "cli.app", "fednode.daemon.service", "fednode.workflows.training")


# --- the server (runs as `python tests/forkserver.py SOCKET`) ----------------------------------------


def _serve(path: str) -> None:
    parent = os.getppid()
    for name in WARM:
        try:
            __import__(name)
        except Exception:  # a missing optional library is imported (and fails) in the child
            pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop through the wakeup fd
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    print("ready", flush=True)
    while os.getppid() == parent:  # the server ends with the pytest worker that started it
        for key, _ in sel.select(1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    _child(json.loads(msg), fds, (listener, conn, *children.values()), (wake_r, wake_w))
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                conn.send(json.dumps({"pid": pid}).encode())
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode())
                conn.close()


def _child(req: dict[str, Any], fds: list[int], sockets: tuple[socket.socket, ...], pipe: tuple[int, int]) -> None:
    code: Any = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for s in sockets:
            s.close()
        for fd in pipe:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        if "torch" in sys.modules:
            sys.modules["torch"].seed()
        sys.argv = ["fednode", *req["args"]]
        from cli.app import main

        main(args=req["args"], prog_name="fednode")
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = "SIGINT"
    except BaseException:  # what a fresh interpreter prints for an uncaught exception
        traceback.print_exc()
        code = 1
    try:
        import threading

        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads, as at exit
        atexit._run_exitfuncs()
        if code == "SIGINT":
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) else 1)


# --- the client (imported by the tests) ---------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fednode-forkserver-")
        self.path = os.path.join(self.dir, "s")
        env = {**os.environ, "COLUMNS": SERVER_COLUMNS}
        self.proc = subprocess.Popen([sys.executable, __file__, self.path], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None)
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(START_TIMEOUT) or self.proc.stdout.readline() != b"ready\n":
            self.proc.kill()
            raise RuntimeError("the tests' fork server did not start")
        atexit.register(self.close)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.dir)


_server: _Server | None = None


def _get_server() -> _Server:
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = _Server()
    return _server


class ForkedProcess:
    """What the tests use of ``subprocess.Popen``, for a child of the fork server."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | str,
                 stdin: int | None = subprocess.DEVNULL, stdout: int | None = None,
                 stderr: int | None = None) -> None:
        self.args = args
        self.returncode: int | None = None
        self.stdout: IO[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self.stdin: IO[bytes] | None = None
        fds, close_after, parent_ends = [], [], []
        for target, spec in enumerate((stdin, stdout, stderr)):
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                mine, theirs = (w, r) if target == 0 else (r, w)
                fds.append(theirs)
                close_after.append(theirs)
                parent_ends.append((target, mine))
            elif spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                fds.append(fd)
                close_after.append(fd)
            elif isinstance(spec, int) and spec >= 0:
                fds.append(spec)
            else:
                fds.append(target)  # inherit ours
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.connect(_get_server().path)
            socket.send_fds(self._sock, [json.dumps({"args": args, "env": env, "cwd": str(cwd)}).encode()], fds)
            self.pid: int = json.loads(self._sock.recv(4096))["pid"]
        finally:
            for fd in close_after:
                os.close(fd)
        for target, fd in parent_ends:
            setattr(self, ("stdin", "stdout", "stderr")[target], os.fdopen(fd, "wb" if target == 0 else "rb"))

    def poll(self) -> int | None:
        if self.returncode is None:
            self._sock.setblocking(False)
            try:
                self._take(self._sock.recv(4096))
            except BlockingIOError:
                self._sock.setblocking(True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._sock.settimeout(timeout)
            try:
                self._take(self._sock.recv(4096))
            except TimeoutError:
                self._sock.settimeout(None)
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
        assert self.returncode is not None
        return self.returncode

    def _take(self, msg: bytes) -> None:
        if not msg:  # the server ended without reporting: the child cannot be waited for any more
            raise RuntimeError(f"the fork server went away while {self.args} ran")
        self.returncode = json.loads(msg)["rc"]
        self._sock.close()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def spawn(args: list[str], env: dict[str, str], cwd: Path | str, **kw: Any) -> ForkedProcess | subprocess.Popen:
    """``subprocess.Popen(["fednode", *args], ...)`` through the fork server (or fresh, when it is off)."""
    if not ENABLED:
        from helpers import fednode_cmd

        return subprocess.Popen([*fednode_cmd(), *args], env=env, cwd=cwd, **kw)
    return ForkedProcess(args, env, cwd, **kw)


def run(args: list[str], env: dict[str, str], cwd: Path | str, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(["fednode", *args], capture_output=True, text=True, ...)`` through the fork server."""
    if not ENABLED:
        from helpers import fednode_cmd

        return subprocess.run([*fednode_cmd(), *args], capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=cwd)
    proc = ForkedProcess(args, env, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        sel.register(f, selectors.EVENT_READ)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise subprocess.TimeoutExpired(["fednode", *args], timeout)
            for key, _ in sel.select(left):
                data = os.read(key.fd, 1 << 16)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fileobj)
        rc = proc.wait(max(0.0, deadline - time.monotonic()) + 5)
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    out, err = (b"".join(chunks[f]).decode(errors="replace") for f in chunks)
    return subprocess.CompletedProcess(["fednode", *args], rc, out, err)


if __name__ == "__main__":
    _serve(sys.argv[1])
