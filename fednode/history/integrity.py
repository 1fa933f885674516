"""Checks of one stored commit: its hashes, decoding, signature, manifest and tensor data.
``fednode.workflows.verify`` and ``fsck`` run them over whole histories."""

from __future__ import annotations

from fednode.errors import Corrupt, NotFound
from fednode.history import objstore
from fednode.storage.files import check_file
from fednode.storage.store import Txn
from protocol.multiformats import CID


def check_commit(txn: Txn, cid: CID, check_tensors: bool = True, rehash: bool = True) -> list[str]:
    """Problems with one commit: hashes, decoding, signature, manifest and tensor blocks.

    ``rehash=False`` walks each tensor's DAG and checks its size without re-hashing its
    blocks: only for blocks hash-checked when they were stored (``Txn.put_block``).
    """
    problems: list[str] = []
    try:
        commit = objstore.load_commit(txn, cid)
    except (Corrupt, NotFound) as exc:
        return [str(exc)]
    if not objstore.signature_valid(commit):
        problems.append(f"commit {cid}: invalid signature")
    try:
        manifest = objstore.load_manifest(txn, commit.weights)
    except (Corrupt, NotFound) as exc:
        return problems + [f"commit {cid}: {exc}"]
    if not check_tensors:
        return problems
    for name, entry in manifest.tensors.items():
        if entry.encoding == "same" or entry.cid is None:  # "same": nothing stored (the decoder insists)
            continue
        try:  # bounded by the entry's size before any walk: peers' DAGs may be bombs
            check_file(txn, entry.cid, entry.size, rehash)
        except (Corrupt, NotFound) as exc:
            problems.append(f"commit {cid} tensor {name!r}: {exc}")
    return problems
