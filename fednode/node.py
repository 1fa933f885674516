"""The node home: identity (wallet keypair), config.toml and the store."""

from __future__ import annotations

import math
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fednode.errors import FednodeError
from fednode.history import CommitResult, History, RepoInfo, blockindex
from fednode.identity import Identity, check_owned
from fednode.logs import log
from fednode.storage.store import Store
from fednode.workflows.commitments import DEFAULT_MAX_PARAMETERS, ZkHistory, ZkSettings
from fednode.workflows.pinning import url_problem

if TYPE_CHECKING:
    from fednode.tensors.modelio import ModelSource

KEYPAIR_FILE = "keypair.json"
CONFIG_FILE = "config.toml"
STORE_DIR = "store"
ZK_DIR = "zk"  # the generator tables of commitments (fednode/storage/zkcache.py)
ZK_CACHE_ENV = "FEDNODE_ZK_CACHE"  # a folder shared by several homes instead of <home>/zk
CURRENT_REPO_META = "current_repo"  # store meta key: the repository commands use when given none

DEFAULT_CONFIG = """\
# fednode node configuration
[node]
name = "{name}"

[network]
# libp2p listen addresses (Noise + yamux only)
listen = ["/ip4/127.0.0.1/tcp/4001"]
bootstrap = []
mdns = false
# optional: ban_threshold = 5 (penalised messages or blocks before a peer is disconnected
# and banned), ban_seconds = 86400 (how long a ban lasts; bans survive restarts; `fednode
# unban PEER` lifts one), sync_interval = 30 (seconds between heads exchanges with every peer),
# max_fetch_bytes = 68719476736 (most one fetched commit and all it reaches may store: 64 GiB),
# min_free_bytes = 1073741824 (fetches never leave less free disk than this: 1 GiB),
# fetch_expiry_seconds = 172800 (an unfinished fetch, e.g. of a head no peer serves, is dropped
# this long after it was first recorded: 48 h), bitswap_cache_bytes = 268435456 (tensor states
# stored as deltas, rebuilt for IPFS peers, kept in memory up to this many bytes: 256 MiB),
# bitswap_spill_bytes = 4294967296 (states larger than the cache: temporary files up to 4 GiB),
# dht_reprovide_interval = 79200 (seconds between provides of one DHT record: 22 h),
# dht_provides_per_hour = 3000 (DHT provides sent in any hour), dht_provides_per_pass = 256

[api]
# the local control API binds to loopback only, with the bearer token in api.token
host = "127.0.0.1"
port = 5710

[gateway]
# the read-only IPFS trustless gateway (GET /ipfs/CID, raw blocks and CARs of public content):
# "" is off; "8080" serves on 127.0.0.1:8080, "HOST:PORT" elsewhere. Optional: rate = 100 and
# burst = 1000 (requests a second per client IP), max_car_bytes = 4294967296 (largest CAR served)
listen = ""

# [ipfs]: add this section to pin on an operator's Kubo or an IPFS Pinning Service (`fednode pin`,
# docs/ipfs.md). Its keys: kubo_api = "http://127.0.0.1:5001" (Kubo's RPC API, the default),
# auto_pin = false (true: pin every merged head of a public repository there), pinning_service =
# "https://..." with pinning_service_token_file = "/path" (the token, mode 0600),
# pin_retry_seconds = 2 (backoff start, doubling up to 600 s), pin_max_attempts = 12,
# pin_timeout_seconds = 600 (one Kubo pin), pin_pending_seconds = 86400 (how long a service's pin
# may stay queued or pinning)

[chain]
# embedded (LiteSVM in this process, state in the store) | rpc (fednode devchain or a cluster: url, program_id)
backend = "embedded"
# optional: flush_interval = 10 (seconds between the daemon's sends of queued anchors)
# optional: nft_refresh_s = 30 (seconds between the daemon's readings of its repositories' NFT holders)

[store]
# fsync at every commit: survives power loss. false is faster and still survives a
# crashed or killed process, not a kernel crash or power cut.
fsync = true

[repository_defaults]
scale_bits = 24
snapshot_interval = 8

[zk]
# a Pedersen commitment to every update and merge, inside the signed commit (docs/zk.md);
# optional: max_parameters = 4194304 (larger models get none: deriving generators is ~35 us each, once)
# optional: keys = "/path" (a 'fednode zk setup' folder, absolute or relative to this home: proves
# the updates of repositories that require proofs; $FEDNODE_ZK_KEYS and --zk-keys come first)
commitments = true
"""


