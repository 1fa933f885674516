"""Proofs that an update is well-formed, bound to its Pedersen commitment and its commit hash.

Statement, for a commitment ``C = sum_i v_i G_i + b H`` (``fednode.zk.pedersen``), a 32-byte commit
hash ``h`` and a public bound ``B^2``: the prover knows ``v`` (length <= n, zero-padded) and ``b``
opening ``C`` such that every ``v_i`` is a signed ``k``-bit integer (``-2^(k-1) <= v_i < 2^(k-1)``)
and ``sum_i v_i^2 <= B^2``. The verifier never sees ``v``.

Construction (LegoGroth16-style commit-and-prove; docs/zk.md "Update proofs"):

- a Groth16 proof ``(A, B, C_g)`` for the circom circuit ``update_bound.circom`` whose public inputs
  are ``[h_hi, h_lo, B^2, v_0 .. v_{n-1}, b]``; the prover sends ``D = sum_i v_i IC_{4+i} + b IC_b``
  (the committed inputs' share of ``vk_x``) and the verifier computes
  ``vk_x = IC_0 + h_hi IC_1 + h_lo IC_2 + B^2 IC_3 + D``;
- a Kiltz-Wee linear-subspace argument (one G1 point ``L``) that ``D`` and ``C`` open to the same
  ``(v, b)``: CRS ``P_i = k1 IC_{4+i} + k2 G_i`` (and ``k1 IC_b + k2 H``), verification key
  ``[a]_2, [k1 a]_2, [k2 a]_2``; the prover sends ``L = sum_i v_i P_i + b P_b`` and the verifier
  checks ``e(L, [a]_2) = e(D, [k1 a]_2) e(C, [k2 a]_2)``.

Verification: both equations in one multi-pairing with a random ``rho`` on the second (mcl: ~2 ms);
the reference backend (py_ecc) checks them one by one. A failure names the part that failed.

Encodings: the proof is 384 bytes, ``A || B || C_g || D || L`` (G1 64 bytes, G2 128 bytes EIP-197);
the verifying key is ``VK_MAGIC || u32 n || u8 k || u8 sb || u16 len(seed) || seed`` then
``alpha_1, beta_2, gamma_2, delta_2, IC_0..IC_3, [a]_2, [k1 a]_2, [k2 a]_2``.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fednode.zk import generators as gens
from fednode.zk import pairing
from fednode.zk import pedersen as ped
from fednode.zk.curve import Affine, P, R, ZkError, decode, encode
from fednode.zk.pairing import Affine2, decode_g2, encode_g2

VK_MAGIC = b"fednode-zk-update-vk-v1\x00"
PROOF_BYTES = 64 + 128 + 64 + 64 + 64
EXPLICIT_INPUTS = 3  # h_hi, h_lo, B^2: the public inputs the verifier knows
MAX_BOUND_BITS = 250


@dataclass(frozen=True)
class VerifyingKey:
    """What a verifier needs: constant size, whatever ``n``."""

    n: int  # vector capacity of the circuit
    k: int  # every value is a signed k-bit integer
    sb: int  # B^2 must be below 2^sb (the circuit's comparison width)
    seed: bytes  # the Pedersen generators' seed the link key was made for
    alpha1: Affine
    beta2: Affine2
    gamma2: Affine2
    delta2: Affine2
    ic: tuple[Affine | None, ...]  # IC_0 and the explicit inputs' IC_1..IC_3
    a2: Affine2
    k1a2: Affine2
    k2a2: Affine2

    def encode(self) -> bytes:
        head = VK_MAGIC + struct.pack(">IBBH", self.n, self.k, self.sb, len(self.seed)) + self.seed
        g1 = b"".join(encode(p) for p in (self.alpha1, *self.ic))
        return head + encode(self.alpha1) + b"".join(encode_g2(q) for q in (self.beta2, self.gamma2, self.delta2)) \
            + g1[64:] + b"".join(encode_g2(q) for q in (self.a2, self.k1a2, self.k2a2))

    @classmethod
    def decode(cls, data: bytes) -> VerifyingKey:
        data = bytes(data)
        if not data.startswith(VK_MAGIC):
            raise ZkError("not an update-proof verifying key (bad magic)")
        off = len(VK_MAGIC)
        if len(data) < off + 8:
            raise ZkError("update-proof verifying key is truncated")
        n, k, sb, seed_len = struct.unpack(">IBBH", data[off:off + 8])
        off += 8
        seed = data[off:off + seed_len]
        off += seed_len
        if len(data) != off + 64 + 3 * 128 + 4 * 64 + 3 * 128:
            raise ZkError("update-proof verifying key has the wrong length")
        if not (1 <= k <= 64 and 1 <= sb <= MAX_BOUND_BITS and n >= 1):
            raise ZkError("update-proof verifying key has impossible parameters")
        alpha1 = _g1(data[off:off + 64], "vk alpha")
        off += 64
        beta2, gamma2, delta2 = (decode_g2(data[off + 128 * i:off + 128 * (i + 1)], "vk G2 point") for i in range(3))
        off += 3 * 128
        ic = tuple(decode(data[off + 64 * i:off + 64 * (i + 1)], "vk IC point") for i in range(4))
        off += 4 * 64
        a2, k1a2, k2a2 = (decode_g2(data[off + 128 * i:off + 128 * (i + 1)], "vk link point") for i in range(3))
        if None in (beta2, gamma2, delta2, a2, k1a2, k2a2):
            raise ZkError("update-proof verifying key has a point at infinity")
        return cls(n, k, sb, seed, alpha1, beta2, gamma2, delta2, ic, a2, k1a2, k2a2)  # type: ignore[arg-type]

    def key_id(self) -> bytes:
        """sha256 of the encoding: what a repository's policy would name."""
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True)
class Proof:
    a: Affine | None
    b: Affine2 | None
    c: Affine | None
    d: Affine | None  # sum v_i IC_{4+i} + b IC_b
    link: Affine | None  # sum v_i P_i + b P_b

    def encode(self) -> bytes:
        return encode(self.a) + encode_g2(self.b) + encode(self.c) + encode(self.d) + encode(self.link)

    @classmethod
    def decode(cls, data: bytes, *, backend_name: str | None = None) -> Proof:
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != PROOF_BYTES:
            raise ZkError(f"an update proof is {PROOF_BYTES} bytes")
        data = bytes(data)
        b = decode_g2(data[64:192], "proof point B", backend_name=backend_name)
        return cls(decode(data[:64], "proof point A"), b,
                   decode(data[192:256], "proof point C"), decode(data[256:320], "proof point D"),
                   decode(data[320:384], "proof link point"))


