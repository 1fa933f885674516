"""Instruction builders for the federity program (solders Instructions; no I/O).

The byte layouts live in protocol.chain; this module adds addresses: PDAs, account lists and
the Ed25519 precompile instruction that proves a signature over a commit hash (or, for
create_repo, over the repository id). Instructions carry body digests, not commit hashes: the
commit record's address is derived from the hash the program will recompute
(``layout.commit_hash(signer, kind, parents, body_digest)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from solders.compute_budget import set_compute_unit_limit
from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey

from protocol import chain as layout
from protocol import token2022 as tok

SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")
INSTRUCTIONS_SYSVAR_ID = Pubkey.from_string("Sysvar1nstructions1111111111111111111111111")
ED25519_PROGRAM_ID = Pubkey.from_string("Ed25519SigVerify111111111111111111111111111")
# the Token-2022 names live in protocol.token2022; re-exported here for the program's callers
TOKEN_2022_PROGRAM_ID = tok.TOKEN_2022_PROGRAM_ID
ASSOCIATED_TOKEN_PROGRAM_ID = tok.ASSOCIATED_TOKEN_PROGRAM_ID
token_account_address = tok.associated_token_address
# Key bytes per write_vk: a 1,147-byte key goes in two transactions (768, then 379 with the seal),
# each under 1,232 bytes also with the four NFT accounts.
VK_CHUNK = 768
PROVE_MERGE_CU_LIMIT = 300_000  # 8 inputs take ~196k of the default 200k, 16 about 235k


@dataclass(frozen=True)
class NftRef:
    """The NFT of an NFT-bound repository, as the holder-gated instructions need it: the mint and
    the token account (of the signer, for a holder action) that holds it."""

    mint: Pubkey
    holder_token: Pubkey


def _ro(key: Pubkey) -> AccountMeta:
    return AccountMeta(key, is_signer=False, is_writable=False)


def _w(key: Pubkey) -> AccountMeta:
    return AccountMeta(key, is_signer=False, is_writable=True)


def _payer(key: Pubkey) -> AccountMeta:
    return AccountMeta(key, is_signer=True, is_writable=True)


def ed25519_proof(author: Pubkey, signature: bytes, commit_hash: bytes) -> Instruction:
    """The precompile instruction that must accompany anchor_commit/merge (message: the commit
    hash, as the program recomputes it) and create_repo (message: the repo id, i.e. the genesis
    commit hash) in the same tx."""
    data = layout.ed25519_instruction_data(bytes(author), signature, commit_hash)
    return Instruction(ED25519_PROGRAM_ID, data, [])


@dataclass(frozen=True)
class FederityProgram:
    """Builds federity instructions for the program deployed at ``program_id``."""

    program_id: Pubkey

    def _pda(self, seeds: list[bytes]) -> Pubkey:
        return Pubkey.find_program_address(seeds, self.program_id)[0]

    def repo_address(self, repo_id: bytes) -> Pubkey:
        return self._pda(layout.repo_seeds(repo_id))

    def member_address(self, repo_id: bytes, member: Pubkey) -> Pubkey:
        return self._pda(layout.member_seeds(repo_id, bytes(member)))

    def commit_address(self, repo_id: bytes, commit_hash: bytes) -> Pubkey:
        return self._pda(layout.commit_seeds(repo_id, commit_hash))

    def nft_address(self, repo_id: bytes) -> Pubkey:
        return self._pda(layout.nft_seeds(repo_id))

    def zkvk_address(self, repo_id: bytes, remainder: bool = False) -> Pubkey:
        """The update key's record, or with ``remainder`` the merge remainder key's."""
        return self._pda(layout.zkvk_seeds(repo_id, remainder))

    def _nft_metas(self, repo_id: bytes, nft: NftRef | None) -> list[AccountMeta]:
        """The four trailing accounts of a holder-gated instruction on an NFT-bound repository."""
        if nft is None:
            return []
        return [_ro(nft.holder_token), _w(self.nft_address(repo_id)), _w(nft.mint), _ro(TOKEN_2022_PROGRAM_ID)]

    def _ix(self, body: layout.Instruction, metas: list[AccountMeta]) -> Instruction:
        return Instruction(self.program_id, layout.encode_instruction(body), metas)

    def create_repo(self, owner: Pubkey, repo_id: bytes, body_digest: bytes,
                    mint: bytes = layout.ZERO32) -> Instruction:  # fmt: skip
        """``repo_id``/``body_digest``: the genesis commit's hash and body digest (the program checks
        ``commit_hash(owner, INIT, (), body_digest) == repo_id``). Send it after
        ``ed25519_proof(owner, signature over repo_id, repo_id)`` in the same tx."""
        metas = [_payer(owner), _w(self.repo_address(repo_id)), _ro(INSTRUCTIONS_SYSVAR_ID),
                 _ro(SYSTEM_PROGRAM_ID)]  # fmt: skip
        return self._ix(layout.CreateRepo(repo_id, body_digest, mint), metas)

    # The holder-gated instructions: on an NFT-bound repository ``owner`` is the NFT's holder and
    # ``nft`` names the mint and the holder's token account (the four trailing accounts).

    def add_member(self, owner: Pubkey, repo_id: bytes, member: Pubkey, *, nft: NftRef | None = None) -> Instruction:
        metas = [_payer(owner), _ro(self.repo_address(repo_id)),
                 _w(self.member_address(repo_id, member)), _ro(SYSTEM_PROGRAM_ID),
                 *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(layout.AddMember(bytes(member)), metas)

    def remove_member(self, owner: Pubkey, repo_id: bytes, member: Pubkey, *,
                      nft: NftRef | None = None) -> Instruction:  # fmt: skip
        metas = [_payer(owner), _ro(self.repo_address(repo_id)), _w(self.member_address(repo_id, member)),
                 *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(layout.RemoveMember(bytes(member)), metas)

    def anchor_commit(
        self, author: Pubkey, repo_id: bytes, body: layout.AnchorCommit, *, as_owner: bool = False,
        nft: NftRef | None = None,
    ) -> Instruction:  # fmt: skip
        """The owner (holder) needs no member record: the repo account stands in for it. The commit
        record is at the address of ``body.commit_hash(author)``, the hash the program recomputes.
        A member anchoring in an NFT-bound repo still passes ``nft`` (its holder_token: any account)."""
        repo = self.repo_address(repo_id)
        member = repo if as_owner else self.member_address(repo_id, author)
        record = self.commit_address(repo_id, body.commit_hash(bytes(author)))
        metas = [_payer(author), _w(repo), _w(record), _ro(member),
                 _ro(INSTRUCTIONS_SYSVAR_ID), _ro(SYSTEM_PROGRAM_ID),
                 *self._records(repo_id, body.parents), *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(body, metas)

    def merge(self, owner: Pubkey, repo_id: bytes, body: layout.Merge, *, nft: NftRef | None = None) -> Instruction:
        record = self.commit_address(repo_id, body.commit_hash(bytes(owner)))
        metas = [_payer(owner), _w(self.repo_address(repo_id)), _w(record),
                 _ro(INSTRUCTIONS_SYSVAR_ID), _ro(SYSTEM_PROGRAM_ID),
                 *self._records(repo_id, body.inputs), *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(body, metas)

    def set_head(self, owner: Pubkey, repo_id: bytes, branch: bytes, commit_hash: bytes, *,
                 nft: NftRef | None = None) -> Instruction:  # fmt: skip
        record = SYSTEM_PROGRAM_ID if commit_hash == layout.ZERO32 else self.commit_address(repo_id, commit_hash)
        metas = [AccountMeta(owner, is_signer=True, is_writable=False), _w(self.repo_address(repo_id)), _ro(record),
                 *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(layout.SetHead(branch, commit_hash), metas)

    # --- NFT instructions -------------------------------------------------------------------------

    def bind_nft(self, owner: Pubkey, repo_id: bytes, mint: Pubkey, holder_token: Pubkey, share_bps: int,
                 lock_share: bool, head_branch: str) -> Instruction:  # fmt: skip
        """Bind the repository to ``mint`` (owner = repo.owner, holding it in ``holder_token``); the
        metadata "head" field follows branch ``head_branch``."""
        metas = [_payer(owner), _w(self.repo_address(repo_id)), _w(self.nft_address(repo_id)), _ro(mint),
                 _ro(holder_token), _ro(SYSTEM_PROGRAM_ID)]  # fmt: skip
        return self._ix(layout.BindNft(share_bps, lock_share, layout.branch_hash(head_branch)), metas)

    def sync_holder(self, repo_id: bytes, holder_token: Pubkey) -> Instruction:
        metas = [_ro(self.repo_address(repo_id)), _w(self.nft_address(repo_id)), _ro(holder_token)]
        return self._ix(layout.SyncHolder(), metas)

    def set_share(self, holder: Pubkey, repo_id: bytes, holder_token: Pubkey, share_bps: int) -> Instruction:
        metas = [AccountMeta(holder, is_signer=True, is_writable=False), _ro(self.repo_address(repo_id)),
                 _w(self.nft_address(repo_id)), _ro(holder_token)]  # fmt: skip
        return self._ix(layout.SetShare(share_bps), metas)

    def sell(self, seller: Pubkey, buyer: Pubkey, repo_id: bytes, mint: Pubkey, price: int, sale_seq: int,
             contributors: Sequence[Pubkey]) -> Instruction:  # fmt: skip
        """The atomic sale: both sign; the NFT moves between the parties' associated token accounts
        (the buyer's must exist: create it idempotently earlier in the same tx). ``contributors``:
        the nft record's table keys, in table order."""
        metas = [_payer(seller), _payer(buyer), _ro(self.repo_address(repo_id)), _w(self.nft_address(repo_id)),
                 _ro(mint), _w(token_account_address(seller, mint)), _w(token_account_address(buyer, mint)),
                 _ro(TOKEN_2022_PROGRAM_ID), _ro(SYSTEM_PROGRAM_ID), *(_w(c) for c in contributors)]  # fmt: skip
        return self._ix(layout.Sell(price, sale_seq), metas)

    def set_uri(self, holder: Pubkey, repo_id: bytes, mint: Pubkey, uri: str) -> Instruction:
        """Point the metadata uri elsewhere (holder only); if the mint account grows, add its rent
        to the mint in the same tx (a system transfer before this instruction)."""
        metas = [_payer(holder), _ro(self.repo_address(repo_id)), _ro(self.nft_address(repo_id)),
                 _ro(token_account_address(holder, mint)), _w(mint), _ro(TOKEN_2022_PROGRAM_ID),
                 _ro(SYSTEM_PROGRAM_ID)]  # fmt: skip
        return self._ix(layout.SetUri(uri), metas)

    def claim(self, repo_id: bytes, index: int, contributor: Pubkey) -> Instruction:
        """Pay contributor table entry ``index`` (key ``contributor``) what sales left owed to it,
        from the nft PDA (permissionless: any fee payer may send it)."""
        metas = [_ro(self.repo_address(repo_id)), _w(self.nft_address(repo_id)), _w(contributor)]
        return self._ix(layout.Claim(index), metas)

    # --- update proofs (issue 15) -------------------------------------------------------------------
    # ``remainder``: the same instructions for the merge remainder key (write_rvk, seal_rvk; its own
    # record, seeds "zkrvk"); it takes no bound (bound2 0: X is each merge's W).

    def write_vk(self, owner: Pubkey, repo_id: bytes, offset: int, data: bytes, *,
                 nft: NftRef | None = None, remainder: bool = False) -> Instruction:  # fmt: skip
        metas = [_payer(owner), _ro(self.repo_address(repo_id)), _w(self.zkvk_address(repo_id, remainder)),
                 _ro(SYSTEM_PROGRAM_ID), *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(layout.WriteVk(offset, data, remainder), metas)

    def seal_vk(self, owner: Pubkey, repo_id: bytes, key_id: bytes, bound2: int, vk_len: int, *,
                nft: NftRef | None = None, remainder: bool = False) -> Instruction:  # fmt: skip
        metas = [AccountMeta(owner, is_signer=True, is_writable=False), _w(self.repo_address(repo_id)),
                 _w(self.zkvk_address(repo_id, remainder)), *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(layout.SealVk(key_id, bound2, vk_len, remainder), metas)

    def set_vk(self, owner: Pubkey, repo_id: bytes, vk: bytes, bound2: int, *, nft: NftRef | None = None,
               written: bytes = b"", remainder: bool = False) -> list[list[Instruction]]:  # fmt: skip
        """The transactions that write ``vk`` and seal it with ``bound2`` (the last write shares the seal's
        transaction). ``written``: the record's buffer as it is (a replay skips chunks already there)."""
        chunks = [(at, vk[at:at + VK_CHUNK]) for at in range(0, len(vk), VK_CHUNK)]
        writes = [self.write_vk(owner, repo_id, at, part, nft=nft, remainder=remainder) for at, part in chunks
                  if written[at:at + len(part)] != part]  # fmt: skip
        seal = self.seal_vk(owner, repo_id, hashlib.sha256(vk).digest(), bound2, len(vk), nft=nft,
                            remainder=remainder)  # fmt: skip
        return [[ix] for ix in writes[:-1]] + [[*writes[-1:], seal]]

    def prove_commit(self, author: Pubkey, repo_id: bytes, commit_hash: bytes, proof_hash: bytes,
                     proof: bytes) -> Instruction:  # fmt: skip
        metas = [AccountMeta(author, is_signer=True, is_writable=False), _ro(self.repo_address(repo_id)),
                 _ro(self.zkvk_address(repo_id)), _w(self.commit_address(repo_id, commit_hash))]  # fmt: skip
        return self._ix(layout.ProveCommit(commit_hash, proof_hash, proof), metas)

    def prove_merge(self, owner: Pubkey, repo_id: bytes, body: layout.ProveMerge, inputs: Sequence[bytes], *,
                    nft: NftRef | None = None) -> Instruction:  # fmt: skip
        """Prove the anchored merge ``body.commit_hash`` (owner, or the holder of a bound repository);
        ``inputs``: the merge's parents in the commit's order (their records follow the merge's)."""
        metas = [AccountMeta(owner, is_signer=True, is_writable=False), _ro(self.repo_address(repo_id)),
                 _ro(self.zkvk_address(repo_id, remainder=True)), _w(self.commit_address(repo_id, body.commit_hash)),
                 *self._records(repo_id, inputs), *self._nft_metas(repo_id, nft)]  # fmt: skip
        return self._ix(body, metas)

    def prove_merge_ixs(self, owner: Pubkey, repo_id: bytes, body: layout.ProveMerge, inputs: Sequence[bytes], *,
                        nft: NftRef | None = None) -> list[Instruction]:  # fmt: skip
        """prove_merge after a ComputeBudget limit (PROVE_MERGE_CU_LIMIT): past about 8 inputs it needs more than
        the default 200k CU; the extra instruction costs 40 bytes (9 inputs fit a transaction, 6 NFT-bound)."""
        ix = self.prove_merge(owner, repo_id, body, inputs, nft=nft)
        return [set_compute_unit_limit(PROVE_MERGE_CU_LIMIT), ix]

    def _records(self, repo_id: bytes, hashes: Sequence[bytes]) -> list[AccountMeta]:
        return [_ro(self.commit_address(repo_id, h)) for h in hashes]
