"""BN254 G1 (the Ethereum / Solana ``alt_bn128`` curve): constants and the 64-byte point encoding.

The curve is ``y^2 = x^3 + 3`` over the prime field of ``P`` elements; its points form a group of
prime order ``R`` (cofactor 1), so every point on the curve other than infinity generates it and an
on-curve check is the whole subgroup check. Scalars live in the field of ``R`` elements.

Encoding (the one ``protocol/chain.py`` carries and the program's ``alt_bn128`` syscalls read):
64 bytes, ``x || y``, each a 32-byte big-endian integer below ``P``; the point at infinity is 64
zero bytes (EIP-196; ``(0, 0)`` is not on the curve, so the encoding is unambiguous). Decoding
refuses anything else with a one-line ``ZkError``.
"""

from __future__ import annotations

from fednode.errors import FednodeError

P = 0x30644E72E131A029B85045B68181585D97816A916871CA8D3C208C16D87CFD47  # base field
R = 0x30644E72E131A029B85045B68181585D2833E84879B9709143E1F593F0000001  # group order (scalar field)
B = 3  # y^2 = x^3 + B
GENERATOR = (1, 2)  # the standard base point (the program and py_ecc use it too)
POINT_BYTES = 64
INFINITY = bytes(POINT_BYTES)

Affine = tuple[int, int]  # (x, y), both below P; None stands for the point at infinity


class ZkError(FednodeError, ValueError):
    """A commitment or proof input that is not what it claims to be (one-line message)."""


def on_curve(x: int, y: int) -> bool:
    """Whether ``(x, y)`` (coordinates already reduced below P) is a point of BN254 G1."""
    return (y * y - x * x * x - B) % P == 0


def encode(point: Affine | None) -> bytes:
    """The 64-byte big-endian ``x || y`` of an affine point (64 zero bytes for infinity)."""
    if point is None:
        return INFINITY
    x, y = point
    return x.to_bytes(32, "big") + y.to_bytes(32, "big")


def decode(data: bytes, what: str = "commitment") -> Affine | None:
    """The affine point of a 64-byte encoding (None for infinity); ``ZkError`` if it is not one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ZkError(f"{what} must be 64 bytes, got a {type(data).__name__}")
    data = bytes(data)
    if len(data) != POINT_BYTES:
        raise ZkError(f"{what} must be 64 bytes, got {len(data)}")
    if data == INFINITY:
        return None
    x, y = int.from_bytes(data[:32], "big"), int.from_bytes(data[32:], "big")
    if x >= P or y >= P:
        raise ZkError(f"{what} has a coordinate not below the BN254 field prime")
    if not on_curve(x, y):
        raise ZkError(f"{what} is not a point of BN254 G1 (y^2 != x^3 + 3)")
    return x, y


def scalar(value: int) -> int:
    """An integer as a scalar: reduced mod R, so a negative ``-v`` becomes ``R - v``."""
    return int(value) % R
