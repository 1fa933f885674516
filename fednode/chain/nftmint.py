"""The one transaction that mints a repository's NFT on Token-2022 (everything but federity's bind_nft).

The mint account is created with room for the mint and its MetadataPointer only, but funded for its
final size: TokenMetadata initialize and each UpdateField grow the account in place (reallocation
needs the lamports already there). Token-2022 lets nobody but the metadata's update authority
change it, so after the fields are set the authority moves to ``update_authority`` (the repository's
PDA, which the federity program signs with). The mint authority is dropped after the one token is
minted, and there never is a freeze authority: supply stays 1 and nobody can freeze the holder.
The MetadataPointer has no authority (deviation from the issue-14 contract, which named the minter):
an authority could later point wallets at some other metadata account; federity's bind_nft
refuses a mint whose pointer has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from solders.instruction import Instruction
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account

from fednode.errors import FednodeError
from protocol import token2022 as tok

NFT_SYMBOL = "FED"
# With these bounds the mint transaction (fields "repo" and "head", 64 hex each) plus federity's
# bind_nft fits a legacy 1232-byte transaction (measured: 1,021 bytes with a 1-byte name and a 66-byte
# ipfs:// uri, +1 per byte of name, symbol or uri; tests/chain/test_nft_mint_tx.py checks the worst case).
MAX_NAME_BYTES = 128
MAX_SYMBOL_BYTES = 10
MAX_URI_BYTES = 128


class NftInputError(FednodeError, ValueError):
    """A name, symbol, uri or field key the NFT cannot carry (one line; nothing was sent)."""


def _check_text(what: str, value: str, limit: int) -> None:
    size = len(value.encode("utf-8"))
    if not 1 <= size <= limit:
        raise NftInputError(f"NFT {what} must be 1..{limit} bytes of utf-8, got {size}")


def nft_mint_size(name: str, symbol: str, uri: str, fields: Mapping[str, str]) -> int:
    """Bytes of the finished mint (what its rent must cover)."""
    return tok.metadata_mint_space(name, symbol, uri, fields)


def mint_nft_instructions(
    payer: Pubkey, mint: Pubkey, update_authority: Pubkey, name: str, symbol: str, uri: str,
    fields: Mapping[str, str], rent: Callable[[int], int],
) -> list[Instruction]:
    """Instructions (signers: ``payer`` and ``mint``) that create ``mint`` as a 0-decimal, supply-1
    token with its metadata in itself, and put the one token in the payer's associated account.

    ``fields`` are additional metadata keys set in order (not "name", "symbol" or "uri");
    ``rent(size)`` gives the rent-exempt balance for ``size`` bytes.
    """
    for what, value, limit in (("name", name, MAX_NAME_BYTES), ("symbol", symbol, MAX_SYMBOL_BYTES),
                               ("uri", uri, MAX_URI_BYTES)):  # fmt: skip
        _check_text(what, value, limit)
    reserved = [key for key in fields if key in tok.NAMED_FIELDS or not key]
    if reserved:
        raise NftInputError(f"metadata field key {reserved[0]!r} is reserved or empty")
    space = tok.mint_space([tok.Ext.METADATA_POINTER])
    lamports = rent(nft_mint_size(name, symbol, uri, fields))
    ata = tok.associated_token_address(payer, mint)
    return [
        create_account(CreateAccountParams(from_pubkey=payer, to_pubkey=mint, lamports=lamports, space=space,
                                           owner=tok.TOKEN_2022_PROGRAM_ID)),
        tok.initialize_metadata_pointer(mint, None, mint),  # nobody may repoint it
        tok.initialize_mint2(mint, 0, payer, None),
        tok.initialize_token_metadata(mint, payer, payer, name, symbol, uri),
        *(tok.update_field(mint, payer, key, value) for key, value in fields.items()),
        tok.update_metadata_authority(mint, payer, update_authority),
        tok.create_associated_token_account_idempotent(payer, payer, mint),
        tok.mint_to_checked(mint, ata, payer, 1, 0),
        tok.set_authority(mint, payer, tok.MINT_TOKENS, None),
    ]  # fmt: skip


def metadata_topup(data: bytes, balance: int, key: str, value: str, rent: Callable[[int], int]) -> int:
    """Lamports the mint (``data``, holding ``balance``) needs before UpdateField(key, value) can grow
    it; 0 when it shrinks or stays. Send them (a System transfer to the mint) in the same transaction."""
    return max(0, rent(tok.mint_length_after_update(data, key, value)) - balance)
