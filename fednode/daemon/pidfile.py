"""Whether a daemon serves a home: ``<home>/daemon.json`` names its pid, ``<home>/api.token`` holds its
API token. Light on purpose: every CLI command that asks the daemon imports it (importing
``fednode.daemon.api`` for the token file's name cost such a command 1.3 s)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DAEMON_FILE = "daemon.json"
TOKEN_FILE = "api.token"  # the local API's bearer token (0600; ``fednode.daemon.api.ensure_token``)


def running_pid(home: Path) -> int | None:
    """The pid of a live daemon serving ``home``, if any (a daemon killed outright leaves its file)."""
    try:
        pid = int(json.loads((home / DAEMON_FILE).read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid
