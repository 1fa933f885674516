"""The NFT's image and metadata document as IPFS files in the node's store, so that any IPFS node
(a wallet's gateway, Kubo) can fetch them by CID from a running daemon.

Both are stored as ``fednode ipfs add`` stores a file (``workflows.ipfsfiles.put_file``: Kubo's
``--cid-version=1 --raw-leaves`` CID, blocks tagged PUBLIC, pinned with source "nft" so ``gc``
keeps them), in ONE store transaction: both files, or neither. A private repository's files are
public too; they hold only what the chain shows (``document``, ``image``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from fednode.history import History, RepoInfo
from fednode.nft.document import DEFAULT_LICENSE, SYMBOL, document_from, encode_document
from fednode.nft.image import render_image
from fednode.nft.summary import RepoSummary, summarize
from fednode.workflows.ipfsfiles import put_file
from protocol.multiformats import CID
from protocol.unixfs import add_bytes

PIN_SOURCE = "nft"


@dataclass(frozen=True)
class Published:
    document_cid: CID
    image_cid: CID
    document: dict[str, Any]
    summary: RepoSummary

    @property
    def uri(self) -> str:
        """What goes into the mint's TokenMetadata ``uri``."""
        return f"ipfs://{self.document_cid}"


def publish_metadata(history: History, repo: RepoInfo, branch: str, *, license: str = DEFAULT_LICENSE,
                     external_url: str | None = None, head: CID | None = None, symbol: str = SYMBOL) -> Published:
    """Render, store and pin the image and then the document of ``repo`` at ``branch``'s head (or
    ``head``); everything is checked before the one write, so a failure stores nothing."""
    summary = summarize(history, repo, branch, head)
    image = render_image(summary)
    image_cid = add_bytes(image)  # the CID before storing: the document names it
    document = document_from(summary, f"ipfs://{image_cid}", license, external_url, symbol)
    raw = encode_document(document)
    with history.store.write(size_hint=2 * (len(image) + len(raw))) as txn:
        stored_image, _ = put_file(txn, io.BytesIO(image), PIN_SOURCE)
        if stored_image != image_cid:  # the same UnixFS layout both times: this is a bug; abort the write
            raise AssertionError(f"image stored as {stored_image}, named {image_cid} in the document")
        document_cid, _ = put_file(txn, io.BytesIO(raw), PIN_SOURCE)
    return Published(document_cid, image_cid, document, summary)
