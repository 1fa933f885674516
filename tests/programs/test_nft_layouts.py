"""protocol/chain.py NFT layouts and fednode/chain/program.py NFT builders (pure: no chain)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from fednode.chain.program import (
    SYSTEM_PROGRAM_ID,
    TOKEN_2022_PROGRAM_ID,
    FederityProgram,
    NftRef,
    ed25519_proof,
    token_account_address,
)
from protocol import chain as layout

PROGRAM = FederityProgram(Keypair.from_seed(bytes([7]) * 32).pubkey())
REPO_ID = bytes(range(32))
b32 = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)
nft_instructions = st.one_of(
    st.builds(layout.BindNft, st.integers(0, 10_000), st.booleans(), b32),
    st.just(layout.SyncHolder()),
    st.builds(layout.SetShare, st.integers(0, 10_000)),
    st.builds(layout.Sell, u64, u64),
    st.builds(layout.SetUri, st.text(min_size=1, max_size=50)),
    st.builds(layout.Claim, st.integers(0, layout.MAX_CONTRIBUTORS - 1)),
)


@given(nft_instructions)
def test_nft_instruction_codec_round_trips(ix: layout.Instruction) -> None:
    assert layout.decode_instruction(layout.encode_instruction(ix)) == ix


def test_nft_instruction_bytes() -> None:
    branch = layout.branch_hash("main")
    assert layout.encode_instruction(layout.BindNft(250, True, branch)) == b"\x06\xfa\x00\x01" + branch
    assert layout.encode_instruction(layout.SyncHolder()) == b"\x07"
    assert layout.encode_instruction(layout.SetShare(10_000)) == b"\x08\x10\x27"
    assert layout.encode_instruction(layout.Sell(5, 2)) == b"\x09" + struct.pack("<QQ", 5, 2)
    assert layout.encode_instruction(layout.SetUri("ipfs://x")) == b"\x0aipfs://x"
    assert layout.encode_instruction(layout.Claim(3)) == b"\x0b\x03"


@pytest.mark.parametrize("bad", [
    lambda: layout.encode_instruction(layout.SetShare(10_001)),
    lambda: layout.encode_instruction(layout.BindNft(0, False, b"short")),
    lambda: layout.encode_instruction(layout.Sell(-1, 0)),
    lambda: layout.encode_instruction(layout.SetUri("")),
    lambda: layout.encode_instruction(layout.SetUri("x" * 201)),
    lambda: layout.decode_instruction(b"\x06\x00\x00\x02" + bytes(32)),  # unknown flag
    lambda: layout.decode_instruction(b"\x08\x11\x27"),  # 10001 bps
    lambda: layout.decode_instruction(b"\x0a\xff"),  # not utf-8
    lambda: layout.decode_instruction(b"\x07\x00"),
    lambda: layout.decode_instruction(b"\x09" + bytes(15)),
    lambda: layout.encode_instruction(layout.Claim(16)),
    lambda: layout.decode_instruction(b"\x0b"),
    lambda: layout.decode_instruction(b"\x0b\x10"),  # index 16: past the table
    lambda: layout.decode_instruction(b"\x0b\x00\x00"),
])  # fmt: skip
def test_nft_codec_rejects_bad_input(bad: object) -> None:
    with pytest.raises(layout.LayoutError):
        bad()  # type: ignore[operator]


def nft_bytes(n: int = 2, share: int = 300, flags: int = 1) -> bytearray:
    data = bytearray(layout.NFT_SIZE)
    data[0:4] = bytes([layout.Tag.NFT, 1, 254, flags])
    data[8:40], data[40:72], data[72:104], data[104:136] = b"r" * 32, b"m" * 32, b"h" * 32, b"b" * 32
    struct.pack_into("<QHH", data, 136, 9, share, n)
    for i in range(min(n, layout.MAX_CONTRIBUTORS)):
        data[152 + 48 * i : 184 + 48 * i] = bytes([i + 1]) * 32
        struct.pack_into("<QQ", data, 184 + 48 * i, 10 * (i + 1), 7 * i)  # weight, owed
    return data


def test_decode_nft() -> None:
    nft = layout.decode_nft(bytes(nft_bytes()))
    assert (layout.NFT_SIZE, layout.CONTRIBUTOR_SIZE) == (920, 48)
    assert (nft.bump, nft.repo_id, nft.mint, nft.holder, nft.head_branch) == (254, b"r" * 32, b"m" * 32, b"h" * 32,
                                                                              b"b" * 32)  # fmt: skip
    assert (nft.sale_seq, nft.share_bps, nft.share_locked) == (9, 300, True)
    assert nft.contributors == ((b"\x01" * 32, 10, 0), (b"\x02" * 32, 20, 7)) and nft.owed == 7
    stray = nft_bytes()
    stray[-1] = 1  # data in a free contributor slot: the program never writes one
    stray_owed = nft_bytes()
    stray_owed[152 + 48 * 2 + 40] = 1  # an owed amount in the first free slot
    for bad in (nft_bytes()[:-1], nft_bytes(n=17), nft_bytes(share=10_001), nft_bytes(flags=2), stray, stray_owed):
        with pytest.raises(layout.LayoutError):
            layout.decode_nft(bytes(bad))


def test_sale_amounts_rounding_rule() -> None:
    assert layout.sale_amounts(6_000, 10_000, [1, 2, 3]) == (0, [1_000, 2_000, 3_000])
    # S = floor(1001 * 5000 / 10000) = 500; 500*1//6 = 83, 500*2//6 = 166, 500*3//6 = 250 -> dust 1 to the seller
    assert layout.sale_amounts(1_001, 5_000, [(b"a", 1), (b"b", 2), (b"c", 3)]) == (1_001 - 499, [83, 166, 250])
    assert layout.sale_amounts(10**9, 0, [1, 2]) == (10**9, [0, 0])
    assert layout.sale_amounts(10**9, 500, []) == (10**9, [])
    big = 2**64 - 1  # 128-bit intermediates: no overflow
    seller, paid = layout.sale_amounts(big, 10_000, [2**64 - 1, 1])
    assert seller + sum(paid) == big and paid[1] == 0


def test_waits_is_the_runtime_rent_rule() -> None:
    assert layout.waits(0, 100_000, 890_880)  # an empty wallet, a small part
    assert not layout.waits(0, 890_880, 890_880)  # the part itself makes it rent-exempt
    assert not layout.waits(1_000_000, 1, 890_880) and not layout.waits(0, 0, 890_880)
    assert layout.waits(1, 100, 890_880)  # a rent-paying account cannot grow and stay below the minimum


def test_builders_account_lists() -> None:
    owner, buyer, c1, c2 = (Keypair().pubkey() for _ in range(4))
    mint, token = Keypair().pubkey(), Keypair().pubkey()
    nft_pda = PROGRAM.nft_address(REPO_ID)
    assert nft_pda == Pubkey.find_program_address([b"nft", REPO_ID], PROGRAM.program_id)[0]
    bind = PROGRAM.bind_nft(owner, REPO_ID, mint, token, 100, False, "main")
    assert [m.pubkey for m in bind.accounts] == [owner, PROGRAM.repo_address(REPO_ID), nft_pda, mint, token,
                                                 SYSTEM_PROGRAM_ID]  # fmt: skip
    assert [(m.is_signer, m.is_writable) for m in bind.accounts][:3] == [(True, True), (False, True), (False, True)]
    sell = PROGRAM.sell(owner, buyer, REPO_ID, mint, 10, 0, [c1, c2])
    assert [m.pubkey for m in sell.accounts][5:] == [token_account_address(owner, mint),
                                                     token_account_address(buyer, mint), TOKEN_2022_PROGRAM_ID,
                                                     SYSTEM_PROGRAM_ID, c1, c2]  # fmt: skip
    assert all(m.is_writable for m in sell.accounts[-2:]) and sell.accounts[1].is_signer
    ref = NftRef(mint, token)
    trailing = [token, nft_pda, mint, TOKEN_2022_PROGRAM_ID]
    head = PROGRAM.set_head(owner, REPO_ID, layout.branch_hash("main"), REPO_ID, nft=ref)
    add = PROGRAM.add_member(owner, REPO_ID, c1, nft=ref)
    assert [m.pubkey for m in head.accounts][3:] == trailing and [m.pubkey for m in add.accounts][4:] == trailing
    assert [m.is_writable for m in head.accounts][3:] == [False, True, True, False]
    merge = PROGRAM.merge(owner, REPO_ID, layout.Merge(REPO_ID, REPO_ID, (b"a" * 32, b"b" * 32), (1, 2)), nft=ref)
    assert len(merge.accounts) == 5 + 2 + 4 and [m.pubkey for m in merge.accounts][-4:] == trailing
    assert len(PROGRAM.merge(owner, REPO_ID, layout.Merge(REPO_ID, REPO_ID, (b"a" * 32,), (1,))).accounts) == 6
    claim = PROGRAM.claim(REPO_ID, 1, c2)
    assert [(m.pubkey, m.is_signer, m.is_writable) for m in claim.accounts] == [
        (PROGRAM.repo_address(REPO_ID), False, False), (nft_pda, False, True), (c2, False, True)]
    assert claim.data == b"\x0b\x01"
    uri = PROGRAM.set_uri(owner, REPO_ID, mint, "ipfs://x")
    assert [m.pubkey for m in uri.accounts][3:5] == [token_account_address(owner, mint), mint]
    assert token_account_address(owner, mint) == Pubkey.find_program_address(
        [bytes(owner), bytes(TOKEN_2022_PROGRAM_ID), bytes(mint)],
        Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"))[0]


def test_nft_bound_merge_fits_a_legacy_transaction() -> None:
    """The four NFT accounts cost 128 bytes: 6 committed inputs (or 7 plain) still fit 1232 bytes."""
    signer = Keypair()
    ref = NftRef(Keypair().pubkey(), Keypair().pubkey())

    def size(n: int, committed: bool) -> int:
        inputs = tuple(bytes([i + 1]) * 32 for i in range(n))
        body = layout.Merge(REPO_ID, layout.branch_hash("main"), inputs, (1,) * n, bytes(64) if committed else None)
        ixs = [ed25519_proof(signer.pubkey(), bytes(64), REPO_ID),
               PROGRAM.merge(signer.pubkey(), REPO_ID, body, nft=ref)]
        return len(bytes(Transaction([signer], Message(ixs, signer.pubkey()), Hash.default())))

    assert (size(6, True), size(7, False)) == (1184, 1193)
    assert size(7, True) > 1232 and size(8, False) > 1232
