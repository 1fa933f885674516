"""Update proofs, the side with I/O: circuit keys (a local development set-up) and proving, by
running ``circom2`` and ``snarkjs`` (npm) as separate processes; the Groth16 proof itself is
``fednode.zk.groth16`` (native, ``FEDNODE_ZK_PROVER=snarkjs`` for snarkjs's). The arithmetic and the
verifier are in ``fednode.zk.update_proof`` (pure); docs/zk.md "Update proofs" has the construction.

Two circuits share one key-directory format and one verifier: ``update`` (``update_bound.circom``:
an update's coordinates are signed ``k``-bit integers, its squared L2 norm at most ``B^2``) and
``remainder`` (``remainder_bound.circom``: a FedAvg merge's remainder has ``|2 r_i| <= W``, ``W`` the
merge's total weight below ``2^(k-1)``, in the place of ``B^2``). ``setup(..., remainder_bits=K)`` makes
the remainder keys too, in ``<out>/remainder``, from the same powers of tau (made large enough for both).

A key directory (``setup``) holds, for one circuit size ``n`` and bit width ``k``:
``update.wasm`` and its witness calculator (the compiled circuit), ``update.zkey`` (the Groth16
proving key), ``vk.json`` (snarkjs's verifying key, for cross-checks), ``update.vk`` (our constant-size
verifying key, ``VerifyingKey.encode``), ``link.key`` (the link argument's prover key) and
``setup.json`` (the circuit's name, parameters, where the powers of tau came from, times). It is written in a temporary
directory and renamed into place whole, so a failed set-up leaves nothing.

Trust: a set-up made here knows its own toxic waste only while it runs (``fednode.zk.devtau`` draws
tau, alpha, beta with ``secrets`` and drops them; snarkjs, with ``ptau_maker="snarkjs"``, mixes OS randomness
into every contribution; the link key's ``k1, k2, a`` are dropped), but nobody else can check that:
it is for development and tests. Production would take the powers of tau from a public ceremony
(``ptau=``) and run a multi-party phase 2 and link set-up; see the docs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fednode.errors import FednodeError
from fednode.zk import devsetup, devtau, groth16, mcl, r1cs
from fednode.zk import generators as gens
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import Affine, ZkError, decode, encode

CIRCUITS_DIR = Path(__file__).resolve().parents[1] / "zk" / "circuits"
CIRCUIT = CIRCUITS_DIR / "update_bound.circom"
REMAINDER_CIRCUIT = CIRCUITS_DIR / "remainder_bound.circom"
REMAINDER_DIR = "remainder"  # the remainder keys' folder inside an update key folder
REMAINDER_BITS = 33  # default K: W + 2 r_i and W - 2 r_i are K-bit, W < 2^32
MAX_N = 1 << 20
TOOL_TIMEOUT = 3600.0
GrothProof = tuple[Affine | None, up.Affine2 | None, Affine | None]  # pi_a, pi_b, pi_c
MAKERS = ("devsetup", "devtau", "snarkjs")  # how a set-up without a ptau file makes its keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tools:
    node: str
    circom2: str  # the circom2 package's CLI script (run with node)
    snarkjs: str  # snarkjs's CLI script


def find_tools(node_modules: Path | None = None) -> Tools:
    """node, circom2 and snarkjs: from ``node_modules`` or $FEDNODE_ZK_NODE_MODULES or the checkout's."""
    node = shutil.which("node")
    if node is None:
        raise FednodeError("update proofs need Node.js (node) on PATH")
    roots = [node_modules] if node_modules else []
    if os.environ.get("FEDNODE_ZK_NODE_MODULES"):
        roots.append(Path(os.environ["FEDNODE_ZK_NODE_MODULES"]))
    roots.append(Path(__file__).resolve().parents[2] / "node_modules")
    for root in roots:
        circom, snark = root / "circom2" / "cli.js", root / "snarkjs" / "build" / "cli.cjs"
        if circom.is_file() and snark.is_file():
            return Tools(node, str(circom), str(snark))
    raise FednodeError("update proofs need the npm packages circom2 and snarkjs "
                       "(npm ci; or set FEDNODE_ZK_NODE_MODULES)")


