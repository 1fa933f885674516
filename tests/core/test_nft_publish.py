"""Storing the NFT's image and metadata document as IPFS files (fednode/nft/publish.py) in a real
node store: Kubo's CIDs, PUBLIC tags, pins that gc respects, bytes read back, all or nothing.
A real Kubo fetching them from a running daemon: tests/daemon/test_nft_kubo.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import model_arrays, perturb, store_fingerprint

from fednode.errors import FednodeError
from fednode.nft import publish as publishing
from fednode.nft.document import parse_metadata_document
from fednode.nft.publish import publish_metadata
from fednode.node import open_node
from fednode.storage.store import PUBLIC
from fednode.tensors.modelio import ArraySource
from fednode.workflows.ipfsfiles import write_file
from protocol.multiformats import RAW
from protocol.unixfs import add_bytes, iter_file


def _repo(home: Path, visibility: str = "public") -> None:
    with open_node(home) as node:
        info, _ = node.history.create_repo("demo", ArraySource(model_arrays(0)), "init", visibility=visibility,
                                           metrics={"loss": 1.0})
        node.history.commit(info, ArraySource(perturb(model_arrays(0), 1)), "r1", metrics={"loss": 0.5})


def test_publish_stores_both_files_as_kubo_would_and_pins_them(cli, home: Path, tmp_path: Path) -> None:
    _repo(home)
    with open_node(home) as node:
        info = node.history.repo("demo")
        pub = publish_metadata(node.history, info, "main", license="MIT")
        store = node.store
        image = b"".join(iter_file(store.get_block, pub.image_cid))
        raw = b"".join(iter_file(store.get_block, pub.document_cid))
        # the CIDs are those of Kubo's `ipfs add --cid-version=1 --raw-leaves` for these bytes (one raw leaf)
        assert pub.image_cid == add_bytes(image) and pub.document_cid == add_bytes(raw)
        assert pub.image_cid.codec == RAW and pub.document_cid.version == 1
        assert pub.uri == f"ipfs://{pub.document_cid}" and len(pub.uri) <= 128  # fits nftmint's uri bound
        with store.read() as txn:
            assert txn.block_repos(pub.image_cid) == [PUBLIC] and txn.block_repos(pub.document_cid) == [PUBLIC]
        doc = parse_metadata_document(raw)
        assert doc == pub.document and doc["image"] == f"ipfs://{pub.image_cid}"
        assert image.startswith(b"\x89PNG\r\n\x1a\n")
        write_file(store, pub.document_cid, tmp_path / "doc.json")  # what `fednode ipfs get --out` writes
        assert (tmp_path / "doc.json").read_bytes() == raw
        again = publish_metadata(node.history, info, "main", license="MIT")
        assert (again.document_cid, again.image_cid) == (pub.document_cid, pub.image_cid)  # same state, same CIDs
    pins = json.loads(cli("ipfs", "pins", "--json").stdout)
    assert sorted((p["cid"], p["source"]) for p in pins) == sorted(
        [(str(pub.document_cid), "nft"), (str(pub.image_cid), "nft")])
    cli("gc")
    with open_node(home) as node, node.store.read() as txn:
        assert txn.has_block(pub.image_cid) and txn.has_block(pub.document_cid)
    assert cli("ipfs", "unpin", str(pub.image_cid)).exit_code == 0
    cli("gc")
    with open_node(home) as node, node.store.read() as txn:
        assert not txn.has_block(pub.image_cid) and txn.has_block(pub.document_cid)  # its pin kept it


def test_a_failure_stores_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _repo(home)
    before = store_fingerprint(home)
    with open_node(home) as node:
        info = node.history.repo("demo")
        with pytest.raises(FednodeError, match="license"):
            publish_metadata(node.history, info, "main", license="")
    assert store_fingerprint(home) == before
    calls = []
    real = publishing.put_file

    def second_fails(txn, source, pin_source):  # type: ignore[no-untyped-def]
        calls.append(pin_source)
        if len(calls) == 2:
            raise OSError("disk gone")
        return real(txn, source, pin_source)

    monkeypatch.setattr(publishing, "put_file", second_fails)
    with open_node(home) as node:
        with pytest.raises(OSError):
            publish_metadata(node.history, node.history.repo("demo"), "main")
    assert len(calls) == 2 and store_fingerprint(home) == before  # the image written first went too


def test_a_private_repositorys_files_are_public_and_say_nothing_private(home: Path) -> None:
    _repo(home, "private")
    with open_node(home) as node:
        info = node.history.repo("demo")
        pub = publish_metadata(node.history, info, "main")
        raw = b"".join(iter_file(node.store.get_block, pub.document_cid))
        with node.store.read() as txn:
            assert txn.block_repos(pub.document_cid) == [PUBLIC]  # a wallet's gateway must reach it
    assert b"loss" not in raw and b"0.5" not in raw and b'"private"' in raw
    assert parse_metadata_document(raw)["attributes"][2] == {"trait_type": "commits", "value": 2}
