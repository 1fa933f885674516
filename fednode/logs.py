"""Structured logs: one JSON object per line (stderr or a file). Never pass key material here."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

_out: TextIO = sys.stderr


def setup(path: Path | None = None) -> None:
    global _out
    if path is not None:
        _out = open(path, "a", buffering=1)
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
