"""The repository NFT's mint transaction (fednode.chain.nftmint) against the real Token-2022 and
Associated Token Account programs LiteSVM preloads, read back with protocol.token2022's decoders."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

from fednode.chain.backend import ChainError, LiteSVMBackend
from fednode.chain.nftmint import (
    MAX_NAME_BYTES,
    MAX_SYMBOL_BYTES,
    MAX_URI_BYTES,
    metadata_topup,
    mint_nft_instructions,
    nft_mint_size,
)
from fednode.chain.program import FederityProgram
from protocol import token2022 as tok

REPO_HEX, HEAD_HEX, NEW_HEAD_HEX = "ab" * 32, "cd" * 32, "ef" * 32
NAME, URI = "cifar-resnet", "ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
FIELDS = {"repo": REPO_HEX, "head": HEAD_HEX}


@dataclass
class Minted:
    chain: LiteSVMBackend
    minter: Keypair
    authority: Keypair  # stands in for the repo PDA
    mint: Pubkey
    ata: Pubkey
    compute_units: int


def mint_one(chain: LiteSVMBackend, fields: dict[str, str] = FIELDS, name: str = NAME, uri: str = URI) -> Minted:
    minter, authority, mint = Keypair(), Keypair(), Keypair()
    chain.airdrop(minter.pubkey(), 10**10)
    ixs = mint_nft_instructions(minter.pubkey(), mint.pubkey(), authority.pubkey(), name, "FED", uri, fields,
                                chain.svm.minimum_balance_for_rent_exemption)  # fmt: skip
    result = chain.send(ixs, [minter, mint])
    ata = tok.associated_token_address(minter.pubkey(), mint.pubkey())
    return Minted(chain, minter, authority, mint.pubkey(), ata, result.compute_units)


@pytest.fixture
def minted() -> Minted:
    return mint_one(LiteSVMBackend())


def read_mint(m: Minted) -> tok.MintState:
    data = m.chain.account_data(m.mint)
    assert data is not None
    return tok.decode_mint(data)


def test_mint_transaction(minted: Minted) -> None:
    state = read_mint(minted)
    assert (state.decimals, state.supply, state.is_initialized) == (0, 1, True)
    assert state.mint_authority is None and state.freeze_authority is None
    assert set(state.extensions) == {tok.Ext.METADATA_POINTER, tok.Ext.TOKEN_METADATA}
    assert state.metadata_pointer == tok.MetadataPointer(None, minted.mint)  # nobody can repoint it
    meta = state.metadata
    assert meta is not None
    assert (meta.name, meta.symbol, meta.uri, meta.mint) == (NAME, "FED", URI, minted.mint)
    assert meta.additional == (("repo", REPO_HEX), ("head", HEAD_HEX))
    assert meta.update_authority == minted.authority.pubkey()
    # funded exactly for the final size, which nft_mint_size predicts
    size = nft_mint_size(NAME, "FED", URI, FIELDS)
    data = minted.chain.account_data(minted.mint)
    assert data is not None and len(data) == size
    assert minted.chain.balance(minted.mint) == minted.chain.svm.minimum_balance_for_rent_exemption(size)
    ata_data = minted.chain.account_data(minted.ata)
    assert ata_data is not None
    holder = tok.decode_token_account(ata_data)
    assert (holder.mint, holder.owner, holder.amount, holder.state) == (minted.mint, minted.minter.pubkey(), 1, 1)
    assert holder.delegate is None and tok.Ext.IMMUTABLE_OWNER in holder.extensions
    print(f"NFT mint transaction: {minted.compute_units} CU, mint account {size} bytes")


def test_no_second_token(minted: Minted) -> None:
    again = tok.mint_to_checked(minted.mint, minted.ata, minted.minter.pubkey(), 1, 0)
    with pytest.raises(ChainError):
        minted.chain.send([again], [minted.minter])
    assert read_mint(minted).supply == 1


def test_metadata_only_by_the_new_authority(minted: Minted) -> None:
    """The minter handed the update authority away: its UpdateField and authority change are refused;
    the new authority's UpdateField works and a 64-hex head never changes the account's size."""
    chain, minter, mint = minted.chain, minted.minter, minted.mint
    size = len(chain.account_data(mint) or b"")
    for ix in (tok.update_field(mint, minter.pubkey(), "head", NEW_HEAD_HEX),
               tok.update_metadata_authority(mint, minter.pubkey(), minter.pubkey())):  # fmt: skip
        with pytest.raises(ChainError) as info:
            chain.send([ix], [minter])
        assert info.value.index == 0
    meta = read_mint(minted).metadata
    assert meta is not None and meta.field("head") == HEAD_HEX and meta.update_authority == minted.authority.pubkey()
    chain.airdrop(minted.authority.pubkey(), 10**9)
    chain.send([tok.update_field(mint, minted.authority.pubkey(), "head", NEW_HEAD_HEX)], [minted.authority])
    meta = read_mint(minted).metadata
    assert meta is not None and meta.field("head") == NEW_HEAD_HEX and meta.field("repo") == REPO_HEX
    assert len(chain.account_data(mint) or b"") == size


def test_transfer_checked_moves_the_token(minted: Minted) -> None:
    chain, minter, mint = minted.chain, minted.minter, minted.mint
    buyer = Keypair()
    buyer_ata = tok.associated_token_address(buyer.pubkey(), mint)
    ixs = [tok.create_associated_token_account_idempotent(minter.pubkey(), buyer.pubkey(), mint),
           tok.create_associated_token_account_idempotent(minter.pubkey(), buyer.pubkey(), mint),  # idempotent
           tok.transfer_checked(minted.ata, mint, buyer_ata, minter.pubkey(), 1, 0)]  # fmt: skip
    chain.send(ixs, [minter])
    got, left = (tok.decode_token_account(chain.account_data(a) or b"") for a in (buyer_ata, minted.ata))
    assert (got.owner, got.amount, left.amount) == (buyer.pubkey(), 1, 0)
    with pytest.raises(ChainError):  # the former holder has nothing left to move
        chain.send([tok.transfer_checked(minted.ata, mint, buyer_ata, minter.pubkey(), 1, 0)], [minter])


def test_underfunded_mint_changes_nothing() -> None:
    """Funded only for the initial size, the metadata cannot grow: the whole transaction fails and
    neither the mint nor the holder's account exists afterwards."""
    chain = LiteSVMBackend()
    minter, authority, mint = Keypair(), Keypair(), Keypair()
    chain.airdrop(minter.pubkey(), 10**10)
    initial = chain.svm.minimum_balance_for_rent_exemption(tok.mint_space([tok.Ext.METADATA_POINTER]))
    ixs = mint_nft_instructions(minter.pubkey(), mint.pubkey(), authority.pubkey(), NAME, "FED", URI, FIELDS,
                                lambda _size: initial)  # fmt: skip
    with pytest.raises(ChainError):
        chain.send(ixs, [minter, mint])
    assert chain.account_data(mint.pubkey()) is None
    assert chain.account_data(tok.associated_token_address(minter.pubkey(), mint.pubkey())) is None


