"""The CLI side of the local API: find the daemon through ``<home>/daemon.json`` and ``api.token``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from fednode.daemon.pidfile import DAEMON_FILE, TOKEN_FILE, running_pid
from fednode.errors import FednodeError


class Client:
    def __init__(self, home: Path, timeout: float = 120.0) -> None:
        try:
            if running_pid(home) is None:  # a daemon killed outright leaves its file: never send our
                raise ValueError  # token to whoever took its port since
            info = json.loads((home / DAEMON_FILE).read_text())
            token = (home / TOKEN_FILE).read_text().strip()
        except (OSError, ValueError, KeyError, TypeError):
            raise FednodeError(f"no daemon is running for {home} (start one with 'fednode daemon')") from None
        self.base = f"http://127.0.0.1:{int(info['api_port'])}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = httpx.request(method, self.base + path, json=body, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise FednodeError(f"the daemon does not answer at {self.base}: {exc}") from None
        if resp.status_code != 200:
            try:
                detail = resp.json().get("error", resp.text)
            except ValueError:
                detail = resp.text
            raise FednodeError(f"daemon: {detail}")
        return resp.json()