def _run(args: list[str], cwd: Path | None = None, what: str = "") -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FednodeError(f"{what or args[1]} took over {TOOL_TIMEOUT:.0f} s") from None
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + "\n" + done.stderr)
    errors = [line for line in text.splitlines() if "[ERROR]" in line or line.startswith("Error")]
    if done.returncode != 0 or errors:  # snarkjs reports some failures with exit status 0
        lines = errors or [line for line in text.splitlines() if line.strip()] or ["no output"]
        raise FednodeError(f"{what or args[1]} failed: {lines[-1].strip()[:300]}")
    return done.stdout


def ptau_info(path: Path) -> tuple[int, bool]:
    """(power, prepared for phase 2) of a snarkjs powers-of-tau file, from its section headers."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) != 12 or head[:4] != b"ptau":
            raise FednodeError(f"{path} is not a powers-of-tau file")
        (count,) = struct.unpack("<I", head[8:12])
        power, kinds = 0, set()
        for _ in range(count):
            raw = fh.read(12)
            if len(raw) != 12:
                raise FednodeError(f"{path} is truncated")
            kind, size = struct.unpack("<IQ", raw)
            kinds.add(kind)
            if kind == 1:  # header: n8, q, power, ceremony power
                body = fh.read(size)
                (n8,) = struct.unpack("<I", body[:4])
                (power,) = struct.unpack("<I", body[4 + n8:8 + n8])
            else:
                fh.seek(size, os.SEEK_CUR)
    return power, 12 in kinds  # section 12: tau in the Lagrange basis, written by "prepare phase2"


def bound_bits(n: int, k: int) -> int:
    """The circuit's comparison width: sum v_i^2 < n 2^(2k-2) fits it, with a bit to spare."""
    return 2 * k - 2 + max(1, math.ceil(math.log2(n))) + 1


def constraints(n: int, k: int, circuit: str = "update") -> int:
    """The circuit's constraints after --O2 (booleans and squares; snarkjs adds one per public input)."""
    if circuit == "remainder":
        return n * (2 * k - 1) + (k - 1) + 3
    return n * (k + 1) + bound_bits(n, k) + 3


def ptau_power(n: int, k: int, circuit: str = "update") -> int:
    """The powers-of-tau size snarkjs needs: constraints + public inputs + 1 within 2^power."""
    return max(8, math.ceil(math.log2(constraints(n, k, circuit) + n + 5)))


def _check_params(circuit: str, n: int, k: int) -> None:
    if circuit == "update" and (1 <= n <= MAX_N) and 2 <= k <= 32:
        return
    if circuit == "remainder" and (1 <= n <= MAX_N) and 3 <= k <= 64:
        return
    if circuit not in ("update", "remainder"):
        raise FednodeError(f"no circuit {circuit!r}: 'update' or 'remainder'")
    bits = "2..32" if circuit == "update" else "3..64"
    raise FednodeError(f"{circuit}-proof circuits take 1 <= n <= {MAX_N} values of {bits} bits, not n={n}, k={k}")


