"""fednode.zk.r1cs: the update and remainder circuits' R1CS and witnesses without circom, checked
against circom2's own compilation (the flags and main component of ``zkprove._setup_in``), snarkjs's
``wtns check``, and a Groth16 proof made by snarkjs on our R1CS that verifies, for updates with
``update_proof.verify`` itself.

- update: the same constraints as circom2 --O2 (byte for byte at n = 8; at n = 64 circom lists the
  long combination's terms in another order) and byte for byte the witness its wasm computes;
- remainder: an equivalent system (circom's --O2 substitutes across components there), shown to accept
  exactly the public inputs circom's accepts, by trying every assignment of the bit wires (n = 1 and 2).
"""

from __future__ import annotations

import itertools
import json
import secrets
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fednode.errors import FednodeError
from fednode.workflows import zkprove as zp
from fednode.zk import devtau, r1cs
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import R, ZkError
from fednode.zk.generators import DEFAULT_SEED


@pytest.fixture(scope="module")
def tools() -> zp.Tools:
    return zp.find_tools()


def _circom(tools: zp.Tools, out: Path, circuit: str, n: int, k: int) -> Path:
    """circom2's compilation, as zkprove._setup_in runs it (plus --sym); the folder."""
    out.mkdir()
    if circuit == "remainder":
        src, main = zp.REMAINDER_CIRCUIT, f"{{public [hash, total, r, blind]}} = RemainderBound({n}, {k})"
    else:
        src, main = zp.CIRCUIT, f"{{public [hash, bound2, v, blind]}} = UpdateBound({n}, {k}, {zp.bound_bits(n, k)})"
    shutil.copy(src, out / src.name)
    (out / "update.circom").write_text(f'pragma circom 2.1.0;\ninclude "{src.name}";\ncomponent main {main};\n')
    flags = ["--O2", "--r1cs", "--wasm", "--sym"]
    zp._run([tools.node, tools.circom2, "update.circom", *flags, "-o", "."], out, "circom2")
    return out


