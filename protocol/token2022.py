"""Token-2022 bytes: the instructions an NFT mint needs and decoders for mint and token accounts.

Pure (no I/O). Unlike protocol/chain.py this module uses solders' ``Pubkey`` and ``Instruction``
value types (the contract of issue 14 names them); nothing here talks to a chain.

Layouts (all integers little-endian), verified against the Token-2022 program LiteSVM preloads:
- mint: base 82 bytes (COption<Pubkey> = u32 tag + 32 bytes); with extensions, zero padding to
  165, account type u8 @165 (1 mint, 2 token account), then TLV entries (type u16, length u16,
  value). A type-0 entry (Uninitialized) ends the list; everything after it must be zero.
- token account: base 165 bytes, then the account type and TLV entries the same way.
- Token-2022 instruction tags: InitializeMint2 20, MintToChecked 14, TransferChecked 12,
  SetAuthority 6, MetadataPointer extension 39 (sub 0: Initialize). Instruction COption<Pubkey>
  is one byte tag (+ 32 bytes when present).
- token-metadata interface: 8-byte discriminator sha256("spl_token_metadata_interface:<name>")[:8],
  borsh strings (u32 length + utf-8), Field enum 0 Name, 1 Symbol, 2 Uri, 3 Key(String),
  OptionalNonZeroPubkey = 32 bytes, zero meaning None. Discriminators: initialize_account
  d2e11ea258b84d8d, updating_field dde9312db5cadcc8, update_the_authority d7e4a6e45464567b.
- sizes: an extended account whose length would be 355 (a multisig's) is 357 (Token-2022 adds a
  u16); TokenMetadata updates reallocate the mint to the used TLV length (grow or shrink), and a
  growing update needs the extra rent in the mint beforehand (mint_length_after_update).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey

from protocol.multiformats import FormatError

TOKEN_2022_PROGRAM_ID = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
ASSOCIATED_TOKEN_PROGRAM_ID = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")

MINT_BASE_SIZE = 82
ACCOUNT_BASE_SIZE = 165  # also where the account type byte of an extended mint sits
MULTISIG_SIZE = 355  # an extended account of exactly this length gets 2 more bytes (Token-2022's rule)
ACCOUNT_TYPE_MINT = 1
ACCOUNT_TYPE_ACCOUNT = 2
STATE_INITIALIZED = 1
STATE_FROZEN = 2

# set_authority types
MINT_TOKENS = 0
FREEZE_ACCOUNT = 1
ACCOUNT_OWNER = 2
CLOSE_ACCOUNT = 3


class Ext(IntEnum):
    """Extension types (the TLV ``type`` field)."""

    UNINITIALIZED = 0
    TRANSFER_FEE_CONFIG = 1
    TRANSFER_FEE_AMOUNT = 2
    MINT_CLOSE_AUTHORITY = 3
    CONFIDENTIAL_TRANSFER_MINT = 4
    CONFIDENTIAL_TRANSFER_ACCOUNT = 5
    DEFAULT_ACCOUNT_STATE = 6
    IMMUTABLE_OWNER = 7
    MEMO_TRANSFER = 8
    NON_TRANSFERABLE = 9
    INTEREST_BEARING_CONFIG = 10
    CPI_GUARD = 11
    PERMANENT_DELEGATE = 12
    NON_TRANSFERABLE_ACCOUNT = 13
    TRANSFER_HOOK = 14
    TRANSFER_HOOK_ACCOUNT = 15
    METADATA_POINTER = 18
    TOKEN_METADATA = 19
    GROUP_POINTER = 20
    TOKEN_GROUP = 21
    GROUP_MEMBER_POINTER = 22
    TOKEN_GROUP_MEMBER = 23


# value sizes of the fixed-size extensions mint_space can lay out
FIXED_EXTENSION_SIZES: dict[int, int] = {
    Ext.TRANSFER_FEE_CONFIG: 108, Ext.TRANSFER_FEE_AMOUNT: 8, Ext.MINT_CLOSE_AUTHORITY: 32,
    Ext.DEFAULT_ACCOUNT_STATE: 1, Ext.IMMUTABLE_OWNER: 0, Ext.MEMO_TRANSFER: 1, Ext.NON_TRANSFERABLE: 0,
    Ext.CPI_GUARD: 1, Ext.PERMANENT_DELEGATE: 32, Ext.NON_TRANSFERABLE_ACCOUNT: 0, Ext.TRANSFER_HOOK: 64,
    Ext.TRANSFER_HOOK_ACCOUNT: 1, Ext.METADATA_POINTER: 64, Ext.GROUP_POINTER: 64,
    Ext.GROUP_MEMBER_POINTER: 64,
}  # fmt: skip

NAMED_FIELDS = {"name": 0, "symbol": 1, "uri": 2}  # Field enum variants; anything else is Key(3)
FIELD_KEY = 3


class TokenLayoutError(FormatError):
    """Bytes that are not a valid Token-2022 mint, token account or extension."""


def _discriminator(name: str) -> bytes:
    return hashlib.sha256(f"spl_token_metadata_interface:{name}".encode()).digest()[:8]


META_INITIALIZE = _discriminator("initialize_account")
META_UPDATE_FIELD = _discriminator("updating_field")
META_UPDATE_AUTHORITY = _discriminator("update_the_authority")


# --- addresses ---------------------------------------------------------------------------------


def associated_token_address(owner: Pubkey, mint: Pubkey) -> Pubkey:
    """The owner's associated Token-2022 account for ``mint``."""
    seeds = [bytes(owner), bytes(TOKEN_2022_PROGRAM_ID), bytes(mint)]
    return Pubkey.find_program_address(seeds, ASSOCIATED_TOKEN_PROGRAM_ID)[0]


