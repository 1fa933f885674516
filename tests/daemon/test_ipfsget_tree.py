"""`ipfs get` of a plain UnixFS directory: fetched whole (directory nodes level by level, then each
file), bounded, written as a new directory tree, pinned and kept by gc; hostile trees refused with
nothing stored. Two real py-libp2p hosts over bitswap, as test_ipfsget_bounds.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo
from test_bitswap_kubo import _host, _listen

from fednode.daemon import ipfsget
from fednode.daemon.bitswap import start_bitswap
from fednode.daemon.ipfsget import TooLarge, get_file
from fednode.errors import FednodeError
from fednode.storage.store import PUBLIC, Store, Txn
from fednode.workflows.fsck import mark
from fednode.workflows.ipfsfiles import write_tree
from protocol import hamt
from protocol.multiformats import CID, DAG_CBOR, DAG_PB, FormatError, encode_varint
from protocol.symlinks import encode_symlink
from protocol.unixfs import DirEntry, _bytes_field, _field, add_bytes, encode_directory, encode_link


def _put(txn: Txn, cid: CID, block: bytes) -> None:
    txn.put_block(cid, block)
    txn.tag_block(cid, PUBLIC)  # as ipfs add does: served to anyone


def _dir(txn: Txn, entries: dict[str, CID]) -> CID:
    block = encode_directory([DirEntry(name, cid, 1) for name, cid in entries.items()])
    cid = CID(1, DAG_PB, CID.hash(DAG_PB, block).digest)
    _put(txn, cid, block)
    return cid


def _raw_dir(txn: Txn, names: list[bytes], target: CID) -> CID:
    """A directory node with any names, in the given order (what a hostile peer can write)."""
    out = bytearray()
    for name in names:
        body = _bytes_field(1, bytes(target)) + _bytes_field(2, name) + _field(3, 0) + encode_varint(1)
        out += _bytes_field(2, body)
    out += _bytes_field(1, b"\x08\x01")
    cid = CID(1, DAG_PB, CID.hash(DAG_PB, bytes(out)).digest)
    _put(txn, cid, bytes(out))
    return cid


def _hamt(txn: Txn, links: list[tuple[bytes, CID]]) -> CID:
    """A HAMT shard linking each (bucket digits + name, or digits alone for a sub-shard) to a CID."""
    block = b"".join(encode_link(name, cid, 1) for name, cid in links)
    block += _bytes_field(1, hamt._shard_data(int(name[:2], 16) for name, _ in links))
    cid = CID(1, DAG_PB, CID.hash(DAG_PB, block).digest)
    _put(txn, cid, block)
    return cid


def _put_link(txn: Txn, target: str) -> CID:
    block = encode_symlink(target)
    cid = CID(1, DAG_PB, CID.hash(DAG_PB, block).digest)
    _put(txn, cid, block)
    return cid


def _count(store: Store) -> int:
    with store.read() as txn:
        return sum(1 for _ in txn.iter_block_cids())


async def test_a_directory_tree_is_fetched_bounded_and_written_whole(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, 700_000, dtype=np.uint8).tobytes()  # 3 chunks
    files = {"notes.txt": b"hello\n", "sub/scan.bin": big, "sub/deeper/empty": b"", "sub/copy.txt": b"hello\n"}
    served, mine = Store(tmp_path / "served", sync=False), Store(tmp_path / "mine", sync=False)
    with served.write() as txn:
        put = lambda c, b: _put(txn, c, b)  # noqa: E731
        cids = {path: add_bytes(data, put=put) for path, data in files.items()}
        deeper = _dir(txn, {"empty": cids["sub/deeper/empty"]})
        sub = _dir(txn, {"scan.bin": cids["sub/scan.bin"], "deeper": deeper, "copy.txt": cids["sub/copy.txt"]})
        root = _dir(txn, {"notes.txt": cids["notes.txt"], "sub": sub})
        file_only = add_bytes(b"just a file", put=put)
        dotdot = _raw_dir(txn, [b"..", b"x"], cids["notes.txt"])
        twice = _raw_dir(txn, [b"a", b"a"], cids["notes.txt"])
        slash = _raw_dir(txn, [b"a/b"], cids["notes.txt"])
        cbor = _dir(txn, {"x": CID.hash(DAG_CBOR, b"\xa0")})
        _put(txn, CID.hash(DAG_CBOR, b"\xa0"), b"\xa0")
        chain = cids["notes.txt"]
        for _ in range(4):  # a/a/a/a/notes
            chain = _dir(txn, {"a": chain})
        link_block = _bytes_field(1, b"\x08\x04\x12\x0b/etc/passwd")  # a UnixFS symbolic link
        link = CID(1, DAG_PB, CID.hash(DAG_PB, link_block).digest)
        _put(txn, link, link_block)
        with_link = _dir(txn, {"passwd": link})  # absolute: refused
        links = {t: _put_link(txn, t) for t in ("../../etc", ".", "x/..", "../notes.txt")}
        escaping = _dir(txn, {"sub": _dir(txn, {"up": links["../../etc"]})})
        chained = _dir(txn, {"x": links["."], "y": links["x/.."], "notes.txt": cids["notes.txt"]})  # y: out in fact
        kept = _dir(txn, {"notes.txt": cids["notes.txt"], "sub": _dir(txn, {"n": links["../notes.txt"]})})
        heavy = _dir(txn, {f"{i}.bin": add_bytes(bytes([i]) * 100_000, put=put) for i in range(200)})  # 20 MB
        subs = [_hamt(txn, [(b"%02X%d" % (i, i), cids["notes.txt"])]) for i in range(5)]
        shards = _hamt(txn, [(b"%02X" % i, sub) for i, sub in enumerate(subs)])  # 5 shards of 1 entry each
        bomb = cids["notes.txt"]
        for _ in range(20):  # each directory names the one below twice: 21 blocks, 2**20 paths when written
            bomb = _dir(txn, {"a": bomb, "b": bomb})
    server, client = _host(), _host()
    try:
        async with server.run(_listen()), client.run(_listen()), trio.open_nursery() as nursery:
            await start_bitswap(server, served, nursery)
            handle = await start_bitswap(client, mine, nursery)
            await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
            # hostile trees: each refused, nothing stored
            monkeypatch.setattr(ipfsget, "MAX_DIR_DEPTH", 30)
            cases: list[tuple[CID, int, type[Exception], str]] = [
                (dotdot, 1 << 30, FormatError, "cannot be a file name: '..'"),
                (twice, 1 << 30, FormatError, "names 'a' twice"),
                (slash, 1 << 30, FormatError, "cannot be a file name: 'a/b'"),
                (cbor, 1 << 30, FormatError, "of codec 0x71: not a UnixFS file or directory"),

                (root, len(big), TooLarge, f"declares more than {len(big)} bytes of files, the limit"),
                (bomb, 1 << 30, FormatError, "holds more than 65536 entries"),
                # raw-leaf entries are whole files in their first block: held to the limit as they come
                (heavy, 1_000_000, TooLarge, "holds more than 1000000 bytes, the limit"),
                (with_link, 1 << 30, FormatError, r"a symbolic link to an absolute path \('/etc/passwd'\)"),
                (escaping, 1 << 30, FormatError, "the symbolic link 'sub/up' leads out of the tree"),
            ]
            for bad, limit, error, needle in cases:
                with pytest.raises(error, match=needle):
                    await get_file(handle, bad, limit, timeout=20, pin=True, directories=True)
                assert _count(mine) == 0, bad
            monkeypatch.setattr(ipfsget, "MAX_DIR_DEPTH", 3)
            with pytest.raises(FormatError, match="nests deeper than 3 levels"):
                await get_file(handle, chain, 1 << 30, timeout=20, pin=True, directories=True)
            assert _count(mine) == 0
            monkeypatch.setattr(ipfsget, "MAX_ENTRIES", 4)
            with pytest.raises(FormatError, match="more than 4 entries"):  # 6 entries in the good tree
                await get_file(handle, root, 1 << 30, timeout=20, pin=True, directories=True)
            assert _count(mine) == 0
            with pytest.raises(FormatError, match="more than 4 HAMT shards"):  # counted apart from entries
                await get_file(handle, shards, 1 << 30, timeout=20, pin=True, directories=True)
            assert _count(mine) == 0
            monkeypatch.setattr(ipfsget, "MAX_ENTRIES", 1 << 16)
            with pytest.raises(FormatError, match="is a UnixFS directory: give --out"):  # not asked for one
                await get_file(handle, root, 1 << 30, timeout=20, pin=True)
            assert _count(mine) == 0

            got = await get_file(handle, root, 1 << 30, timeout=20, pin=True, directories=True)
            assert got["kind"] == "directory" and got["files"] == 4  # copy.txt is notes.txt: fetched once
            assert got["size"] == len(big) + 12  # the bytes written
            for tree in (kept, chained):
                assert (await get_file(handle, tree, 1 << 30, timeout=20, pin=True, directories=True))["files"] == 1
            single = await get_file(handle, file_only, 1 << 30, timeout=20, pin=True, directories=True)
            assert single["kind"] == "file" and single["size"] == 11
            nursery.cancel_scope.cancel()
        out = tmp_path / "tree"
        assert write_tree(mine, root, out) == len(big) + 12
        written = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert written == files and (out / "sub" / "deeper").is_dir()
        assert out.stat().st_mode & 0o777 == (out / "sub").stat().st_mode & 0o777  # the top made as mkdir makes
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        with pytest.raises(FednodeError, match="exists: a directory is written to a new path only"):
            write_tree(mine, root, out)
        # links: one to a sibling's file is written as a link; one that leads out only through
        # another link passes the fetch (its text stays inside) and is caught when written
        write_tree(mine, kept, tmp_path / "kept")
        assert os.readlink(tmp_path / "kept" / "sub" / "n") == "../notes.txt"
        assert (tmp_path / "kept" / "sub" / "n").read_bytes() == b"hello\n"
        with pytest.raises(FednodeError, match="the symbolic link y leads out of the tree through other links"):
            write_tree(mine, chained, tmp_path / "chained")
        assert not (tmp_path / "chained").exists()
        import errno

        import fednode.workflows.ipfsfiles as ipfsfiles

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ipfsfiles.os, "fsync", full)  # the disk fills while the tree is written
        with pytest.raises(FednodeError, match="cannot write .*No space left on device.*nothing written"):
            write_tree(mine, root, tmp_path / "tree2")
        monkeypatch.undo()
        assert not (tmp_path / "tree2").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        with mine.read() as txn:  # pinned: gc keeps every block of the tree
            marked = mark(txn)
            assert not marked.problems
            assert {bytes(c) for c in txn.iter_block_cids()} <= marked.reachable
    finally:
        served.close()
        mine.close()
