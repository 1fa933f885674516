"""Issue 14 on chain: repositories bound to a Token-2022 NFT (LiteSVM, the real Token-2022 program,
our compiled federity program). The holder controls the repository; the program keeps the mint's
metadata "head" field on the tracked branch's head; bad mints, fake NFTs and former holders are
refused with their own error codes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, TransferParams, create_account, transfer

from fednode.chain.backend import ChainError, LiteSVMBackend, TxResult
from fednode.chain.client import FederityClient
from fednode.chain.nftmint import mint_nft_instructions
from fednode.chain.program import FederityProgram, NftRef, ed25519_proof, token_account_address
from programs.build import build
from protocol import chain as layout
from protocol import token2022 as tok
from protocol.chain import ErrorCode as E
from protocol.chain import Kind
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit

PROGRAM_ID = Keypair.from_seed(bytes([9]) * 32).pubkey()
OWNER, BOB, CAROL, MALLORY = (Keypair.from_seed(bytes([i]) * 32) for i in (11, 12, 13, 14))


@pytest.fixture(scope="session")
def elves(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    return {v: Path(path).read_bytes() for v, path in build(tmp_path_factory.mktemp("nft-programs")).items()}


@pytest.fixture(scope="session")
def elf(elves: dict[int, bytes]) -> bytes:
    return elves[3]


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def genesis_of(author: Keypair, name: str) -> Commit:
    info = {"settings": {"name": name, "scale_bits": 16, "snapshot_interval": 8}}
    unsigned = Commit(repo=None, parents=(), kind="init", weights=CID.hash(DAG_CBOR, name.encode()),
                      author=bytes(author.pubkey()), time_ms=1, message=name, info=info, parent_hashes=())
    return replace(unsigned, sig=bytes(author.sign_message(unsigned.commit_hash())))


def rejects(code: E, action: Callable[[], object]) -> ChainError:
    with pytest.raises(ChainError) as info:
        action()
    assert info.value.code == code, f"expected {code!r}, got {info.value} {info.value.logs[-4:]}"
    return info.value


@dataclass
class Chain:
    """One repository (created by OWNER, genesis anchored on main) and helpers to mint its NFT."""

    backend: LiteSVMBackend
    client: FederityClient
    repo_id: bytes
    hashes: dict[str, bytes] = field(default_factory=dict)

    @property
    def program(self) -> FederityProgram:
        return self.client.program

    def rent(self, size: int) -> int:
        return int(self.backend.svm.minimum_balance_for_rent_exemption(size))

    def mint_ixs(self, payer: Keypair, mint: Keypair, *, repo_id: bytes | None = None,
                 authority: Pubkey | None = None, head: bytes | None = None) -> list[Instruction]:
        rid = repo_id or self.repo_id
        fields = {"repo": rid.hex(), "head": (head or rid).hex()}
        return mint_nft_instructions(payer.pubkey(), mint.pubkey(), authority or self.program.repo_address(rid),
                                     "model", "FED", "ipfs://bafy", fields, self.rent)

    def mint(self, payer: Keypair = OWNER, ixs: list[Instruction] | None = None,
             mint: Keypair | None = None) -> tuple[Pubkey, TxResult]:
        mint = mint or Keypair()
        tx = self.backend.send(ixs if ixs is not None else self.mint_ixs(payer, mint), [payer, mint])
        return mint.pubkey(), tx

    def metadata(self, mint: Pubkey) -> tok.TokenMetadata:
        data = self.backend.account_data(mint)
        assert data is not None
        meta = tok.decode_mint(data).metadata
        assert meta is not None
        return meta

    def head_field(self, mint: Pubkey) -> str | None:
        return self.metadata(mint).field("head")

    def nft(self) -> layout.NftAccount:
        nft = self.client.nft(self.repo_id)
        assert nft is not None
        return nft

    def anchor(self, author: Keypair, label: str, parents: Sequence[bytes], branch: str | None = "main",
               nft: NftRef | None = None) -> bytes:
        commit = layout.commit_hash(bytes(author.pubkey()), Kind.UPDATE, parents, h(label))
        self.client.anchor_commit(author, self.repo_id, h(label), bytes(author.sign_message(commit)),
                                  kind=Kind.UPDATE, branch=branch, parents=parents)
        self.hashes[label] = commit
        return commit

    def anchor_ix(self, author: Keypair, label: str, parents: Sequence[bytes], nft: NftRef | None,
                  as_owner: bool) -> list[Instruction]:
        body = layout.AnchorCommit(h(label), Kind.UPDATE, layout.branch_hash("main"), tuple(parents))
        commit = body.commit_hash(bytes(author.pubkey()))
        return [ed25519_proof(author.pubkey(), bytes(author.sign_message(commit)), commit),
                self.program.anchor_commit(author.pubkey(), self.repo_id, body, as_owner=as_owner, nft=nft)]

    def merge_ix(self, signer: Keypair, label: str, inputs: Sequence[bytes], weights: Sequence[int],
                 nft: NftRef | None, branch: str = "main") -> list[Instruction]:
        body = layout.Merge(h(label), layout.branch_hash(branch), tuple(inputs), tuple(weights))
        commit = body.commit_hash(bytes(signer.pubkey()))
        self.hashes[label] = commit
        return [ed25519_proof(signer.pubkey(), bytes(signer.sign_message(commit)), commit),
                self.program.merge(signer.pubkey(), self.repo_id, body, nft=nft)]

    def merge(self, signer: Keypair, label: str, inputs: Sequence[bytes], weights: Sequence[int],
              branch: str = "main") -> TxResult:
        nft = self.client.nft_ref(self.repo_id, signer.pubkey())
        return self.backend.send(self.merge_ix(signer, label, inputs, weights, nft, branch), [signer])

    def transfer(self, source: Keypair, to: Pubkey, mint: Pubkey) -> None:
        """A plain Token-2022 transfer of the NFT (no federity instruction)."""
        ixs = [tok.create_associated_token_account_idempotent(source.pubkey(), to, mint),
               tok.transfer_checked(token_account_address(source.pubkey(), mint), mint,
                                    token_account_address(to, mint), source.pubkey(), 1, 0)]
        self.backend.send(ixs, [source])


def make_chain(elf: bytes) -> Chain:
    backend = LiteSVMBackend()
    backend.deploy(PROGRAM_ID, elf)
    for kp in (OWNER, BOB, CAROL, MALLORY):
        backend.airdrop(kp.pubkey(), 10**11)
    client = FederityClient(backend, PROGRAM_ID)
    genesis = genesis_of(OWNER, "nft-repo")
    rid = genesis.commit_hash()
    client.create_repo(OWNER, rid, genesis.body_digest(), genesis.sig)
    client.anchor_commit(OWNER, rid, genesis.body_digest(), genesis.sig, kind=Kind.INIT, branch="main")
    return Chain(backend, client, rid)


@pytest.fixture
def chain(elf: bytes) -> Chain:
    return make_chain(elf)


@pytest.fixture
def bound(chain: Chain) -> tuple[Chain, Pubkey]:
    """The repository bound to its NFT, held by OWNER, "head" following main."""
    mint, _ = chain.mint()
    chain.client.bind_nft(OWNER, chain.repo_id, mint, share_bps=1000)
    return chain, mint


# --- bind, head field ------------------------------------------------------------------------------


def test_create_repo_refuses_a_mint(chain: Chain) -> None:
    genesis = genesis_of(BOB, "other")
    rejects(E.INVALID_MINT, lambda: chain.client.create_repo(BOB, genesis.commit_hash(), genesis.body_digest(),
                                                             genesis.sig, h("mint")))
    assert chain.client.repo(genesis.commit_hash()) is None


def test_bind_then_metadata_head_follows_the_tracked_branch(chain: Chain) -> None:
    mint, mint_tx = chain.mint()
    rid = chain.repo_id
    assert chain.head_field(mint) == rid.hex()  # the genesis, set by the minter
    bind = chain.client.bind_nft(OWNER, rid, mint, share_bps=250, lock_share=True)
    repo, nft = chain.client.repo(rid), chain.nft()
    assert repo is not None and repo.mint == bytes(mint)
    assert (nft.mint, nft.holder, nft.repo_id) == (bytes(mint), bytes(OWNER.pubkey()), rid)
    assert (nft.share_bps, nft.share_locked, nft.sale_seq, nft.contributors) == (250, True, 0, ())
    assert nft.head_branch == layout.branch_hash("main")
    print(f"\nCU: mint tx {mint_tx.compute_units}, bind_nft {bind.compute_units}, "
          f"total {mint_tx.compute_units + bind.compute_units}")

    u1 = chain.anchor(OWNER, "u1", [rid])  # owner's fast-forward of main
    assert chain.head_field(mint) == u1.hex()
    chain.client.add_member(OWNER, rid, BOB.pubkey())
    b1 = chain.anchor(BOB, "b1", [u1], branch=None)
    merged = chain.merge(OWNER, "m1", [u1, b1], [1, 2])
    print(f"CU: merge of 2 with the head update {merged.compute_units}")
    assert chain.head_field(mint) == chain.hashes["m1"].hex()
    chain.client.set_head(OWNER, rid, "main", u1)  # revert
    assert chain.head_field(mint) == u1.hex()
    chain.client.set_head(OWNER, rid, "dev", b1)  # another branch: the field stays
    assert chain.head_field(mint) == u1.hex()
    chain.client.delete_branch(OWNER, rid, "main")  # deleting the tracked branch leaves it
    assert chain.head_field(mint) == u1.hex()
    meta = chain.metadata(mint)
    assert (meta.name, meta.uri, meta.field("repo")) == ("model", "ipfs://bafy", rid.hex())
    assert meta.update_authority == chain.program.repo_address(rid)
    assert chain.nft().sale_seq == 0  # the holder never changed


def test_metadata_is_updated_by_the_program_only(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    forged = tok.update_field(mint, OWNER.pubkey(), "head", "00" * 32)
    with pytest.raises(ChainError):  # the minter is no longer the update authority
        chain.backend.send([forged], [OWNER])
    assert chain.head_field(mint) == chain.repo_id.hex()


def test_second_bind_or_second_mint_refused(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    rejects(E.NFT_ALREADY_BOUND, lambda: chain.client.bind_nft(OWNER, chain.repo_id, mint))
    second, _ = chain.mint()  # a perfectly good second NFT of the same repository
    rejects(E.NFT_ALREADY_BOUND, lambda: chain.client.bind_nft(OWNER, chain.repo_id, second))
    assert chain.nft().mint == bytes(mint)


def _bad_mint_cases() -> dict[str, Callable[[Chain, Keypair], list[Instruction]]]:
    def freeze(c: Chain, m: Keypair) -> list[Instruction]:
        ixs = c.mint_ixs(OWNER, m)
        ixs[2] = tok.initialize_mint2(m.pubkey(), 0, OWNER.pubkey(), OWNER.pubkey())
        return ixs

    def keep_authority(c: Chain, m: Keypair) -> list[Instruction]:
        return c.mint_ixs(OWNER, m)[:-1]

    def supply_two(c: Chain, m: Keypair) -> list[Instruction]:
        ixs = c.mint_ixs(OWNER, m)
        ixs[-2] = tok.mint_to_checked(m.pubkey(), token_account_address(OWNER.pubkey(), m.pubkey()),
                                      OWNER.pubkey(), 2, 0)
        return ixs

    def permanent_delegate(c: Chain, m: Keypair) -> list[Instruction]:
        ixs = c.mint_ixs(OWNER, m)
        space = tok.mint_space([tok.Ext.METADATA_POINTER, tok.Ext.PERMANENT_DELEGATE])
        ixs[0] = create_account(CreateAccountParams(from_pubkey=OWNER.pubkey(), to_pubkey=m.pubkey(),
                                                    lamports=c.rent(space + 400), space=space,
                                                    owner=tok.TOKEN_2022_PROGRAM_ID))
        delegate = Instruction(tok.TOKEN_2022_PROGRAM_ID, bytes([35]) + bytes(MALLORY.pubkey()),
                               [AccountMeta(m.pubkey(), False, True)])
        return [ixs[0], delegate, *ixs[1:]]

    def mint_close_authority(c: Chain, m: Keypair) -> list[Instruction]:
        ixs = permanent_delegate(c, m)
        ixs[0] = create_account(CreateAccountParams(
            from_pubkey=OWNER.pubkey(), to_pubkey=m.pubkey(), lamports=c.rent(900),
            space=tok.mint_space([tok.Ext.METADATA_POINTER, tok.Ext.MINT_CLOSE_AUTHORITY]),
            owner=tok.TOKEN_2022_PROGRAM_ID))
        ixs[1] = Instruction(tok.TOKEN_2022_PROGRAM_ID, bytes([25, 1]) + bytes(MALLORY.pubkey()),
                             [AccountMeta(m.pubkey(), False, True)])
        return ixs

    def authority_not_pda(c: Chain, m: Keypair) -> list[Instruction]:
        return c.mint_ixs(OWNER, m, authority=OWNER.pubkey())

    def other_repo(c: Chain, m: Keypair) -> list[Instruction]:
        ixs = c.mint_ixs(OWNER, m)  # update authority: our repo PDA, but "repo" names another
        fields = {"repo": h("another repo").hex(), "head": c.repo_id.hex()}
        other = mint_nft_instructions(OWNER.pubkey(), m.pubkey(), c.program.repo_address(c.repo_id), "model",
                                      "FED", "ipfs://bafy", fields, c.rent)
        assert len(other) == len(ixs)
        return other

    def pointer_elsewhere(c: Chain, m: Keypair) -> list[Instruction]:
        ixs = c.mint_ixs(OWNER, m)
        ixs[1] = tok.initialize_metadata_pointer(m.pubkey(), None, MALLORY.pubkey())
        return ixs

    def pointer_authority(c: Chain, m: Keypair) -> list[Instruction]:
        ixs = c.mint_ixs(OWNER, m)  # the minter could repoint wallets at other metadata later
        ixs[1] = tok.initialize_metadata_pointer(m.pubkey(), OWNER.pubkey(), m.pubkey())
        return ixs

    return {f.__name__: f for f in (freeze, keep_authority, supply_two, permanent_delegate, mint_close_authority,
                                    authority_not_pda, other_repo, pointer_elsewhere, pointer_authority)}


@pytest.mark.parametrize("case", sorted(_bad_mint_cases()))
def test_bind_refuses_unclean_mints(chain: Chain, case: str) -> None:
    m = Keypair()
    ixs = _bad_mint_cases()[case](chain, m)
    chain.backend.send(ixs, [OWNER, m])  # Token-2022 accepts every one of these mints
    rejects(E.INVALID_MINT, lambda: chain.client.bind_nft(OWNER, chain.repo_id, m.pubkey()))
    repo = chain.client.repo(chain.repo_id)
    assert repo is not None and repo.mint == layout.ZERO32 and chain.client.nft(chain.repo_id) is None
    good, _ = chain.mint()  # and the repository can still be bound to a clean one
    chain.client.bind_nft(OWNER, chain.repo_id, good)


def test_bind_requires_the_owner_holding_it(chain: Chain) -> None:
    mint, _ = chain.mint()
    rejects(E.NOT_OWNER, lambda: chain.backend.send([chain.program.bind_nft(
        BOB.pubkey(), chain.repo_id, mint, token_account_address(OWNER.pubkey(), mint), 0, False, "main")], [BOB]))
    chain.transfer(OWNER, BOB.pubkey(), mint)  # the owner no longer holds it
    rejects(E.NOT_HOLDER, lambda: chain.client.bind_nft(OWNER, chain.repo_id, mint))


# --- control -----------------------------------------------------------------------------------------


def test_new_holder_controls_the_repository_after_transfer_and_sync(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    rid = chain.repo_id
    chain.client.add_member(OWNER, rid, CAROL.pubkey())
    c1 = chain.anchor(CAROL, "c1", [rid], branch=None)
    chain.transfer(OWNER, BOB.pubkey(), mint)
    chain.client.sync_holder(MALLORY, rid, BOB.pubkey())  # permissionless
    assert (chain.nft().holder, chain.nft().sale_seq) == (bytes(BOB.pubkey()), 1)
    chain.client.sync_holder(MALLORY, rid, BOB.pubkey())  # idempotent
    assert chain.nft().sale_seq == 1

    chain.client.add_member(BOB, rid, MALLORY.pubkey())
    chain.client.remove_member(BOB, rid, MALLORY.pubkey())
    chain.client.set_head(BOB, rid, "main", c1)
    assert chain.head_field(mint) == c1.hex()
    chain.merge(BOB, "m", [c1], [3])
    assert chain.head_field(mint) == chain.hashes["m"].hex()
    b2 = chain.anchor(BOB, "b2", [chain.hashes["m"]])  # the holder's own anchor moves main
    assert chain.head_field(mint) == b2.hex()

    owner_ref = NftRef(mint, token_account_address(OWNER.pubkey(), mint))
    rejects(E.NOT_HOLDER, lambda: chain.client.add_member(OWNER, rid, MALLORY.pubkey()))
    rejects(E.NOT_HOLDER, lambda: chain.client.remove_member(OWNER, rid, CAROL.pubkey()))
    rejects(E.NOT_HOLDER, lambda: chain.client.set_head(OWNER, rid, "main", rid))
    rejects(E.NOT_HOLDER, lambda: chain.backend.send(chain.merge_ix(OWNER, "om", [c1], [1], owner_ref), [OWNER]))
    late = chain.anchor_ix(OWNER, "late", [b2], owner_ref, as_owner=True)  # the owner's path: repo as member
    rejects(E.NOT_HOLDER, lambda: chain.backend.send(late, [OWNER]))
    rejects(E.NOT_A_MEMBER, lambda: chain.anchor(OWNER, "late", [b2]))  # the client takes the member path
    assert chain.head_field(mint) == b2.hex()
    assert chain.client.is_member(rid, CAROL.pubkey()) and not chain.client.is_member(rid, MALLORY.pubkey())
    chain.anchor(CAROL, "c2", [b2])  # members keep anchoring (fast-forward of main)
    assert chain.head_field(mint) == chain.hashes["c2"].hex()


def test_holder_acts_without_sync_and_is_recorded(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    chain.transfer(OWNER, BOB.pubkey(), mint)
    assert chain.nft().holder == bytes(OWNER.pubkey())  # nobody told the program yet
    chain.client.set_head(BOB, chain.repo_id, "dev", chain.repo_id)
    assert (chain.nft().holder, chain.nft().sale_seq) == (bytes(BOB.pubkey()), 1)


def test_token_account_of_amount_zero_is_refused(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    rid = chain.repo_id
    chain.backend.send([tok.create_associated_token_account_idempotent(BOB.pubkey(), BOB.pubkey(), mint)], [BOB])
    rejects(E.NOT_HOLDER, lambda: chain.client.set_head(BOB, rid, "main", rid))
    rejects(E.NOT_HOLDER, lambda: chain.client.sync_holder(BOB, rid, BOB.pubkey()))
    chain.transfer(OWNER, BOB.pubkey(), mint)  # now OWNER's account is the empty one
    rejects(E.NOT_HOLDER, lambda: chain.client.add_member(OWNER, rid, CAROL.pubkey()))
    assert chain.nft().holder == bytes(OWNER.pubkey())


def test_fake_nft_and_wrong_accounts_are_refused(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    rid = chain.repo_id
    m = Keypair()
    fake, _ = chain.mint(MALLORY, chain.mint_ixs(MALLORY, m), m)  # identical metadata, another mint
    assert chain.metadata(fake).field("repo") == rid.hex()
    fake_ref = NftRef(fake, token_account_address(MALLORY.pubkey(), fake))
    rejects(E.INVALID_NFT_ACCOUNT, lambda: chain.client.set_head(MALLORY, rid, "main", rid, nft=fake_ref))
    real_mint_fake_token = NftRef(mint, fake_ref.holder_token)
    rejects(E.NOT_HOLDER, lambda: chain.client.set_head(MALLORY, rid, "main", rid, nft=real_mint_fake_token))
    rejects(E.NOT_HOLDER, lambda: chain.backend.send([chain.program.sync_holder(rid, fake_ref.holder_token)],
                                                     [MALLORY]))
    bare = chain.program.set_head(OWNER.pubkey(), rid, layout.branch_hash("main"), rid)  # no NFT accounts
    rejects(E.MISSING_NFT_ACCOUNTS, lambda: chain.backend.send([bare], [OWNER]))
    good = chain.client.nft_ref(rid, OWNER.pubkey())
    assert good is not None
    ix = chain.program.set_head(OWNER.pubkey(), rid, layout.branch_hash("main"), rid, nft=good)
    metas = list(ix.accounts)
    metas[6] = AccountMeta(tok.ASSOCIATED_TOKEN_PROGRAM_ID, False, False)
    rejects(E.INVALID_TOKEN_PROGRAM, lambda: chain.backend.send([Instruction(PROGRAM_ID, ix.data, metas)], [OWNER]))
    metas = list(ix.accounts)
    metas[4] = AccountMeta(chain.program.repo_address(rid), False, True)
    rejects(E.INVALID_NFT_ACCOUNT, lambda: chain.backend.send([Instruction(PROGRAM_ID, ix.data, metas)], [OWNER]))
    assert chain.nft().holder == bytes(OWNER.pubkey())


# --- contributors' tally, share, sale ---------------------------------------------------------------

AUTHORS = [Keypair.from_seed(bytes([40 + i]) * 32) for i in range(17)]


def with_contributors(chain: Chain, authors: Sequence[Keypair], weights: Sequence[int]) -> None:
    """Each author (made a member, funded) anchors one commit; the holder merges them, 4 at a time."""
    rid = chain.repo_id
    hashes = []
    for i, author in enumerate(authors):
        chain.backend.airdrop(author.pubkey(), 10**9)
        if not chain.client.is_member(rid, author.pubkey()):
            chain.client.add_member(OWNER, rid, author.pubkey())
        hashes.append(chain.anchor(author, f"c{i}-{len(chain.hashes)}", [rid], branch=None))
    for at in range(0, len(hashes), 4):
        chain.merge(OWNER, f"m{at}-{len(chain.hashes)}", hashes[at : at + 4], weights[at : at + 4])


def balances(chain: Chain, keys: Sequence[Pubkey]) -> list[int]:
    return [chain.backend.balance(k) for k in keys]


def token_amount(chain: Chain, owner: Pubkey, mint: Pubkey) -> int:
    data = chain.backend.account_data(token_account_address(owner, mint))
    return 0 if data is None else tok.decode_token_account(data).amount


def sell_ixs(chain: Chain, seller: Pubkey, buyer: Pubkey, mint: Pubkey, price: int, seq: int,
             contributors: Sequence[Pubkey]) -> list[Instruction]:
    return [tok.create_associated_token_account_idempotent(buyer, buyer, mint),
            chain.program.sell(seller, buyer, chain.repo_id, mint, price, seq, contributors)]


def test_merges_tally_contributor_weights(bound: tuple[Chain, Pubkey]) -> None:
    chain, _ = bound
    a, b = AUTHORS[:2]
    with_contributors(chain, [a, b, a], [5, 0, 7])  # weight 0 adds nothing, a's weights add up
    assert chain.nft().contributors == ((bytes(a.pubkey()), 12, 0),)
    with_contributors(chain, [b], [2**64 - 1])
    assert chain.nft().contributors == ((bytes(a.pubkey()), 12, 0), (bytes(b.pubkey()), 2**64 - 1, 0))
    rejects(E.ARITHMETIC_OVERFLOW, lambda: with_contributors(chain, [b], [1]))
    with_contributors(chain, AUTHORS[2:16], [1] * 14)  # 16 contributors: the table is full
    assert len(chain.nft().contributors) == layout.MAX_CONTRIBUTORS
    rejects(E.CONTRIBUTOR_TABLE_FULL, lambda: with_contributors(chain, AUTHORS[16:], [1]))
    with_contributors(chain, [a], [1])  # known contributors still gain weight
    assert chain.nft().contributors[0] == (bytes(a.pubkey()), 13, 0)
    # the largest sale: 16 contributors (25 accounts), tallies past 2^64 in sum (the long division)
    seller, paid = layout.sale_amounts(10**12, 1000, chain.nft().contributors)
    chain.backend.airdrop(BOB.pubkey(), 2 * 10**12)
    keys = [Pubkey.from_bytes(c[0]) for c in chain.nft().contributors]
    before = balances(chain, [*keys, OWNER.pubkey()])
    tx = chain.client.sell(OWNER, BOB, chain.repo_id, 10**12)
    assert [y - x for x, y in zip(before, balances(chain, [*keys, OWNER.pubkey()]), strict=True)] == [*paid, seller]
    print(f"\nCU: sale with 16 contributors {tx.compute_units}")


def test_sale_pays_contributors_to_the_lamport_and_moves_the_nft(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    chain.client.set_share(OWNER, chain.repo_id, 5000)
    trio = AUTHORS[:3]
    with_contributors(chain, trio, [1, 2, 3])
    keys = [k.pubkey() for k in trio]
    # exact thirds: S = 600,000 split 100,000 / 200,000 / 300,000, the seller gets the other half
    before = balances(chain, [*keys, OWNER.pubkey()])
    chain.client.sell(OWNER, BOB, chain.repo_id, 1_200_000)
    after = balances(chain, [*keys, OWNER.pubkey()])
    assert [y - x for x, y in zip(before, after, strict=True)] == [100_000, 200_000, 300_000, 600_000]
    assert (token_amount(chain, OWNER.pubkey(), mint), token_amount(chain, BOB.pubkey(), mint)) == (0, 1)
    assert (chain.nft().holder, chain.nft().sale_seq) == (bytes(BOB.pubkey()), 1)
    # with dust: S = floor(1,000,001 / 2) = 500,000 -> 83,333 / 166,666 / 250,000; the seller gets the rest
    seller, paid = layout.sale_amounts(1_000_001, 5000, chain.nft().contributors)
    assert (seller, paid) == (500_002, [83_333, 166_666, 250_000])
    before = balances(chain, [*keys, BOB.pubkey()])
    tx = chain.client.sell(BOB, CAROL, chain.repo_id, 1_000_001)
    after = balances(chain, [*keys, BOB.pubkey()])
    assert [y - x for x, y in zip(before, after, strict=True)] == [*paid, seller]
    assert token_amount(chain, CAROL.pubkey(), mint) == 1 and chain.nft().holder == bytes(CAROL.pubkey())
    print(f"\nCU: sale with 3 contributors {tx.compute_units}")
    chain.client.set_head(CAROL, chain.repo_id, "main", chain.repo_id)  # control moved with the sale
    rejects(E.NOT_HOLDER, lambda: chain.client.set_head(BOB, chain.repo_id, "main", chain.repo_id))


def test_sale_with_8_contributors_cost(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    with_contributors(chain, AUTHORS[:8], list(range(1, 9)))
    before = balances(chain, [k.pubkey() for k in AUTHORS[:8]])
    tx = chain.client.sell(OWNER, BOB, chain.repo_id, 10**9)  # share 10% (the fixture's)
    after = balances(chain, [k.pubkey() for k in AUTHORS[:8]])
    _, paid = layout.sale_amounts(10**9, 1000, list(range(1, 9)))
    assert [y - x for x, y in zip(before, after, strict=True)] == paid
    print(f"\nCU: sale with 8 contributors {tx.compute_units}")
    assert tx.compute_units <= 100_000


def test_contributors_who_buy_or_sell(bound: tuple[Chain, Pubkey]) -> None:
    """A contributor may be the buyer (keeps its own part) or the seller (gets its part and the rest)."""
    chain, mint = bound
    chain.client.set_share(OWNER, chain.repo_id, 10_000)
    with_contributors(chain, [BOB, AUTHORS[0]], [1, 3])
    before = balances(chain, [OWNER.pubkey(), AUTHORS[0].pubkey()])
    chain.client.sell(OWNER, BOB, chain.repo_id, 4_000_000)  # BOB's own 1,000,000 stays with BOB
    after = balances(chain, [OWNER.pubkey(), AUTHORS[0].pubkey()])
    assert [y - x for x, y in zip(before, after, strict=True)] == [0, 3_000_000]
    assert chain.nft().holder == bytes(BOB.pubkey())
    before = balances(chain, [BOB.pubkey(), AUTHORS[0].pubkey()])
    chain.client.sell(BOB, CAROL, chain.repo_id, 4_000_000)  # BOB sells: its part and the (empty) rest
    after = balances(chain, [BOB.pubkey(), AUTHORS[0].pubkey()])
    assert [y - x for x, y in zip(before, after, strict=True)] == [1_000_000, 3_000_000]


def test_sale_amounts_with_huge_weights_use_128_bit_arithmetic(bound: tuple[Chain, Pubkey]) -> None:
    """W > 2^64 and S * w > 2^64: the program's long division must agree with Python's integers."""
    chain, _ = bound
    chain.client.set_share(OWNER, chain.repo_id, 7777)
    trio = AUTHORS[:3]
    with_contributors(chain, trio, [2**64 - 1, 12, 2**63])
    price = 987_654_321_987
    seller, paid = layout.sale_amounts(price, 7777, chain.nft().contributors)
    assert sum(paid) > 0 and all(p > 0 for p in paid[::2])
    chain.backend.airdrop(BOB.pubkey(), 2 * price)
    before = balances(chain, [*(k.pubkey() for k in trio), OWNER.pubkey()])
    chain.client.sell(OWNER, BOB, chain.repo_id, price)
    after = balances(chain, [*(k.pubkey() for k in trio), OWNER.pubkey()])
    assert [y - x for x, y in zip(before, after, strict=True)] == [*paid, seller]


@pytest.mark.parametrize("how", ["omit", "reorder", "substitute", "extra"])
def test_sale_with_wrong_contributors_changes_nothing(bound: tuple[Chain, Pubkey], how: str) -> None:
    chain, mint = bound
    trio = AUTHORS[:3]
    with_contributors(chain, trio, [1, 2, 3])
    keys = [k.pubkey() for k in trio]
    wrong = {"omit": keys[:2], "reorder": [keys[1], keys[0], keys[2]],
             "substitute": [keys[0], keys[1], MALLORY.pubkey()], "extra": [*keys, MALLORY.pubkey()]}[how]  # fmt: skip
    watched = [*keys, OWNER.pubkey(), MALLORY.pubkey()]
    before = balances(chain, watched)
    ixs = sell_ixs(chain, OWNER.pubkey(), BOB.pubkey(), mint, 10**9, 0, wrong)
    rejects(E.CONTRIBUTOR_MISMATCH, lambda: chain.backend.send(ixs, [BOB, OWNER]))
    assert balances(chain, watched) == before
    assert token_amount(chain, OWNER.pubkey(), mint) == 1 and token_amount(chain, BOB.pubkey(), mint) == 0
    assert (chain.nft().holder, chain.nft().sale_seq) == (bytes(OWNER.pubkey()), 0)


def test_sale_by_non_holder_stale_offer_and_bad_buyer_account(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    rid = chain.repo_id
    rejects(E.NOT_HOLDER, lambda: chain.client.sell(MALLORY, BOB, rid, 1))
    rejects(E.STALE_OFFER, lambda: chain.client.sell(OWNER, BOB, rid, 1, sale_seq=1))
    rejects(E.INVALID_BUYER_ACCOUNT, lambda: chain.backend.send(  # buyer == seller
        [chain.program.sell(OWNER.pubkey(), OWNER.pubkey(), rid, mint, 1, 0, [])], [OWNER]))
    bob_ix = chain.program.sell(OWNER.pubkey(), BOB.pubkey(), rid, mint, 1, 0, [])
    metas = list(bob_ix.accounts)
    metas[6] = AccountMeta(token_account_address(MALLORY.pubkey(), mint), False, True)  # someone else's account
    chain.backend.send([tok.create_associated_token_account_idempotent(MALLORY.pubkey(), MALLORY.pubkey(), mint)],
                       [MALLORY])
    rejects(E.INVALID_BUYER_ACCOUNT, lambda: chain.backend.send([Instruction(PROGRAM_ID, bob_ix.data, metas)],
                                                                [BOB, OWNER]))
    offer = sell_ixs(chain, OWNER.pubkey(), BOB.pubkey(), mint, 5_000_000, 0, [])
    chain.backend.send(offer, [BOB, OWNER])  # sold: sale_seq 0 -> 1
    rejects(E.NOT_HOLDER, lambda: chain.backend.send(offer, [BOB, OWNER]))  # the former holder
    chain.transfer(BOB, OWNER.pubkey(), mint)  # the NFT comes back (plain transfer), holder synced
    chain.client.sync_holder(OWNER, rid, OWNER.pubkey())
    assert chain.nft().sale_seq == 2
    before = balances(chain, [OWNER.pubkey(), BOB.pubkey()])
    rejects(E.STALE_OFFER, lambda: chain.backend.send(offer, [BOB, OWNER]))  # the old offer, replayed
    after = balances(chain, [OWNER.pubkey(), BOB.pubkey()])
    assert (after[0], before[1] - after[1]) == (before[0], 10_000)  # the buyer lost the 2-signature fee only
    assert token_amount(chain, OWNER.pubkey(), mint) == 1


def test_set_share_rules(chain: Chain) -> None:
    mint, _ = chain.mint()
    chain.client.bind_nft(OWNER, chain.repo_id, mint, share_bps=100)
    chain.client.set_share(OWNER, chain.repo_id, 10_000)
    assert chain.nft().share_bps == 10_000
    raw = Instruction(PROGRAM_ID, bytes([layout.Ix.SET_SHARE]) + (10_001).to_bytes(2, "little"),
                      list(chain.program.set_share(OWNER.pubkey(), chain.repo_id,
                                                   token_account_address(OWNER.pubkey(), mint), 0).accounts))
    rejects(E.INVALID_SHARE, lambda: chain.backend.send([raw], [OWNER]))
    rejects(E.NOT_HOLDER, lambda: chain.backend.send([chain.program.set_share(
        BOB.pubkey(), chain.repo_id, token_account_address(OWNER.pubkey(), mint), 5)], [BOB]))
    assert chain.nft().share_bps == 10_000


def test_locked_share_cannot_change(chain: Chain) -> None:
    mint, _ = chain.mint()
    chain.client.bind_nft(OWNER, chain.repo_id, mint, share_bps=300, lock_share=True)
    rejects(E.SHARE_LOCKED, lambda: chain.client.set_share(OWNER, chain.repo_id, 0))
    assert (chain.nft().share_bps, chain.nft().share_locked) == (300, True)


def test_set_uri_by_the_holder_only(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    longer = "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
    chain.client.set_uri(OWNER, chain.repo_id, longer)  # the mint grows; the program tops up its rent
    assert chain.metadata(mint).uri == longer and chain.head_field(mint) == chain.repo_id.hex()
    size = len(chain.backend.account_data(mint) or b"")
    assert chain.backend.balance(mint) >= chain.rent(size)
    chain.client.set_uri(OWNER, chain.repo_id, "ipfs://x")  # shrinking
    assert chain.metadata(mint).uri == "ipfs://x"
    rejects(E.NOT_HOLDER, lambda: chain.backend.send(
        [chain.program.set_uri(BOB.pubkey(), chain.repo_id, mint, "ipfs://evil")], [BOB]))
    bad = chain.program.set_uri(OWNER.pubkey(), chain.repo_id, mint, "ipfs://x")
    for data in (b"\x0a\xff", b"\x0a", b"\x0a" + b"x" * 201):
        rejects(E.INVALID_INSTRUCTION_DATA, lambda d=data: chain.backend.send(  # type: ignore[misc]
            [Instruction(PROGRAM_ID, d, list(bad.accounts))], [OWNER]))
    assert chain.metadata(mint).uri == "ipfs://x"


@pytest.mark.parametrize("version", [0, 3])
def test_nft_lifecycle_on_both_builds(elves: dict[int, bytes], version: int) -> None:
    """The deployable v0 ELF runs the CPIs (metadata head, System and Token-2022 transfers) like v3."""
    chain = make_chain(elves[version])
    mint, _ = chain.mint()
    chain.client.bind_nft(OWNER, chain.repo_id, mint, share_bps=5000)
    with_contributors(chain, AUTHORS[:2], [1, 1])
    assert chain.head_field(mint) == chain.client.head(chain.repo_id, "main").hex()  # type: ignore[union-attr]
    before = balances(chain, [k.pubkey() for k in AUTHORS[:2]])
    chain.client.sell(OWNER, BOB, chain.repo_id, 2_000_001)
    after = balances(chain, [k.pubkey() for k in AUTHORS[:2]])
    assert [y - x for x, y in zip(before, after, strict=True)] == [500_000, 500_000]
    chain.client.set_uri(BOB, chain.repo_id, "ipfs://v" * 10)
    assert chain.metadata(mint).uri == "ipfs://v" * 10 and token_amount(chain, BOB.pubkey(), mint) == 1


def test_bench_nft_meets_its_targets() -> None:
    """bench/bench_nft.py runs and its targets (mint + bind <= 60k CU, 8-contributor sale <= 100k) hold."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "bench/bench_nft.py"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.count("PASS") == 2 and "merge, 6 committed inputs + head" in done.stdout


