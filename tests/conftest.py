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

# The slowest test files, started first: `make test` runs two xdist workers, each taking a whole file
# at a time in collection order, so a long file collected late would run alone at the end.
SLOW_FIRST = ("tests/demo/", "tests/chain/test_nft_control.py", "tests/cli/test_store_full.py",
              "tests/daemon/test_daemon_findable.py", "tests/bench/test_bench_scripts.py",
              "tests/chain/test_daemon_chain.py", "tests/daemon/test_bitswap_liar.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((n for n, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: every file keeps its own order, the rest keeps collection order


@pytest.fixture(scope="session", autouse=True)
def shared_zk_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One generator table for every node home of the run (public data, checked on load): each test's
    fresh home would otherwise derive it again (~35 us a generator). Tests of the per-home cache
    remove the variable themselves."""
    import os

    from fednode.node import ZK_CACHE_ENV

    folder = tmp_path_factory.mktemp("zkcache")
    old = os.environ.get(ZK_CACHE_ENV)
    os.environ[ZK_CACHE_ENV] = str(folder)
    yield folder
    if old is None:
        os.environ.pop(ZK_CACHE_ENV, None)
    else:
        os.environ[ZK_CACHE_ENV] = old


ZK_POLICY_N = 8  # values the shared update-proof keys take (a local powers of tau 2^8)
ZK_REMAINDER_BITS = 13  # the shared remainder keys' K: W < 2^12, and n = 8 still fits the same 2^8 tau


@pytest.fixture(scope="session")
def zk_policy_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One update-proof key folder (``fednode zk setup``, n = 8 signed 16-bit values; seconds with the
    development tau of ``fednode.zk.devtau``) for the tests of repositories that require proofs: a proof
    then takes ~1 s. Its ``remainder/`` holds the remainder keys (n = 8, K = 13: merges of total weight
    below 4,096), made from the same tau."""
    from fednode.workflows import zkprove

    out = tmp_path_factory.mktemp("zkpolicy") / "keys"
    zkprove.setup(out, ZK_POLICY_N, remainder_bits=ZK_REMAINDER_BITS)
    return out


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
