"""protocol.token2022: Token-2022 account decoders on hand-built bytes, encoder round-trips, every
malformed layout refused with a one-line TokenLayoutError, and the instruction bytes."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from spl.token.instructions import get_associated_token_address

from protocol import token2022 as tok
from protocol.multiformats import FormatError
from protocol.token2022 import MetadataPointer, MintState, TokenAccount, TokenLayoutError, TokenMetadata

A, B, C, D = (Keypair.from_seed(bytes([i]) * 32).pubkey() for i in (11, 12, 13, 14))


def s(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("<HH", kind, len(value)) + value


def metadata_value(authority: bytes = bytes(B), name: bytes = b"repo-x", extra: bytes = b"") -> bytes:
    pairs = s(b"repo") + s(b"ab" * 32) + s(b"head") + s(b"cd" * 32)
    return authority + bytes(C) + s(name) + s(b"FED") + s(b"ipfs://bafy") + struct.pack("<I", 2) + pairs + extra


def mint_bytes(*entries: bytes, padding: bytes = bytes(83), account_type: int = 1, tail: bytes = b"") -> bytes:
    """mint authority A (Some), supply 1, decimals 0, initialized, no freeze authority."""
    base = struct.pack("<I", 1) + bytes(A) + struct.pack("<QBB", 1, 0, 1) + bytes(36)
    assert len(base) == 82 and len(padding) == 83
    return base + padding + bytes([account_type]) + b"".join(entries) + tail


POINTER = tlv(18, bytes(A) + bytes(C))
METADATA = tlv(19, metadata_value())
GOOD_MINT = mint_bytes(POINTER, METADATA, tlv(99, b"\x07\x08"), tail=bytes(7))


def token_bytes(state: int = 1, account_type: int = 2, *entries: bytes) -> bytes:
    base = bytes(C) + bytes(A) + struct.pack("<Q", 1) + struct.pack("<I", 1) + bytes(D) + bytes([state])
    return base.ljust(165, b"\x00") + bytes([account_type]) + b"".join(entries)


def test_decode_mint_every_field() -> None:
    m = tok.decode_mint(GOOD_MINT)
    assert (m.mint_authority, m.supply, m.decimals, m.is_initialized, m.freeze_authority) == (A, 1, 0, True, None)
    assert m.metadata_pointer == MetadataPointer(A, C)
    assert m.extensions == {18: bytes(A) + bytes(C), 19: metadata_value(), 99: b"\x07\x08"}  # unknown kept raw
    meta = m.metadata
    assert meta is not None
    assert (meta.update_authority, meta.mint, meta.name, meta.symbol, meta.uri) == (B, C, "repo-x", "FED", "ipfs://bafy")
    assert meta.additional == (("repo", "ab" * 32), ("head", "cd" * 32))
    assert meta.field("repo") == "ab" * 32 and meta.field("head") == "cd" * 32 and meta.field("nope") is None
    assert meta.field("name") == "repo-x" and meta.field("uri") == "ipfs://bafy"


def test_decode_mint_options_and_plain() -> None:
    plain = struct.pack("<I", 0) + bytes(32) + struct.pack("<QBB", 5, 9, 0) + struct.pack("<I", 1) + bytes(D)
    m = tok.decode_mint(plain)
    assert (m.mint_authority, m.supply, m.decimals, m.is_initialized, m.freeze_authority) == (None, 5, 9, False, D)
    assert (m.extensions, m.metadata_pointer, m.metadata) == ({}, None, None)
    no_authority = mint_bytes(tlv(19, metadata_value(authority=bytes(32))))
    meta = tok.decode_mint(no_authority).metadata
    assert meta is not None and meta.update_authority is None  # zero = none
    assert tok.decode_mint(mint_bytes()).extensions == {}  # type byte, no entries


def test_decode_token_account_every_field() -> None:
    t = tok.decode_token_account(token_bytes(2, 2, tlv(7, b"")))
    assert (t.mint, t.owner, t.amount, t.delegate, t.state, t.extensions) == (C, A, 1, D, 2, {7: b""})
    plain = tok.decode_token_account(token_bytes()[:165])
    assert plain.extensions == {} and plain.state == tok.STATE_INITIALIZED


def test_round_trips() -> None:
    # encode(decode(b)) is b up to the trailing zero padding, which ends the TLV list
    assert tok.encode_mint(tok.decode_mint(GOOD_MINT)) + bytes(7) == GOOD_MINT
    account = token_bytes(1, 2, tlv(7, b""))
    assert tok.encode_token_account(tok.decode_token_account(account)) == account


texts = st.text(max_size=40)
keys = st.binary(min_size=32, max_size=32).filter(any).map(Pubkey.from_bytes)  # zero means none


@settings(max_examples=150, deadline=None)
@given(authority=st.none() | keys, supply=st.integers(0, 2**64 - 1), decimals=st.integers(0, 255),
       freeze=st.none() | keys, name=texts, uri=texts, extra=st.lists(st.tuples(texts, texts), max_size=4),
       raw=st.dictionaries(st.integers(24, 2000), st.binary(max_size=40), max_size=3))  # fmt: skip
def test_mint_round_trip(authority: Pubkey | None, supply: int, decimals: int, freeze: Pubkey | None, name: str,
                         uri: str, extra: list[tuple[str, str]], raw: dict[int, bytes]) -> None:  # fmt: skip
    meta = TokenMetadata(authority, C, name, "FED", uri, tuple(extra))
    state = MintState(authority, supply, decimals, True, freeze, raw, MetadataPointer(None, C), meta)
    decoded = tok.decode_mint(tok.encode_mint(state))
    assert decoded.metadata == meta and decoded.metadata_pointer == state.metadata_pointer
    assert (decoded.mint_authority, decoded.supply, decoded.decimals, decoded.freeze_authority) == (
        authority, supply, decimals, freeze)
    assert {k: v for k, v in decoded.extensions.items() if k in raw} == raw
    assert len(tok.encode_mint(state)) != tok.MULTISIG_SIZE
    assert tok.metadata_space(name, "FED", uri, extra) == 4 + len(tok.encode_token_metadata(meta))


@settings(max_examples=150, deadline=None)
@given(amount=st.integers(0, 2**64 - 1), delegate=st.none() | keys, state=st.integers(0, 2),
       raw=st.dictionaries(st.integers(1, 2000), st.binary(max_size=40), max_size=3))  # fmt: skip
def test_token_account_round_trip(amount: int, delegate: Pubkey | None, state: int, raw: dict[int, bytes]) -> None:
    account = TokenAccount(C, A, amount, delegate, state, raw)
    assert tok.decode_token_account(tok.encode_token_account(account)) == account


MALFORMED_MINTS = {
    "short": GOOD_MINT[:50],
    "between base and extended": GOOD_MINT[:100],
    "exactly 165": GOOD_MINT[:165],
    "is_initialized 2": GOOD_MINT[:45] + b"\x02" + GOOD_MINT[46:],
    "option tag 2": b"\x02" + GOOD_MINT[1:],
    "freeze option tag 7": GOOD_MINT[:46] + b"\x07" + GOOD_MINT[47:],
    "nonzero padding": mint_bytes(POINTER, padding=b"\x01" + bytes(82)),
    "token account type": mint_bytes(POINTER, account_type=2),
    "truncated tlv header": mint_bytes(POINTER, tail=b"\x12\x00\x01"),
    "tlv past the end": mint_bytes(POINTER, tlv(19, metadata_value())[:-1]),
    "overlong tlv length": mint_bytes(struct.pack("<HH", 18, 200) + bytes(A) + bytes(C)),
    "duplicate extension": mint_bytes(POINTER, POINTER),
    "bytes after the terminator": mint_bytes(POINTER, bytes(4) + b"\x01"),
    "pointer wrong length": mint_bytes(tlv(18, bytes(A))),
    "metadata truncated": mint_bytes(tlv(19, metadata_value()[:-3])),
    "metadata trailing bytes": mint_bytes(tlv(19, metadata_value(extra=b"\x00"))),
    "metadata bad utf-8": mint_bytes(tlv(19, metadata_value(name=b"\xff\xfe"))),
    "metadata absurd count": mint_bytes(tlv(19, bytes(64) + s(b"") * 3 + struct.pack("<I", 2**31))),
    "metadata string length huge": mint_bytes(tlv(19, bytes(64) + struct.pack("<I", 2**32 - 1))),
    "metadata shorter than keys": mint_bytes(tlv(19, bytes(40))),
}

MALFORMED_ACCOUNTS = {
    "short": token_bytes()[:164],
    "multisig length": token_bytes().ljust(355, b"\x00"),
    "state 3": token_bytes(3)[:165],
    "mint type byte": token_bytes(1, 1, tlv(7, b"")),
    "delegate option tag 9": token_bytes()[:72] + b"\x09" + token_bytes()[73:],
    "tlv past the end": token_bytes(1, 2, struct.pack("<HH", 7, 9)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_MINTS))
def test_malformed_mint(case: str) -> None:
    with pytest.raises(TokenLayoutError) as info:
        tok.decode_mint(MALFORMED_MINTS[case])
    assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize("case", sorted(MALFORMED_ACCOUNTS))
def test_malformed_token_account(case: str) -> None:
    with pytest.raises(TokenLayoutError) as info:
        tok.decode_token_account(MALFORMED_ACCOUNTS[case])
    assert "\n" not in str(info.value) and str(info.value)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), at=st.integers(0, 399))
def test_arbitrary_bytes_only_layout_errors(data: bytes, at: int) -> None:
    """Random bytes and single-byte corruptions of a good mint decode or raise TokenLayoutError."""
    corrupted = bytearray(GOOD_MINT)
    corrupted[at % len(corrupted)] ^= 0x5A
    for sample in (data, bytes(corrupted), GOOD_MINT[: at % len(GOOD_MINT)]):
        for decode in (tok.decode_mint, tok.decode_token_account):
            try:
                decode(sample)
            except TokenLayoutError:
                pass


def test_error_is_a_format_error() -> None:
    assert issubclass(TokenLayoutError, FormatError)


def test_instruction_bytes() -> None:
    disc = hashlib.sha256(b"spl_token_metadata_interface:updating_field").digest()[:8]
    named = tok.update_field(C, B, "uri", "ipfs://x")
    assert bytes(named.data) == disc + b"\x02" + s(b"ipfs://x")
    key = tok.update_field(C, B, "head", "cd")
    assert bytes(key.data) == disc + b"\x03" + s(b"head") + s(b"cd")
    assert [(m.is_signer, m.is_writable) for m in key.accounts] == [(False, True), (True, False)]
    assert bytes(tok.update_metadata_authority(C, B, None).data)[8:] == bytes(32)
    assert bytes(tok.initialize_mint2(C, 0, A).data) == bytes([20, 0]) + bytes(A) + b"\x00"
    assert bytes(tok.initialize_mint2(C, 0, A, D).data) == bytes([20, 0]) + bytes(A) + b"\x01" + bytes(D)
    assert bytes(tok.set_authority(C, A, tok.MINT_TOKENS, None).data) == bytes([6, 0, 0])
    assert bytes(tok.transfer_checked(A, C, B, D, 1, 0).data) == bytes([12]) + struct.pack("<QB", 1, 0)
    assert bytes(tok.mint_to_checked(C, A, B, 1, 0).data) == bytes([14]) + struct.pack("<QB", 1, 0)
    assert bytes(tok.initialize_metadata_pointer(C, None, C).data) == bytes([39, 0]) + bytes(32) + bytes(C)
    assert all(ix.program_id == tok.TOKEN_2022_PROGRAM_ID for ix in (named, key))


def test_associated_token_address_matches_spl() -> None:
    assert tok.associated_token_address(A, C) == get_associated_token_address(A, C, tok.TOKEN_2022_PROGRAM_ID)
    assert tok.associated_token_address(A, C) != get_associated_token_address(A, C)  # not the legacy program's


def test_sizes() -> None:
    assert tok.mint_space([]) == 82
    assert tok.mint_space([tok.Ext.METADATA_POINTER]) == 234
    assert tok.mint_space([tok.Ext.MINT_CLOSE_AUTHORITY, tok.Ext.PERMANENT_DELEGATE]) == 166 + 2 * 36
    with pytest.raises(ValueError):
        tok.mint_space([tok.Ext.TOKEN_METADATA])
    assert tok.metadata_space("é", "FED", "u", {"repo": "x"}) == 4 + 64 + 4 + 2 + 4 + 3 + 4 + 1 + 4 + (4 + 4) + (4 + 1)
    # a metadata mint that would be as long as a multisig gets the 2 bytes Token-2022 adds
    assert tok.metadata_mint_space("x" * 20, "FED", "ipfs://abcdefg", {}) == 357


def test_with_field_and_length_after_update() -> None:
    meta = tok.decode_mint(GOOD_MINT).metadata
    assert meta is not None
    assert meta.with_field("symbol", "X").symbol == "X" and meta.with_field("name", "n").name == "n"
    assert meta.with_field("uri", "u").uri == "u"
    assert meta.with_field("head", "00").additional == (("repo", "ab" * 32), ("head", "00"))  # keeps its place
    assert meta.with_field("license", "MIT").additional[-1] == ("license", "MIT")  # a new key is appended
    used = len(GOOD_MINT) - 7  # the trailing zeros are not counted
    assert tok.mint_length_after_update(GOOD_MINT, "head", "cd" * 32) == used
    assert tok.mint_length_after_update(GOOD_MINT, "uri", "ipfs://bafy" + "x" * 10) == used + 10
    assert tok.mint_length_after_update(GOOD_MINT, "license", "MIT") == used + 4 + 7 + 4 + 3
    with pytest.raises(TokenLayoutError, match="no token metadata"):
        tok.mint_length_after_update(mint_bytes(POINTER), "uri", "x")