def _g1(data: bytes, what: str) -> Affine:
    point = decode(data, what)
    if point is None:
        raise ZkError(f"{what} is the point at infinity")
    return point


def hash_limbs(commit_hash: bytes) -> tuple[int, int]:
    """The 32-byte commit hash as the circuit's two 128-bit public inputs (high, low)."""
    if not isinstance(commit_hash, (bytes, bytearray)) or len(commit_hash) != 32:
        raise ZkError("a commit hash is 32 bytes")
    return int.from_bytes(commit_hash[:16], "big"), int.from_bytes(commit_hash[16:], "big")


def _neg(point: Affine | None) -> Affine | None:
    return None if point is None else (point[0], (P - point[1]) % P)


def _msm(points: Sequence[Affine | None], scalars: Sequence[int], backend_name: str | None) -> Affine | None:
    be = ped.backend(backend_name)
    return be.msm(be.points(list(points)), [int(s) % R for s in scalars])


def verify(vk: VerifyingKey, proof: bytes, commitment: bytes, commit_hash: bytes, bound2: int,
           *, backend_name: str | None = None) -> None:
    """Check an update proof; return None, or raise ``ZkError`` saying which part failed."""
    if isinstance(bound2, bool) or not isinstance(bound2, int) or not 0 <= bound2 < (1 << vk.sb):
        raise ZkError(f"the norm bound B^2 must be an integer in [0, 2^{vk.sb}) for this key")
    hi, lo = hash_limbs(commit_hash)
    cm = decode(commitment, "commitment")
    pf = Proof.decode(proof, backend_name=backend_name)
    vk_x = _msm([vk.ic[0], vk.ic[1], vk.ic[2], vk.ic[3], pf.d], [1, hi, lo, bound2, 1], backend_name)
    groth: list[pairing.Pair] = [(pf.a, pf.b), (_neg(vk.alpha1), vk.beta2), (_neg(vk_x), vk.gamma2),
                                 (_neg(pf.c), vk.delta2)]
    link: list[pairing.Pair] = [(pf.link, vk.a2), (_neg(pf.d), vk.k1a2), (_neg(cm), vk.k2a2)]
    pb = pairing.backend(backend_name)
    if pb.name == "mcl":
        rho = secrets.randbits(128) | 1
        lifted: list[pairing.Pair] = [(_msm([p], [rho], backend_name), q) for p, q in link]
        if pb.check(groth + lifted):
            return
    if not pb.check(link):
        raise ZkError("update proof: the link proof fails (D and the commitment do not open to the same vector)")
    if not pb.check(groth):
        raise ZkError("update proof: the Groth16 proof fails for this commit hash, norm bound and committed vector")


