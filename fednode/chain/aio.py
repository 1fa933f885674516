"""The node-facing chain interface: one async ChainBackend API over embedded LiteSVM or JSON-RPC.

Async because the RPC backend talks to a network under trio; the embedded backend simply does
its work inline. Everything above this (anchoring, outbox, verify) is written once against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from fednode.chain.backend import ChainError, TxResult


class ChainUnavailable(Exception):
    """The chain could not be reached (connection refused, timeout): try again later."""


class AsyncChainBackend(ABC):
    kind: str  # "embedded" | "rpc"
    program_id: Pubkey
    faucet: bool  # airdrops work (embedded, devchain, test validators)

    @abstractmethod
    async def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        """Sign (first signer pays), execute atomically and wait until confirmed, or raise
        ChainError (rejected) / ChainUnavailable (unreachable: nothing is known to have landed)."""

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


__all__ = ["AsyncChainBackend", "ChainError", "ChainUnavailable", "TxResult"]
