"""Update proofs, the side with I/O: circuit keys (a local development set-up) and proving, by
running ``circom2`` and ``snarkjs`` (npm) as separate processes. The arithmetic and the verifier
are in ``fednode.zk.update_proof`` (pure); docs/zk.md "Update proofs" has the construction.

A key directory (``setup``) holds, for one circuit size ``n`` and bit width ``k``:
``update.wasm`` and its witness calculator (the compiled circuit), ``update.zkey`` (the Groth16
proving key), ``vk.json`` (snarkjs's verifying key, for cross-checks), ``update.vk`` (our constant-size
verifying key, ``VerifyingKey.encode``), ``link.key`` (the link argument's prover key) and
``setup.json`` (parameters, where the powers of tau came from, times). It is written in a temporary
directory and renamed into place whole, so a failed set-up leaves nothing.

Trust: a set-up made here knows its own toxic waste only while it runs (snarkjs mixes OS randomness
into every contribution, the link key's ``k1, k2, a`` are dropped), but nobody else can check that:
it is for development and tests. Production would take the powers of tau from a public ceremony
(``ptau=``) and run a multi-party phase 2 and link set-up; see the docs.
"""

from __future__ import annotations

import json
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

from fednode.errors import FednodeError
from fednode.zk import generators as gens
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import Affine, ZkError, decode, encode

CIRCUIT = Path(__file__).resolve().parents[1] / "zk" / "circuits" / "update_bound.circom"
MAX_N = 1 << 20
TOOL_TIMEOUT = 3600.0


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


def ptau_power(n: int, k: int) -> int:
    """The powers-of-tau size snarkjs needs: constraints + public inputs + 1 within 2^power."""
    constraints = n * (k + 1) + bound_bits(n, k) + 3
    return max(8, math.ceil(math.log2(constraints + n + 5)))


def setup(out: Path, n: int, k: int = 16, *, seed: bytes = gens.DEFAULT_SEED, ptau: Path | None = None,
          tools: Tools | None = None) -> dict[str, object]:
    """Make the keys for vectors of up to ``n`` signed ``k``-bit values in ``out`` (which must not exist)."""
    if not (1 <= n <= MAX_N) or not (2 <= k <= 32):
        raise FednodeError(f"update-proof circuits take 1 <= n <= {MAX_N} values of 2..32 bits, not n={n}, k={k}")
    if out.exists():
        raise FednodeError(f"{out} exists already; remove it to make new keys")
    if ptau is not None:
        have, prepared = ptau_info(ptau)
        power = ptau_power(n, k)
        if have < power or not prepared:
            raise FednodeError(f"{ptau} holds 2^{have} powers{'' if prepared else ', not prepared for phase 2'}; "
                               f"n={n}, k={k} needs 2^{power}, prepared (snarkjs powersoftau prepare phase2)")
    tools = tools or find_tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".zk-setup-", dir=out.parent))
    try:
        meta = _setup_in(work, n, k, seed, ptau, tools)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def _setup_in(work: Path, n: int, k: int, seed: bytes, ptau: Path | None, tools: Tools) -> dict[str, object]:
    times: dict[str, float] = {}
    sb = bound_bits(n, k)
    shutil.copy(CIRCUIT, work / "update_bound.circom")
    (work / "update.circom").write_text(
        'pragma circom 2.1.0;\ninclude "update_bound.circom";\n'
        f"component main {{public [hash, bound2, v, blind]}} = UpdateBound({n}, {k}, {sb});\n")
    t = time.perf_counter()
    flags = [f"--{f}" for f in ("O2", "r1cs", "wasm")]  # circom's flags, spelled so no check takes them for ours
    _run([tools.node, tools.circom2, "update.circom", *flags, "-o", "."], work, "circom2")
    times["compile_s"] = time.perf_counter() - t
    power = ptau_power(n, k)
    snark = [tools.node, tools.snarkjs]
    t = time.perf_counter()
    if ptau is None:  # a one-contributor ceremony made here: development only
        _run([*snark, "powersoftau", "new", "bn128", str(power), "p0.ptau"], work, "powersoftau new")
        _run([*snark, "powersoftau", "contribute", "p0.ptau", "p1.ptau", "-e=fednode dev"], work,
             "powersoftau contribute")
        _run([*snark, "powersoftau", "prepare", "phase2", "p1.ptau", "final.ptau"], work, "prepare phase2")
        ptau_source = f"local, 2^{power}, one contribution (development only)"
    else:
        shutil.copy(ptau, work / "final.ptau")
        ptau_source = str(ptau)
    times["ptau_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _run([*snark, "groth16", "setup", "update.r1cs", "final.ptau", "k0.zkey"], work, "groth16 setup")
    _run([*snark, "zkey", "contribute", "k0.zkey", "update.zkey", "-e=fednode dev"], work, "zkey contribute")
    _run([*snark, "zkey", "export", "verificationkey", "update.zkey", "vk.json"], work, "export verificationkey")
    times["groth16_setup_s"] = time.perf_counter() - t
    for name in ("p0.ptau", "p1.ptau", "final.ptau", "k0.zkey", "update.r1cs"):
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
    meta: dict[str, object] = {"n": n, "k": k, "sb": sb, "seed": seed.hex(), "ptau": ptau_source,
                               "ptau_power": power, "vk_id": vk.key_id().hex(), **times}
    (work / "setup.json").write_text(json.dumps(meta, indent=1))
    return meta


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


def load_keys(path: Path) -> Keys:
    try:
        vk = up.VerifyingKey.decode((path / "update.vk").read_bytes())
        link = decode_link_key((path / "link.key").read_bytes())
    except FileNotFoundError:
        raise FednodeError(f"no update-proof keys in {path} (fednode zk setup)") from None
    return Keys(path, vk, link)


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


def prove(keys: Keys, values: list[int], blinding: int, commit_hash: bytes, bound2: int,
          *, tools: Tools | None = None) -> bytes:
    """The 384-byte proof for ``values`` (their commitment's blinding), this commit hash and bound."""
    values = [int(v) for v in values]
    check_statement(keys.vk, values, bound2)
    hi, lo = up.hash_limbs(commit_hash)
    tools = tools or find_tools()
    padded = values + [0] * (keys.vk.n - len(values))
    with tempfile.TemporaryDirectory(prefix="fednode-zkprove-") as tmp:  # 0700: the witness is the update
        work = Path(tmp)
        (work / "in.json").write_text(json.dumps({"hash": [str(hi), str(lo)], "bound2": str(bound2),
                                                  "v": [str(v) for v in padded], "blind": str(blinding)}))
        js = keys.path / "update_js"
        _run([tools.node, str(js / "generate_witness.js"), str(js / "update.wasm"), str(work / "in.json"),
              str(work / "w.wtns")], work, "witness")
        _run([tools.node, tools.snarkjs, "groth16", "prove", str(keys.path / "update.zkey"), "w.wtns",
              "proof.json", "public.json"], work, "groth16 prove")
        proof = json.loads((work / "proof.json").read_text())
    d, link = up.link_prove(keys.link, values, blinding)
    encoded = up.Proof(_g1(proof["pi_a"]), _g2(proof["pi_b"]), _g1(proof["pi_c"]), d, link).encode()
    # never hand out a proof that does not verify (a zkey and a verifying key from different set-ups)
    commitment = ped.commit(values, blinding, seed=keys.vk.seed)
    try:
        up.verify(keys.vk, encoded, commitment, commit_hash, bound2)
    except ZkError as exc:
        raise FednodeError(f"the keys in {keys.path} made a proof that does not verify ({exc})") from None
    return encoded