# --- instructions ------------------------------------------------------------------------------


def _meta(key: Pubkey, signer: bool = False, writable: bool = False) -> AccountMeta:
    return AccountMeta(key, is_signer=signer, is_writable=writable)


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def _optional_nonzero(key: Pubkey | None) -> bytes:
    return bytes(32) if key is None else bytes(key)


def _coption_ix(key: Pubkey | None) -> bytes:
    return b"\x00" if key is None else b"\x01" + bytes(key)


def _token_ix(data: bytes, *accounts: AccountMeta) -> Instruction:
    return Instruction(TOKEN_2022_PROGRAM_ID, data, list(accounts))


def initialize_metadata_pointer(mint: Pubkey, authority: Pubkey | None, metadata_address: Pubkey | None) -> Instruction:
    """Before InitializeMint2, on an account sized for the MetadataPointer extension."""
    data = bytes([39, 0]) + _optional_nonzero(authority) + _optional_nonzero(metadata_address)
    return _token_ix(data, _meta(mint, writable=True))


def initialize_mint2(mint: Pubkey, decimals: int, mint_authority: Pubkey,
                     freeze_authority: Pubkey | None = None) -> Instruction:  # fmt: skip
    data = bytes([20, decimals]) + bytes(mint_authority) + _coption_ix(freeze_authority)
    return _token_ix(data, _meta(mint, writable=True))


def initialize_token_metadata(mint: Pubkey, update_authority: Pubkey, mint_authority: Pubkey,
                              name: str, symbol: str, uri: str) -> Instruction:  # fmt: skip
    """TokenMetadata stored in the mint itself (the metadata account is the mint); the mint
    authority signs. The account must already hold the lamports for its grown size."""
    data = META_INITIALIZE + _string(name) + _string(symbol) + _string(uri)
    return _token_ix(data, _meta(mint, writable=True), _meta(update_authority), _meta(mint),
                     _meta(mint_authority, signer=True))  # fmt: skip


def update_field(mint: Pubkey, update_authority: Pubkey, key: str, value: str) -> Instruction:
    """Set ``key`` ("name", "symbol", "uri": the named fields; else an additional Key(key))."""
    variant = NAMED_FIELDS.get(key)
    field_bytes = bytes([variant]) if variant is not None else bytes([FIELD_KEY]) + _string(key)
    data = META_UPDATE_FIELD + field_bytes + _string(value)
    return _token_ix(data, _meta(mint, writable=True), _meta(update_authority, signer=True))


def update_metadata_authority(mint: Pubkey, current: Pubkey, new: Pubkey | None) -> Instruction:
    """Hand the metadata's update authority to ``new`` (None: nobody can ever update it)."""
    data = META_UPDATE_AUTHORITY + _optional_nonzero(new)
    return _token_ix(data, _meta(mint, writable=True), _meta(current, signer=True))


def create_associated_token_account_idempotent(payer: Pubkey, owner: Pubkey, mint: Pubkey) -> Instruction:
    accounts = [
        _meta(payer, signer=True, writable=True), _meta(associated_token_address(owner, mint), writable=True),
        _meta(owner), _meta(mint), _meta(SYSTEM_PROGRAM_ID), _meta(TOKEN_2022_PROGRAM_ID),
    ]  # fmt: skip
    return Instruction(ASSOCIATED_TOKEN_PROGRAM_ID, bytes([1]), accounts)


