"""fednode.zk: generators, the 64-byte encoding, Pedersen commitments (mcl against py_ecc)."""

from __future__ import annotations

import numpy as np
import pytest
from py_ecc.optimized_bn128 import G1, multiply, normalize

from fednode.errors import FednodeError
from fednode.zk import generators as gens
from fednode.zk import pedersen as pd
from fednode.zk.curve import INFINITY, P, R, ZkError, decode, encode, on_curve
from protocol import chain as layout


def test_the_native_backend_is_installed() -> None:
    """mclbn256 is a declared dependency: a missing one is a broken install, not a reason to skip."""
    assert __import__("fednode.zk.mcl", fromlist=["available"]).available()
    assert pd.backend().name == "mcl"


def g1(k: int) -> bytes:
    x, y = normalize(multiply(G1, k % R))
    return int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


def test_generators_on_curve_distinct_deterministic() -> None:
    pts = gens.generators(64)
    assert all(on_curve(x, y) and y <= (P - 1) // 2 for x, y in pts)
    h = gens.blinding_generator()
    assert len({*pts, h, (1, 2)}) == 66
    assert pts[:10] == [gens.hash_to_curve(b"G", gens.DEFAULT_SEED, i) for i in range(10)]
    assert gens.generator(5) == pts[5]
    other = gens.generators(4, b"another seed")
    assert not set(other) & set(pts)
    # pinned: changing the construction would change every commitment anyone has made
    assert encode(pts[0]).hex() == (
        "0310f0cedd2e1a9c6169b9ed39a814fc2fcad2aa81501f80fc106d598ee1b881"
        "09d8668dd09fb302136edbc67801d6cddcea70e44b83c94c66146da8529dacdd")
    assert encode(h).hex().startswith("2896209f0a62ac2264452b56b7547517")


def test_mcl_generators_match_reference() -> None:
    from fednode.zk import mcl

    table = mcl.generator_table(40, gens.DEFAULT_SEED)
    native = [mcl.from_native(mcl.G1.from_buffer_copy(table[i].tobytes())) for i in range(40)]
    assert native == gens.generators(40)
    seed = b"fresh seed for this test"
    first = mcl.generator_table(3, seed).copy()
    grown = mcl.generator_table(9, seed)  # extending keeps the prefix
    assert (grown[:3] == first).all()
    assert mcl.from_native(mcl.G1.from_buffer_copy(grown[8].tobytes())) == gens.hash_to_curve(b"G", seed, 8)


def test_encoding_round_trip_and_errors() -> None:
    pt = gens.generators(1)[0]
    assert decode(encode(pt)) == pt
    assert decode(INFINITY) is None and encode(None) == INFINITY
    assert decode(g1(1)) == (1, 2)
    bad = (1).to_bytes(32, "big") + (3).to_bytes(32, "big")
    with pytest.raises(ZkError, match="not a point of BN254 G1") as info:
        decode(bad)
    assert isinstance(info.value, FednodeError) and "\n" not in str(info.value)
    with pytest.raises(ZkError, match="64 bytes"):
        decode(bytes(63))
    with pytest.raises(ZkError, match="field prime"):
        decode(P.to_bytes(32, "big") + (2).to_bytes(32, "big"))
    with pytest.raises(ZkError):
        pd.equal(bad, bad)


def test_encoding_is_the_chain_layout() -> None:
    c = pd.commit([3, -1, 7])
    ix = layout.Merge(bytes(32), layout.branch_hash("main"), (bytes([1]) * 32,), (2,), c)
    data = layout.encode_instruction(ix)
    assert data.endswith(c)
    back = layout.decode_instruction(data)
    assert isinstance(back, layout.Merge) and back.commitment == c
    assert len(c) == 64 and decode(c) is not None
    # the encoding is the alt_bn128 one: k*G from py_ecc, big-endian x||y
    assert pd.scale(g1(1), 12345) == g1(12345)


@pytest.mark.parametrize("name", ["mcl", "reference"])
def test_homomorphism_and_negatives(name: str) -> None:
    a, b = [5, -7, 0, 300], [-5, 2, 9, -1]
    ca, cb = pd.commit(a, backend_name=name), pd.commit(b, backend_name=name)
    assert pd.add(ca, cb, backend_name=name) == pd.commit([x + y for x, y in zip(a, b, strict=True)], backend_name=name)
    assert pd.scale(ca, -3, backend_name=name) == pd.commit([-3 * x for x in a], backend_name=name)
    assert pd.commit([-4], backend_name=name) == pd.commit([R - 4], backend_name=name)  # -v is R - v
    assert pd.add(ca, pd.negate(ca), backend_name=name) == INFINITY
    assert pd.commit([0, 0], backend_name=name) == pd.commit([], backend_name=name) == INFINITY
    g0 = encode(gens.generators(1)[0])
    assert pd.commit([1], backend_name=name) == g0
    assert pd.commit([0], 1, backend_name=name) == encode(gens.blinding_generator())
    assert pd.equal(ca, ca) and not pd.equal(ca, cb)


def test_mcl_matches_py_ecc_on_random_vectors() -> None:
    rng = np.random.default_rng(15)
    cases: list[pd.Values] = [
        rng.integers(-(1 << 15), 1 << 15, 12).astype(np.int16),  # grid-sized values, both signs
        rng.integers(0, 1 << 16, 7).astype(np.uint16),
        rng.integers(-(1 << 62), 1 << 62, 6),  # full int64 width: several 16-bit limbs
        np.array([-(1 << 63), (1 << 63) - 1, 0], dtype=np.int64),  # int64's extremes
        [1 << 200, -(1 << 100), 3, R - 1],  # Python ints wider than int64
        rng.integers(-50, 50, (2, 3)),  # any shape commits flattened, row-major
    ]
    for values in cases:
        blinding = int(rng.integers(0, 1 << 62))
        ref_values = np.asarray(values).reshape(-1).tolist() if isinstance(values, np.ndarray) else values
        reference = pd.commit(ref_values, blinding, backend_name="reference")
        assert pd.commit(values, blinding, backend_name="mcl") == reference


def test_mcl_chunks_and_sparse_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from fednode.zk import mcl

    monkeypatch.setattr(mcl, "CHUNK", 8)  # real chunks are 2^16 points: the same code, smaller
    n = 3 * mcl.CHUNK + 5  # four mulVec chunks, partial sums added
    values = np.zeros(n, dtype=np.int64)
    values[[0, 7, mcl.CHUNK + 3]] = [3, -2, 70000]
    expected = pd.combine([encode(gens.generator(i)) for i in (0, 7, mcl.CHUNK + 3)], [3, -2, 70000])
    assert pd.commit(values) == expected


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(ZkError, match="integers"):
        pd.commit([1.5])  # type: ignore[list-item]
    with pytest.raises(ZkError, match="integers"):
        pd.commit(np.array([1.0, 2.0]))
    with pytest.raises(ZkError, match="unknown MSM backend"):
        pd.commit([1], backend_name="gpu")
