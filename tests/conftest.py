"""Fixtures for the foundation tests: node homes, stores, the in-process CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import SEED, fixed_identity
from solders.keypair import Keypair

from cli.app import main as cli_main
from fednode.history import History
from fednode.node import Node, init_home, open_node
from fednode.storage.store import Store


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An initialised node home with a fixed identity."""
    home = tmp_path / "home"
    key = tmp_path / "id.json"
    key.write_text(Keypair.from_seed(SEED).to_json())
    init_home(home, key)
    return home


@pytest.fixture
def node(home: Path) -> Iterator[Node]:
    n = open_node(home)
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    """A bare store plus identity, no node home (fast Python-API tests)."""
    store = Store(tmp_path / "store")
    try:
        yield History(store, fixed_identity())
    finally:
        store.close()


@pytest.fixture
def cli(home: Path):
    """Run the click app in-process against ``home``: cli("log", "--json") -> click Result."""
    runner = CliRunner()

    def invoke(*args: object, ok: bool = True) -> Result:
        result = runner.invoke(cli_main, ["--home", str(home), *map(str, args)], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, f"{args}: {result.output} {result.stderr}"
        return result

    return invoke