def mint_to_checked(mint: Pubkey, destination: Pubkey, authority: Pubkey, amount: int, decimals: int) -> Instruction:
    data = bytes([14]) + struct.pack("<QB", amount, decimals)
    return _token_ix(data, _meta(mint, writable=True), _meta(destination, writable=True),
                     _meta(authority, signer=True))  # fmt: skip


def set_authority(account: Pubkey, current: Pubkey, authority_type: int, new: Pubkey | None) -> Instruction:
    data = bytes([6, authority_type]) + _coption_ix(new)
    return _token_ix(data, _meta(account, writable=True), _meta(current, signer=True))


def transfer_checked(source: Pubkey, mint: Pubkey, destination: Pubkey, owner: Pubkey,
                     amount: int, decimals: int) -> Instruction:  # fmt: skip
    data = bytes([12]) + struct.pack("<QB", amount, decimals)
    return _token_ix(data, _meta(source, writable=True), _meta(mint), _meta(destination, writable=True),
                     _meta(owner, signer=True))  # fmt: skip


# --- sizes -------------------------------------------------------------------------------------


def _adjust_for_multisig(length: int) -> int:
    # Token-2022 tells accounts apart by length: an extended account never has a multisig's length
    return length + 2 if length == MULTISIG_SIZE else length


def mint_space(extensions: Iterable[int]) -> int:
    """Bytes of a mint with these fixed-size extensions (82 without any)."""
    types = list(extensions)
    if not types:
        return MINT_BASE_SIZE
    unknown = [t for t in types if t not in FIXED_EXTENSION_SIZES]
    if unknown:
        raise ValueError(f"extension type {unknown[0]} has no fixed size")
    tlv = sum(4 + FIXED_EXTENSION_SIZES[t] for t in set(types))
    return _adjust_for_multisig(ACCOUNT_BASE_SIZE + 1 + tlv)


def metadata_space(name: str, symbol: str, uri: str, fields: Mapping[str, str] | Sequence[tuple[str, str]]) -> int:
    """Bytes the TokenMetadata extension (TLV header included) takes with these values."""
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    strings = [name, symbol, uri, *(s for pair in pairs for s in pair)]
    return 4 + 64 + 4 + sum(4 + len(s.encode("utf-8")) for s in strings)


def metadata_mint_space(name: str, symbol: str, uri: str, fields: Mapping[str, str]) -> int:
    """Final size of a mint with a MetadataPointer and this TokenMetadata (what rent is paid for)."""
    base = mint_space([Ext.METADATA_POINTER])
    return _adjust_for_multisig(base + metadata_space(name, symbol, uri, fields))


# --- decoders ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataPointer:
    authority: Pubkey | None
    metadata_address: Pubkey | None


@dataclass(frozen=True)
class TokenMetadata:
    update_authority: Pubkey | None
    mint: Pubkey
    name: str
    symbol: str
    uri: str
    additional: tuple[tuple[str, str], ...] = ()

    def with_field(self, key: str, value: str) -> TokenMetadata:
        """The metadata after Token-2022's UpdateField: a named field is set, an existing additional
        key keeps its place with the new value, a new key is appended."""
        if key == "name":
            return replace(self, name=value)
        if key == "symbol":
            return replace(self, symbol=value)
        if key == "uri":
            return replace(self, uri=value)
        if any(k == key for k, _ in self.additional):
            return replace(self, additional=tuple((k, value if k == key else v) for k, v in self.additional))
        return replace(self, additional=(*self.additional, (key, value)))

    def field(self, key: str) -> str | None:
        """A field's value: "name", "symbol", "uri" are the named ones, any other key an additional one."""
        if key in NAMED_FIELDS:
            return str(getattr(self, key))
        return next((v for k, v in self.additional if k == key), None)


@dataclass(frozen=True)
class MintState:
    mint_authority: Pubkey | None
    supply: int
    decimals: int
    is_initialized: bool
    freeze_authority: Pubkey | None
    extensions: dict[int, bytes] = field(default_factory=dict)  # raw TLV values by type
    metadata_pointer: MetadataPointer | None = None
    metadata: TokenMetadata | None = None


