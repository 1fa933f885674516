"""The embedded chain: an in-process LiteSVM whose accounts persist in the node's store.

After every successful transaction (and airdrop) the accounts it could have changed (fee payer
and every writable account) are written to the store's ``chain`` database with the slot and a
state version; a fresh LiteSVM, with the federity program re-added, is loaded from there.
Program-owned PDAs and wallet balances therefore survive process restarts.

Several processes may use one node's embedded chain (CLI commands next to a daemon): every
transaction runs inside one LMDB write transaction (LMDB serialises writers across processes),
and the in-memory VM is reloaded first whenever another process has moved the state version.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from solders.account import Account
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from fednode.chain.aio import AsyncChainBackend
from fednode.chain.backend import LiteSVMBackend, TxResult, writable_keys
from fednode.storage.store import Store, Txn
from protocol.multiformats import b58encode

DB = "chain"
_ACCOUNT = b"acct/"  # + 32-byte address -> bincode Account
_SLOT = b"meta/slot"
_VERSION = b"meta/version"  # bumped by every persisted change
_GENESIS = b"meta/genesis"  # base58 of 32 random bytes, drawn when the chain is first used


def _u64(raw: bytes | None) -> int:
    return struct.unpack("<Q", raw)[0] if raw else 0


class EmbeddedBackend(AsyncChainBackend):
    kind = "embedded"
    endpoint = "embedded"
    faucet = True

    def __init__(self, store: Store, program_id: Pubkey, elf: bytes) -> None:
        self.store = store
        self.program_id = program_id
        self.elf = elf
        self.version = -1  # nothing loaded yet
        self.inner = LiteSVMBackend()
        with store.read() as txn:
            self._sync(txn)

    def _sync(self, txn: Txn) -> None:
        """Reload the VM from the store if another process (or nobody yet) changed it."""
        version = _u64(txn.kv_get(DB, _VERSION))
        if version == self.version:
            return
        inner = LiteSVMBackend()
        for key, value in txn.kv_items(DB, _ACCOUNT):
            inner.svm.set_account(Pubkey.from_bytes(key[len(_ACCOUNT):]), Account.from_bytes(value))
        # Added after the restore so a stored account can never shadow the program we run.
        inner.deploy(self.program_id, self.elf)
        slot = txn.kv_get(DB, _SLOT)
        if slot is not None:
            inner.svm.warp_to_slot(_u64(slot))
        self.inner, self.version = inner, version

    def _persist(self, txn: Txn, addresses: Sequence[Pubkey]) -> None:
        svm = self.inner.svm
        svm.warp_to_slot(svm.get_clock().slot + 1)  # one slot per transaction: records get distinct slots
        for address in dict.fromkeys(addresses):
            account = svm.get_account(address)
            key = _ACCOUNT + bytes(address)
            if account is None or account.lamports == 0:  # closed (e.g. a removed member)
                txn.kv_delete(DB, key)
            else:
                txn.kv_put(DB, key, bytes(account))
        txn.kv_put(DB, _SLOT, struct.pack("<Q", svm.get_clock().slot))
        self.version += 1
        txn.kv_put(DB, _VERSION, struct.pack("<Q", self.version))

    def send_sync(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        with self.store.write() as txn:
            self._sync(txn)
            try:
                result = self.inner.send(instructions, signers)
            except Exception:
                self.version = -1  # a failed transaction changes nothing, but reload to be sure
                raise
            touched = [signers[0].pubkey()] + [
                meta.pubkey for ix in instructions for meta in ix.accounts if meta.is_writable
            ]
            self._persist(txn, touched)
            return result

    def send_transaction_sync(self, tx: Transaction) -> TxResult:
        with self.store.write() as txn:
            self._sync(txn)
            try:
                result = self.inner.send_transaction(tx)
            except Exception:
                self.version = -1
                raise
            self._persist(txn, writable_keys(tx.message))
            return result

    async def send_transaction(self, tx: Transaction) -> TxResult:
        return self.send_transaction_sync(tx)

    async def latest_blockhash(self) -> Hash:
        return self._fresh().svm.latest_blockhash()

    async def minimum_balance(self, size: int) -> int:
        return self._fresh().svm.minimum_balance_for_rent_exemption(size)

    async def genesis_hash(self) -> str:
        """A random identity drawn once per store: every node's embedded chain is a chain of its own
        (LiteSVM's own first blockhash is the same everywhere, so it cannot tell them apart)."""
        with self.store.read() as txn:
            raw = txn.kv_get(DB, _GENESIS)
        if raw is None:
            with self.store.write() as txn:
                raw = txn.kv_get(DB, _GENESIS)
                if raw is None:
                    raw = b58encode(os.urandom(32)).encode()
                    txn.kv_put(DB, _GENESIS, raw)
        return bytes(raw).decode()

    async def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        return self.send_sync(instructions, signers)

    def _fresh(self) -> LiteSVMBackend:
        with self.store.read() as txn:
            self._sync(txn)
        return self.inner

    async def accounts_data(self, addresses: Sequence[Pubkey]) -> list[bytes | None]:
        inner = self._fresh()
        return [inner.account_data(a) for a in addresses]

    async def balance(self, address: Pubkey) -> int:
        return self._fresh().balance(address)

    async def airdrop(self, address: Pubkey, lamports: int) -> None:
        with self.store.write() as txn:
            self._sync(txn)
            self.inner.airdrop(address, lamports)
            self._persist(txn, [address])

    async def slot(self) -> int:
        return self._fresh().slot()
