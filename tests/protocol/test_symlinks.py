"""UnixFS symbolic links (protocol.symlinks): Kubo's node, and the rule a link must meet to be
written out of a fetched tree (relative, inside the tree). Kubo parity and the whole add/get path:
tests/daemon/test_ipfs_tree_interop.py; links that lead out through other links: test_ipfsfiles."""

from __future__ import annotations

import pytest

from protocol.multiformats import CID, DAG_PB, RAW, FormatError
from protocol.symlinks import check_target, decode_symlink, encode_symlink, inside
from protocol.unixfs import NotAFile, decode_node, encode_directory, unixfs_type


def test_a_link_node_round_trips_and_is_no_file() -> None:
    block = encode_symlink("../../blobs/abc")
    assert decode_symlink(block) == "../../blobs/abc" and unixfs_type(block) == 4
    with pytest.raises(NotAFile, match="symbolic link"):
        decode_node(block)
    with pytest.raises(FormatError, match="not a UnixFS symbolic link"):
        decode_symlink(encode_directory([]))
    assert CID(1, DAG_PB, CID.hash(DAG_PB, block).digest) != CID.hash(RAW, b"../../blobs/abc")


@pytest.mark.parametrize("raw, needle", [(b"/etc/passwd", "absolute path"), (b"", "cannot be written"),
                                         (b"a\0b", "cannot be written"), (b"a\\b", "cannot be written"),
                                         (b"x" * 1025, "cannot be written"), (b"\xff", "not UTF-8")])
def test_targets_that_cannot_be_written_are_refused(raw: bytes, needle: str) -> None:
    with pytest.raises(FormatError, match=needle):
        check_target(raw)
    data = b"\x08\x04\x12" + bytes([len(raw)]) + raw if len(raw) < 128 else None
    if data is not None:  # the same, arriving as a node
        with pytest.raises(FormatError, match=needle):
            decode_symlink(b"\x0a" + bytes([len(data)]) + data)


@pytest.mark.parametrize("parts, target, ok", [
    (["snapshots", "main"], "../../blobs/abc", True),  # a Hugging Face cache's snapshot file
    (["snapshots", "main"], "../../../elsewhere", False),
    ([], "a/../..", False), ([], ".", True), ([], "./x/./y/..", True), (["d"], "..", True), (["d"], "../..", False),
])
def test_inside_resolves_from_the_links_own_directory(parts: list[str], target: str, ok: bool) -> None:
    assert inside(parts, target) is ok