def test_sale_payouts_equal_sale_amounts_on_random_tables(bound: tuple[Chain, Pubkey]) -> None:
    """The program's 64x64->128 multiply and 128-bit division against Python's integers: random
    tables (weights up to 2^64 - 1), shares and prices, written straight into the nft record."""
    import random
    import struct

    from solders.account import Account

    chain, mint = bound
    rnd = random.Random(14)
    keys = [k.pubkey() for k in AUTHORS[:6]]
    for k in keys:
        chain.backend.airdrop(k, 10**9)
    chain.backend.airdrop(BOB.pubkey(), 10**13)
    chain.backend.airdrop(OWNER.pubkey(), 10**13)
    address = chain.program.nft_address(chain.repo_id)
    parties = [OWNER, BOB]
    for case in range(40):
        n = rnd.randint(1, len(keys))
        top = rnd.choice([10, 2**32, 2**63, 2**64 - 1])
        weights = [rnd.randint(1, top) for _ in range(n)]
        share, price = rnd.randint(0, 10_000), rnd.choice([rnd.randint(0, 10**6), rnd.randint(0, 2 * 10**11)])
        account = chain.backend.svm.get_account(address)
        assert account is not None
        data = bytearray(account.data)
        struct.pack_into("<HH", data, 144, share, n)
        table = b"".join(bytes(k) + struct.pack("<QQ", w, 0) for k, w in zip(keys[:n], weights, strict=True))
        data[152:] = table.ljust(layout.CONTRIBUTOR_SIZE * layout.MAX_CONTRIBUTORS, b"\0")
        chain.backend.svm.set_account(address, Account(account.lamports, bytes(data), account.owner,
                                                       account.executable, account.rent_epoch))
        seller, buyer = parties[case % 2], parties[(case + 1) % 2]
        expected_seller, expected = layout.sale_amounts(price, share, weights)
        watched = [*keys[:n], seller.pubkey()]
        before = balances(chain, watched)
        chain.client.sell(seller, buyer, chain.repo_id, price)
        deltas = [y - x for x, y in zip(before, balances(chain, watched), strict=True)]
        assert deltas == [*expected, expected_seller], (case, price, share, weights)
        assert token_amount(chain, buyer.pubkey(), mint) == 1