def _is_num(v: object) -> bool:
    # TOML true is a bool (an int subclass), never a number here
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _strings(v: object) -> bool:
    return isinstance(v, list) and all(type(x) is str for x in v)


def _listen_ok(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return v == "" or (port.isascii() and port.isdigit() and int(port) <= 65535 and (not sep or bool(host)))


# [section] key -> (check, what it must be): every value fednode reads, so a wrong type is one line
# at load instead of a traceback where it is used. Unknown keys are left alone.
_SCHEMA: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "node": {"name": (lambda v: type(v) is str, "a string")},
    "network": {
        "listen": (_strings, "a list of multiaddr strings"),
        "bootstrap": (_strings, "a list of multiaddr strings"),
        "mdns": (lambda v: type(v) is bool, "true or false"),
        "ban_threshold": (lambda v: type(v) is int and 0 < v < 1 << 31, "a positive integer"),
        "ban_seconds": (lambda v: _is_num(v) and v >= 0, "a number of seconds >= 0"),
        "sync_interval": (lambda v: _is_num(v) and v > 0, "a number of seconds > 0"),
        "max_fetch_bytes": (lambda v: type(v) is int and v > 0, "a positive integer"),
        "min_free_bytes": (lambda v: type(v) is int and v >= 0, "an integer >= 0"),
        "fetch_expiry_seconds": (lambda v: _is_num(v) and 0 < v < 1e12, "a number of seconds > 0"),
        "bitswap_cache_bytes": (lambda v: type(v) is int and v >= 0, "an integer >= 0"),
        "bitswap_spill_bytes": (lambda v: type(v) is int and v >= 0, "an integer >= 0"),
        "dht_reprovide_interval": (lambda v: _is_num(v) and v > 0, "a number of seconds > 0"),
        "dht_provides_per_hour": (lambda v: type(v) is int and v >= 0, "an integer >= 0"),
        "dht_provides_per_pass": (lambda v: type(v) is int and v >= 1, "an integer >= 1"),
    },
    "gateway": {  # the trustless HTTP gateway (daemon/gateway.py): off unless listen names an address
        "listen": (lambda v: type(v) is str and _listen_ok(v), '"" (off), "PORT" or "HOST:PORT"'),
        "rate": (lambda v: _is_num(v) and v > 0, "a number of requests a second > 0"),
        "burst": (lambda v: _is_num(v) and v >= 1, "a number >= 1"),
        "max_car_bytes": (lambda v: type(v) is int and v > 0, "a positive integer"),
    },
    "api": {
        "host": (lambda v: type(v) is str, "a string"),
        "port": (lambda v: type(v) is int and 0 <= v <= 65535, "a port number 0..65535"),
    },
    "chain": {
        "backend": (lambda v: v in ("embedded", "rpc"), '"embedded" or "rpc"'),
        "url": (lambda v: type(v) is str, "a string"),
        "program_id": (lambda v: type(v) is str, "a base58 string"),
        "program_elf": (lambda v: type(v) is str, "a path string"),
        "airdrop": (lambda v: type(v) is bool, "true or false"),
        "flush_interval": (lambda v: _is_num(v) and v > 0, "a number of seconds > 0"),
        "nft_refresh_s": (lambda v: _is_num(v) and 0 < v < 1e9, "a number of seconds > 0"),
        "timeout_s": (lambda v: _is_num(v) and v > 0, "a number of seconds > 0"),
    },
    "ipfs": {
        "kubo_api": (lambda v: type(v) is str and url_problem(v) is None, "an http(s) URL (http://HOST:PORT)"),
        "pin_retry_seconds": (lambda v: _is_num(v) and v > 0, "a number of seconds > 0"),
        "pin_max_attempts": (lambda v: type(v) is int and 0 < v < 1 << 20, "a positive integer"),
        "auto_pin": (lambda v: type(v) is bool, "true or false"),
        "pin_timeout_seconds": (lambda v: _is_num(v) and v > 0, "a number of seconds > 0"),
        "pinning_service": (lambda v: type(v) is str and url_problem(v, bearer=True) is None,
                            "an https URL (http only to this machine: the token goes with every request)"),
        "pin_pending_seconds": (lambda v: _is_num(v) and v > 0, "a number of seconds > 0"),
        "pinning_service_token_file": (lambda v: type(v) is str and v != "", "a path string"),
    },
    "store": {"fsync": (lambda v: type(v) is bool, "true or false")},
    "zk": {  # Pedersen commitments on commits (workflows/commitments.py, docs/zk.md)
        "commitments": (lambda v: type(v) is bool, "true or false"),
        "max_parameters": (lambda v: type(v) is int and v > 0, "a positive integer"),
        "keys": (lambda v: type(v) is str and v != "", "a path string"),
    },
    "repository_defaults": {
        "scale_bits": (lambda v: type(v) is int and 0 <= v <= 60, "an integer in 0..60"),
        "snapshot_interval": (lambda v: type(v) is int and 1 <= v <= 1024, "an integer in 1..1024"),
    },
}


