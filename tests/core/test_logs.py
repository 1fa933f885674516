"""The daemon's JSON-lines log: bounded by rotation, reopened for an outside logrotate, private."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fednode import logs


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """``logs`` keeps module state: each test's setup is undone afterwards."""
    for name in ("_out", "_path", "_max_bytes", "_keep", "_size"):
        monkeypatch.setattr(logs, name, getattr(logs, name))


def _events(path: Path) -> list[int]:
    return [json.loads(line)["n"] for line in path.read_text().splitlines()]


def test_a_full_log_is_rotated_keeping_the_newest_files_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    logs.setup(path, max_bytes=2000, keep=3)
    for n in range(300):
        logs.log("tick", n=n, pad="x" * 40)
    rotated = [path.with_name(f"daemon.log.{k}") for k in (1, 2, 3)]
    assert all(p.exists() for p in rotated) and not path.with_name("daemon.log.4").exists()
    kept = [n for p in (*reversed(rotated), path) for n in _events(p)]  # oldest file first
    assert kept == list(range(300 - len(kept), 300))  # every line whole, in order, nothing missing
    line = len(path.read_text().splitlines()[0]) + 1
    for p in (*rotated, path):
        assert p.stat().st_size < 2000 + line  # a file is cut after the line that filled it
        assert p.stat().st_mode & 0o777 == 0o600
    assert 300 - len(kept) > 0  # the oldest were dropped


def test_no_rotation_with_a_zero_bound_and_reopen_after_an_outside_rename(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    logs.setup(path, max_bytes=0)
    for n in range(100):
        logs.log("tick", n=n, pad="x" * 40)
    moved = tmp_path / "daemon.log-20261205"
    path.rename(moved)  # what logrotate does
    logs.log("tick", n=100)  # still the open file, now under its new name
    assert logs.reopen()
    logs.log("tick", n=101)
    assert _events(moved) == list(range(101)) and _events(path) == [101]
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("daemon.log.*"))


def test_a_file_renamed_away_is_not_shifted_when_full(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    logs.setup(path, max_bytes=500, keep=2)
    logs.log("tick", n=0)
    path.rename(tmp_path / "elsewhere.log")
    for n in range(1, 12):
        logs.log("tick", n=n, pad="x" * 40)
    assert path.exists() and 0 in _events(tmp_path / "elsewhere.log")
    assert all(0 not in _events(p) for p in tmp_path.glob("daemon.log*"))


def test_stderr_logging_has_nothing_to_reopen_and_bad_bounds_are_refused(tmp_path: Path) -> None:
    logs.setup(None)
    assert not logs.reopen()
    with pytest.raises(ValueError):
        logs.setup(tmp_path / "a.log", max_bytes=-1)
    with pytest.raises(ValueError):
        logs.setup(tmp_path / "a.log", keep=0)
    assert not (tmp_path / "a.log").exists()
