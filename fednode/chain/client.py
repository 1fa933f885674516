"""FederityClient: the fednode-facing API of the on-chain program, over any ChainBackend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from fednode.chain.backend import ChainBackend, TxResult
from fednode.chain.program import FederityProgram, ed25519_proof
from protocol import chain as layout


@dataclass(frozen=True)
class Anchored:
    """An anchored commit: the transaction and the repository's accumulator after it."""

    tx: TxResult
    accumulator: bytes
    commit_count: int


class FederityClient:
    def __init__(self, backend: ChainBackend, program_id: Pubkey) -> None:
        self.backend = backend
        self.program = FederityProgram(program_id)

    # --- writes -------------------------------------------------------------------------------

    def create_repo(self, owner: Keypair, repo_id: bytes, body_digest: bytes, signature: bytes,
                    mint: bytes = layout.ZERO32) -> TxResult:  # fmt: skip
        """Register the repository whose genesis commit (authored by ``owner``) has hash ``repo_id``
        and body digest ``body_digest``; ``signature``: the genesis commit's own over repo_id."""
        ixs = [ed25519_proof(owner.pubkey(), signature, repo_id),
               self.program.create_repo(owner.pubkey(), repo_id, body_digest, mint)]  # fmt: skip
        return self.backend.send(ixs, [owner])

    def add_member(self, owner: Keypair, repo_id: bytes, member: Pubkey) -> TxResult:
        return self.backend.send([self.program.add_member(owner.pubkey(), repo_id, member)], [owner])

    def remove_member(self, owner: Keypair, repo_id: bytes, member: Pubkey) -> TxResult:
        return self.backend.send([self.program.remove_member(owner.pubkey(), repo_id, member)], [owner])

    def anchor_commit(
        self, author: Keypair, repo_id: bytes, body_digest: bytes, signature: bytes, *,
        kind: layout.Kind, branch: str | None, parents: Sequence[bytes] = (), commitment: bytes | None = None,
    ) -> Anchored:  # fmt: skip
        """Anchor a signed commit: the program recomputes its hash from (author, kind, parents,
        body_digest); ``signature`` is the commit's own Ed25519 signature over that hash.
        ``branch`` (fast-forwarded) or None to anchor without moving a head."""
        repo = self.repo(repo_id)
        as_owner = repo is not None and repo.owner == bytes(author.pubkey())
        body = layout.AnchorCommit(body_digest, kind, _branch(branch), tuple(parents), commitment)
        ixs = [ed25519_proof(author.pubkey(), signature, body.commit_hash(bytes(author.pubkey()))),
               self.program.anchor_commit(author.pubkey(), repo_id, body, as_owner=as_owner)]  # fmt: skip
        return _anchored(self.backend.send(ixs, [author]))

    def merge(
        self, owner: Keypair, repo_id: bytes, body_digest: bytes, signature: bytes, *, branch: str,
        inputs: Sequence[bytes], weights: Sequence[int], commitment: bytes | None = None,
    ) -> Anchored:  # fmt: skip
        """Anchor the owner's merge commit; ``inputs`` are its parents' commit hashes in the commit's
        order (they are part of the hash the program recomputes), ``signature`` its own."""
        body = layout.Merge(body_digest, layout.branch_hash(branch), tuple(inputs), tuple(weights), commitment)
        ixs = [ed25519_proof(owner.pubkey(), signature, body.commit_hash(bytes(owner.pubkey()))),
               self.program.merge(owner.pubkey(), repo_id, body)]  # fmt: skip
        return _anchored(self.backend.send(ixs, [owner]))

    def set_head(self, owner: Keypair, repo_id: bytes, branch: str, commit_hash: bytes) -> TxResult:
        ix = self.program.set_head(owner.pubkey(), repo_id, layout.branch_hash(branch), commit_hash)
        return self.backend.send([ix], [owner])

    def delete_branch(self, owner: Keypair, repo_id: bytes, branch: str) -> TxResult:
        return self.set_head(owner, repo_id, branch, layout.ZERO32)

    # --- reads --------------------------------------------------------------------------------

    def repo(self, repo_id: bytes) -> layout.RepoAccount | None:
        data = self.backend.account_data(self.program.repo_address(repo_id))
        return layout.decode_repo(data) if data else None

    def commit(self, repo_id: bytes, commit_hash: bytes) -> layout.CommitAccount | None:
        data = self.backend.account_data(self.program.commit_address(repo_id, commit_hash))
        return layout.decode_commit(data) if data else None

    def is_member(self, repo_id: bytes, member: Pubkey) -> bool:
        return bool(self.backend.account_data(self.program.member_address(repo_id, member)))

    def head(self, repo_id: bytes, branch: str) -> bytes | None:
        repo = self.repo(repo_id)
        return None if repo is None else repo.branches.get(layout.branch_hash(branch))


def _branch(name: str | None) -> bytes:
    return layout.ZERO32 if name is None else layout.branch_hash(name)


def _anchored(tx: TxResult) -> Anchored:
    acc, count = layout.decode_return_data(tx.return_data)
    return Anchored(tx, acc, count)
