"""The one transaction that mints a repository's NFT on Token-2022 (everything but federity's bind_nft).

The mint account is created with room for the mint and its MetadataPointer only, but funded for its
final size: TokenMetadata initialize and each UpdateField grow the account in place (reallocation
needs the lamports already there). Token-2022 lets nobody but the metadata's update authority
change it, so after the fields are set the authority moves to ``update_authority`` (the repository's
PDA, which the federity program signs with). The mint authority is dropped after the one token is
minted, and there never is a freeze authority: supply stays 1 and nobody can freeze the holder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from solders.instruction import Instruction
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account

from protocol import token2022 as tok

NFT_SYMBOL = "FED"


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
    reserved = [key for key in fields if key in tok.NAMED_FIELDS or not key]
    if reserved:
        raise ValueError(f"metadata field key {reserved[0]!r} is reserved or empty")
    space = tok.mint_space([tok.Ext.METADATA_POINTER])
    lamports = rent(nft_mint_size(name, symbol, uri, fields))
    ata = tok.associated_token_address(payer, mint)
    return [
        create_account(CreateAccountParams(from_pubkey=payer, to_pubkey=mint, lamports=lamports, space=space,
                                           owner=tok.TOKEN_2022_PROGRAM_ID)),
        tok.initialize_metadata_pointer(mint, payer, mint),
        tok.initialize_mint2(mint, 0, payer, None),
        tok.initialize_token_metadata(mint, payer, payer, name, symbol, uri),
        *(tok.update_field(mint, payer, key, value) for key, value in fields.items()),
        tok.update_metadata_authority(mint, payer, update_authority),
        tok.create_associated_token_account_idempotent(payer, payer, mint),
        tok.mint_to_checked(mint, ata, payer, 1, 0),
        tok.set_authority(mint, payer, tok.MINT_TOKENS, None),
    ]  # fmt: skip
