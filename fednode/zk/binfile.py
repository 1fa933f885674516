"""The section table of iden3's binary files (snarkjs's ``.r1cs``, ``.wtns``, ``.zkey``, ``.ptau``):
magic (4 bytes), u32 version, u32 section count, then per section u32 id, u64 size, the bytes."""

from __future__ import annotations

import struct
from typing import Any

from fednode.zk.curve import ZkError


def sections(buf: Any, magic: bytes, what: str) -> dict[int, tuple[int, int]]:
    """``buf``'s sections: id -> (offset, size); each id once, every section inside ``buf``."""
    if len(buf) < 12 or bytes(buf[:4]) != magic:
        kind = magic.decode()
        raise ZkError(f"{what} is not {'an' if kind[0] in 'aeiorx' else 'a'} {kind} file")  # an r1cs, a zkey
    (count,) = struct.unpack_from("<I", buf, 8)
    out: dict[int, tuple[int, int]] = {}
    pos = 12
    for _ in range(count):
        if pos + 12 > len(buf):
            raise ZkError(f"{what} is truncated")
        kind, size = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if pos + size > len(buf) or kind in out:
            raise ZkError(f"{what} has a truncated or repeated section {kind}")
        out[kind] = (pos, size)
        pos += size
    return out


def version(buf: Any) -> int:
    """The u32 version after the magic."""
    return int(struct.unpack_from("<I", buf, 4)[0])
