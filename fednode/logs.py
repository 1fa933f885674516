"""Structured logs: one JSON object per line (stderr or a file). Never pass key material here."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

_out: TextIO = sys.stderr


def setup(path: Path | None = None) -> None:
    global _out
    if path is not None:  # 0600: a log names peers, repositories and endpoints
        _out = open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", buffering=1)
    # py-libp2p logs a lot at INFO/WARNING (e.g. every closed stream); keep only its errors
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("multiaddr").setLevel(logging.ERROR)


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
    try:
        _out.write(json.dumps(record, default=str, sort_keys=False) + "\n")
        _out.flush()
    except (OSError, ValueError):
        pass


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
