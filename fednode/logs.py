"""Structured logs: one JSON object per line (stderr or a file). Never pass key material here.

A daemon runs for months, so a log file is bounded: once it holds ``max_bytes`` it is renamed
``<file>.1`` (the older ``.1`` becoming ``.2`` and so on, ``keep`` of them; the oldest is dropped) and
a new file is started, 0600 like the first; a rotated file ends with a whole line. ``max_bytes=0``
leaves rotation to the operator's own tool (logrotate): ``reopen()``, which the daemon calls on
SIGHUP, closes the file and opens its path again, so a file renamed away stops growing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

MAX_BYTES = 64 << 20  # a log file's default bound (``fednode daemon --log-max-mib``)
KEEP = 5  # rotated files kept by default (``--log-keep``)

_out: TextIO = sys.stderr
_path: Path | None = None
_max_bytes = 0
_keep = KEEP
_size = 0  # bytes in the current file
_lock = threading.Lock()  # log() is called from worker threads too


def _open(path: Path) -> TextIO:
    # 0600: a log names peers, repositories and endpoints
    return open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", buffering=1)


def setup(path: Path | None = None, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
    """Log to ``path`` (else stderr), rotated at ``max_bytes`` (0: never) keeping ``keep`` old files."""
    global _out, _path, _max_bytes, _keep, _size
    if max_bytes < 0 or keep < 1:
        raise ValueError("a log's size bound is at least 0 bytes and at least 1 rotated file is kept")
    if path is not None:
        _out = _open(path)
        _path, _max_bytes, _keep = path, max_bytes, keep
        _size = os.fstat(_out.fileno()).st_size
    # py-libp2p logs a lot at INFO/WARNING (e.g. every closed stream); keep only its errors
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("multiaddr").setLevel(logging.ERROR)


def reopen() -> bool:
    """Close the log file and open its path again (after an outside tool renamed it); False when
    logging goes to stderr or the path cannot be opened (the old file is kept then)."""
    global _out, _size
    with _lock:
        if _path is None:
            return False
        try:
            new = _open(_path)
        except OSError:
            return False
        old, _out = _out, new
        _size = os.fstat(new.fileno()).st_size
    old.close()
    return True


def _rotate() -> None:
    """Shift ``<file>.k`` to ``<file>.k+1`` (the last one dropped), the file to ``.1``, and start anew."""
    global _out, _size
    assert _path is not None
    try:
        if _path.exists():  # (renamed away by someone else: just start a new file)
            for k in range(_keep - 1, 0, -1):
                older = _path.with_name(f"{_path.name}.{k}")
                if older.exists():
                    os.replace(older, _path.with_name(f"{_path.name}.{k + 1}"))
            os.replace(_path, _path.with_name(f"{_path.name}.1"))
        new = _open(_path)
    except OSError:  # e.g. a directory made read-only: the same file goes on, tried again later
        _size = 0
        return
    _out.close()
    _out, _size = new, 0


def log(event: str, level: str = "info", **fields: Any) -> None:
    global _size
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
    line = json.dumps(record, default=str, sort_keys=False) + "\n"
    with _lock:
        try:
            _out.write(line)
            _out.flush()
        except (OSError, ValueError):
            return
        if _path is not None and _max_bytes:
            _size += len(line)  # json.dumps writes ASCII: characters are bytes
            if _size >= _max_bytes:
                _rotate()


def shown_url(url: str | None) -> str | None:
    """``url`` as logs and errors may show it: scheme, host and port only. RPC providers put API keys
    in the path or the query, and a URL may carry user:password@; none of that is written anywhere."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    hidden = "/..." if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username else ""
    return f"{parts.scheme}://{host}{port}{hidden}" if parts.scheme else "(an unreadable URL)"
