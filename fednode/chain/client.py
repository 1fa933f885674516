"""FederityClient: the fednode-facing API of the on-chain program, over any ChainBackend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from fednode.chain.backend import ChainBackend, TxResult
from fednode.chain.program import FederityProgram, NftRef, ed25519_proof, token_account_address
from protocol import chain as layout
from protocol import token2022 as tok


@dataclass(frozen=True)
class Anchored:
    """An anchored commit: the transaction and the repository's accumulator after it."""

    tx: TxResult
    accumulator: bytes
    commit_count: int


class FederityClient:
    """Holder-gated calls (add/remove member, anchor, merge, set_head) on an NFT-bound repository
    add the NFT accounts by themselves (the signer's associated token account), unless ``nft``
    is given."""

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

    def add_member(self, owner: Keypair, repo_id: bytes, member: Pubkey, nft: NftRef | None = None) -> TxResult:
        nft = nft or self.nft_ref(repo_id, owner.pubkey())
        return self.backend.send([self.program.add_member(owner.pubkey(), repo_id, member, nft=nft)], [owner])

    def remove_member(self, owner: Keypair, repo_id: bytes, member: Pubkey, nft: NftRef | None = None) -> TxResult:
        nft = nft or self.nft_ref(repo_id, owner.pubkey())
        return self.backend.send([self.program.remove_member(owner.pubkey(), repo_id, member, nft=nft)], [owner])

    def anchor_commit(
        self, author: Keypair, repo_id: bytes, body_digest: bytes, signature: bytes, *,
        kind: layout.Kind, branch: str | None, parents: Sequence[bytes] = (), commitment: bytes | None = None,
    ) -> Anchored:  # fmt: skip
        """Anchor a signed commit: the program recomputes its hash from (author, kind, parents,
        body_digest); ``signature`` is the commit's own Ed25519 signature over that hash.
        ``branch`` (fast-forwarded) or None to anchor without moving a head."""
        repo = self.repo(repo_id)
        nft = self.nft_ref(repo_id, author.pubkey())
        if nft is None:
            as_owner = repo is not None and repo.owner == bytes(author.pubkey())
        else:
            as_owner = self.holds(nft.holder_token, nft.mint, author.pubkey())
        body = layout.AnchorCommit(body_digest, kind, _branch(branch), tuple(parents), commitment)
        ixs = [ed25519_proof(author.pubkey(), signature, body.commit_hash(bytes(author.pubkey()))),
               self.program.anchor_commit(author.pubkey(), repo_id, body, as_owner=as_owner, nft=nft)]  # fmt: skip
        return _anchored(self.backend.send(ixs, [author]))

    def merge(
        self, owner: Keypair, repo_id: bytes, body_digest: bytes, signature: bytes, *, branch: str,
        inputs: Sequence[bytes], weights: Sequence[int], commitment: bytes | None = None,
        remainder: bytes | None = None,
    ) -> Anchored:  # fmt: skip
        """Anchor the owner's merge commit; ``inputs`` are its parents' commit hashes in the commit's
        order (they are part of the hash the program recomputes), ``signature`` its own.
        ``commitment`` alone: C(S) of the weighted sum; with ``remainder``: C(d) and C(r) (FedAvg)."""
        body = layout.Merge(body_digest, layout.branch_hash(branch), tuple(inputs), tuple(weights), commitment,
                            remainder)  # fmt: skip
        nft = self.nft_ref(repo_id, owner.pubkey())
        ixs = [ed25519_proof(owner.pubkey(), signature, body.commit_hash(bytes(owner.pubkey()))),
               self.program.merge(owner.pubkey(), repo_id, body, nft=nft)]  # fmt: skip
        return _anchored(self.backend.send(ixs, [owner]))

    def set_head(self, owner: Keypair, repo_id: bytes, branch: str, commit_hash: bytes,
                 nft: NftRef | None = None) -> TxResult:  # fmt: skip
        nft = nft or self.nft_ref(repo_id, owner.pubkey())
        ix = self.program.set_head(owner.pubkey(), repo_id, layout.branch_hash(branch), commit_hash, nft=nft)
        return self.backend.send([ix], [owner])

    def delete_branch(self, owner: Keypair, repo_id: bytes, branch: str) -> TxResult:
        return self.set_head(owner, repo_id, branch, layout.ZERO32)

    # --- NFT ---------------------------------------------------------------------------------

    def bind_nft(self, owner: Keypair, repo_id: bytes, mint: Pubkey, *, share_bps: int = 0,
                 lock_share: bool = False, head_branch: str = "main") -> TxResult:  # fmt: skip
        """Bind the repository to ``mint`` (minted with fednode.chain.nftmint, held by ``owner``)."""
        ix = self.program.bind_nft(owner.pubkey(), repo_id, mint, token_account_address(owner.pubkey(), mint),
                                   share_bps, lock_share, head_branch)  # fmt: skip
        return self.backend.send([ix], [owner])

    def sync_holder(self, payer: Keypair, repo_id: bytes, holder: Pubkey) -> TxResult:
        """Record ``holder`` (whose associated token account holds the NFT) as the holder."""
        mint = self._mint(repo_id)
        ix = self.program.sync_holder(repo_id, token_account_address(holder, mint))
        return self.backend.send([ix], [payer])

    def set_share(self, holder: Keypair, repo_id: bytes, share_bps: int) -> TxResult:
        mint = self._mint(repo_id)
        ix = self.program.set_share(holder.pubkey(), repo_id, token_account_address(holder.pubkey(), mint), share_bps)
        return self.backend.send([ix], [holder])

    def sell(self, seller: Keypair, buyer: Keypair, repo_id: bytes, price: int,
             sale_seq: int | None = None) -> TxResult:  # fmt: skip
        """The atomic sale, both parties signing here (the buyer pays the fee and opens its token
        account in the same transaction); ``sale_seq`` defaults to the record's current one."""
        mint, nft = self._mint(repo_id), self.nft(repo_id)
        if nft is None:
            raise ValueError("the repository has no nft record")
        seq = nft.sale_seq if sale_seq is None else sale_seq
        ixs = [tok.create_associated_token_account_idempotent(buyer.pubkey(), buyer.pubkey(), mint),
               self.program.sell(seller.pubkey(), buyer.pubkey(), repo_id, mint, price, seq,
                                 [Pubkey.from_bytes(c[0]) for c in nft.contributors])]  # fmt: skip
        return self.backend.send(ixs, [buyer, seller])

    def set_uri(self, holder: Keypair, repo_id: bytes, uri: str) -> TxResult:
        """The program tops up the mint's rent from the holder when the metadata grows."""
        ix = self.program.set_uri(holder.pubkey(), repo_id, self._mint(repo_id), uri)
        return self.backend.send([ix], [holder])

    def claim(self, payer: Keypair, repo_id: bytes, contributor: Pubkey) -> TxResult:
        """Pay ``contributor`` what sales left owed to it in the nft PDA (``payer`` pays the fee)."""
        nft = self.nft(repo_id)
        keys = [] if nft is None else [c[0] for c in nft.contributors]
        if bytes(contributor) not in keys:
            raise ValueError(f"{contributor} is not a contributor of the repository")
        ix = self.program.claim(repo_id, keys.index(bytes(contributor)), contributor)
        return self.backend.send([ix], [payer])

    def nft(self, repo_id: bytes) -> layout.NftAccount | None:
        data = self.backend.account_data(self.program.nft_address(repo_id))
        return layout.decode_nft(data) if data else None

    def nft_ref(self, repo_id: bytes, signer: Pubkey) -> NftRef | None:
        """The NFT accounts ``signer`` passes to act on the repository (None: not NFT-bound)."""
        repo = self.repo(repo_id)
        if repo is None or repo.mint == layout.ZERO32:
            return None
        mint = Pubkey.from_bytes(repo.mint)
        return NftRef(mint, token_account_address(signer, mint))

    def holds(self, token_account: Pubkey, mint: Pubkey, owner: Pubkey) -> bool:
        data = self.backend.account_data(token_account)
        if not data:
            return False
        account = tok.decode_token_account(data)
        return (account.mint, account.owner, account.amount) == (mint, owner, 1)

    def _mint(self, repo_id: bytes) -> Pubkey:
        repo = self.repo(repo_id)
        if repo is None or repo.mint == layout.ZERO32:
            raise ValueError("the repository is not bound to an NFT")
        return Pubkey.from_bytes(repo.mint)

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
