"""The node home: identity (wallet keypair), config.toml and the store."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fednode.errors import FednodeError
from fednode.history import History
from fednode.identity import Identity
from fednode.store import Store

KEYPAIR_FILE = "keypair.json"
CONFIG_FILE = "config.toml"
STORE_DIR = "store"

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
# min_free_bytes = 1073741824 (fetches never leave less free disk than this: 1 GiB)

[api]
# the local control API binds to loopback only, with the bearer token in api.token
host = "127.0.0.1"
port = 5710

[chain]
# embedded (LiteSVM in this process, state in the store) | rpc (fednode devchain or a cluster: url, program_id)
backend = "embedded"
# optional: flush_interval = 10 (seconds between the daemon's sends of queued anchors)

[store]
# fsync at every commit: survives power loss. false is faster and still survives a
# crashed or killed process, not a kernel crash or power cut.
fsync = true

[repository_defaults]
scale_bits = 24
snapshot_interval = 8
"""


def default_home() -> Path:
    return Path(os.environ.get("FEDNODE_HOME") or "~/.fednode").expanduser()


def init_home(home: Path, keypair: Path | None = None, force: bool = False) -> Identity:
    """Create the node home. Refuses to overwrite an existing identity unless ``force``."""
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
    Store(home / STORE_DIR).close()
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

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_node(home: Path | None = None) -> Node:
    home = home or default_home()
    key_path = home / KEYPAIR_FILE
    if not key_path.exists():
        raise FednodeError(f"no node home at {home}: run 'fednode init' first")
    home_mode = home.stat().st_mode & 0o777
    if home_mode & 0o022:  # others could swap the keypair or the store under us
        raise FednodeError(f"{home} is writable by others (mode {home_mode:o}); run: chmod 700 {home}")
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise FednodeError(f"{key_path} is readable by others (mode {mode:o}); run: chmod 600 {key_path}")
    try:
        config = tomllib.loads((home / CONFIG_FILE).read_text())
    except FileNotFoundError:
        config = tomllib.loads(DEFAULT_CONFIG.format(name="fednode"))
    except tomllib.TOMLDecodeError as exc:
        raise FednodeError(f"invalid {home / CONFIG_FILE}: {exc}") from None
    identity = Identity.load(key_path)
    fsync = config.get("store", {}).get("fsync", True)
    if not isinstance(fsync, bool):
        raise FednodeError(f"invalid {home / CONFIG_FILE}: [store] fsync must be true or false")
    store = Store(home / STORE_DIR, sync=fsync)
    return Node(home, config, identity, store, History(store, identity))
