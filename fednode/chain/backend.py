"""Where transactions go: the ChainBackend interface and its embedded LiteSVM implementation.

A backend sends already-built instructions and reads accounts; it knows nothing of federity.
This synchronous interface serves the program tests and benchmarks (and the embedded backend
runs on LiteSVMBackend); a node talks to chains through aio.py's async interface, which the
embedded and JSON-RPC backends implement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError


@dataclass(frozen=True)
class TxResult:
    signature: str
    compute_units: int  # whole transaction
    fee: int  # lamports
    logs: list[str] = field(default_factory=list)
    return_data: bytes = b""


class ChainError(Exception):
    """A rejected transaction. ``code`` is the custom program error number, if it was one."""

    def __init__(self, message: str, code: int | None = None, index: int | None = None,
                 logs: Sequence[str] = ()) -> None:  # fmt: skip
        super().__init__(message)
        self.code = code
        self.index = index  # instruction that failed
        self.logs = list(logs)


class ChainBackend(ABC):
    @abstractmethod
    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        """Sign with ``signers`` (the first pays the fee) and execute atomically, or raise ChainError."""

    @abstractmethod
    def account_data(self, address: Pubkey) -> bytes | None:
        """Data of an existing account, None when the address holds no account."""

    @abstractmethod
    def balance(self, address: Pubkey) -> int:
        """Lamports held by ``address`` (0 when it holds no account)."""

    @abstractmethod
    def slot(self) -> int:
        """The current slot."""


class LiteSVMBackend(ChainBackend):
    """An in-process Solana VM: fast, deterministic, no network. Deploy programs with ``deploy``."""

    def __init__(self, svm: LiteSVM | None = None) -> None:
        self.svm = svm if svm is not None else LiteSVM()

    def deploy(self, program_id: Pubkey, elf: bytes) -> None:
        self.svm.add_program(program_id, elf)

    def airdrop(self, address: Pubkey, lamports: int) -> None:
        result = self.svm.airdrop(address, lamports)
        if isinstance(result, FailedTransactionMetadata):
            raise ChainError(f"airdrop failed: {result.err()}")

    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        if not signers:
            raise ValueError("at least one signer (the fee payer) is required")
        message = Message(list(instructions), signers[0].pubkey())
        return self.send_transaction(Transaction(list(signers), message, self.svm.latest_blockhash()))

    def send_transaction(self, tx: Transaction) -> TxResult:
        """Execute ``tx`` as it is signed (all signatures present), or raise ChainError."""
        result = self.svm.send_transaction(tx)
        # A fresh blockhash per transaction: identical retries would otherwise be AlreadyProcessed.
        self.svm.expire_blockhash()
        if isinstance(result, FailedTransactionMetadata):
            raise _chain_error(result)
        ret = result.return_data()
        return TxResult(
            signature=str(result.signature()), compute_units=result.compute_units_consumed(),
            fee=result.fee(), logs=list(result.logs()), return_data=bytes(ret.data) if ret else b"",
        )  # fmt: skip

    def account_data(self, address: Pubkey) -> bytes | None:
        account = self.svm.get_account(address)
        return None if account is None or account.lamports == 0 else bytes(account.data)

    def balance(self, address: Pubkey) -> int:
        return self.svm.get_balance(address) or 0

    def slot(self) -> int:
        return self.svm.get_clock().slot


def writable_keys(message: Message) -> list[Pubkey]:
    """The accounts a legacy message may write (the fee payer first), from its header."""
    header, keys = message.header, message.account_keys
    signed, n = header.num_required_signatures, len(keys)
    return [k for i, k in enumerate(keys)
            if (i < signed - header.num_readonly_signed_accounts)
            or (signed <= i < n - header.num_readonly_unsigned_accounts)]  # fmt: skip


def _chain_error(failed: FailedTransactionMetadata) -> ChainError:
    err = failed.err()
    logs = failed.meta().logs()
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        code = inner.code if isinstance(inner, InstructionErrorCustom) else None
        return ChainError(f"instruction {err.index} failed: {inner}", code, err.index, logs)
    return ChainError(f"transaction failed: {err}", None, None, logs)
