"""fednode.zk.groth16: the native Groth16 prover against snarkjs, our verifier and Python references."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from fednode.errors import FednodeError
from fednode.workflows import zkprove as zp
from fednode.zk import groth16 as g
from fednode.zk import native, r1cs
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import R, ZkError

MONT = (1 << 256) % R
VALUES = [300, -300, 0, 5, -(1 << 15), 12, (1 << 15) - 1, -1]  # both ends of the signed 16-bit range
REMAINDER = [3, -3, 0, 1, -2, 0, 2, 1]
HASH = bytes(range(32))
BLIND = 1234567890123456789


@pytest.fixture(scope="module")
def tools() -> zp.Tools:
    return zp.find_tools()


def _witness(folder: Path, names: tuple[str, str], x: int, values: list[int], tools: zp.Tools,
             work: Path) -> np.ndarray:
    """The circuit's full witness: ``fednode.zk.r1cs``'s, the system the key folder was set up from
    (tests/core/test_zk_r1cs_gen.py checks it against circom's own witness calculator)."""
    hi, lo = up.hash_limbs(HASH)
    vk = zp.load_keys(folder, "remainder" if names[0] == "total" else "update").vk
    padded = values + [0] * (vk.n - len(values))
    if names[0] == "total":
        return r1cs.remainder_witness(vk.n, vk.k, hi, lo, x, padded, BLIND)
    return r1cs.update_witness(vk.n, vk.k, vk.sb, hi, lo, x, padded, BLIND)


@pytest.fixture(scope="module")
def update_case(zk_policy_keys: Path, tools: zp.Tools, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    bound2 = sum(v * v for v in VALUES)
    w = _witness(zk_policy_keys, ("bound2", "v"), bound2, VALUES, tools, tmp_path_factory.mktemp("wu"))
    return g.ProvingKey.load(zk_policy_keys / "update.zkey"), w, zk_policy_keys


def _snarkjs_verify(folder: Path, proof: g.Proof, public: np.ndarray, tools: zp.Tools, tmp: Path) -> bool:
    a, b, c = proof
    assert a and b and c
    doc = {"pi_a": [str(a[0]), str(a[1]), "1"], "pi_b": [[str(b[0][0]), str(b[0][1])],
                                                         [str(b[1][0]), str(b[1][1])], ["1", "0"]],
           "pi_c": [str(c[0]), str(c[1]), "1"], "protocol": "groth16", "curve": "bn128"}
    (tmp / "proof.json").write_text(json.dumps(doc))
    (tmp / "public.json").write_text(json.dumps([str(x) for x in g.array_to_ints(public)]))
    done = subprocess.run([tools.node, tools.snarkjs, "groth16", "verify", str(folder / "vk.json"),
                           str(tmp / "public.json"), str(tmp / "proof.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    return done.returncode == 0 and "OK" in done.stdout


def test_native_proofs_verify_in_snarkjs_and_ours(update_case: tuple, tools: zp.Tools, tmp_path: Path) -> None:
    pk, w, folder = update_case
    assert (pk.n_public, pk.domain) == (len(VALUES) + 4, 256)
    times: dict[str, float] = {}
    proof = g.prove(pk, w, times=times)
    assert {"ab_s", "fft_s", "msm_h_wall_s", "msm_b2_s", "check_s"} <= times.keys()
    public = w[1:pk.n_public + 1]
    assert g.verify(pk, proof, public)
    assert _snarkjs_verify(folder, proof, public, tools, tmp_path)
    # the remainder circuit's key too (another circuit, same code)
    rfolder = folder / zp.REMAINDER_DIR
    rw = _witness(rfolder, ("total", "r"), 100, REMAINDER, tools, tmp_path / "r")
    rpk = g.ProvingKey.load(rfolder / "update.zkey")
    rproof = g.prove(rpk, list(g.array_to_ints(rw)))  # a list of ints is a witness too
    assert _snarkjs_verify(rfolder, rproof, rw[1:rpk.n_public + 1], tools, tmp_path)
    # a public input changed: neither verifier accepts
    other = public.copy()
    other[2, 0] ^= 1
    assert not g.verify(pk, proof, other)
    assert not _snarkjs_verify(folder, proof, other, tools, tmp_path)


def test_two_proofs_of_one_witness_differ(update_case: tuple) -> None:
    pk, w, _ = update_case
    p1, p2 = g.prove(pk, w, check=False), g.prove(pk, w, check=False)
    assert p1[0] != p2[0] and p1[1] != p2[1] and p1[2] != p2[2]  # fresh r and s each time
    assert g.verify(pk, p1, w[1:pk.n_public + 1]) and g.verify(pk, p2, w[1:pk.n_public + 1])


def test_a_witness_breaking_a_constraint_gets_no_proof(update_case: tuple) -> None:
    pk, w, _ = update_case
    for wire in (pk.n_public + 1, pk.n_vars - 1, 3):  # private wires (a bit, the last one) and a public one
        bad = w.copy()
        bad[wire, 0] ^= 2
        with pytest.raises(ZkError, match="does not satisfy the circuit's constraints"):
            g.prove(pk, bad)
    with pytest.raises(ZkError, match="wires; this proving key takes"):
        g.prove(pk, w[:-1])
    one_off = w.copy()
    one_off[0, 0] = 2
    with pytest.raises(ZkError, match="wire 0 must be 1"):
        g.prove(pk, one_off)
    over = w.copy()
    over[5] = np.frombuffer(R.to_bytes(32, "little"), dtype=np.uint64)
    with pytest.raises(ZkError, match="not below the field order"):
        g.prove(pk, over)


def test_with_the_r1cs_a_broken_constraint_is_named_before_any_msm(update_case: tuple, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fednode.zk import r1cs

    pk, w, _ = update_case
    path = tmp_path / "update.r1cs"  # r1cs.py writes circom2's own R1CS for this circuit, wire for wire
    r1cs.write_update_r1cs(path, len(VALUES), 16, zp.bound_bits(len(VALUES), 16))
    g.check_constraints(path, w)
    times: dict[str, float] = {}
    assert g.verify(pk, g.prove(pk, w, r1cs=path, times=times), w[1:pk.n_public + 1]) and "constraints_s" in times
    bad = w.copy()
    bad[pk.n_public + 1, 0] ^= 1  # sq[0]: its square (constraint 0) and the norm (the last) break
    monkeypatch.setattr(g, "_split", lambda *a: pytest.fail("reached the MSMs"))
    with pytest.raises(ZkError, match=r"breaks constraint 0 of 173 \(2 broken\): no proof"):
        g.prove(pk, bad, r1cs=path)
    with pytest.raises(ZkError, match="beyond the witness"):
        g.check_constraints(path, w[:-3])


def test_zkprove_proves_natively_by_default_and_with_snarkjs_on_request(
        zk_policy_keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = zp.load_keys(zk_policy_keys)
    bound2 = sum(v * v for v in VALUES)
    commitment = ped.commit(VALUES, BLIND, seed=keys.vk.seed)
    proof = zp.prove(keys, VALUES, BLIND, HASH, bound2)
    up.verify(keys.vk, proof, commitment, HASH, bound2)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the native prover ran although snarkjs was asked for")

    monkeypatch.setattr(g, "prove", refuse)
    monkeypatch.setenv("FEDNODE_ZK_PROVER", "snarkjs")
    up.verify(keys.vk, zp.prove(keys, VALUES, BLIND, HASH, bound2), commitment, HASH, bound2)
    monkeypatch.setenv("FEDNODE_ZK_PROVER", "rapidsnark")
    with pytest.raises(FednodeError, match="FEDNODE_ZK_PROVER is 'rapidsnark'"):
        zp.prove(keys, VALUES, BLIND, HASH, bound2)


def _dft(values: list[int], w: int) -> list[int]:
    n = len(values)
    powers = [pow(w, k, R) for k in range(n)]
    return [sum(v * powers[i * j % n] for j, v in enumerate(values)) % R for i in range(n)]


def test_montgomery_products_equal_python_integers() -> None:
    rng = random.Random(11)
    xs = [rng.randrange(R) for _ in range(5000)] + [R - 1, 0, 1, R - 2, R - 1]
    ys = [rng.randrange(R) for _ in range(5000)] + [R - 1, R - 1, R - 1, 2, 1]
    a, b = g.ints_to_array(xs), g.ints_to_array(ys)
    out = np.empty_like(a)
    native.library().fednode_fr_mul(out.ctypes.data, a.ctypes.data, b.ctypes.data, 1, len(xs))
    unmont = pow(MONT, -1, R)
    assert g.array_to_ints(out) == [x * y * unmont % R for x, y in zip(xs, ys, strict=True)]


def test_ntt_matches_the_naive_dft_and_round_trips() -> None:
    rng = random.Random(7)
    for power in range(6):
        vals = [rng.randrange(R) for _ in range(1 << power)]
        out = g.ntt(g.ints_to_array([v * MONT for v in vals]))
        assert [x * pow(MONT, -1, R) % R for x in g.array_to_ints(out)] == _dft(vals, g.root(power))
    assert pow(g.root(28), 1 << 27, R) == R - 1  # a primitive 2^28-th root, as ffjavascript's Fr.w[28]
    big = g.ints_to_array([rng.randrange(R) for _ in range(1 << 12)])
    assert (g.ntt(g.ntt(big), inverse=True) == big).all()
    with pytest.raises(ZkError, match="power-of-two"):
        g.ntt(big[:3])


def test_h_scalars_equal_a_python_reference(update_case: tuple) -> None:
    """A, B from section 4 (coefficients stored times 2^512), C = A B on the domain, all three moved to
    the odd coset by interpolation and evaluation with Python integers: A B - C there."""
    pk, w, _ = update_case
    wit = g.array_to_ints(w)
    n, unmont2 = pk.domain, pow(MONT * MONT, -1, R)
    cols = [[0] * n, [0] * n]
    raw = pk.coefs.tobytes()
    for i in range(pk.n_coefs):
        m, c, s = struct.unpack_from("<III", raw, 44 * i)
        coef = int.from_bytes(raw[44 * i + 12:44 * i + 44], "little") * unmont2 % R
        cols[m][c] = (cols[m][c] + coef * wit[s]) % R
    a, b = cols
    c = [x * y % R for x, y in zip(a, b, strict=True)]
    w_n, inc, inv_n = g.root(pk.power), g.root(pk.power + 1), pow(n, -1, R)

    def odd(evals: list[int]) -> list[int]:
        coefs = [x * inv_n % R for x in _dft(evals, pow(w_n, -1, R))]
        return _dft([x * pow(inc, j, R) % R for j, x in enumerate(coefs)], w_n)

    ao, bo, co = odd(a), odd(b), odd(c)
    want = [(x * y - z) % R for x, y, z in zip(ao, bo, co, strict=True)]
    got = [x * pow(MONT, -1, R) % R for x in g.array_to_ints(g.h_scalars(pk, w))]
    assert got == want and any(want)


def test_one_mulvec_call_over_2_18_points(update_case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """mcl's mulVec over 2^17 points overflowed an 8 MiB stack (fednode/zk/mcl.py): ours runs 2^18 in
    one call, on a thread with a larger stack."""
    pk = update_case[0]
    monkeypatch.setattr(g, "THREADS", 1)
    monkeypatch.setattr(g, "PIECE", 1 << 18)
    grp = g._group(False)
    n = 1 << 18
    points = np.repeat(pk.alpha1[:, :8], n, axis=0)  # zkey rows (affine x, y): msm_jobs makes each piece a table
    ks = np.random.default_rng(3).integers(0, 1 << 16, n)
    scalars = np.zeros((n, 4), dtype=np.uint64)
    scalars[:, 0] = ks.astype(np.uint64)
    mont = np.empty_like(scalars)
    native.library().fednode_fr_to_mont(mont.ctypes.data, scalars.ctypes.data, n)
    acc = grp.zero()
    jobs = grp.msm_jobs(points, mont, acc, False, threading.Lock())
    assert len(jobs) == 1
    g._parallel(jobs)
    assert grp.affine(acc) == grp.affine(grp.times(pk.alpha1, int(ks.sum())))


def test_files_round_trip_and_bad_files_are_refused(update_case: tuple, tmp_path: Path) -> None:
    pk, w, folder = update_case
    g.write_wtns(tmp_path / "w.wtns", w)
    assert (g.read_wtns(tmp_path / "w.wtns") == w).all()
    assert g.ProvingKey.load(folder / "update.zkey") is pk  # cached per path, size and mtime
    (tmp_path / "junk.zkey").write_bytes(b"zkex" + bytes(20))
    with pytest.raises(ZkError, match="is not a zkey file"):
        g.ProvingKey.load(tmp_path / "junk.zkey")
    cut = (folder / "update.zkey").read_bytes()[:5000]
    (tmp_path / "cut.zkey").write_bytes(cut)
    with pytest.raises(ZkError, match="truncated"):
        g.ProvingKey.load(tmp_path / "cut.zkey")
    with pytest.raises(ZkError, match="is not a wtns file"):
        g.read_wtns(tmp_path / "cut.zkey")
