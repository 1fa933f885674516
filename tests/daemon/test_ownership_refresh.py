"""The daemon's NFT-holder reading (daemon/ownership.py) over a real embedded chain (LiteSVM persisted in
the node's store, our compiled program loaded): nft accounts are read in one call and their holder
recorded; an older reading, an absent account or an unused chain changes nothing; a refused
message brings the next reading early, rate-limited. The nft accounts are written into the chain's
state directly here (the program's bind_nft path is tests/chain/test_nft_control.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import trio
from daemon_harness import make_home
from helpers import model_arrays
from solders.account import Account
from solders.pubkey import Pubkey

from fednode.chain.config import DEV_PROGRAM_ID
from fednode.chain.embedded import EmbeddedBackend
from fednode.chain.program import FederityProgram
from fednode.daemon import ownership
from fednode.daemon.ownership import Ownership, refresh_interval
from fednode.errors import FednodeError
from fednode.identity import Identity
from fednode.node import Node, open_node
from fednode.storage.netstate import Controller, NetState
from fednode.tensors.modelio import ArraySource
from protocol import chain as layout

MINT = bytes([5]) * 32


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from fednode.chain.elf import federity_elf

    return federity_elf(tmp_path_factory.mktemp("programs"))


@pytest.fixture
def node(tmp_path: Path):
    n = open_node(make_home(tmp_path, "n"))
    yield n
    n.close()


def nft_account(repo_id: bytes, holder: bytes, sale_seq: int) -> bytes:
    """The program's nft account layout (contract: 792 bytes, tag 4, version 1)."""
    data = bytes([layout.Tag.NFT, layout.LAYOUT_VERSION, 254, 0]) + bytes(4) + repo_id + MINT + holder
    data += layout.branch_hash("main") + struct.pack("<QHH", sale_seq, 0, 0) + bytes(4)
    return data + bytes(layout.NFT_SIZE - len(data))


def put_account(node: Node, address: Pubkey, data: bytes) -> None:
    """Write a program-owned account into the embedded chain's persisted state (embedded.py's format)."""
    with node.store.write() as txn:
        txn.kv_put("chain", b"acct/" + bytes(address), bytes(Account(10**9, data, DEV_PROGRAM_ID)))
        raw = txn.kv_get("chain", b"meta/version")
        version = struct.unpack("<Q", raw)[0] + 1 if raw else 1
        txn.kv_put("chain", b"meta/version", struct.pack("<Q", version))


class Opened:
    """Counts the backends the task opens: one per reading, never one for an unused chain."""

    def __init__(self, node: Node, elf: bytes) -> None:
        self.node, self.elf, self.count = node, elf, 0

    def __call__(self, config: dict) -> EmbeddedBackend:
        self.count += 1
        return EmbeddedBackend(self.node.store, DEV_PROGRAM_ID, self.elf)


async def test_holders_are_read_in_one_call_and_recorded(node: Node, elf: bytes) -> None:
    info, _ = node.history.create_repo("sold", ArraySource(model_arrays(0)))
    other, _ = node.history.create_repo("unbound", ArraySource(model_arrays(1)))
    followed = bytes([9]) * 32  # followed, not held: its holder is recorded too
    state, buyer, later = NetState(node.store), Identity.generate(), Identity.generate()
    state.follow(followed)
    opened = Opened(node, elf)
    task = Ownership(node, state, opened)
    assert await task.refresh_once() == {} and opened.count == 0  # the embedded chain was never used
    program = FederityProgram(DEV_PROGRAM_ID)
    put_account(node, program.nft_address(info.repo_id), nft_account(info.repo_id, buyer.public_key, 1))
    put_account(node, program.nft_address(followed), nft_account(followed, later.public_key, 4))
    put_account(node, program.nft_address(other.repo_id), b"\x04" * 10)  # not an nft account: skipped
    changed = await task.refresh_once()
    assert changed == {info.repo_id: buyer.public_key, followed: later.public_key} and opened.count == 1
    ctl = state.controller(info.repo_id)
    assert ctl is not None and (ctl.holder, ctl.mint, ctl.sale_seq) == (buyer.public_key, MINT, 1)
    assert state.owner(info.repo_id) == buyer.public_key and state.controller(other.repo_id) is None
    assert await task.refresh_once() == {}  # the same reading again changes nothing
    # a lagging reading (lower sale_seq) is ignored; a newer one is recorded
    put_account(node, program.nft_address(info.repo_id), nft_account(info.repo_id, later.public_key, 0))
    assert await task.refresh_once() == {} and state.owner(info.repo_id) == buyer.public_key
    put_account(node, program.nft_address(info.repo_id), nft_account(info.repo_id, later.public_key, 2))
    assert await task.refresh_once() == {info.repo_id: later.public_key}
    # an nft account that disappears (another chain) leaves the binding as recorded
    with node.store.write() as txn:
        txn.kv_delete("chain", b"acct/" + bytes(program.nft_address(info.repo_id)))
        txn.kv_put("chain", b"meta/version", struct.pack("<Q", 99))
    assert await task.refresh_once() == {}
    assert state.controller(info.repo_id) == Controller(later.public_key, MINT, ctl.slot, 2)


async def test_a_refused_message_brings_the_reading_early_at_most_every_few_seconds(
        node: Node, elf: bytes, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    info, _ = node.history.create_repo("r", ArraySource(model_arrays(0)))
    put_account(node, FederityProgram(DEV_PROGRAM_ID).nft_address(info.repo_id),
                nft_account(info.repo_id, Identity.generate().public_key, 1))
    opened = Opened(node, elf)
    task = Ownership(node, NetState(node.store), opened)
    async with trio.open_nursery() as nursery:
        await nursery.start(task.run)
        await trio.sleep(1)
        assert task.readings == 1  # at start
        task.suspect(info.repo_id)
        task.suspect(info.repo_id)  # many refusals, one reading
        await trio.sleep(ownership.EARLY_GAP_S + 0.5)
        assert task.readings == 2  # early: not NFT_REFRESH_S after the first, EARLY_GAP_S at most
        for _ in range(20):  # a flood of refusals: one reading per EARLY_GAP_S
            task.suspect(info.repo_id)
            await trio.sleep(0.5)
        assert task.readings <= 2 + 10 / ownership.EARLY_GAP_S + 1
        await trio.sleep(ownership.EARLY_GAP_S + 0.5)  # the last refusal's reading
        before = task.readings
        await trio.sleep(ownership.NFT_REFRESH_S + 0.5)  # no refusals: the regular interval
        assert task.readings == before + 1
        nursery.cancel_scope.cancel()


def test_the_refresh_interval_is_checked() -> None:
    assert refresh_interval({}) == ownership.NFT_REFRESH_S
    assert refresh_interval({"chain": {"nft_refresh_s": 2}}) == 2.0
    for bad in (0, -1, True, "30"):
        with pytest.raises(FednodeError, match=r"\[chain\] nft_refresh_s must be a positive number"):
            refresh_interval({"chain": {"nft_refresh_s": bad}})
