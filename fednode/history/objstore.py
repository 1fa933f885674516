"""Commits and manifests as stored blocks: load (hash-checked, decoded), sign, put."""

from __future__ import annotations

from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.history import blockindex
from fednode.identity import Identity, verify_signature
from fednode.storage.store import Txn
from protocol.multiformats import CID, DAG_CBOR, FormatError
from protocol.objects import MAX_OBJECT_BYTES, Commit, Manifest


def load_commit(txn: Txn, cid: CID) -> Commit:
    """The commit ``cid`` names: NotFound when absent or not a DAG-CBOR CID, Corrupt when its block
    fails its hash or does not decode."""
    if cid.codec != DAG_CBOR:
        raise NotFound(f"{cid} is not a commit")
    block = txn.get_block(cid)
    if not cid.verify(block):
        raise Corrupt(f"commit block {cid} does not match its hash")
    try:
        return Commit.decode(block)
    except FormatError as exc:
        raise Corrupt(f"block {cid} is not a valid commit: {exc}") from None


def load_manifest(txn: Txn, cid: CID) -> Manifest:
    block = txn.get_block(cid)
    if not cid.verify(block):
        raise Corrupt(f"manifest block {cid} does not match its hash")
    try:
        return Manifest.decode(block)
    except FormatError as exc:
        raise Corrupt(f"block {cid} is not a valid weights manifest: {exc}") from None


def sign(identity: Identity | None, commit: Commit) -> Commit:
    """``commit`` signed by ``identity``, which must be its author."""
    if identity is None:
        raise FednodeError("no identity: run 'fednode init' first")
    if commit.author != identity.public_key:
        raise FednodeError("commits are signed by their author only")
    try:
        sig = identity.sign(commit.commit_hash())
    except ValueError as exc:  # e.g. a NaN metric: not representable in DAG-CBOR
        raise FednodeError(f"invalid commit: {exc}") from None
    return Commit(**{**commit.__dict__, "sig": sig})


def signature_valid(commit: Commit) -> bool:
    return verify_signature(commit.author, commit.commit_hash(), commit.sig)


def put_objects(txn: Txn, manifest: Manifest, commit: Commit) -> int:
    """Store a commit and its manifest, and record them and the commit's tensor files as its
    repository's in the block index (the tensor blocks are in the store by now); returns the bytes
    newly stored."""
    before = txn.new_bytes
    manifest_block, commit_block = manifest.encode(), commit.encode()
    try:  # store only what every reader accepts (a bad name, message or metric would break the repo)
        Manifest.decode(manifest_block)
        Commit.decode(commit_block)
    except FormatError as exc:
        raise FednodeError(f"invalid commit: {exc}") from None
    if len(manifest_block) > MAX_OBJECT_BYTES:  # else it would commit, but no peer or CAR import takes it
        raise FednodeError(f"the model's manifest would take {len(manifest_block)} bytes, over the {MAX_OBJECT_BYTES} "
                           f"a block may have: {len(manifest.tensors)} tensors are too many for one commit")
    if len(commit_block) > MAX_OBJECT_BYTES:
        raise FednodeError(f"the commit would take {len(commit_block)} bytes, over the {MAX_OBJECT_BYTES} "
                           "a block may have: shorten its message or metrics")
    manifest_cid, commit_cid = CID.hash(DAG_CBOR, manifest_block), CID.hash(DAG_CBOR, commit_block)
    txn.put_block(manifest_cid, manifest_block, trusted=True)
    txn.put_block(commit_cid, commit_block, trusted=True)
    repo_id = commit.repo if commit.repo is not None else commit.commit_hash()
    blockindex.tag_commit(txn, repo_id, commit_cid, manifest_cid, manifest)
    return txn.new_bytes - before
