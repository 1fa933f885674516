"""Update proofs on chain (issue 15 item 4): compute units of the federity program's proof instructions.

    python bench/bench_zk_chain.py [--keys DIR]

In LiteSVM (deterministic: compute units do not depend on the machine's load): the verifying key's
upload (write_vk, then write_vk + seal_vk), prove_commit of a real update proof (snarkjs, keys from
``fednode zk setup`` in DIR, else n = 8 keys made here, ~15 s), and merges of 8 inputs in a repository
that requires proofs (every input PROVEN: the rule costs a flag test per input) beside the same merge in
one that does not. Targets: prove_commit <= 200k CU (an instruction's default budget), a merge of 8
proven committed inputs <= 300k CU. Exits 1 if one is missed. Verification costs the same for any n.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_chain import PROGRAM_ID, h, program_cu
from solders.keypair import Keypair

from fednode.chain.backend import LiteSVMBackend, TxResult
from fednode.chain.client import FederityClient
from fednode.chain.program import ed25519_proof
from fednode.workflows import zkprove as zp
from fednode.zk import pedersen as ped
from programs.build import build
from protocol import chain as layout
from protocol.chain import Kind

TARGETS = {"prove_commit": 200_000, "merge (8 proven inputs, commitments)": 300_000}
BOUND2 = 10_000


def run(elf: bytes, keys: zp.Keys) -> dict[str, int]:
    backend = LiteSVMBackend()
    backend.deploy(PROGRAM_ID, elf)
    owner = Keypair.from_seed(bytes([1]) * 32)
    backend.airdrop(owner.pubkey(), 10**11)
    c = FederityClient(backend, PROGRAM_ID)
    values = [30, -40, 0, 5, -1, 12, 7, -9][: keys.vk.n]
    commitment = ped.commit(values, 12345)
    proof = zp.prove(keys, values, 12345, h("proof hash"), BOUND2)
    rows: dict[str, int] = {}

    def send(name: str | None, ixs: list) -> TxResult:
        tx = backend.send(ixs, [owner])
        if name:
            rows[name] = program_cu(tx)
        return tx

    def repo(label: str, proofs: bool) -> tuple[bytes, list[bytes]]:
        """A repository (sealed key when ``proofs``) with 8 anchored updates, each proven when ``proofs``."""
        rid = layout.commit_hash(bytes(owner.pubkey()), Kind.INIT, (), h(label))
        send(None, [ed25519_proof(owner.pubkey(), bytes(owner.sign_message(rid)), rid),
                    c.program.create_repo(owner.pubkey(), rid, h(label))])
        if proofs:
            first, last = c.program.set_vk(owner.pubkey(), rid, keys.vk.encode(), BOUND2)
            send("write_vk (768 bytes, creates the record)", first)
            send("write_vk (379 bytes) + seal_vk", last)
        inputs = []
        for k in range(8):
            body = layout.AnchorCommit(h(f"{label}{k}"), Kind.UPDATE, layout.ZERO32, (rid,), commitment)
            commit = body.commit_hash(bytes(owner.pubkey()))
            if k == 0:  # the genesis first: the updates' parent
                genesis = layout.AnchorCommit(h(label), Kind.INIT, layout.ZERO32)
                send(None, [ed25519_proof(owner.pubkey(), bytes(owner.sign_message(rid)), rid),
                            c.program.anchor_commit(owner.pubkey(), rid, genesis, as_owner=True)])
            send("anchor_commit (update, commitment, requires proofs)" if proofs else None,
                 [ed25519_proof(owner.pubkey(), bytes(owner.sign_message(commit)), commit),
                  c.program.anchor_commit(owner.pubkey(), rid, body, as_owner=True)])
            if proofs:  # the same proof fits every record: on chain it is bound to the commitment
                send("prove_commit", [c.program.prove_commit(owner.pubkey(), rid, commit, h("proof hash"), proof)])
            inputs.append(commit)
        return rid, inputs

    for label, proofs in (("strict", True), ("plain", False)):
        rid, inputs = repo(label, proofs)
        for name, total in (("commitments", ped.scale(commitment, 8)), ("no commitment", None)):
            body = layout.Merge(h(f"m {label} {name}"), layout.branch_hash("main"), tuple(inputs), (1,) * 8, total)
            commit = body.commit_hash(bytes(owner.pubkey()))
            ixs = [ed25519_proof(owner.pubkey(), bytes(owner.sign_message(commit)), commit),
                   c.program.merge(owner.pubkey(), rid, body)]
            send(f"merge (8 {'proven ' if proofs else ''}inputs, {name})", ixs)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=Path, help="a 'fednode zk setup' folder (default: n = 8 keys made here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        elf = build(Path(tmp) / "programs")[3].read_bytes()
        if args.keys is None:
            zp.setup(Path(tmp) / "keys", 8)
        keys = zp.load_keys(args.keys or Path(tmp) / "keys")
        rows = run(elf, keys)
    print(f"update proofs on chain (LiteSVM; keys n = {keys.vk.n}, k = {keys.vk.k}; program CU)")
    missed = False
    for name, cu in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"   target {target:,}  {'PASS' if cu <= target else 'MISS'}"
        missed |= target is not None and cu > target
        print(f"  {name:54} {cu:>9,}{verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
