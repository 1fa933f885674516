"""fednode's link to Solana: the federity program's client and the backends it runs over.

program.py builds instructions; backend.py is the sync LiteSVM backend (program tests, bench);
aio.py the node-facing async backend interface, implemented by embedded.py (LiteSVM persisted
in the node store) and rpc.py (solana-py under trio); anchoring.py queues (outbox.py), sends
and verifies anchors; config.py opens the backend config.toml names; devchain.py serves
``fednode devchain``.
"""

from fednode.chain.backend import ChainBackend, ChainError, LiteSVMBackend, TxResult
from fednode.chain.client import Anchored, FederityClient
from fednode.chain.elf import federity_elf
from fednode.chain.program import ED25519_PROGRAM_ID, INSTRUCTIONS_SYSVAR_ID, SYSTEM_PROGRAM_ID, FederityProgram

__all__ = [
    "ED25519_PROGRAM_ID", "INSTRUCTIONS_SYSVAR_ID", "SYSTEM_PROGRAM_ID",
    "Anchored", "ChainBackend", "ChainError", "FederityClient", "FederityProgram", "LiteSVMBackend", "TxResult",
    "federity_elf",
]  # fmt: skip
