"""Update proofs (issue 15 items 3, 7): set-up, proof time and size, verification time, in one run.

    python bench/bench_zk_proof.py [--sizes 10000,100000] [--ptau-maker devsetup|devtau|snarkjs]
                                   [--prover native|snarkjs] [--tau-powers 8,12] [--ptau-dir DIR] [--keys-dir DIR]

For each circuit size n (signed 16-bit values): a local development set-up, by default fednode's own
(``fednode.zk.r1cs`` writes the constraint system, ``fednode.zk.devsetup`` the Groth16 keys from
secrets it draws and drops: ~14 s at 10k, ~2 min at 100k); --ptau-maker devtau or snarkjs make a
powers of tau instead and run snarkjs's set-up over it (minutes to an hour at 10k; --ptau-dir reuses
files named p<power>_final.ptau, --keys-dir reuses whole key sets). Then proofs with the native prover
(``fednode.zk.groth16``; --prover snarkjs for snarkjs's; best of 3 up to n = 100,000, one above), our
verifier (mcl best/median of 20, py_ecc once) and the on-chain check (programs/zkverify/zkverify.c in
LiteSVM: compute units). Every line carries the 1-minute load average (the machine is shared) and the
process's peak memory. ACORN's published client cost (< 80 s for 250k 16-bit entries, USENIX Security
2023) is printed per parameter beside ours. Target sizes (10k, 100k, 1M) not in --sizes are
EXTRAPOLATED linearly in constraints from the smallest and largest measured sizes (the prover is
O(n log n): optimistic) and printed as such. Targets: 10k proven <= 10 s, 100k <= 60 s, verification
<= 10 ms, on chain <= 200k CU. snarkjs (node) is needed only for --prover snarkjs and the ptau makers.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fednode.workflows import zkprove as zp
from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import R

ACORN_S_PER_PARAM = 80.0 / 250_000  # < 80 s per client for 250k 16-bit entries
TARGETS = {10_000: 10.0, 100_000: 60.0}
TARGET_VERIFY_MS = 10.0
CU_TARGET = 200_000
K = 16


def constraints(n: int) -> int:
    return n * (K + 1) + zp.bound_bits(n, K) + 3  # what circom2 --O2 reports for this circuit


def keys_for(n: int, args: argparse.Namespace, scratch: Path) -> tuple[zp.Keys, dict]:
    if args.keys_dir and (args.keys_dir / f"n{n}").exists():
        return zp.load_keys(args.keys_dir / f"n{n}"), {"reused": True}
    out = (args.keys_dir or scratch) / f"n{n}"
    ptau = None
    if args.ptau_dir:
        cand = args.ptau_dir / f"p{zp.ptau_power(n, K)}_final.ptau"
        ptau = cand if cand.exists() else None
    meta = zp.setup(out, n, K, ptau=ptau, ptau_maker=args.ptau_maker)
    return zp.load_keys(out), meta


def load() -> str:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return f"load {os.getloadavg()[0]:.2f}, peak RSS {peak:.1f} GB"


def bench_tau(power: int, scratch: Path) -> None:
    """devtau alone: seconds and file size of a prepared 2^power powers of tau."""
    from fednode.zk import devtau

    path = scratch / f"devtau{power}.ptau"
    t = time.perf_counter()
    devtau.write_ptau(path, power)
    took = time.perf_counter() - t
    print(f"devtau 2^{power:<2}: {took:7.2f} s, {path.stat().st_size / 2**20:8.1f} MiB prepared ptau  ({load()})")
    path.unlink()


def bench_one(n: int, args: argparse.Namespace, scratch: Path) -> float:
    t = time.perf_counter()
    keys, meta = keys_for(n, args, scratch)
    setup_s = time.perf_counter() - t
    values = [secrets.randbelow(2001) - 1000 for _ in range(n)]
    blinding, commit_hash, bound2 = secrets.randbelow(R), secrets.token_bytes(32), 10**6 * n
    commitment = ped.commit(values, blinding)
    proofs = []
    for _ in range(3 if n <= 100_000 else 1):
        t = time.perf_counter()
        proof = zp.prove(keys, values, blinding, commit_hash, bound2)
        proofs.append(time.perf_counter() - t)
    verify_runs = []
    for _ in range(20):
        t = time.perf_counter()
        up.verify(keys.vk, proof, commitment, commit_hash, bound2, backend_name="mcl")
        verify_runs.append(time.perf_counter() - t)
    t = time.perf_counter()
    up.verify(keys.vk, proof, commitment, commit_hash, bound2, backend_name="reference")
    ref_s = time.perf_counter() - t
    cu = chain_cu(keys.vk, proof, commitment, commit_hash, bound2)
    best = min(proofs)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in meta.items() if k.endswith("_s"))
    print(f"n={n:>6}  constraints {constraints(n):>8} (2^{zp.ptau_power(n, K)} domain)  set-up {setup_s:6.1f} s"
          f" [{parts or 'reused'}]  ({load()})")
    print(f"          prove best {best:6.2f} s / median {statistics.median(proofs):6.2f} s"
          f"  = {best / n * 1e6:8.1f} us/param (ACORN {ACORN_S_PER_PARAM * 1e6:.0f} us/param;"
          f" ours/ACORN {best / n / ACORN_S_PER_PARAM:6.2f}x)  proof {len(proof)} B  ({load()})")
    target = TARGETS.get(n)
    if target:
        verdict = "PASS" if best <= target else "MISS"
        print(f"          MEASURED n={n}: {best:.1f} s prove, target {target:.0f} s {verdict}")
    vbest, vmed = min(verify_runs) * 1e3, statistics.median(verify_runs) * 1e3
    print(f"          verify mcl best {vbest:.2f} ms / median {vmed:.2f} ms"
          f" (target {TARGET_VERIFY_MS:.0f} ms {'PASS' if vmed <= TARGET_VERIFY_MS else 'MISS'}),"
          f" py_ecc {ref_s * 1e3:.0f} ms; verifying key {len(keys.vk.encode())} B whatever n")
    verdict = "PASS" if cu <= CU_TARGET else "MISS"
    print(f"          on chain (programs/zkverify in LiteSVM): {cu} CU (target {CU_TARGET} {verdict})")
    return best


def chain_cu(vk: up.VerifyingKey, proof: bytes, commitment: bytes, commit_hash: bytes, bound2: int) -> int:
    """Compute units of programs/zkverify/zkverify.c checking this proof in LiteSVM (raises if it fails)."""
    from solders.account import Account
    from solders.instruction import AccountMeta, Instruction
    from solders.keypair import Keypair
    from solders.litesvm import LiteSVM
    from solders.message import Message
    from solders.transaction import Transaction
    from solders.transaction_metadata import FailedTransactionMetadata

    from programs import build as federity_build
    from programs.sbpf_linker import link

    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "zkverify.o"
        federity_build.compile_c(Path(__file__).resolve().parents[1] / "programs" / "zkverify" / "zkverify.c", obj)
        elf = link([(obj.name, obj.read_bytes())], 3)
    svm, program, key, payer = LiteSVM(), Keypair().pubkey(), Keypair().pubkey(), Keypair()
    svm.add_program(program, elf)
    svm.set_account(key, Account(10**9, vk.encode(), program, False, 0))
    svm.airdrop(payer.pubkey(), 10**10)
    ix = Instruction(program, proof + commitment + commit_hash + bound2.to_bytes(32, "big"),
                     [AccountMeta(key, False, False)])
    result = svm.send_transaction(Transaction([payer], Message([ix], payer.pubkey()), svm.latest_blockhash()))
    if isinstance(result, FailedTransactionMetadata):
        raise RuntimeError(f"the program rejected the proof: {result.err()}")
    return int(result.compute_units_consumed())


def bench_link(n: int) -> None:
    """The link proof's share of proving (two MSMs of small scalars with mcl): measured at any n, with
    a stand-in key (1,024 distinct points repeated: an MSM costs the same over distinct points)."""
    from fednode.zk import generators as gens

    base = gens.generators(1025)
    pts = tuple(base[i % 1024] for i in range(n)) + (base[1024],)
    key = up.LinkKey(pts, pts)
    values = [secrets.randbelow(1 << 16) - (1 << 15) for _ in range(n)]
    t = time.perf_counter()
    up.link_prove(key, values, secrets.randbelow(R))
    print(f"link proof (D and L), measured: n={n:>8} {time.perf_counter() - t:6.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8,10000")
    ap.add_argument("--ptau-dir", type=Path)
    ap.add_argument("--keys-dir", type=Path)
    ap.add_argument("--ptau-maker", choices=zp.MAKERS, default="devsetup")
    ap.add_argument("--prover", choices=("native", "snarkjs"), default="native")
    ap.add_argument("--tau-powers", default="", help="time devtau alone at these powers (18: a few minutes)")
    ap.add_argument("--link-sizes", default="10000,100000", help="sizes for the link proof alone (1000000: ~10 s)")
    args = ap.parse_args()
    os.environ["FEDNODE_ZK_PROVER"] = args.prover
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"update proofs, signed {K}-bit values; set-up {args.ptau_maker}, prover {args.prover};"
          f" load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-zkproof-") as tmp:
        for power in (int(x) for x in args.tau_powers.split(",") if x):
            bench_tau(power, Path(tmp))
        times = {n: bench_one(n, args, Path(tmp)) for n in sizes}
    for n in (int(x) for x in args.link_sizes.split(",") if x):
        bench_link(n)
    n_big, n_small = max(times), min(times)
    if n_big == n_small:
        print("EXTRAPOLATION needs two sizes (e.g. --sizes 8,10000)")
    else:  # a fixed cost (node start, key loading) and a cost per constraint, from the two ends
        slope = (times[n_big] - times[n_small]) / (constraints(n_big) - constraints(n_small))
        fixed = max(0.0, times[n_small] - slope * constraints(n_small))
        for n in (x for x in (10_000, 100_000, 1_000_000) if x not in times):
            est = fixed + slope * constraints(n)
            target = TARGETS.get(n)
            verdict = f"target {target:.0f} s {'PASS' if est <= target else 'MISS'}" if target else "no target"
            print(f"EXTRAPOLATED n={n:>8}: ~{est:7.1f} s prove ({constraints(n)} constraints, linear from n={n_small}"
                  f" and {n_big}; {verdict}; ACORN ~{ACORN_S_PER_PARAM * n:.0f} s); a 2^{zp.ptau_power(n, K)} domain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