def setup(out: Path, n: int, k: int = 16, *, circuit: str = "update", remainder_bits: int | None = None,
          seed: bytes = gens.DEFAULT_SEED, ptau: Path | None = None, tools: Tools | None = None,
          ptau_maker: str = "devsetup") -> dict[str, object]:
    """Make the keys for vectors of up to ``n`` values in ``out`` (which must not exist): ``circuit``
    "update" (signed ``k``-bit values) or "remainder" (``|2 r_i| <= W < 2^(k-1)``). With
    ``remainder_bits`` (update only), the remainder keys for ``n`` values and that ``k`` go in
    ``out/remainder`` (from the same powers of tau, sized for the larger circuit, where there are any).
    With ``ptau`` (a public ceremony's file), snarkjs's set-up over it and one local phase-2
    contribution. Without, ``ptau_maker``: "devsetup" (``fednode.zk.devsetup``: the keys directly
    from secrets drawn here, no powers of tau; seconds to minutes), or a local powers of tau then
    snarkjs's set-up: "devtau" (``fednode.zk.devtau``) or "snarkjs" (its one-contributor ceremony),
    kept for comparison."""
    _check_params(circuit, n, k)
    if ptau_maker not in MAKERS:
        raise FednodeError(f"no set-up maker {ptau_maker!r}: " + ", ".join(repr(m) for m in MAKERS))
    power = ptau_power(n, k, circuit)
    if remainder_bits is not None:
        if circuit != "update":
            raise FednodeError("remainder_bits makes remainder keys beside update keys (circuit 'update')")
        _check_params("remainder", n, remainder_bits)
        power = max(power, ptau_power(n, remainder_bits, "remainder"))
    if out.exists():
        raise FednodeError(f"{out} exists already; remove it to make new keys")
    if ptau is not None:
        have, prepared = ptau_info(ptau)
        if have < power or not prepared:
            raise FednodeError(f"{ptau} holds 2^{have} powers{'' if prepared else ', not prepared for phase 2'}; "
                               f"n={n}, k={k} needs 2^{power}, prepared (snarkjs powersoftau prepare phase2)")
    direct = ptau is None and ptau_maker == "devsetup"
    if direct and not mcl.available():
        raise FednodeError("fednode's development set-up needs PyPI mclbn256; or pass a ptau file")
    tools = None if direct else tools or find_tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".zk-setup-", dir=out.parent))
    try:
        t = time.perf_counter()
        tau: Path | None = None
        if direct:  # no powers of tau: devsetup draws every secret itself and drops them
            source = "none: fednode devsetup from secrets drawn here (development only)"
        elif ptau is None and ptau_maker == "devtau" and mcl.available():  # secrets drawn and dropped here
            tau = devtau.write_ptau(work / "final.ptau", power)
            source = f"local, 2^{power}, fednode devtau from secrets drawn here (development only)"
        elif ptau is None:  # a one-contributor snarkjs ceremony (or no mcl for devtau): development only
            assert tools is not None
            tau = _local_ptau(work, power, tools)
            source = f"local, 2^{power}, one snarkjs contribution (development only)"
        else:
            tau, source = ptau, str(ptau)
        ptau_s = time.perf_counter() - t
        meta = _setup_in(work, circuit, n, k, seed, tau, tools)
        meta.update(ptau=source, ptau_power=None if direct else power, ptau_s=ptau_s)
        if remainder_bits is not None:
            (work / REMAINDER_DIR).mkdir()
            rmeta = _setup_in(work / REMAINDER_DIR, "remainder", n, remainder_bits, seed, tau, tools)
            rmeta.update(ptau=source, ptau_power=None if direct else power, ptau_s=0.0)
            (work / REMAINDER_DIR / "setup.json").write_text(json.dumps(rmeta, indent=1))
            meta["remainder"] = rmeta
        (work / "setup.json").write_text(json.dumps(meta, indent=1))
        for name in ("p0.ptau", "p1.ptau", "final.ptau"):
            (work / name).unlink(missing_ok=True)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def _local_ptau(work: Path, power: int, tools: Tools) -> Path:
    snark = [tools.node, tools.snarkjs]
    _run([*snark, "powersoftau", "new", "bn128", str(power), "p0.ptau"], work, "powersoftau new")
    _run([*snark, "powersoftau", "contribute", "p0.ptau", "p1.ptau", "-e=fednode dev"], work,
         "powersoftau contribute")
    _run([*snark, "powersoftau", "prepare", "phase2", "p1.ptau", "final.ptau"], work, "prepare phase2")
    return work / "final.ptau"


