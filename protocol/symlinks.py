"""UnixFS symbolic links: the node Kubo's ``ipfs add -r`` stores for a link (DAG-PB, no links,
Data = UnixFS {Type: Symlink, Data: the target}), and the rule a link must meet to be written out.

A tree fetched from strangers may hold links; fednode writes one only where it cannot lead out of
the tree it is part of (the rule of Python's ``tarfile`` "data" filter): the target is relative,
UTF-8, 1..MAX_TARGET_BYTES bytes, without NUL or backslash, and resolved from the link's own
directory it stays inside the tree (``inside``). Links through other links can still lead out, so
the writer also checks each written link's real path at the end (``ipfsfiles.write_tree``)."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.multiformats import FormatError, encode_varint
from protocol.unixfs import _UNIXFS, _parse_proto, _typed, decode_pb

SYMLINK = 4  # UnixFS Data.Type
MAX_TARGET_BYTES = 1024


def encode_symlink(target: str) -> bytes:
    """The DAG-PB node Kubo writes for a symbolic link to ``target``."""
    raw = target.encode()
    data = b"\x08" + encode_varint(SYMLINK) + b"\x12" + encode_varint(len(raw)) + raw
    return b"\x0a" + encode_varint(len(data)) + data


def check_target(raw: bytes) -> str:
    """A link target that may be written: relative, UTF-8, 1..MAX_TARGET_BYTES bytes, no NUL or
    backslash; else FormatError."""
    try:
        target = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"a symbolic link's target is not UTF-8: {raw[:40]!r}") from None
    if not 0 < len(raw) <= MAX_TARGET_BYTES or "\0" in target or "\\" in target:
        raise FormatError(f"a symbolic link's target cannot be written: {target[:60]!r}")
    if target.startswith("/"):
        raise FormatError(f"a symbolic link to an absolute path ({target[:60]!r}) could lead anywhere")
    return target


def decode_symlink(block: bytes) -> str:
    """The target of a UnixFS symbolic link node (``check_target``); FormatError for anything else."""
    links, data = decode_pb(block)
    fields = _parse_proto(data or b"")
    _typed(fields, _UNIXFS, "UnixFS Data")
    kinds = [v for n, v in fields if n == 1]
    targets = [v for n, v in fields if n == 2 and isinstance(v, bytes)]
    if kinds != [SYMLINK] or links or len(targets) != 1:
        raise FormatError("DAG-PB node is not a UnixFS symbolic link")
    return check_target(targets[0])


def inside(parts: Sequence[str], target: str) -> bool:
    """Whether ``target``, resolved from the directory ``parts`` below the tree's top (names, top
    first) without following links, stays inside the tree."""
    where = list(parts)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return False
            where.pop()
        else:
            where.append(part)
    return True
