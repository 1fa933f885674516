"""Update and merge proofs on chain (issue 15 items 4, 2): compute units of the program's proof instructions.

    python bench/bench_zk_chain.py [--keys DIR]

In LiteSVM (deterministic: compute units do not depend on the machine's load): the verifying key's
upload (write_vk, then write_vk + seal_vk), prove_commit of a real update proof (snarkjs, keys from
``fednode zk setup`` in DIR, else n = 8 keys made here, ~15 s), and merges of 8 inputs in a repository
that requires proofs (every input PROVEN: the rule costs a flag test per input) beside the same merge in
one that does not. Targets: prove_commit <= 200k CU (an instruction's default budget), a merge of 8
proven committed inputs <= 300k CU. Merge remainder proofs: the remainder key's upload (write_rvk, seal_rvk),
prove_merge of a real FedAvg merge of 2 and of 8 inputs (remainder keys in DIR/remainder, else made here
with K = 33), target <= 300k CU, and the most inputs whose prove_merge (with its ComputeBudget
instruction) fits one 1,232-byte transaction, without and with the four NFT accounts. Exits 1 if a
target is missed. Verification costs the same for any n.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from bench_chain import PROGRAM_ID, h, program_cu, wire_size
from solders.keypair import Keypair

from fednode.chain.backend import LiteSVMBackend, TxResult
from fednode.chain.client import FederityClient
from fednode.chain.program import NftRef, ed25519_proof
from fednode.workflows import zkprove as zp
from fednode.zk import merge_check as mc
from fednode.zk import pedersen as ped
from programs.build import build
from protocol import chain as layout
from protocol.chain import Kind

TARGETS = {"prove_commit": 200_000, "merge (8 proven inputs, commitments)": 300_000,
           "prove_merge (2 inputs)": 300_000, "prove_merge (8 inputs)": 300_000}
PACKET = 1232
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


def run_merges(elf: bytes, rkeys: zp.Keys) -> tuple[dict[str, int], dict[str, int]]:
    """The remainder key's upload and prove_merge of real FedAvg merges of 2 and 8 inputs (program CU);
    the most inputs whose prove_merge transaction fits PACKET bytes, without and with the NFT accounts."""
    backend = LiteSVMBackend()
    backend.deploy(PROGRAM_ID, elf)
    owner = Keypair.from_seed(bytes([1]) * 32)
    backend.airdrop(owner.pubkey(), 10**11)
    c = FederityClient(backend, PROGRAM_ID)
    me = bytes(owner.pubkey())
    rows: dict[str, int] = {}
    rid = layout.commit_hash(me, Kind.INIT, (), h("fedavg"))
    backend.send([ed25519_proof(owner.pubkey(), bytes(owner.sign_message(rid)), rid),
                  c.program.create_repo(owner.pubkey(), rid, h("fedavg"))], [owner])
    first, last = c.program.set_vk(owner.pubkey(), rid, rkeys.vk.encode(), 0, remainder=True)
    rows["write_rvk (768 bytes, creates the record)"] = program_cu(backend.send(first, [owner]))
    rows["write_rvk + seal_rvk"] = program_cu(backend.send(last, [owner]))
    genesis = layout.AnchorCommit(h("fedavg"), Kind.INIT, layout.ZERO32)
    backend.send([ed25519_proof(owner.pubkey(), bytes(owner.sign_message(rid)), rid),
                  c.program.anchor_commit(owner.pubkey(), rid, genesis, as_owner=True)], [owner])
    rng = np.random.default_rng(7)
    for k in (2, 8):
        qs = [rng.integers(-(1 << 15), 1 << 15, rkeys.vk.n) for _ in range(k)]
        ws = tuple(int(w) for w in rng.integers(1, 5000, k))
        blindings = [int(b) for b in rng.integers(1, 1 << 62, k)]
        inputs = []
        for i, (q, b) in enumerate(zip(qs, blindings, strict=True)):
            body = layout.AnchorCommit(h(f"u{k}.{i}"), Kind.UPDATE, layout.ZERO32, (rid,),
                                       ped.commit([int(v) for v in q], b))  # fmt: skip
            commit = body.commit_hash(me)
            backend.send([ed25519_proof(owner.pubkey(), bytes(owner.sign_message(commit)), commit),
                          c.program.anchor_commit(owner.pubkey(), rid, body, as_owner=True)], [owner])
            inputs.append(commit)
        d, r = mc.fedavg_delta(qs, ws)
        b_d, b_r = mc.split_blinding(blindings, ws)
        c_d, c_r = mc.merge_commitments(d, r, b_d, b_r)
        merge = layout.Merge(h(f"m{k}"), layout.branch_hash("main"), tuple(inputs), ws, c_d, c_r)
        commit = merge.commit_hash(me)
        backend.send([ed25519_proof(owner.pubkey(), bytes(owner.sign_message(commit)), commit),
                      c.program.merge(owner.pubkey(), rid, merge)], [owner])
        proof = zp.prove_remainder(rkeys, [int(v) for v in r], b_r, h(f"proof hash {k}"), sum(ws))
        pm = layout.ProveMerge(commit, h(f"proof hash {k}"), ws, c_r, proof)
        ixs = c.program.prove_merge_ixs(owner.pubkey(), rid, pm, inputs)
        rows[f"prove_merge ({k} inputs)"] = program_cu(backend.send(ixs, [owner]))
        assert (rec := c.commit(rid, commit)) is not None and rec.proven
    fits = {}
    for name, nft in (("without an NFT", None), ("NFT-bound", NftRef(Keypair().pubkey(), Keypair().pubkey()))):
        def size(n: int, nft: NftRef | None = nft) -> int:
            body = layout.ProveMerge(h("m"), h("p"), (1,) * n, bytes(64), bytes(layout.PROOF_BYTES))
            ixs = c.program.prove_merge_ixs(owner.pubkey(), rid, body, [h(str(i)) for i in range(n)], nft=nft)
            return wire_size(c, ixs, owner)
        fits[name] = max(n for n in range(1, layout.MAX_PARENTS + 1) if size(n) <= PACKET)
    return rows, fits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=Path, help="a 'fednode zk setup' folder (default: n = 8 keys made here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        elf = build(Path(tmp) / "programs")[3].read_bytes()
        if args.keys is None:
            zp.setup(Path(tmp) / "keys", 8, remainder_bits=zp.REMAINDER_BITS)
        keys = zp.load_keys(args.keys or Path(tmp) / "keys")
        rkeys = zp.remainder_keys(args.keys or Path(tmp) / "keys")
        if rkeys is None:
            print(f"no remainder keys in {args.keys}/{zp.REMAINDER_DIR} (fednode zk setup makes them)")
            return 1
        rows = run(elf, keys)
        merge_rows, fits = run_merges(elf, rkeys)
        rows.update(merge_rows)
    print(f"update and merge proofs on chain (LiteSVM; keys n = {keys.vk.n}, k = {keys.vk.k}, remainder "
          f"K = {rkeys.vk.k}; program CU)")
    missed = False
    for name, cu in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"   target {target:,}  {'PASS' if cu <= target else 'MISS'}"
        missed |= target is not None and cu > target
        print(f"  {name:54} {cu:>9,}{verdict}")
    for name, n in fits.items():
        print(f"  prove_merge fits one {PACKET}-byte transaction ({name}): up to {n} inputs")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