def check_config(config: dict[str, Any], path: Path | str) -> None:
    """Refuse a config whose known sections or keys have the wrong type: one FednodeError line."""
    for section, keys in _SCHEMA.items():
        table = config.get(section, {})
        if not isinstance(table, dict):
            raise FednodeError(f"invalid {path}: [{section}] must be a table")
        for key, (ok, what) in keys.items():
            if key in table and not ok(table[key]):
                raise FednodeError(f"invalid {path}: [{section}] {key} must be {what}")


def parse_config(text: str, path: Path | str) -> dict[str, Any]:
    """A config.toml text parsed and type-checked; anything wrong is one FednodeError line."""
    try:
        config = tomllib.loads(text)
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise FednodeError(f"invalid {path}: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise FednodeError(f"invalid {path}: {(str(exc).splitlines() or ['malformed'])[0]}") from None
    check_config(config, path)
    return config


def load_config(path: Path) -> dict[str, Any]:
    """The node's config (the default config when the file is absent)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = DEFAULT_CONFIG.format(name="fednode")
    except UnicodeDecodeError:
        raise FednodeError(f"invalid {path}: not UTF-8 text") from None
    except OSError as exc:
        raise FednodeError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(text, path)


# [chain] settings of this node rather than of the chain: selecting another backend keeps them.
KEPT_CHAIN_SETTINGS = ("flush_interval", "nft_refresh_s", "timeout_s", "program_elf")


def select_chain_backend(home: Path, backend: str, url: str | None = None, program_id: str | None = None) -> None:
    """Replace config.toml's [chain] table with ``backend`` (and its ``url``, ``program_id``), keeping
    this node's own [chain] settings and every other line; refused, unwritten, if the result is invalid.
    A running daemon reads [chain] again at its next flush."""
    from fednode.chain.config import chain_section

    path = home / CONFIG_FILE
    lines = [f'backend = "{backend}"']
    if url is not None:
        lines.append(f"url = {_toml_str(url)}")
    if program_id is not None:
        lines.append(f"program_id = {_toml_str(program_id)}")
    lines += _kept_chain_settings(path)
    chain_section({"chain": tomllib.loads("\n".join(lines))})  # validate before writing
    _write_chain_section(path, lines)


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kept_chain_settings(path: Path) -> list[str]:
    try:
        section = tomllib.loads(path.read_text()).get("chain") or {}
    except (OSError, ValueError):
        return []
    lines = []
    for key in KEPT_CHAIN_SETTINGS:
        value = section.get(key) if isinstance(section, dict) else None
        if isinstance(value, str):
            lines.append(f"{key} = {_toml_str(value)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"{key} = {value!r}")
    return lines


def _write_chain_section(path: Path, lines: list[str]) -> None:
    """Replace the [chain] table of config.toml, keeping every other line as it is."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    kept, skipping = [], False
    for line in text.splitlines():
        header = line.strip()
        if header.startswith("[") and not header.startswith("[["):
            skipping = header == "[chain]"
        if not skipping:
            kept.append(line)
    body = "\n".join(kept).rstrip("\n") + "\n\n[chain]\n" + "\n".join(lines) + "\n"
    tomllib.loads(body)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body)
    tmp.replace(path)


def default_home() -> Path:
    return Path(os.environ.get("FEDNODE_HOME") or "~/.fednode").expanduser()


def init_home(home: Path, keypair: Path | None = None, force: bool = False) -> Identity:
    """Create the node home. Refuses to overwrite an existing identity unless ``force``. A failed
    init (a full disk...) of a home that did not exist leaves no half-made home behind."""
    existed = home.exists()
    try:
        return _init_home(home, keypair, force)
    except BaseException:
        if not existed:
            shutil.rmtree(home, ignore_errors=True)
        raise


def _init_home(home: Path, keypair: Path | None, force: bool) -> Identity:
    key_path = home / KEYPAIR_FILE
    if key_path.exists() and not force:
        raise FednodeError(f"{home} is already initialised (use --force to replace its identity)")
    identity = Identity.load(keypair) if keypair else Identity.generate()
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    identity.save(key_path)
    config = home / CONFIG_FILE
    if not config.exists() or force:
        tmp = config.with_suffix(".tmp")
        tmp.write_text(DEFAULT_CONFIG.format(name=identity.address[:8]))
        tmp.replace(config)
    with Store(home / STORE_DIR) as store:
        blockindex.migrate(store)  # a new store has its block index from the start (nothing to tag)
    return identity