@dataclass(frozen=True)
class TokenAccount:
    mint: Pubkey
    owner: Pubkey
    amount: int
    delegate: Pubkey | None
    state: int  # 0 uninitialized, 1 initialized, 2 frozen
    extensions: dict[int, bytes] = field(default_factory=dict)


def _nonzero_key(raw: bytes) -> Pubkey | None:
    return None if raw == bytes(32) else Pubkey.from_bytes(raw)


def _coption_key(data: bytes, at: int, what: str) -> Pubkey | None:
    (tag,) = struct.unpack_from("<I", data, at)
    if tag not in (0, 1):
        raise TokenLayoutError(f"{what}: option tag {tag} is neither 0 nor 1")
    return Pubkey.from_bytes(data[at + 4 : at + 36]) if tag == 1 else None


def _tlv(data: bytes, start: int) -> dict[int, bytes]:
    """TLV entries from ``start`` to the end; a type-0 entry starts trailing zero padding."""
    entries: dict[int, bytes] = {}
    at = start
    while at < len(data):
        if len(data) - at < 4:
            if any(data[at:]):
                raise TokenLayoutError(f"truncated extension header at byte {at}")
            break
        kind, length = struct.unpack_from("<HH", data, at)
        if kind == Ext.UNINITIALIZED:
            if any(data[at:]):
                raise TokenLayoutError(f"nonzero bytes after the extension list at byte {at}")
            break
        if at + 4 + length > len(data):
            raise TokenLayoutError(f"extension {kind} at byte {at} runs past the account ({length} bytes)")
        if kind in entries:
            raise TokenLayoutError(f"extension {kind} appears twice")
        entries[kind] = data[at + 4 : at + 4 + length]
        at += 4 + length
    return entries


def _extensions(data: bytes, base: int, account_type: int, what: str) -> dict[int, bytes]:
    if len(data) <= ACCOUNT_BASE_SIZE:
        return {}
    if any(data[base:ACCOUNT_BASE_SIZE]):
        raise TokenLayoutError(f"{what}: nonzero padding before the account type")
    if data[ACCOUNT_BASE_SIZE] != account_type:
        raise TokenLayoutError(f"{what}: account type {data[ACCOUNT_BASE_SIZE]}, expected {account_type}")
    return _tlv(data, ACCOUNT_BASE_SIZE + 1)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.at, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise TokenLayoutError(f"{self.what}: truncated at byte {self.at} (wanted {n} more)")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self) -> str:
        raw = self.take(self.u32())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenLayoutError(f"{self.what}: a string is not valid utf-8") from None


def decode_metadata_pointer(value: bytes) -> MetadataPointer:
    if len(value) != 64:
        raise TokenLayoutError(f"metadata pointer: {len(value)} bytes, expected 64")
    return MetadataPointer(_nonzero_key(value[:32]), _nonzero_key(value[32:]))


def decode_token_metadata(value: bytes) -> TokenMetadata:
    r = _Reader(value, "token metadata")
    authority, mint = _nonzero_key(r.take(32)), Pubkey.from_bytes(r.take(32))
    name, symbol, uri = r.string(), r.string(), r.string()
    count = r.u32()
    if count * 8 > len(value) - r.at:  # each pair takes at least 8 bytes: refuse absurd counts early
        raise TokenLayoutError(f"token metadata: {count} additional fields cannot fit")
    additional = tuple((r.string(), r.string()) for _ in range(count))
    if r.at != len(value):
        raise TokenLayoutError(f"token metadata: {len(value) - r.at} bytes after the last field")
    return TokenMetadata(authority, mint, name, symbol, uri, additional)


def decode_mint(data: bytes) -> MintState:
    """A Token-2022 (or legacy SPL Token) mint account's data."""
    data = bytes(data)
    if len(data) < MINT_BASE_SIZE or MINT_BASE_SIZE < len(data) <= ACCOUNT_BASE_SIZE:
        raise TokenLayoutError(f"mint: {len(data)} bytes is not a mint's length")
    if data[45] not in (0, 1):
        raise TokenLayoutError(f"mint: is_initialized byte {data[45]}")
    extensions = _extensions(data, MINT_BASE_SIZE, ACCOUNT_TYPE_MINT, "mint")
    pointer = extensions.get(Ext.METADATA_POINTER)
    metadata = extensions.get(Ext.TOKEN_METADATA)
    return MintState(
        mint_authority=_coption_key(data, 0, "mint authority"), supply=struct.unpack_from("<Q", data, 36)[0],
        decimals=data[44], is_initialized=data[45] == 1, freeze_authority=_coption_key(data, 46, "freeze authority"),
        extensions=extensions, metadata_pointer=None if pointer is None else decode_metadata_pointer(pointer),
        metadata=None if metadata is None else decode_token_metadata(metadata),
    )  # fmt: skip