# ---- the link argument's keys and proof (pure arithmetic; the prover driver calls these) ----------


@dataclass(frozen=True)
class LinkKey:
    """The prover's half of the link CRS: ``P_i = k1 IC_{4+i} + k2 G_i`` for i < n, and ``P_b``."""

    ic: tuple[Affine | None, ...]  # IC_{4+i} for i < n, then IC_b (the committed inputs' vk points)
    p: tuple[Affine | None, ...]  # the matching P points


def link_setup(ic_committed: Sequence[Affine | None], seed: bytes = gens.DEFAULT_SEED,
               *, backend_name: str | None = None) -> tuple[LinkKey, tuple[Affine2, Affine2, Affine2]]:
    """A fresh link CRS for the committed inputs' IC points (n values, then the blinding's): the
    prover key and ``([a]_2, [k1 a]_2, [k2 a]_2)``. ``k1, k2, a`` are toxic: drawn here, then dropped."""
    n = len(ic_committed) - 1
    if n < 1:
        raise ZkError("the link key needs at least one committed value and the blinding")
    if any(p is None for p in ic_committed):
        raise ZkError("a committed input's IC point is infinity: the circuit does not constrain it")
    k1, k2, a = (1 + secrets.randbelow(R - 1) for _ in range(3))
    bases = [*gens.generators(n, seed), gens.blinding_generator(seed)]
    p = tuple(_msm([ic, g], [k1, k2], backend_name) for ic, g in zip(ic_committed, bases, strict=True))
    g2 = _g2_multiples([a, k1 * a % R, k2 * a % R])
    return LinkKey(tuple(ic_committed), p), (g2[0], g2[1], g2[2])


def _g2_multiples(scalars: Sequence[int]) -> list[Affine2]:
    from py_ecc import optimized_bn128 as bn

    out = []
    for k in scalars:
        x, y = bn.normalize(bn.multiply(bn.G2, k))
        out.append(((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1]))))
    return out


def link_prove(key: LinkKey, values: Sequence[int], blinding: int,
               *, backend_name: str | None = None) -> tuple[Affine | None, Affine | None]:
    """``(D, L)`` for a vector (zero-padded to the key's n) and its commitment's blinding."""
    n = len(key.ic) - 1
    if len(values) > n:
        raise ZkError(f"{len(values)} values for a circuit of {n}")
    m = len(values)
    be = ped.backend(backend_name)
    out = []
    for points in (key.ic, key.p):
        table = _native_table(points[:m]) if be.name == "mcl" else be.points(list(points[:m]))
        part = be.msm(table, values)  # small integers: mcl's fast path
        out.append(be.msm(be.points([part, points[n]]), [1, blinding % R]))
    return out[0], out[1]


def _native_table(points: Sequence[Affine | None]) -> Any:
    """Affine points as MCL's (n, 12) table, written directly in Montgomery form (``x M, y M, M`` with
    ``M = 2^256 mod P``; ~2 us a point against ~90 us through ``mcl.to_native``'s text parsing). The
    first finite point is compared with ``to_native``'s; the points are not checked again (they are
    the prover's own key)."""
    from fednode.zk import mcl

    if any(p is None for p in points):
        return mcl.to_native(points)
    mont = (1 << 256) % P
    one = mont.to_bytes(32, "little")
    finite = [p for p in points if p is not None]
    raw = b"".join((x * mont % P).to_bytes(32, "little") + (y * mont % P).to_bytes(32, "little") + one
                   for x, y in finite)
    table = np.frombuffer(raw, dtype=np.uint64).reshape(-1, 12)
    if len(points) and not np.array_equal(table[0], mcl.to_native(points[:1])[0]):
        return mcl.to_native(points)  # pragma: no cover (an MCL with another representation)
    return table