def _setup_in(work: Path, circuit: str, n: int, k: int, seed: bytes, ptau: Path | None,
              tools: Tools | None) -> dict[str, object]:
    """One circuit's keys in ``work`` (the key-folder format, whichever the circuit): the constraint
    system from ``fednode.zk.r1cs`` (circom2's for the update circuit, an equivalent one for the
    remainder), then the Groth16 keys from ``devsetup`` (``ptau`` None) or snarkjs's set-up over
    ``ptau`` and one phase-2 contribution."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    if circuit == "remainder":
        sb, source = k - 1, REMAINDER_CIRCUIT  # the verifier's bound on X = W: W < 2^(k-1)
        made = r1cs.write_remainder_r1cs(work / "update.r1cs", n, k)
    else:
        sb, source = bound_bits(n, k), CIRCUIT
        made = r1cs.write_update_r1cs(work / "update.r1cs", n, k, sb)
    times["r1cs_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if ptau is None:
        try:
            devsetup.groth16_setup(work / "update.r1cs", work / "update.zkey", work / "vk.json")
        except ZkError as exc:
            raise FednodeError(f"set-up failed: {exc}") from None
    else:
        assert tools is not None
        snark = [tools.node, tools.snarkjs]
        _run([*snark, "groth16", "setup", "update.r1cs", str(ptau.resolve()), "k0.zkey"], work, "groth16 setup")
        _run([*snark, "zkey", "contribute", "k0.zkey", "update.zkey", "-e=fednode dev"], work, "zkey contribute")
        _run([*snark, "zkey", "export", "verificationkey", "update.zkey", "vk.json"], work, "export verificationkey")
    times["groth16_setup_s"] = time.perf_counter() - t
    for name in ("k0.zkey", "update.r1cs"):
        (work / name).unlink(missing_ok=True)
    t = time.perf_counter()
    snark_vk = json.loads((work / "vk.json").read_text())
    ic = [_g1(p) for p in snark_vk["IC"]]
    if len(ic) != n + 5:
        raise FednodeError(f"the compiled circuit has {len(ic) - 1} public inputs, expected {n + 4}")
    link_key, (a2, k1a2, k2a2) = up.link_setup(ic[4:], seed)
    alpha1 = _g1(snark_vk["vk_alpha_1"])
    if alpha1 is None:
        raise FednodeError("snarkjs wrote a verifying key with alpha at infinity")
    vk = up.VerifyingKey(n, k, sb, seed, alpha1, _g2(snark_vk["vk_beta_2"]),
                         _g2(snark_vk["vk_gamma_2"]), _g2(snark_vk["vk_delta_2"]), tuple(ic[:4]), a2, k1a2, k2a2)
    (work / "update.vk").write_bytes(vk.encode())
    (work / "link.key").write_bytes(encode_link_key(link_key))
    times["link_setup_s"] = time.perf_counter() - t
    return {"circuit": source.stem, "n": n, "k": k, "sb": sb, "seed": seed.hex(), "r1cs": "fednode.zk.r1cs",
            "constraints": made["constraints"], "wires": made["wires"], "vk_id": vk.key_id().hex(), **times}


def prover() -> str:
    """The Groth16 prover ``_prove`` uses: ``FEDNODE_ZK_PROVER`` "native" (default, ``fednode.zk.groth16``)
    or "snarkjs" (its ``groth16 prove``, kept for cross-checks)."""
    name = os.environ.get("FEDNODE_ZK_PROVER", "native")
    if name not in ("native", "snarkjs"):
        raise FednodeError(f"FEDNODE_ZK_PROVER is {name!r}: 'native' or 'snarkjs'")
    return name


def _witness(keys: Keys, padded: list[int], blinding: int, hi: int, lo: int, x: int, work: Path,
             tools: Tools | None) -> np.ndarray | Path:
    """The circuit's whole witness: from ``fednode.zk.r1cs`` (numpy, the wire order its set-up used),
    or, in a key folder made by circom2 before (``update_js``), from circom's witness calculator."""
    js = keys.path / "update_js"
    if js.is_dir():
        tools = tools or find_tools()
        names = ("total", "r") if keys.circuit == "remainder" else ("bound2", "v")
        (work / "in.json").write_text(json.dumps({"hash": [str(hi), str(lo)], names[0]: str(x),
                                                  names[1]: [str(v) for v in padded], "blind": str(blinding)}))
        _run([tools.node, str(js / "generate_witness.js"), str(js / "update.wasm"), str(work / "in.json"),
              str(work / "w.wtns")], work, "witness")
        return work / "w.wtns"
    vk = keys.vk
    if keys.circuit == "remainder":
        return r1cs.remainder_witness(vk.n, vk.k, hi, lo, x, padded, blinding)
    return r1cs.update_witness(vk.n, vk.k, vk.sb, hi, lo, x, padded, blinding)


