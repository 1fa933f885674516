"""fednode's link to Solana: the federity program's client and the backends it runs over.

program.py builds instructions; backend.py is the sync LiteSVM backend (program tests, bench);
aio.py the node-facing async backend interface, implemented by embedded.py (LiteSVM persisted
in the node store) and rpc.py (solana-py under trio); anchoring.py queues (outbox.py), sends
and verifies anchors; config.py opens the backend config.toml names; devchain.py serves
``fednode devchain``; session.py runs one CLI session with the node's backend and allowlist.py
changes the on-chain member allowlist with its undo.

Nothing is imported here: solders and LiteSVM load only when a chain module is used (fast start).
"""
