"""Pedersen generators for BN254 G1 by hash-to-curve from a public seed: no trusted setup.

Construction (try-and-increment; every implementation must derive the same points):

    msg(domain, seed, i, c) = b"fednode-zk-pedersen-v1:" + domain + b"\\x00"
                              + len(seed) as u16 big-endian + seed
                              + i as u64 big-endian + c as u32 big-endian
    x = int.from_bytes(sha256(msg), "big") mod P
    for c = 0, 1, 2, ...: the first x for which a = x^3 + 3 is a square mod P;
    y = the square root of a that is at most (P - 1) / 2 (the "non-negative" root)

``G_i`` uses domain ``b"G"`` and index ``i`` (0-based: ``G_0`` commits to a vector's first value);
the blinding generator ``H`` uses domain ``b"H"`` and index 0. Each x is the output of a hash
nobody controls, and a point is taken as soon as its x is on the curve, so nobody knows a discrete
logarithm between any two generators (nor of any generator to the base point ``(1, 2)``) unless
they can break sha256 or the discrete logarithm in G1. About half the x values work, so a
generator costs two tries on average; the loop stops after 256 (probability 2^-256).

Since P = 3 mod 4, the square root is ``a^((P+1)/4)`` (checked by squaring). The x reduction mod P
is slightly biased (a 256-bit hash mod a 254-bit prime), which does not matter here: the points
only need to be independent, not uniform.

This module is the reference derivation in pure Python (~0.1 ms a point): ``generators(n)`` for
the reference backend and for tests. The native backend (``fednode.zk.mcl``) derives the same
points with the library's field arithmetic into its own table; the tests check that both agree.
Derived points are cached per seed for the life of the process.
"""

from __future__ import annotations

import hashlib
import threading

from fednode.zk.curve import Affine, B, P, ZkError

DEFAULT_SEED = b"fednode/pedersen/bn254/2026"  # public; a repository may name its own
PREFIX = b"fednode-zk-pedersen-v1:"
MAX_TRIES = 256
_SQRT_EXP = (P + 1) // 4
_HALF = (P - 1) // 2

_lock = threading.Lock()
_cache: dict[bytes, list[Affine]] = {}
_h_cache: dict[bytes, Affine] = {}


def message_prefix(domain: bytes, seed: bytes) -> bytes:
    """The part of ``msg`` before the index and counter."""
    if not isinstance(seed, bytes) or len(seed) > 0xFFFF:
        raise ZkError("a generator seed is at most 65535 bytes")
    return PREFIX + domain + b"\x00" + len(seed).to_bytes(2, "big") + seed


def hash_to_curve(domain: bytes, seed: bytes, index: int) -> Affine:
    """The point for ``(domain, seed, index)`` (the construction above)."""
    prefix = message_prefix(domain, seed) + index.to_bytes(8, "big")
    for counter in range(MAX_TRIES):
        x = int.from_bytes(hashlib.sha256(prefix + counter.to_bytes(4, "big")).digest(), "big") % P
        a = (x * x * x + B) % P
        y = pow(a, _SQRT_EXP, P)
        if y * y % P == a:
            return x, (P - y if y > _HALF else y)
    raise ZkError(f"no curve point for generator {index} after {MAX_TRIES} tries")  # pragma: no cover


def generators(n: int, seed: bytes = DEFAULT_SEED) -> list[Affine]:
    """``[G_0, ..., G_{n-1}]`` for ``seed`` (pure Python; cached, extended on demand)."""
    if n < 0:
        raise ZkError(f"cannot derive {n} generators")
    with _lock:
        table = _cache.setdefault(seed, [])
        while len(table) < n:
            table.append(hash_to_curve(b"G", seed, len(table)))
        return table[:n]


def generator(index: int, seed: bytes = DEFAULT_SEED) -> Affine:
    """``G_index`` alone (not cached: for spot checks of other tables)."""
    return hash_to_curve(b"G", seed, index)


def blinding_generator(seed: bytes = DEFAULT_SEED) -> Affine:
    """``H``, the blinding generator: same seed, domain ``b"H"``."""
    with _lock:
        if seed not in _h_cache:
            _h_cache[seed] = hash_to_curve(b"H", seed, 0)
        return _h_cache[seed]