def _native_prove(keys: Keys, witness: np.ndarray | Path) -> GrothProof | None:
    """pi_a, pi_b, pi_c from ``fednode.zk.groth16``, or None (one warning) where its C kernels or mcl
    are unavailable here, so snarkjs proves instead. Not checked here: ``_prove`` verifies the whole."""
    if not mcl.available():
        log.warning("native Groth16 prover needs mclbn256; using snarkjs")
        return None
    try:
        pk = groth16.ProvingKey.load(keys.path / "update.zkey")
        wires = groth16.read_wtns(witness) if isinstance(witness, Path) else witness
        return groth16.prove(pk, wires, check=False)
    except OSError as exc:  # the kernels did not build or load
        log.warning("native Groth16 prover unavailable, using snarkjs: %s", exc)
        return None


def _g1(xy: list[str]) -> Affine | None:
    if len(xy) == 3 and int(xy[2]) == 0:
        return None
    return decode(int(xy[0]).to_bytes(32, "big") + int(xy[1]).to_bytes(32, "big"), "snarkjs G1 point")


def _g2(xy: list[list[str]]) -> up.Affine2:
    return (int(xy[0][0]), int(xy[0][1])), (int(xy[1][0]), int(xy[1][1]))


def encode_link_key(key: up.LinkKey) -> bytes:
    return struct.pack(">I", len(key.ic)) + b"".join(encode(p) for p in (*key.ic, *key.p))


def decode_link_key(data: bytes) -> up.LinkKey:
    (count,) = struct.unpack(">I", data[:4])
    if len(data) != 4 + 128 * count:
        raise ZkError("link key has the wrong length")
    points = [decode(data[4 + 64 * i:4 + 64 * (i + 1)], "link key point") for i in range(2 * count)]
    return up.LinkKey(tuple(points[:count]), tuple(points[count:]))


@dataclass(frozen=True)
class Keys:
    path: Path
    vk: up.VerifyingKey
    link: up.LinkKey

    @property
    def circuit(self) -> str:
        from fednode.zk.policy import is_remainder_vk

        return "remainder" if is_remainder_vk(self.vk) else "update"


def load_keys(path: Path, circuit: str = "update") -> Keys:
    """The keys in ``path``, of ``circuit`` ("update" or "remainder"; the other kind is refused)."""
    try:
        vk = up.VerifyingKey.decode((path / "update.vk").read_bytes())
        link = decode_link_key((path / "link.key").read_bytes())
    except FileNotFoundError:
        raise FednodeError(f"no {circuit}-proof keys in {path} (fednode zk setup)") from None
    keys = Keys(path, vk, link)
    if keys.circuit != circuit:
        raise FednodeError(f"the keys in {path} are {keys.circuit}-proof keys, not {circuit}-proof keys")
    return keys


def remainder_keys(path: Path) -> Keys | None:
    """The remainder keys beside the update keys in ``path`` (``path/remainder``), None without any."""
    folder = path / REMAINDER_DIR
    if not (folder / "update.vk").is_file():
        return None
    return load_keys(folder, "remainder")


def check_statement(vk: up.VerifyingKey, values: list[int], bound2: int) -> None:
    """Refuse, before any proving, a vector the circuit cannot accept (one line saying why)."""
    if len(values) > vk.n:
        raise FednodeError(f"{len(values)} values: these keys prove at most {vk.n}")
    if not 0 <= bound2 < (1 << vk.sb):
        raise FednodeError(f"the norm bound B^2 must be in [0, 2^{vk.sb}) for these keys")
    lo, hi = -(1 << (vk.k - 1)), (1 << (vk.k - 1)) - 1
    for i, v in enumerate(values):
        if not lo <= v <= hi:
            raise FednodeError(f"value {i} is {v}: outside the signed {vk.k}-bit range [{lo}, {hi}]")
    norm2 = sum(v * v for v in values)
    if norm2 > bound2:
        raise FednodeError(f"the update's squared L2 norm {norm2} exceeds the bound {bound2}: refusing to prove")