def test_multisig_length_rule() -> None:
    """A metadata mint whose size would equal a multisig's (355) is 357 bytes; nft_mint_size agrees."""
    chain = LiteSVMBackend()
    minter, mint = Keypair(), Keypair()
    chain.airdrop(minter.pubkey(), 10**10)
    name, uri = "x" * 20, "ipfs://abcdefg"
    ixs = mint_nft_instructions(minter.pubkey(), mint.pubkey(), Keypair().pubkey(), name, "FED", uri, {},
                                chain.svm.minimum_balance_for_rent_exemption)  # fmt: skip
    chain.send(ixs, [minter, mint])
    data = chain.account_data(mint.pubkey()) or b""
    assert len(data) == nft_mint_size(name, "FED", uri, {}) == 357
    meta = tok.decode_mint(data).metadata  # the two extra bytes are trailing zeros the decoder skips
    assert meta is not None and meta.name == name


@pytest.mark.parametrize("key", ["name", "uri", ""])
def test_reserved_field_keys_refused(key: str) -> None:
    with pytest.raises(ValueError, match="reserved or empty"):
        mint_nft_instructions(Keypair().pubkey(), Keypair().pubkey(), Keypair().pubkey(), NAME, "FED", URI,
                              {key: "x"}, lambda n: n)  # fmt: skip


@pytest.mark.parametrize(("name", "symbol", "uri"), [
    ("", "FED", URI), ("é" * 65, "FED", URI), (NAME, "", URI), (NAME, "S" * 11, URI), (NAME, "FED", ""),
    (NAME, "FED", "ipfs://" + "b" * 122),
])  # fmt: skip
def test_text_bounds_refused(name: str, symbol: str, uri: str) -> None:
    with pytest.raises(ValueError, match=r"must be 1\.\.\d+ bytes of utf-8, got \d+$"):
        mint_nft_instructions(Keypair().pubkey(), Keypair().pubkey(), Keypair().pubkey(), name, symbol, uri,
                              FIELDS, lambda n: n)  # fmt: skip


def test_largest_mint_with_bind_fits_one_transaction() -> None:
    """The longest name, symbol and uri allowed, with bind_nft appended, still fit a legacy
    transaction (1232 bytes), and the mint part runs in the real Token-2022."""
    program = FederityProgram(Keypair().pubkey())
    minter, mint, repo_id = Keypair(), Keypair(), bytes(range(32))
    name, symbol, uri = "n" * MAX_NAME_BYTES, "S" * MAX_SYMBOL_BYTES, "ipfs://" + "u" * (MAX_URI_BYTES - 7)
    chain = LiteSVMBackend()
    chain.airdrop(minter.pubkey(), 10**10)
    ixs = mint_nft_instructions(minter.pubkey(), mint.pubkey(), program.repo_address(repo_id), name, symbol, uri,
                                FIELDS, chain.svm.minimum_balance_for_rent_exemption)  # fmt: skip
    holder = tok.associated_token_address(minter.pubkey(), mint.pubkey())
    bind = program.bind_nft(minter.pubkey(), repo_id, mint.pubkey(), holder, 500, False, "main")
    tx = Transaction([minter, mint], Message([*ixs, bind], minter.pubkey()), Hash.default())
    assert len(bytes(tx)) <= 1232
    chain.send(ixs, [minter, mint])
    meta = read_mint(Minted(chain, minter, minter, mint.pubkey(), holder, 0)).metadata
    assert meta is not None and (meta.name, meta.symbol, meta.uri) == (name, symbol, uri)


def update_by_authority(m: Minted, key: str, value: str, topup: int) -> None:
    m.chain.airdrop(m.authority.pubkey(), 10**9)
    params = TransferParams(from_pubkey=m.authority.pubkey(), to_pubkey=m.mint, lamports=topup)
    pay = [transfer(params)] if topup else []
    m.chain.send([*pay, tok.update_field(m.mint, m.authority.pubkey(), key, value)], [m.authority])


@pytest.mark.parametrize(("key", "value"), [
    ("uri", URI + "/a-much-longer-path/metadata.json"), ("uri", "ipfs://short"), ("name", "n"),
    ("license", "Apache-2.0"), ("repo", "00" * 32),
])  # fmt: skip
def test_metadata_topup_predicts_token_2022(minted: Minted, key: str, value: str) -> None:
    """metadata_topup / mint_length_after_update give the exact size Token-2022 reallocates to; a
    growing update without the top-up is refused and changes nothing."""
    chain, rent = minted.chain, minted.chain.svm.minimum_balance_for_rent_exemption
    before = chain.account_data(minted.mint) or b""
    expected = tok.mint_length_after_update(before, key, value)
    topup = metadata_topup(before, chain.balance(minted.mint), key, value, rent)
    assert (topup > 0) == (expected > len(before))
    if topup:
        with pytest.raises(ChainError):
            update_by_authority(minted, key, value, 0)
        assert chain.account_data(minted.mint) == before
    update_by_authority(minted, key, value, topup)
    after = chain.account_data(minted.mint) or b""
    assert len(after) == expected
    meta = tok.decode_mint(after).metadata
    assert meta is not None and meta.field(key) == value
    assert meta == tok.decode_mint(before).metadata.with_field(key, value)  # type: ignore[union-attr]
    assert chain.balance(minted.mint) >= rent(len(after))


def test_update_onto_multisig_length() -> None:
    """An update that would leave the mint at 355 bytes leaves it at 357, as predicted."""
    chain = LiteSVMBackend()
    m = mint_one(chain, {}, name="x" * 19, uri="ipfs://abcdefg")
    before = chain.account_data(m.mint) or b""
    value = "x" * (19 + tok.MULTISIG_SIZE - len(before))
    assert len(before) == 354 and len(value) == 20
    assert tok.mint_length_after_update(before, "name", value) == 357
    update_by_authority(m, "name", value, metadata_topup(before, chain.balance(m.mint), "name", value,
                                                         chain.svm.minimum_balance_for_rent_exemption))
    assert len(chain.account_data(m.mint) or b"") == 357