def decode_token_account(data: bytes) -> TokenAccount:
    """A Token-2022 (or legacy SPL Token) token account's data."""
    data = bytes(data)
    if len(data) < ACCOUNT_BASE_SIZE or len(data) == MULTISIG_SIZE:
        raise TokenLayoutError(f"token account: {len(data)} bytes is not a token account's length")
    if data[108] > STATE_FROZEN:
        raise TokenLayoutError(f"token account: state {data[108]}")
    extensions = _extensions(data, ACCOUNT_BASE_SIZE, ACCOUNT_TYPE_ACCOUNT, "token account")
    return TokenAccount(
        mint=Pubkey.from_bytes(data[:32]), owner=Pubkey.from_bytes(data[32:64]),
        amount=struct.unpack_from("<Q", data, 64)[0], delegate=_coption_key(data, 72, "delegate"),
        state=data[108], extensions=extensions,
    )  # fmt: skip


def mint_length_after_update(data: bytes, key: str, value: str) -> int:
    """The mint account's length after UpdateField(key, value), as Token-2022 reallocates it: the
    used TLV length with the metadata entry re-sized, adjusted off a multisig's length."""
    state = decode_mint(data)
    if state.metadata is None:
        raise TokenLayoutError("mint: no token metadata to update")
    used = ACCOUNT_BASE_SIZE + 1 + sum(4 + len(v) for v in state.extensions.values())
    old = 4 + len(state.extensions[Ext.TOKEN_METADATA])
    new = 4 + len(encode_token_metadata(state.metadata.with_field(key, value)))
    return _adjust_for_multisig(_adjust_for_multisig(used) - old + new)


# --- encoders (the inverse of the decoders: tests and hand-made accounts) ----------------------


def encode_metadata_pointer(pointer: MetadataPointer) -> bytes:
    return _optional_nonzero(pointer.authority) + _optional_nonzero(pointer.metadata_address)


def encode_token_metadata(meta: TokenMetadata) -> bytes:
    pairs = b"".join(_string(k) + _string(v) for k, v in meta.additional)
    return (_optional_nonzero(meta.update_authority) + bytes(meta.mint) + _string(meta.name) + _string(meta.symbol)
            + _string(meta.uri) + struct.pack("<I", len(meta.additional)) + pairs)  # fmt: skip


def _coption_state(key: Pubkey | None) -> bytes:
    return bytes(36) if key is None else struct.pack("<I", 1) + bytes(key)


def _with_extensions(base: bytes, account_type: int, extensions: Mapping[int, bytes]) -> bytes:
    if not extensions:
        return base
    tlv = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in extensions.items())
    out = base.ljust(ACCOUNT_BASE_SIZE, b"\x00") + bytes([account_type]) + tlv
    return out.ljust(_adjust_for_multisig(len(out)), b"\x00")


def encode_mint(state: MintState) -> bytes:
    """Account data for ``state``: its raw ``extensions`` in order, with the MetadataPointer and
    TokenMetadata values replaced by (or appended as) the encodings of the typed fields when set."""
    extensions = dict(state.extensions)
    if state.metadata_pointer is not None:
        extensions[Ext.METADATA_POINTER] = encode_metadata_pointer(state.metadata_pointer)
    if state.metadata is not None:
        extensions[Ext.TOKEN_METADATA] = encode_token_metadata(state.metadata)
    base = (_coption_state(state.mint_authority) + struct.pack("<QBB", state.supply, state.decimals,
            int(state.is_initialized)) + _coption_state(state.freeze_authority))  # fmt: skip
    return _with_extensions(base, ACCOUNT_TYPE_MINT, extensions)


def encode_token_account(account: TokenAccount) -> bytes:
    """Account data (is_native, delegated_amount and close_authority zero)."""
    base = (bytes(account.mint) + bytes(account.owner) + struct.pack("<Q", account.amount)
            + _coption_state(account.delegate) + bytes([account.state])).ljust(ACCOUNT_BASE_SIZE, b"\x00")  # fmt: skip
    return _with_extensions(base, ACCOUNT_TYPE_ACCOUNT, account.extensions)
