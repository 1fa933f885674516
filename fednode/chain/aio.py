"""The node-facing chain interface: one async ChainBackend API over embedded LiteSVM or JSON-RPC.

Async because the RPC backend talks to a network under trio; the embedded backend simply does
its work inline. Everything above this (anchoring, outbox, verify) is written once against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from fednode.chain.backend import ChainError, TxResult


class ChainUnavailable(Exception):
    """The chain could not be reached (connection refused, timeout): try again later."""


@dataclass(frozen=True)
class ChainId:
    """Which chain: its genesis hash and the program's address, plus the endpoint that reached it.

    The genesis hash is the identity (a cluster answers ``getGenesisHash``; an embedded chain and
    ``fednode devchain`` draw a random one when created). ``genesis`` is None while it is not
    known: an RPC endpoint that has not answered yet is identified by its URL until it does."""

    genesis: str | None  # base58
    program_id: str
    endpoint: str  # "embedded" or the JSON-RPC URL

    def to_json(self) -> dict[str, Any]:
        return {"genesis": self.genesis, "program_id": self.program_id, "endpoint": self.endpoint}

    @classmethod
    def from_json(cls, data: Any) -> ChainId | None:
        if not isinstance(data, dict):
            return None
        genesis = data.get("genesis")
        return cls(genesis if isinstance(genesis, str) else None, str(data.get("program_id", "")),
                   str(data.get("endpoint", "")))  # fmt: skip

    def matches(self, current: ChainId) -> bool:
        """Whether something meant for this chain may go to ``current``: the same program and genesis
        hash; where either genesis hash is not known yet, the same endpoint stands in for it."""
        if self.program_id != current.program_id:
            return False
        if self.genesis and current.genesis:
            return self.genesis == current.genesis
        return self.endpoint == current.endpoint

    def label(self) -> str:
        genesis = f"genesis {self.genesis[:12]}" if self.genesis else "genesis not known yet"
        return f"{self.endpoint} ({genesis})"


class AsyncChainBackend(ABC):
    kind: str  # "embedded" | "rpc"
    endpoint: str  # "embedded" | the JSON-RPC URL
    program_id: Pubkey
    faucet: bool  # airdrops work (embedded, devchain, test validators)

    @abstractmethod
    async def genesis_hash(self) -> str:
        """The chain's genesis hash (base58); ChainUnavailable when it cannot be reached."""

    async def chain_id(self, required: bool = True) -> ChainId:
        """This backend's chain; with ``required=False`` an unreachable one has genesis None."""
        try:
            genesis: str | None = await self.genesis_hash()
        except (ChainUnavailable, ChainError):
            if required:
                raise
            genesis = None
        return ChainId(genesis, str(self.program_id), self.endpoint)

    @abstractmethod
    async def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        """Sign (first signer pays), execute atomically and wait until confirmed, or raise
        ChainError (rejected) / ChainUnavailable (unreachable: nothing is known to have landed)."""

    @abstractmethod
    async def send_transaction(self, tx: Transaction) -> TxResult:
        """Execute a transaction that is already fully signed (e.g. an accepted sale offer, signed by
        seller and buyer) and wait until confirmed; errors as ``send``."""

    @abstractmethod
    async def latest_blockhash(self) -> Hash:
        """A blockhash the chain accepts now, for transactions signed here and sent later."""

    async def minimum_balance(self, size: int) -> int:
        """Lamports an account of ``size`` bytes needs to be rent-exempt (Solana's default rent;
        backends that can ask their chain do)."""
        return (size + 128) * 3480 * 2

    @abstractmethod
    async def accounts_data(self, addresses: Sequence[Pubkey]) -> list[bytes | None]:
        """Data of each address (None where no account lives)."""

    async def account_data(self, address: Pubkey) -> bytes | None:
        return (await self.accounts_data([address]))[0]

    @abstractmethod
    async def balance(self, address: Pubkey) -> int:
        """Lamports held by ``address``."""

    @abstractmethod
    async def airdrop(self, address: Pubkey, lamports: int) -> None:
        """Fund ``address`` (embedded and dev chains only)."""

    @abstractmethod
    async def slot(self) -> int: ...

    async def aclose(self) -> None:
        return None


__all__ = ["AsyncChainBackend", "ChainError", "ChainId", "ChainUnavailable", "TxResult"]
