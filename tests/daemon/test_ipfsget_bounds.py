"""``ipfsget.get_file`` refuses hostile DAGs from a bitswap peer and keeps nothing of them.

Two in-process py-libp2p hosts: one serves hostile DAGs from its store over bitswap, the other
fetches with ``get_file``; after each refusal the fetcher's store holds exactly what it held.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio
from helpers import dag_bomb
from libp2p.peer.peerinfo import PeerInfo
from test_bitswap_kubo import _host, _listen

from fednode.daemon.bitswap import BitswapHandle, start_bitswap
from fednode.daemon.ipfsget import MAX_LINKS, TooLarge, forget, get_file
from fednode.storage.diskspace import DiskFull
from fednode.storage.pins import pin, pins
from fednode.storage.store import PUBLIC, Store
from protocol.multiformats import CID, DAG_PB, RAW, FormatError
from protocol.unixfs import Link, _unixfs_data, add_bytes, encode_node


def _chain(depth: int, leaf: bytes = b"deep" * 4) -> tuple[CID, dict[CID, bytes]]:
    """``depth`` one-link nodes over one leaf, sizes consistent: a file far deeper than its size allows."""
    child, blocks = CID.hash(RAW, leaf), {}
    blocks[child] = leaf
    for _ in range(depth):
        block = encode_node([Link(child, len(blocks[child]), len(leaf))], _unixfs_data(len(leaf), [len(leaf)]))
        child = CID(1, DAG_PB, CID.hash(DAG_PB, block).digest)
        blocks[child] = block
    return child, blocks


def _count(store: Store) -> int:
    with store.read() as txn:
        return sum(1 for _ in txn.iter_block_cids())


async def test_hostile_dags_are_refused_and_nothing_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fednode.daemon.ipfsget as ipfsget

    served, mine = Store(tmp_path / "served", sync=False), Store(tmp_path / "mine", sync=False)
    # a root declaring a 10-byte leaf whose block (hashing right) holds 100 KB: refused on arrival
    fat = b"f" * 100_000
    fat_root_block = encode_node([Link(CID.hash(RAW, fat), len(fat), 10)], _unixfs_data(10, [10]))
    fat_root = CID(1, DAG_PB, CID.hash(DAG_PB, fat_root_block).digest)
    # a file of more blocks than the limit: refused once its root's links are read
    many = b"".join(hashlib.sha256(b"m%d" % i).digest() for i in range(32768))
    good = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(32768))  # 1 MiB: 4 leaves
    deep_root, deep = _chain(12)
    wide_root, wide = dag_bomb(levels=1, fanout=MAX_LINKS + 1, leaf=b"w")
    lie_root, lie = dag_bomb(levels=2, fanout=4, leaf=b"l" * 100, lie_at_root=40)
    # a UnixFS directory (Data.Type = 1) holding one file: named as such, not as a malformed file
    dir_block = encode_node([Link(CID.hash(RAW, b"in a folder"), 11, 11)], b"\x08\x01")
    dir_root = CID(1, DAG_PB, CID.hash(DAG_PB, dir_block).digest)
    with served.write() as txn:  # all tagged PUBLIC (as ipfs add does): the hostile server serves them all
        good_root = add_bytes(good, put=lambda c, b: (txn.put_block(c, b), txn.tag_block(c, PUBLIC)))
        many_root = add_bytes(many, put=lambda c, b: (txn.put_block(c, b), txn.tag_block(c, PUBLIC)))
        for blocks in (deep, wide, lie, {fat_root: fat_root_block, CID.hash(RAW, fat): fat}, {dir_root: dir_block}):
            for cid, block in blocks.items():
                txn.put_block(cid, block)
                txn.tag_block(cid, PUBLIC)
    server, client = _host(), _host()
    try:
        async with server.run(_listen()), client.run(_listen()), trio.open_nursery() as nursery:
            await start_bitswap(server, served, nursery)
            handle: BitswapHandle = await start_bitswap(client, mine, nursery)
            await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
            cases: list[tuple[CID, int, type[Exception], str]] = [
                (good_root, len(good) - 1, TooLarge, "over the limit"),
                (deep_root, 1 << 30, FormatError, "deeper than"),
                (wide_root, 1 << 30, FormatError, "links, over the limit"),
                (lie_root, 1 << 30, FormatError, "declares"),
                (CID.hash(0x71, b"\xa0"), 1 << 30, FormatError, "not a UnixFS file"),
                (fat_root, 1 << 30, FormatError, "holds 100000 bytes, where its parent declares 10"),
                (many_root, 1 << 30, FormatError, "more than 4 blocks"),
                (dir_root, 1 << 30, FormatError, f"{dir_root} is a UnixFS directory: give --out"),
            ]
            for root, limit, error, needle in cases:
                monkeypatch.setattr(ipfsget, "MAX_BLOCKS", 4 if root == many_root else 1 << 19)
                with pytest.raises(error, match=needle):
                    await get_file(handle, root, limit, timeout=20, pin=True)
                assert _count(mine) == 0, root
            assert not handle.blocks.sizes and not handle.blocks.misfits  # nothing left of those fetches
            monkeypatch.setattr(ipfsget, "MAX_BLOCKS", 1 << 19)
            with pytest.raises(DiskFull, match="min_free_bytes"):  # a reserve no disk here has
                await get_file(handle, good_root, len(good), timeout=20, pin=True, min_free=1 << 62)
            assert _count(mine) == 0
            with pytest.raises(trio.TooSlowError):
                await get_file(handle, add_bytes(b"nobody has it"), 1 << 30, timeout=1, pin=True)
            result = await get_file(handle, good_root, len(good), timeout=20, pin=True)
            assert result == {"cid": str(good_root), "size": len(good), "blocks": 5, "kind": "file", "files": 1}
            with mine.read() as txn:
                assert [p.root for p in pins(txn)] == [good_root]
            nursery.cancel_scope.cancel()
    finally:
        served.close()
        mine.close()


def test_a_failed_fetch_forgets_only_what_nothing_else_holds(tmp_path: Path) -> None:
    """A block the failed fetch stored stays when something came to need it meanwhile (here a pinned
    file holding the same bytes: put_block dedups, so the pin's file IS that block)."""
    store = Store(tmp_path / "store", sync=False)
    shared, alone = b"the same bytes", b"only the fetch wanted these"
    with store.write() as txn:
        shared_cid = add_bytes(shared, put=lambda c, b: txn.put_block(c, b))
        alone_cid = add_bytes(alone, put=lambda c, b: txn.put_block(c, b))
        pin(txn, shared_cid, len(shared), "add")  # e.g. `fednode ipfs add` of the same bytes, meanwhile
    forget(store, [shared_cid, alone_cid])
    with store.read() as txn:
        assert txn.has_block(shared_cid) and not txn.has_block(alone_cid)
    store.close()


def test_a_failed_fetch_keeps_what_a_running_fetch_of_the_same_file_relies_on(tmp_path: Path) -> None:
    """Two ``ipfs get``s of one file: the first stored a leaf and failed while the second runs (it
    found the leaf present, so it will not ask for it again). The leaf stays; once nothing runs, a
    failure forgets it."""
    from fednode.daemon import ipfsget
    from protocol.unixfs import CHUNK_SIZE

    store = Store(tmp_path / "store", sync=False)
    data = bytes(range(256)) * (CHUNK_SIZE // 128)  # two leaves under one root
    with store.write() as txn:
        root = add_bytes(data, put=lambda c, b: txn.put_block(c, b))
        leaf = CID.hash(RAW, data[:CHUNK_SIZE])
    ipfsget.RUNNING[root] += 1  # the second get, running
    try:
        forget(store, [leaf])  # the first one fails
        with store.read() as txn:
            assert txn.has_block(leaf)  # before: deleted under the running get
    finally:
        ipfsget._done(root)
    assert not ipfsget.RUNNING
    forget(store, [leaf])
    with store.read() as txn:
        assert not txn.has_block(leaf)
    store.close()
