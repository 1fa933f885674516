"""The history side of a repository's NFT: the commit the chain anchored as a branch head, found
in the local copy, and the metadata files (``fednode.nft``) a mint points its ``uri`` at.

Local only: ``fednode/chain/nft.py`` reads the chain and calls this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednode.errors import FednodeError, NotFound
from fednode.history import History, RepoInfo
from fednode.nft.document import DEFAULT_LICENSE, MAX_DOCUMENT_BYTES, parse_metadata_document
from fednode.nft.publish import Published, publish_metadata
from fednode.storage.store import Store
from protocol.multiformats import CID, FormatError, b58encode
from protocol.unixfs import iter_file


@dataclass(frozen=True)
class HeadFacts:
    """The commit the chain anchored as the head of ``branch``, as this node's history knows it."""

    branch: str
    head_hash: bytes  # the commit hash the program anchored
    head: CID | None  # its CID here (None: this node does not have that commit)
    local_head: CID | None  # this node's own head of ``branch``
    commits: int  # commits in the head's ancestry (0 when the head is not here)
    contributors: tuple[str, ...]  # authors in the head's ancestry, base58, sorted


def head_facts(history: History, repo: RepoInfo, branch: str, head_hash: bytes) -> HeadFacts:
    """Find the anchored head ``head_hash`` of ``branch`` in this node's history."""
    local = history.branches(repo).get(branch)
    found: CID | None = None
    commits, authors = 0, set()
    if local is not None:
        for cid, commit in history.walk([local]):
            if commit.commit_hash() == head_hash:
                found = cid
                break
    if found is not None:
        for _, commit in history.walk([found]):
            commits += 1
            authors.add(b58encode(commit.author))
    return HeadFacts(branch, head_hash, found, local, commits, tuple(sorted(authors)))


def publish(history: History, repo: RepoInfo, facts: HeadFacts, symbol: str, license_text: str | None,
            external_url: str | None) -> Published:  # fmt: skip
    """Store (pinned, source "nft") the image and metadata document of ``repo`` at the anchored
    head; one store transaction. The document describes the anchored head, not a newer local one."""
    if facts.head is None:
        raise FednodeError(f"this node does not have the anchored head {facts.head_hash.hex()[:16]} of "
                           f"{repo.name}:{facts.branch}: pull it first")  # fmt: skip
    return publish_metadata(history, repo, facts.branch, symbol=symbol, license=license_text or DEFAULT_LICENSE,
                            external_url=external_url, head=facts.head)  # fmt: skip


def read_document(store: Store, uri: str | None) -> tuple[dict[str, Any] | None, str]:
    """The metadata document ``uri`` names, read from this node's store and checked by the strict
    reader: (document, "") or (None, why not), e.g. another node minted it and it is not here."""
    if not uri or not uri.startswith("ipfs://"):
        return None, "the uri is not ipfs://CID"
    try:
        root = CID.parse(uri.removeprefix("ipfs://"))
    except FormatError:
        return None, "the uri's CID does not parse"
    raw = bytearray()
    try:
        for piece in iter_file(store.get_block, root):
            raw += piece
            if len(raw) > MAX_DOCUMENT_BYTES:
                return None, f"the file is larger than a document may be ({MAX_DOCUMENT_BYTES} bytes)"
        return parse_metadata_document(bytes(raw)), ""
    except NotFound:
        return None, "not in this node's store (fetch it with 'fednode ipfs get')"
    except (FednodeError, FormatError) as exc:
        return None, str(exc)