def _snarkjs(tools: zp.Tools, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.node, tools.snarkjs, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def _canonical(path: Path) -> tuple[dict[str, int], list[tuple[tuple[tuple[int, int], ...], ...]], list[int]]:
    head, cons, labels = r1cs.read_r1cs(path)
    return head, [tuple(tuple(sorted(lc)) for lc in c) for c in cons], labels


@pytest.mark.parametrize(("n", "k"), [(8, 8), (64, 4)])
def test_update_r1cs_and_witness_are_circoms(tools: zp.Tools, tmp_path: Path, n: int, k: int) -> None:
    sb = zp.bound_bits(n, k)
    ref = _circom(tools, tmp_path / "circom", "update", n, k)
    counts = r1cs.write_update_r1cs(tmp_path / "mine.r1cs", n, k, sb)
    assert counts["constraints"] == zp.constraints(n, k)
    theirs, mine = (ref / "update.r1cs").read_bytes(), (tmp_path / "mine.r1cs").read_bytes()
    assert len(theirs) == len(mine)
    if n == 8:
        assert theirs == mine
    assert _canonical(ref / "update.r1cs") == _canonical(tmp_path / "mine.r1cs")
    lim = 1 << (k - 1)
    values = [-lim, lim - 1, 0, -1, *(secrets.randbelow(2 * lim) - lim for _ in range(n - 6))]  # zero-padded to n
    bound2, hi, lo, blind = sum(v * v for v in values) + 3, secrets.randbits(128), secrets.randbits(128), R - 1
    (ref / "in.json").write_text(json.dumps({"hash": [str(hi), str(lo)], "bound2": str(bound2),
                                             "v": [str(v) for v in values + [0, 0]], "blind": str(blind)}))
    zp._run([tools.node, "update_js/generate_witness.js", "update_js/update.wasm", "in.json", "w.wtns"], ref, "witness")
    r1cs.write_wtns(tmp_path / "mine.wtns", r1cs.update_witness(n, k, sb, hi, lo, bound2, values, blind))
    assert (ref / "w.wtns").read_bytes() == (tmp_path / "mine.wtns").read_bytes()


def _accepted(path: Path, publics: list[list[int]]) -> set[tuple[int, ...]]:
    """The public inputs (after the 1) for which some witness satisfies the R1CS at ``path``: every
    private wire is a bit (it has a boolean constraint) or a square of a public one; every assignment
    of the bits is tried."""
    head, cons, _ = r1cs.read_r1cs(path)
    npub = head["pub_in"] + 1

    def is_boolean(a: list[r1cs.Term], b: list[r1cs.Term], c: list[r1cs.Term]) -> bool:
        return len(a) == 2 and a[0] == (0, R - 1) and a[1][1] == 1 and b == [a[1]] and not c

    bits = sorted({a[1][0] for a, b, c in cons if is_boolean(a, b, c)})
    squares = {c[0][0]: a[0][0] for a, b, c in cons if len(a) == len(b) == len(c) == 1 and a[0][0] == b[0][0]
               and a[0][1] == R - 1 and c[0][1] == R - 1}
    assert set(range(npub, head["wires"])) == set(bits) | set(squares) and min(bits) >= npub
    grid = list(itertools.product((0, 1), repeat=len(bits)))
    col = {w: i for i, w in enumerate(bits)}

    def split(lc: list[r1cs.Term]) -> tuple[list[int], list[r1cs.Term]]:
        on_bits = [(col[w], c) for w, c in lc if w in col]
        return [sum(c * g[i] for i, c in on_bits) for g in grid], [(w, c) for w, c in lc if w not in col]

    # the booleans hold for every assignment tried: only the other constraints can fail
    parts = [[split(lc) for lc in con] for con in cons if not is_boolean(*con)]
    ok = set()
    for pub in publics:
        wires = dict(enumerate([1, *pub]))
        wires.update({sq: wires[x] * wires[x] % R for sq, x in squares.items()})
        alive = list(range(len(grid)))
        for (a, ra), (b, rb), (c, rc) in parts:
            pa, pb, pc = (sum(co * wires[w] for w, co in rest) for rest in (ra, rb, rc))
            alive = [i for i in alive if ((a[i] + pa) * (b[i] + pb) - c[i] - pc) % R == 0]
        if alive:
            ok.add(tuple(pub))
    return ok


def _signed(x: int) -> int:
    return x - R if x > R // 2 else x


@pytest.mark.parametrize(("n", "k"), [(1, 4), (2, 3)])
def test_remainder_accepts_exactly_what_circom_accepts(tools: zp.Tools, tmp_path: Path, n: int, k: int) -> None:
    ref = _circom(tools, tmp_path / "circom", "remainder", n, k)
    counts = r1cs.write_remainder_r1cs(tmp_path / "mine.r1cs", n, k)
    head, _, _ = r1cs.read_r1cs(ref / "update.r1cs")
    assert counts["constraints"] == head["constraints"] == zp.constraints(n, k, "remainder")
    assert counts["wires"] <= head["wires"] + 1
    half = 1 << (k - 1)
    totals = [*range(half + 2), 2 * half, R - 1, R - 2, (R - 1) // 2]
    rs = [*range(-half - 1, half + 2), 2 * half, (R - 1) // 2, (R + 1) // 2, R // 4]
    publics = [[0, 0, t % R, *(r % R for r in rr), 0] for t in totals for rr in itertools.product(rs, repeat=n)]
    if n == 2:  # the cross terms need fewer points
        publics = [p for p in publics if all(abs(_signed(x)) <= half - 1 for x in p[3:5])]
    expected = {tuple(p) for p in publics if p[2] < half and all(2 * abs(_signed(r)) <= p[2] for r in p[3:3 + n])}
    assert _accepted(ref / "update.r1cs", publics) == expected
    assert _accepted(tmp_path / "mine.r1cs", publics) == expected
    assert len(expected) > 10


def _forged_update(wit: np.ndarray, n: int, k: int, sb: int, index: int, value: int, bound2: int) -> np.ndarray:
    """What a cheat would write for v[index] = value outside the range (or a bound below the norm): the
    public wires, square and low bits made consistent, the bits taken modulo their width."""
    lay = r1cs.update_layout(n, k, sb)
    ints = r1cs.witness_ints(wit)
    ints[4 + index], ints[lay["sq"] + index], ints[3] = value % R, value * value % R, bound2
    for j in range(k - 1):
        ints[lay["bits"] + index * (k - 1) + j] = ((value + (1 << (k - 1))) >> j) & 1
    gap = (bound2 - sum(_signed(ints[lay["sq"] + i]) for i in range(n))) % (1 << (sb - 1))
    for j in range(sb - 1):
        ints[lay["gap"] + j] = (gap >> j) & 1
    return np.array([[(x >> (64 * j)) & ((1 << 64) - 1) for j in range(4)] for x in ints], dtype=np.uint64)


@pytest.fixture(scope="module")
def ptau(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return devtau.write_ptau(tmp_path_factory.mktemp("ptau") / "p8.ptau", 8)


def _groth16(tools: zp.Tools, work: Path, wtns: str, ptau: Path, verify: bool) -> tuple[dict, list[int]]:
    """snarkjs's set-up on our .r1cs and its proof with our witness (and its verification); (proof, public)."""
    steps = [("groth16", "setup", "c.r1cs", str(ptau), "c.zkey"),
             ("zkey", "export", "verificationkey", "c.zkey", "vk.json"),
             ("groth16", "prove", "c.zkey", wtns, "proof.json", "public.json")]
    if verify:
        steps.append(("groth16", "verify", "vk.json", "public.json", "proof.json"))
    for args in steps:
        done = _snarkjs(tools, *args, cwd=work)
        assert done.returncode == 0 and "[ERROR]" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert not verify or "OK!" in done.stdout
    public = [int(x) for x in json.loads((work / "public.json").read_text())]
    return json.loads((work / "proof.json").read_text()), public


def test_update_end_to_end(tools: zp.Tools, tmp_path: Path, ptau: Path) -> None:
    n, k = 8, 8
    sb = zp.bound_bits(n, k)
    r1cs.write_update_r1cs(tmp_path / "c.r1cs", n, k, sb)
    values, blind, commit_hash = [127, -128, 0, 5, -1, 64], secrets.randbelow(R), secrets.token_bytes(32)
    hi, lo = up.hash_limbs(commit_hash)
    bound2 = sum(v * v for v in values)  # the norm exactly at the bound
    wit = r1cs.update_witness(n, k, sb, hi, lo, bound2, values, blind)
    public = [1, hi, lo, bound2, *(v % R for v in values + [0, 0]), blind]
    assert r1cs.witness_ints(wit)[:n + 5] == public
    r1cs.write_wtns(tmp_path / "w.wtns", wit)
    assert _snarkjs(tools, "wtns", "check", "c.r1cs", "w.wtns", cwd=tmp_path).returncode == 0
    _, cons, _ = r1cs.read_r1cs(tmp_path / "c.r1cs")
    assert r1cs.satisfied(cons, r1cs.witness_ints(wit)) == []
    top_of_v2 = n + 3 + 3 * k - 1  # after the squares, two values' k constraints, the third's k - 1 booleans
    for name, forged, broken in (("range", _forged_update(wit, n, k, sb, 2, 128, bound2 + (1 << 14)), top_of_v2),
                                 ("bound", _forged_update(wit, n, k, sb, 0, 127, bound2 - 1), len(cons) - 1)):
        assert r1cs.satisfied(cons, r1cs.witness_ints(forged)) == [broken], name  # only the top bit fails
    r1cs.write_wtns(tmp_path / "range.wtns", _forged_update(wit, n, k, sb, 2, 128, bound2 + (1 << 14)))
    done = _snarkjs(tools, "wtns", "check", "c.r1cs", "range.wtns", cwd=tmp_path)
    assert done.returncode != 0 and "WITNESS IS NOT CORRECT" in done.stdout
    # snarkjs proves with our witness; our verifier (below) checks it with the public inputs it derives
    proof, pub = _groth16(tools, tmp_path, "w.wtns", ptau, verify=False)
    assert pub == public[1:]
    # the whole update proof (our link proof on top) verifies with the verifier's own public inputs
    vk_json = json.loads((tmp_path / "vk.json").read_text())
    ic = [zp._g1(p) for p in vk_json["IC"]]
    link_key, (a2, k1a2, k2a2) = up.link_setup(ic[4:])
    alpha1 = zp._g1(vk_json["vk_alpha_1"])
    assert alpha1 is not None
    vk = up.VerifyingKey(n, k, sb, DEFAULT_SEED, alpha1, zp._g2(vk_json["vk_beta_2"]),
                         zp._g2(vk_json["vk_gamma_2"]), zp._g2(vk_json["vk_delta_2"]), tuple(ic[:4]), a2, k1a2, k2a2)
    d, link = up.link_prove(link_key, values, blind)
    encoded = up.Proof(zp._g1(proof["pi_a"]), zp._g2(proof["pi_b"]), zp._g1(proof["pi_c"]), d, link).encode()
    up.verify(vk, encoded, ped.commit(values, blind), commit_hash, bound2)
    with pytest.raises(ZkError):
        up.verify(vk, encoded, ped.commit(values, blind), commit_hash, bound2 + 1)


def test_remainder_end_to_end(tools: zp.Tools, tmp_path: Path, ptau: Path) -> None:
    n, k, total = 8, 5, 13
    r1cs.write_remainder_r1cs(tmp_path / "c.r1cs", n, k)
    rem, blind = [6, -6, 0, 3, -1, 5, -5, 2], secrets.randbelow(R)
    hi, lo = secrets.randbits(128), secrets.randbits(128)
    wit = r1cs.remainder_witness(n, k, hi, lo, total, rem, blind)
    public = [hi, lo, total, *(r % R for r in rem), blind]
    r1cs.write_wtns(tmp_path / "w.wtns", wit)
    _, pub = _groth16(tools, tmp_path, "w.wtns", ptau, verify=True)
    assert pub == public
    # no witness exists for a remainder out of range: test_remainder_accepts_exactly_what_circom_accepts


def test_blocks_do_not_change_the_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large n is written a block at a time; blocks of one or a few values give the same files."""
    n, k, sb, big = 37, 6, zp.bound_bits(37, 6), 11
    values = [(-1) ** i * (i % 32) for i in range(n)]
    rem = [(-1) ** i * (i % 6) for i in range(n)]
    files = {}
    for tag, block, wblock in (("one", 1, 1), ("few", 4000, 5), ("default", r1cs.BLOCK_BYTES, r1cs.WITNESS_BLOCK)):
        monkeypatch.setattr(r1cs, "BLOCK_BYTES", block)
        monkeypatch.setattr(r1cs, "WITNESS_BLOCK", wblock)
        r1cs.write_update_r1cs(tmp_path / f"u-{tag}.r1cs", n, k, sb)
        r1cs.write_remainder_r1cs(tmp_path / f"r-{tag}.r1cs", n, big)
        r1cs.write_wtns(tmp_path / f"u-{tag}.wtns", r1cs.update_witness(n, k, sb, 1, 2, 1 << 16, values, 3))
        r1cs.write_wtns(tmp_path / f"r-{tag}.wtns", r1cs.remainder_witness(n, big, 1, 2, 11, rem, 3))
        files[tag] = [(tmp_path / f"{c}-{tag}.{e}").read_bytes() for c in "ur" for e in ("r1cs", "wtns")]
    assert files["one"] == files["few"] == files["default"]
    for c in "ur":  # and the witnesses satisfy the systems
        _, cons, _ = r1cs.read_r1cs(tmp_path / f"{c}-one.r1cs")
        wtns = (tmp_path / f"{c}-one.wtns").read_bytes()[76:]  # after the headers
        assert r1cs.satisfied(cons, [int.from_bytes(wtns[i:i + 32], "little") for i in range(0, len(wtns), 32)]) == []


def test_refusals(tmp_path: Path) -> None:
    cases = [
        (lambda: r1cs.update_witness(4, 8, 18, 1, 2, 10**6, [128], 3), "outside the signed 8-bit range"),
        (lambda: r1cs.update_witness(4, 8, 18, 1, 2, 99, [10, -1], 3), "exceeds the bound 99"),
        (lambda: r1cs.update_witness(4, 8, 18, 1, 2, 1 << 18, [1], 3), "must be in [0, 2^18)"),
        (lambda: r1cs.update_witness(2, 8, 18, 1, 2, 100, [1, 2, 3], 3), "at most 2 values"),
        (lambda: r1cs.update_witness(2, 8, 18, R, 2, 100, [1], 3), "hash_hi must be a field element"),
        (lambda: r1cs.update_witness(2, 8, 18, 1, 2, 100, np.array([1.5]), 3), "values must be integers"),
        (lambda: r1cs.remainder_witness(2, 64, 1, 2, 1 << 62, np.array([1 << 62]), 3), "outside (-2^62, 2^62)"),
        (lambda: r1cs.remainder_witness(2, 5, 1, 2, 16, [1], 3), "outside [0, 2^4)"),
        (lambda: r1cs.remainder_witness(2, 5, 1, 2, 9, [0, -5], 3), "remainder value 1 is -5"),
        (lambda: r1cs.write_update_r1cs(tmp_path / "x.r1cs", 0, 8, 18), "out of range"),
        (lambda: r1cs.write_remainder_r1cs(tmp_path / "x.r1cs", 4, 2), "out of range"),
        (lambda: r1cs.write_wtns(tmp_path / "x.wtns", np.zeros((3, 2), dtype=np.uint64)), "(wires, 4) uint64"),
    ]
    for call, message in cases:
        with pytest.raises(FednodeError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing written
