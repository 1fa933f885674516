"""Whether a daemon serves a home: ``<home>/daemon.json`` names its pid (light: the CLI reads it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DAEMON_FILE = "daemon.json"


def running_pid(home: Path) -> int | None:
    """The pid of a live daemon serving ``home``, if any (a daemon killed outright leaves its file)."""
    try:
        pid = int(json.loads((home / DAEMON_FILE).read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid
