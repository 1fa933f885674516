"""Compute units, transaction sizes and fees of the federity program's instructions (LiteSVM).

    python bench/bench_chain.py

Targets: anchor_commit <= 30k CU; merge of 8 committed inputs <= 200k CU (old rule, C(S)) and
<= 300k CU with the remainder (C(d) and C(r), issue 15). Exits 1 if one is missed.
Instructions carry body digests; the program recomputes each commit hash (author = signer, kind,
parents, body digest), so the bench signs the hashes protocol.chain.commit_hash gives. Also
reports the largest merge (without commitments, with one, with C(d) and C(r)) that fits one legacy
transaction.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from py_ecc.optimized_bn128 import G1, curve_order, multiply, normalize
from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction

from fednode.chain.backend import LiteSVMBackend, TxResult
from fednode.chain.client import FederityClient
from fednode.chain.program import ed25519_proof
from programs.build import build
from protocol import chain as layout
from protocol.chain import Kind

TARGETS = {"anchor_commit (1 parent, commitment)": 30_000, "merge (8 inputs, commitments)": 200_000,
           "merge (8 inputs, C(d) + C(r))": 300_000}
LEGACY_TX_LIMIT = 1232  # bytes on the wire
PROGRAM_ID = Keypair.from_seed(bytes([7]) * 32).pubkey()


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def g1(k: int) -> bytes:
    x, y = normalize(multiply(G1, k % curve_order))
    return int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


def program_cu(tx: TxResult) -> int:
    """Units our program consumed (the transaction total also counts precompiles and builtins)."""
    pattern = re.compile(rf"Program {PROGRAM_ID} consumed (\d+) of")
    return sum(int(m.group(1)) for line in tx.logs if (m := pattern.search(line)))


def wire_size(client: FederityClient, ixs: list, signer: Keypair) -> int:
    tx = Transaction([signer], Message(ixs, signer.pubkey()), client.backend.svm.latest_blockhash())
    return len(bytes(tx))


def run(elf: bytes) -> dict[str, tuple[int, int, int, int]]:
    """name -> (program CU, transaction CU, wire bytes, fee)."""
    backend = LiteSVMBackend()
    backend.deploy(PROGRAM_ID, elf)
    owner, alice = Keypair.from_seed(bytes([1]) * 32), Keypair.from_seed(bytes([2]) * 32)
    for kp in (owner, alice):
        backend.airdrop(kp.pubkey(), 10**11)
    c = FederityClient(backend, PROGRAM_ID)
    genesis_digest = h("genesis")
    rid = layout.commit_hash(bytes(owner.pubkey()), Kind.INIT, (), genesis_digest)  # the genesis commit hash
    rows: dict[str, tuple[int, int, int, int]] = {}

    def record(name: str, tx: TxResult, ixs: list, signer: Keypair) -> None:
        rows[name] = (program_cu(tx), tx.compute_units, wire_size(c, ixs, signer), tx.fee)

    def anchor(name: str, author: Keypair, digest: bytes, **kw: object) -> bytes:
        body = layout.AnchorCommit(digest, kw.get("kind", Kind.UPDATE),  # type: ignore[arg-type]
                                   layout.branch_hash("main") if kw.get("branch", True) else layout.ZERO32,
                                   tuple(kw.get("parents", ())), kw.get("commitment"))  # type: ignore[arg-type]
        commit = body.commit_hash(bytes(author.pubkey()))
        sig = bytes(author.sign_message(commit))
        as_owner = author.pubkey() == owner.pubkey()
        ixs = [ed25519_proof(author.pubkey(), sig, commit), c.program.anchor_commit(author.pubkey(), rid, body,
                                                                                    as_owner=as_owner)]
        record(name, backend.send(ixs, [author]), ixs, author)
        return commit

    ixs = [ed25519_proof(owner.pubkey(), bytes(owner.sign_message(rid)), rid),  # the genesis signature
           c.program.create_repo(owner.pubkey(), rid, genesis_digest)]
    record("create_repo", backend.send(ixs, [owner]), ixs, owner)
    ix = c.program.add_member(owner.pubkey(), rid, alice.pubkey())
    record("add_member", backend.send([ix], [owner]), [ix], owner)
    anchor("anchor_commit (genesis, owner)", owner, genesis_digest, kind=Kind.INIT)
    anchor("anchor_commit (1 parent)", alice, h("u0"), parents=(rid,), branch=False)
    anchor("anchor_commit (1 parent, commitment)", alice, h("u1"), parents=(rid,), branch=False, commitment=g1(3))
    anchor("anchor_commit (fast-forward main)", alice, h("u2"), parents=(rid,))
    inputs, scalars, weights = [], [], []
    for k in range(8):
        scalar = 1000 + k
        commit = anchor(f"in{k}", owner, h(f"in{k}"), parents=(rid,), branch=False, commitment=g1(scalar))
        inputs.append(commit), scalars.append(scalar), weights.append(10 + k)
        rows.pop(f"in{k}")
    total = sum(w * s for w, s in zip(weights, scalars, strict=True))
    d = total // sum(weights)  # the remainder rule: sum w_k C_k == W C(d) + C(r), r = S - W d
    for name, digest, commitment, remainder in [
            ("merge (8 inputs, commitments)", h("m8"), g1(total), None),
            ("merge (8 inputs, C(d) + C(r))", h("m8r"), g1(d), g1(total - sum(weights) * d)),
            ("merge (8 inputs, no commitment)", h("m8b"), None, None)]:  # fmt: skip
        body = layout.Merge(digest, layout.branch_hash("main"), tuple(inputs), tuple(weights), commitment,
                            remainder)  # fmt: skip
        commit = body.commit_hash(bytes(owner.pubkey()))
        ixs = [ed25519_proof(owner.pubkey(), bytes(owner.sign_message(commit)), commit),
               c.program.merge(owner.pubkey(), rid, body)]
        record(name, backend.send(ixs, [owner]), ixs, owner)
    ix = c.program.set_head(owner.pubkey(), rid, layout.branch_hash("main"), rid)
    record("set_head (revert)", backend.send([ix], [owner]), [ix], owner)
    ix = c.program.remove_member(owner.pubkey(), rid, alice.pubkey())
    record("remove_member", backend.send([ix], [owner]), [ix], owner)
    rows["_rent_commit"] = (backend.svm.minimum_balance_for_rent_exemption(layout.COMMIT_SIZE), 0, 0, 0)
    rows["_largest_merge"] = (largest_merge(c, owner, 1), largest_merge(c, owner, 0), largest_merge(c, owner, 2), 0)
    return rows


def largest_merge(c: FederityClient, owner: Keypair, points: int) -> int:
    """The most inputs a merge (with its Ed25519 proof) can have in one legacy transaction, carrying
    ``points`` G1 points: 0, 1 (a commitment) or 2 (C(d) and C(r))."""
    rid = h("any repo")
    for n in range(layout.MAX_PARENTS, 0, -1):
        inputs = tuple(h(f"size{k}") for k in range(n))
        body = layout.Merge(h("m"), layout.branch_hash("main"), inputs, (1,) * n, g1(1) if points else None,
                            g1(1) if points == 2 else None)  # fmt: skip
        commit = body.commit_hash(bytes(owner.pubkey()))
        ixs = [ed25519_proof(owner.pubkey(), bytes(64), commit), c.program.merge(owner.pubkey(), rid, body)]
        if wire_size(c, ixs, owner) <= LEGACY_TX_LIMIT:
            return n
    return 0


def bench_client(elf: bytes, n_updates: int = 20) -> None:
    """Anchor a real fednode repository through the node-facing client (fednode.chain.anchoring):
    embedded LiteSVM persisted in the store, and JSON-RPC to an in-process devchain."""
    import threading
    import time

    import numpy as np
    import trio

    from fednode.chain.anchoring import Anchorer
    from fednode.chain.config import DEV_PROGRAM_ID
    from fednode.chain.devchain import DevChain, make_server
    from fednode.chain.embedded import EmbeddedBackend
    from fednode.chain.rpc import RpcBackend
    from fednode.history import History
    from fednode.identity import Identity
    from fednode.storage.store import Store
    from fednode.tensors.modelio import ArraySource
    from fednode.workflows import merging

    def make_repo(history: History) -> list:
        rng = np.random.default_rng(0)
        arrays = {"w": ("F32", (np.round(rng.standard_normal((64, 64)) * 4096) / 4096).astype(np.float32))}
        info, genesis = history.create_repo("bench", ArraySource(arrays))
        for k in range(n_updates):
            arrays = {"w": ("F32", arrays["w"][1] + np.float32(2.0**-10) * (k + 1))}
            history.commit(info, ArraySource(arrays), f"update {k}")
        history.create_branch(info, "side", genesis.cid)
        history.commit(info, ArraySource({"w": ("F32", arrays["w"][1] * 0)}), "side", branch="side")
        merged = merging.merge(history, info, ["side"], "main", weighting="equal").result
        return [info, merged.cid]

    print(f"\nnode-facing client: a repository of 1 genesis + {n_updates} updates + 1 side commit + 1 merge")
    print(f"{'backend':10} {'txs':>4} {'ms/anchor':>10} {'avg CU':>8} {'fee/commit':>11} {'merge CU':>9}")
    for kind in ("embedded", "rpc"):
        with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "store") as store:
            identity = Identity(Keypair.from_seed(bytes([9]) * 32))
            history = History(store, identity)
            info, head = make_repo(history)
            server = None
            if kind == "embedded":
                backend = EmbeddedBackend(store, DEV_PROGRAM_ID, elf)
            else:
                server = make_server(DevChain(DEV_PROGRAM_ID, elf), "127.0.0.1", 0)
                threading.Thread(target=server.serve_forever, daemon=True).start()
                backend = RpcBackend(f"http://127.0.0.1:{server.server_address[1]}", DEV_PROGRAM_ID, faucet=True)

            async def go(history: History, identity: Identity, backend, info, head) -> tuple[list, float]:
                a = Anchorer(history, identity, backend)
                await a.enqueue(info, head, "main")
                await a.ensure_funds()
                t0 = time.perf_counter()
                result = await a.flush()
                elapsed = time.perf_counter() - t0
                assert result.remaining == 0 and not (await a.verify(info, head))[1]
                await backend.aclose()
                return result.sent, elapsed

            sent, elapsed = trio.run(go, history, identity, backend, info, head)
            if server is not None:
                server.shutdown()
                server.server_close()
            anchors = [s for s in sent if s["op"] == "anchor"]
            cu = [int(s["compute_units"]) for s in anchors[:-1]]
            avg_cu = f"{sum(cu) // len(cu):,}" if any(cu) else "n/a"
            merge_cu = f"{int(anchors[-1]['compute_units']):,}" if anchors[-1]["compute_units"] else "n/a"
            print(f"{kind:10} {len(sent):>4} {1000 * elapsed / len(sent):>10.2f} {avg_cu:>8} "
                  f"{int(anchors[0]['fee']):>11,} {merge_cu:>9}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        elves = {v: p.read_bytes() for v, p in build(Path(tmp)).items()}
    ok = True
    for version in (3, 0):
        rows = run(elves[version])
        rent = rows.pop("_rent_commit")[0]
        most_committed, most_plain, most_remainder = rows.pop("_largest_merge")[:3]
        print(f"\nfederity_v{version}.so ({len(elves[version])} bytes)")
        print(f"{'instruction':40} {'program CU':>10} {'tx CU':>8} {'tx bytes':>8} {'fee':>6}")
        for name, (cu, tx_cu, size, fee) in rows.items():
            target = TARGETS.get(name)
            flag = "" if target is None else (f"  <= {target:,} ok" if cu <= target else f"  > {target:,} MISSED")
            size_flag = "" if size <= LEGACY_TX_LIMIT else " (over the 1232-byte tx limit)"
            print(f"{name:40} {cu:>10,} {tx_cu:>8,} {size:>8}{size_flag} {fee:>6,}{flag}")
            ok &= target is None or cu <= target
        fee = rows["anchor_commit (1 parent)"][3]
        print(f"cost per anchored commit: fee {fee:,} lamports (tx signature + Ed25519 proof signature) "
              f"+ rent deposit {rent:,} lamports for the {layout.COMMIT_SIZE}-byte record "
              f"= {(fee + rent) / 1e9:.6f} SOL")
        print(f"largest merge in one {LEGACY_TX_LIMIT}-byte transaction: {most_committed} inputs with a commitment, "
              f"{most_remainder} with C(d) and C(r), {most_plain} without")
    bench_client(elves[3])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