# --- pull when push cannot work: a part for an empty wallet waits in the nft PDA ----------------------


def drain(chain: Chain, wallet: Keypair) -> None:
    """Empty ``wallet`` (0 lamports: the account is gone); BOB pays the fee."""
    everything = chain.backend.balance(wallet.pubkey())
    chain.backend.send([transfer(TransferParams(from_pubkey=wallet.pubkey(), to_pubkey=MALLORY.pubkey(),
                                                lamports=everything))], [BOB, wallet])  # fmt: skip
    assert chain.backend.balance(wallet.pubkey()) == 0


def test_an_empty_wallet_cannot_block_a_sale_its_part_waits_for_claim(bound: tuple[Chain, Pubkey]) -> None:
    chain, mint = bound
    rid, nft_pda = chain.repo_id, chain.program.nft_address(chain.repo_id)
    chain.client.set_share(OWNER, rid, 5000)
    trio = AUTHORS[:3]
    with_contributors(chain, trio, [1, 2, 3])
    drain(chain, trio[0])
    keys = [k.pubkey() for k in trio]
    price = 1_200_000  # S = 600,000: 100,000 (below the 890,880 a 0-byte account needs) / 200,000 / 300,000
    assert 100_000 < chain.rent(0)
    seller, paid = layout.sale_amounts(price, 5000, chain.nft().contributors)
    watched = [*keys, OWNER.pubkey(), nft_pda, BOB.pubkey()]
    before = balances(chain, watched)
    tx = chain.client.sell(OWNER, BOB, rid, price)
    after = balances(chain, watched)
    deltas = [y - x for x, y in zip(before, after, strict=True)]
    # the two funded contributors are paid directly; the empty wallet's part waits in the nft PDA
    assert deltas[:5] == [0, paid[1], paid[2], seller, paid[0]] == [0, 200_000, 300_000, 600_000, 100_000]
    ata_rent = chain.backend.balance(token_account_address(BOB.pubkey(), mint))  # the buyer opened its account
    assert -deltas[5] == sum(deltas[:5]) + tx.fee + ata_rent == price + tx.fee + ata_rent  # seller + parts + owed
    assert [c[2] for c in chain.nft().contributors] == [100_000, 0, 0]
    assert token_amount(chain, BOB.pubkey(), mint) == 1 and chain.nft().holder == bytes(BOB.pubkey())
    print(f"\nCU: sale with 3 contributors, one part owed {tx.compute_units}")
    # a second sale adds to what is owed (checked add); still below the minimum: still waits
    chain.client.sell(BOB, CAROL, rid, price)
    assert [c[2] for c in chain.nft().contributors] == [200_000, 0, 0]
    assert chain.backend.balance(nft_pda) == chain.rent(layout.NFT_SIZE) + 200_000
    # claim before the wallet is funded: 200,000 would leave it below the minimum
    rejects(E.CONTRIBUTOR_UNFUNDED, lambda: chain.client.claim(CAROL, rid, keys[0]))
    assert chain.nft().contributors[0][2] == 200_000 and chain.backend.balance(keys[0]) == 0
    # anyone may claim for a contributor once its wallet can hold the payment; it pays exactly owed, once
    chain.backend.airdrop(keys[0], chain.rent(0))
    claimed = chain.client.claim(CAROL, rid, keys[0])
    assert chain.backend.balance(keys[0]) == chain.rent(0) + 200_000
    assert chain.backend.balance(nft_pda) == chain.rent(layout.NFT_SIZE)  # never below its own minimum
    assert [c[2] for c in chain.nft().contributors] == [0, 0, 0]
    print(f"\nCU: claim {claimed.compute_units}")
    rejects(E.NOTHING_OWED, lambda: chain.client.claim(CAROL, rid, keys[0]))
    rejects(E.NOTHING_OWED, lambda: chain.client.claim(CAROL, rid, keys[1]))
    assert chain.backend.balance(keys[0]) == chain.rent(0) + 200_000
    # a funded wallet is paid directly again
    before = balances(chain, keys)
    chain.client.sell(CAROL, BOB, rid, price)
    assert [y - x for x, y in zip(before, balances(chain, keys), strict=True)] == paid
    assert [c[2] for c in chain.nft().contributors] == [0, 0, 0]


