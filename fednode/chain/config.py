"""Open the chain backend a node's config.toml names (``[chain] backend = "embedded" | "rpc"``).

    [chain]
    backend = "rpc"
    url = "http://127.0.0.1:8899"       # fednode devchain, or any cluster's JSON-RPC URL
    program_id = "..."                  # where federity is deployed (default: the dev program id)
    airdrop = true                      # fund the wallet from the faucet (default: loopback URLs only)
    program_elf = "build/programs/federity_v3.so"   # embedded/devchain: a prebuilt ELF (optional)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from fednode.chain.aio import AsyncChainBackend
from fednode.errors import FednodeError, first_line
from fednode.node import check_config
from fednode.storage.store import Store

# The address federity runs at on the embedded chain and on `fednode devchain` (no deploy step:
# both load the ELF at this id). Derived from a public label, so it is the same on every node.
DEV_PROGRAM_ID: Pubkey = Keypair.from_seed(hashlib.sha256(b"fednode/federity/dev-program-id").digest()).pubkey()
BACKENDS = ("embedded", "rpc")


def program_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "fednode" / "programs"


def program_elf(section: dict[str, Any] | None = None) -> bytes:
    """The SBPF v3 ELF of federity: a configured file, else built from programs/ (cached)."""
    path = (section or {}).get("program_elf")
    if path:
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise FednodeError(f"cannot read [chain] program_elf {path}: {exc.strerror}") from None
    from fednode.chain.elf import federity_elf

    try:
        return federity_elf(program_cache_dir())
    except Exception as exc:  # missing toolchain, build error: one line for the CLI
        raise FednodeError(f"cannot build the federity program: {first_line(exc)}") from None


def parse_pubkey(what: str, text: str) -> Pubkey:
    try:
        return Pubkey.from_string(text)
    except ValueError:
        raise FednodeError(f"invalid {what} {text!r}: expected a base58 Solana address") from None


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def chain_section(config: dict[str, Any]) -> dict[str, Any]:
    section = config.get("chain") or {}
    if not isinstance(section, dict):
        raise FednodeError("invalid config: [chain] must be a table")
    check_config({"chain": section}, "config")  # types, for configs that did not come through open_node
    backend = section.get("backend", "embedded")
    if backend not in BACKENDS:
        raise FednodeError(f"invalid [chain] backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "rpc":
        url = section.get("url")
        if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https"):
            raise FednodeError("[chain] backend = \"rpc\" needs url = \"http(s)://...\"")
    return {**section, "backend": backend}


def open_backend(config: dict[str, Any], store: Store) -> AsyncChainBackend:
    section = chain_section(config)
    program_id = parse_pubkey("[chain] program_id", section["program_id"]) if section.get("program_id") \
        else DEV_PROGRAM_ID  # fmt: skip
    if section["backend"] == "embedded":
        from fednode.chain.embedded import EmbeddedBackend

        return EmbeddedBackend(store, program_id, program_elf(section))
    from fednode.chain.rpc import RpcBackend

    url = section["url"]
    return RpcBackend(url, program_id, faucet=bool(section.get("airdrop", is_loopback(url))),
                      timeout=float(section.get("timeout_s", 10)))  # fmt: skip