@dataclass
class Node:
    home: Path
    config: dict[str, Any]
    identity: Identity
    store: Store
    history: History

    def close(self) -> None:
        self.store.close()

    # --- the current repository (``fednode repo use``) ---------------------------
    def current_repo_name(self) -> str | None:
        """The name recorded by the last ``use_repo``; None when none was selected."""
        with self.store.read() as txn:
            current = txn.get_meta(CURRENT_REPO_META)
        return current.decode() if current is not None else None

    def current_repo(self) -> RepoInfo | None:
        """The current repository; None when none is selected or it no longer exists."""
        name = self.current_repo_name()
        if name is None:
            return None
        try:
            return self.history.repo(name)
        except FednodeError:
            return None

    def use_repo(self, name_or_id: str) -> RepoInfo:
        """Make a repository (name or id) the current one."""
        info = self.history.repo(name_or_id)
        with self.store.write() as txn:
            txn.set_meta(CURRENT_REPO_META, info.name.encode())
        return info

    def use_repo_if_none(self, name_or_id: str) -> bool:
        """Make a repository current when none is (as git clone does); whether it did."""
        if self.current_repo_name() is not None:
            return False
        self.use_repo(name_or_id)
        return True

    def create_repo(self, name: str, source: ModelSource, message: str = "initial weights",
                    scale_bits: int | None = None, snapshot_interval: int | None = None,
                    visibility: str = "private",
                    zk_policy: dict[str, Any] | None = None) -> tuple[RepoInfo, CommitResult]:
        """A new repository from ``source`` (its genesis), the config's [repository_defaults] for the
        settings not given, private unless ``visibility`` is "public"; it becomes the current repository."""
        defaults = self.config.get("repository_defaults", {})
        info, result = self.history.create_repo(
            name,
            source,
            message,
            scale_bits if scale_bits is not None else int(defaults.get("scale_bits", 24)),
            snapshot_interval if snapshot_interval is not None else int(defaults.get("snapshot_interval", 8)),
            visibility=visibility,
            zk_policy=zk_policy,
        )
        self.use_repo(name)
        return info, result

    def repo(self, name_or_id: str | None, hint: str = "") -> RepoInfo:
        """The repository named, else the current one. ``hint`` says how the caller names one
        (e.g. "pass -r/--repo NAME "): it leads the error when none is named nor selected."""
        if name_or_id:
            return self.history.repo(name_or_id)
        current = self.current_repo_name()
        if current is None:
            raise FednodeError(f"no repository given and none selected: {hint}or run 'fednode repo use NAME'")
        return self.history.repo(current)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_node(home: Path | None = None) -> Node:
    home = home or default_home()
    key_path = home / KEYPAIR_FILE
    if not key_path.exists():
        raise FednodeError(f"no node home at {home}: run 'fednode init' first")
    check_owned(home, key_path)  # another user's home or key is refused like a too-open mode
    home_mode = home.stat().st_mode & 0o777
    if home_mode & 0o022:  # others could swap the keypair or the store under us
        raise FednodeError(f"{home} is writable by others (mode {home_mode:o}); run: chmod 700 {home}")
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise FednodeError(f"{key_path} is readable by others (mode {mode:o}); run: chmod 600 {key_path}")
    config = load_config(home / CONFIG_FILE)
    identity = Identity.load(key_path)
    fsync = config.get("store", {}).get("fsync", True)
    store = Store(home / STORE_DIR, sync=fsync)
    try:
        tagged = blockindex.migrate(store)  # once: a store from before the block index gets one
    except BaseException:
        store.close()
        raise
    if tagged:
        log("block_index_built", tagged=tagged)
    zk = config.get("zk", {})
    # The generators are public and the same for every node: homes may share one table ($FEDNODE_ZK_CACHE).
    cache = Path(os.environ[ZK_CACHE_ENV]) if os.environ.get(ZK_CACHE_ENV) else home / ZK_DIR
    settings = ZkSettings(zk.get("commitments", True), cache, zk.get("max_parameters", DEFAULT_MAX_PARAMETERS),
                          home / Path(zk["keys"]).expanduser() if "keys" in zk else None)  # relative: to the home
    return Node(home, config, identity, store, ZkHistory(store, identity, settings))