def test_a_part_at_the_rent_minimum_is_pushed_to_an_empty_wallet(bound: tuple[Chain, Pubkey]) -> None:
    """The rule is the runtime's: a part that makes the empty wallet rent-exempt is paid directly."""
    chain, _ = bound
    chain.client.set_share(OWNER, chain.repo_id, 10_000)
    with_contributors(chain, AUTHORS[:1], [1])
    drain(chain, AUTHORS[0])
    chain.client.sell(OWNER, BOB, chain.repo_id, chain.rent(0))
    assert chain.backend.balance(AUTHORS[0].pubkey()) == chain.rent(0)
    assert chain.nft().contributors[0][2] == 0


def test_claim_refuses_wrong_accounts_and_changes_nothing(bound: tuple[Chain, Pubkey]) -> None:
    chain, _ = bound
    rid = chain.repo_id
    chain.client.set_share(OWNER, rid, 5000)
    pair = AUTHORS[:2]
    with_contributors(chain, pair, [1, 1])
    drain(chain, pair[0])
    chain.client.sell(OWNER, BOB, rid, 400_000)  # 100,000 each; the empty wallet's waits
    chain.backend.airdrop(pair[0].pubkey(), chain.rent(0))
    keys = [k.pubkey() for k in pair]
    nft_pda = chain.program.nft_address(rid)
    watched = [*keys, nft_pda]
    before = balances(chain, watched)

    def send(index: int, account: Pubkey, data: bytes | None = None) -> None:
        ix = chain.program.claim(rid, index, account)
        chain.backend.send([Instruction(PROGRAM_ID, data or ix.data, list(ix.accounts))], [CAROL])

    rejects(E.CONTRIBUTOR_MISMATCH, lambda: send(1, keys[0]))  # another entry's index
    rejects(E.CONTRIBUTOR_MISMATCH, lambda: send(0, MALLORY.pubkey()))  # someone else's wallet
    rejects(E.CONTRIBUTOR_MISMATCH, lambda: send(2, keys[0], bytes([layout.Ix.CLAIM, 2])))  # past the table
    rejects(E.INVALID_INSTRUCTION_DATA, lambda: send(0, keys[0], bytes([layout.Ix.CLAIM])))
    ro = chain.program.claim(rid, 0, keys[0])
    metas = list(ro.accounts)
    metas[2] = AccountMeta(keys[0], False, False)
    rejects(E.ACCOUNT_NOT_WRITABLE, lambda: chain.backend.send([Instruction(PROGRAM_ID, ro.data, metas)], [CAROL]))
    assert balances(chain, watched) == before and chain.nft().contributors[0][2] == 100_000
    send(0, keys[0])
    assert balances(chain, watched) == [before[0] + 100_000, before[1], before[2] - 100_000]