def check_remainder(vk: up.VerifyingKey, remainder: list[int], total: int) -> None:
    """Refuse, before any proving, a remainder the circuit cannot accept: ``|2 r_i| <= W < 2^sb``."""
    if len(remainder) > vk.n:
        raise FednodeError(f"{len(remainder)} values: these remainder keys prove at most {vk.n}")
    if isinstance(total, bool) or not 0 <= total < (1 << vk.sb):
        raise FednodeError(f"the merge's total weight {total} is outside these remainder keys' [0, 2^{vk.sb})")
    for i, r in enumerate(remainder):
        if 2 * abs(r) > total:
            raise FednodeError(f"remainder value {i} is {r}: over half the total weight {total} "
                               "(not a round-to-nearest merge); refusing to prove")


def prove(keys: Keys, values: list[int], blinding: int, commit_hash: bytes, bound2: int,
          *, tools: Tools | None = None) -> bytes:
    """The 384-byte proof for ``values`` (their commitment's blinding), this commit hash and bound."""
    values = [int(v) for v in values]
    check_statement(keys.vk, values, bound2)
    return _prove(keys, values, blinding, commit_hash, bound2, tools)


def prove_remainder(keys: Keys, remainder: list[int], blinding: int, commit_hash: bytes, total: int,
                    *, tools: Tools | None = None) -> bytes:
    """The 384-byte remainder proof: ``C(r; blinding)`` opens to ``r`` with ``|2 r_i| <= total`` (= W),
    bound to ``commit_hash``; it verifies with ``update_proof.verify(keys.vk, proof, C(r), commit_hash, total)``."""
    if keys.circuit != "remainder":
        raise FednodeError(f"the keys in {keys.path} are not remainder-proof keys")
    remainder = [int(r) for r in remainder]
    check_remainder(keys.vk, remainder, total)
    return _prove(keys, remainder, blinding, commit_hash, total, tools)


def _prove(keys: Keys, values: list[int], blinding: int, commit_hash: bytes, x: int, tools: Tools | None) -> bytes:
    """The Groth16 proof (``prover()``), our link proof, and the check that the whole verifies (X = ``x``)."""
    hi, lo = up.hash_limbs(commit_hash)
    padded = values + [0] * (keys.vk.n - len(values))
    with tempfile.TemporaryDirectory(prefix="fednode-zkprove-") as tmp:  # 0700: the witness is the update
        work = Path(tmp)
        witness = _witness(keys, padded, blinding, hi, lo, x, work, tools)
        groth = _native_prove(keys, witness) if prover() == "native" else None
        if groth is None:
            tools = tools or find_tools()
            if not isinstance(witness, Path):
                r1cs.write_wtns(work / "w.wtns", witness)
            _run([tools.node, tools.snarkjs, "groth16", "prove", str(keys.path / "update.zkey"), "w.wtns",
                  "proof.json", "public.json"], work, "groth16 prove")
            proof = json.loads((work / "proof.json").read_text())
            groth = _g1(proof["pi_a"]), _g2(proof["pi_b"]), _g1(proof["pi_c"])
    d, link = up.link_prove(keys.link, values, blinding)
    encoded = up.Proof(*groth, d, link).encode()
    # never hand out a proof that does not verify (a zkey and a verifying key from different set-ups)
    commitment = ped.commit(values, blinding, seed=keys.vk.seed)
    try:
        up.verify(keys.vk, encoded, commitment, commit_hash, x)
    except ZkError as exc:
        raise FednodeError(f"the keys in {keys.path} made a proof that does not verify ({exc})") from None
    return encoded
