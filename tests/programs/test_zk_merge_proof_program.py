"""Merge remainder proofs on chain (issue 15 item 2), in LiteSVM with real proofs: the owner's remainder
key (write_rvk, seal_rvk: the update key's path, its own record) and prove_merge, which re-checks
sum_k w_k C_k == W C(d) + C(r) against the anchored records and verifies the proof that |2 r_i| <= W
(X = W), then marks the merge PROVEN. The "d + 1 with r - W" forgery passes the merge's linear check,
but no proof exists for its remainder."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction
from test_program import GENESIS, World, elves, h, make_world, rejects  # noqa: F401

from fednode.chain.program import NftRef
from fednode.errors import FednodeError
from fednode.workflows import zkprove as zp
from fednode.zk import merge_check as mc
from fednode.zk import pedersen as ped
from protocol import chain as layout
from protocol.chain import ErrorCode as E
from protocol.chain import Kind

N = 8
CU_TARGET = 300_000
PACKET = 1232


@pytest.fixture(scope="module")
def rkeys(zk_policy_keys: Path) -> zp.Keys:
    """The session's n = 8 remainder keys (tests/conftest.py: made beside the update keys; K = 13, so
    W < 2^12)."""
    k = zp.remainder_keys(zk_policy_keys)
    assert k is not None and k.vk.n == N
    return k


def prove_remainder(keys: zp.Keys, r: list[int], blinding: int, proof_hash: bytes, total: int) -> bytes:
    return zp.prove_remainder(keys, r, blinding, proof_hash, total)


@dataclass
class FedAvg:
    """k committed (blinded) inputs, their weights, the FedAvg d = round(S / W), r = S - W d, C(d), C(r)
    and the remainder proof for C(r) with X = W bound to ``proof_hash``."""

    qs: list[np.ndarray]
    blindings: list[int]
    weights: tuple[int, ...]
    d: np.ndarray
    r: np.ndarray
    b_d: int
    b_r: int
    proof_hash: bytes
    proof: bytes = b""

    @property
    def total(self) -> int:
        return sum(self.weights)

    @property
    def inputs(self) -> list[bytes]:
        return [ped.commit([int(v) for v in q], b) for q, b in zip(self.qs, self.blindings, strict=True)]

    @property
    def c_d(self) -> bytes:
        return ped.commit([int(v) for v in self.d], self.b_d)

    @property
    def c_r(self) -> bytes:
        return ped.commit([int(v) for v in self.r], self.b_r)


def fedavg(keys: zp.Keys, seed: int, weights: tuple[int, ...], proof_hash: bytes) -> FedAvg:
    rng = np.random.default_rng(seed)
    qs = [rng.integers(-3000, 3000, N) for _ in weights]
    blindings = [secrets.randbelow(1 << 200) for _ in weights]
    d, r = mc.fedavg_delta(qs, weights)
    b_d, b_r = mc.split_blinding(blindings, weights)
    m = FedAvg(qs, blindings, weights, d, r, b_d, b_r, proof_hash)
    m.proof = prove_remainder(keys, [int(v) for v in r], b_r, proof_hash, m.total)
    return m


@pytest.fixture(scope="module")
def two(rkeys: zp.Keys) -> FedAvg:
    return fedavg(rkeys, 1, (300, 700), h("merge proof hash"))


def set_rkey(w: World, keys: zp.Keys, signer: Keypair | None = None) -> None:
    o = signer or w.owner
    for ixs in w.program.set_vk(o.pubkey(), w.repo_id, keys.vk.encode(), 0, remainder=True):
        w.backend.send(ixs, [o])


def anchor_inputs(w: World, m: FedAvg, prefix: str = "u") -> tuple[str, ...]:
    labels = tuple(f"{prefix}{i}" for i in range(len(m.qs)))
    for label, c in zip(labels, m.inputs, strict=True):
        w.anchor(w.alice, label, parents=(GENESIS,), branch=None, commitment=c)
    return labels


def merge(w: World, label: str, inputs: tuple[str, ...], m: FedAvg, c_d: bytes | None = None,
          c_r: bytes | None = None) -> None:  # fmt: skip
    o = w.owner
    commit = w.hash_of(o, label, Kind.MERGE, inputs)
    w.client.merge(o, w.repo_id, h(label), bytes(o.sign_message(commit)), branch="main",
                   inputs=[w[i] for i in inputs], weights=m.weights, commitment=c_d or m.c_d,
                   remainder=c_r or m.c_r)  # fmt: skip


def prove_ix(w: World, label: str, m: FedAvg, *, weights: tuple[int, ...] | None = None, c_r: bytes | None = None,
             proof: bytes | None = None, proof_hash: bytes | None = None) -> layout.ProveMerge:  # fmt: skip
    return layout.ProveMerge(w[label], proof_hash or m.proof_hash, weights or m.weights, c_r or m.c_r,
                             proof or m.proof)  # fmt: skip


def prove(w: World, label: str, inputs: tuple[str, ...], m: FedAvg, *, signer: Keypair | None = None,
          accounts: tuple[str, ...] | None = None, **changes: object) -> int:  # fmt: skip
    """prove_merge of merge ``label`` (with the fields in ``changes`` replaced); the CU it took."""
    body = prove_ix(w, label, m, **changes)  # type: ignore[arg-type]
    s = signer or w.owner
    ixs = w.program.prove_merge_ixs(s.pubkey(), w.repo_id, body, [w[i] for i in (accounts or inputs)])
    return w.backend.send(ixs, [s]).compute_units


def proven(w: World, label: str) -> bool:
    rec = w.client.commit(w.repo_id, w[label])
    assert rec is not None and rec.kind == Kind.MERGE
    return rec.proven


@pytest.fixture
def world(elves: dict[int, bytes]) -> World:  # noqa: F811
    return make_world(elves[3])


@pytest.mark.parametrize("version", [0, 3])
def test_an_honest_fedavg_merge_is_proven(elves: dict[int, bytes], rkeys: zp.Keys, two: FedAvg,  # noqa: F811
                                          version: int) -> None:  # fmt: skip
    w = make_world(elves[version])
    set_rkey(w, rkeys)
    labels = anchor_inputs(w, two)
    merge(w, "m", labels, two)
    assert proven(w, "m") is False
    cu = prove(w, "m", labels, two)
    assert proven(w, "m") is True
    assert cu <= CU_TARGET, cu
    print(f"prove_merge, 2 inputs (v{version}): {cu} CU")
    # idempotent: a replay after a crash succeeds without looking at the proof
    assert prove(w, "m", labels, two, proof=bytes(layout.PROOF_BYTES)) < 20_000
    assert proven(w, "m") is True


def test_the_forged_rounding_passes_the_merge_but_cannot_be_proven(world: World, rkeys: zp.Keys,
                                                                   two: FedAvg) -> None:  # fmt: skip
    """d + u with r - W u (u a unit vector) satisfies the linear relation, so merge anchors it; but
    |2 (r_0 - W)| > W: the prover refuses, and the honest proof (for C(r)) fails against C(r - W u)."""
    w, m = world, two
    set_rkey(w, rkeys)
    labels = anchor_inputs(w, m)
    u = np.zeros(N, dtype=np.int64)
    u[0] = 1
    d2, r2 = m.d + u, m.r - m.total * u
    c_d2, c_r2 = ped.commit([int(v) for v in d2], m.b_d), ped.commit([int(v) for v in r2], m.b_r)
    assert mc.check_linear_merge(m.inputs, m.weights, c_d2, c_r2)
    merge(w, "forged", labels, m, c_d2, c_r2)  # the merge's algebraic check passes
    with pytest.raises(FednodeError):
        prove_remainder(rkeys, [int(v) for v in r2], m.b_r, m.proof_hash, m.total)
    rejects(E.PROOF_LINK_FAILS, lambda: prove(w, "forged", labels, m, c_r=c_r2))
    # the honest C(r) with the forged C(d) fails the relation before any proof is read
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: prove(w, "forged", labels, m))
    assert proven(w, "forged") is False


def test_prove_merge_refusals(world: World, rkeys: zp.Keys, two: FedAvg, zk_policy_keys: Path) -> None:
    w, m = world, two
    labels = anchor_inputs(w, m)
    merge(w, "m", labels, m)
    rejects(E.NO_REMAINDER_KEY, lambda: prove(w, "m", labels, m))
    set_rkey(w, rkeys)
    rejects(E.NOT_OWNER, lambda: prove(w, "m", labels, m, signer=w.alice))
    rejects(E.NOT_A_MERGE, lambda: prove(w, "u0", labels, m))
    w.hash_of(w.owner, "nowhere", Kind.MERGE, labels)
    rejects(E.COMMIT_NOT_ANCHORED, lambda: prove(w, "nowhere", labels, m))
    # the weights are part of the relation: others fail it (W' C(d) + C(r) is not sum_k w'_k C_k)
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: prove(w, "m", labels, m, weights=(301, 700)))
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: prove(w, "m", labels, m, weights=(700, 300)))
    # the input records must be the merge's parents, in order
    rejects(E.INPUT_NOT_ANCHORED, lambda: prove(w, "m", labels, m, accounts=(labels[1], labels[0])))
    rejects(E.INPUT_NOT_ANCHORED, lambda: prove(w, "m", labels, m, accounts=(labels[0], "m")))
    # a proof for another W (same r, same hash): Groth16 fails; another C(r) (another merge's r): the link
    other_w = prove_remainder(rkeys, [int(v) for v in m.r], m.b_r, m.proof_hash, m.total + 1)
    rejects(E.PROOF_GROTH16_FAILS, lambda: prove(w, "m", labels, m, proof=other_w))
    other = fedavg(rkeys, 2, (300, 700), m.proof_hash)
    rejects(E.PROOF_LINK_FAILS, lambda: prove(w, "m", labels, m, proof=other.proof))
    rejects(E.PROOF_GROTH16_FAILS, lambda: prove(w, "m", labels, m, proof_hash=h("another merge")))
    # the update key is not the remainder key: its record in the remainder key's place is refused
    update_keys = zp.load_keys(zk_policy_keys)
    for ixs in w.program.set_vk(w.owner.pubkey(), w.repo_id, update_keys.vk.encode(), 100):
        w.backend.send(ixs, [w.owner])
    body = prove_ix(w, "m", m)
    ix = w.program.prove_merge(w.owner.pubkey(), w.repo_id, body, [w[i] for i in labels])
    metas = list(ix.accounts)
    metas[2] = type(metas[2])(w.program.zkvk_address(w.repo_id), False, False)
    swapped = type(ix)(ix.program_id, ix.data, metas)
    rejects(E.INVALID_VK_ACCOUNT, lambda: w.backend.send([swapped], [w.owner]))
    assert proven(w, "m") is False
    prove(w, "m", labels, m)
    assert proven(w, "m") is True


def test_a_total_weight_past_the_keys_range_is_refused(world: World, rkeys: zp.Keys) -> None:
    """W >= 2^sb (the circuit's range: W < 2^(K-1)) is refused before any proof is read."""
    w = world
    set_rkey(w, rkeys)
    q = [1, -2, 3, 0, 0, 0, 0, 5]
    w.anchor(w.alice, "u", parents=(GENESIS,), branch=None, commitment=ped.commit(q))
    big = 1 << rkeys.vk.sb
    m = FedAvg([np.array(q)], [0], (big,), np.array(q), np.zeros(N, dtype=np.int64), 0, 0, h("big"),
               bytes(layout.PROOF_BYTES))  # fmt: skip
    merge(w, "m", ("u",), m)
    rejects(E.MERGE_WEIGHT_TOO_LARGE, lambda: prove(w, "m", ("u",), m))


def test_the_remainder_key_is_written_and_sealed(world: World, rkeys: zp.Keys) -> None:
    w, o, a = world, world.owner, world.alice
    vk = rkeys.vk.encode()
    key_id = hashlib.sha256(vk).digest()
    rejects(E.NOT_OWNER, lambda: w.backend.send(
        [w.program.write_vk(a.pubkey(), w.repo_id, 0, vk[:100], remainder=True)], [a]))
    *writes, last = w.program.set_vk(o.pubkey(), w.repo_id, vk, 0, remainder=True)
    for ixs in writes:
        w.backend.send(ixs, [o])
    w.backend.send(last[:1], [o])
    seal = w.program.seal_vk(o.pubkey(), w.repo_id, key_id, 0, len(vk), remainder=True)
    bounded = bytearray(seal.data)
    bounded[64] = 1  # a bound: the remainder key takes none (the codec refuses to write it)
    rejects(E.INVALID_VK, lambda: w.backend.send([type(seal)(seal.program_id, bytes(bounded), seal.accounts)], [o]))
    with pytest.raises(layout.LayoutError):
        layout.encode_instruction(layout.SealVk(key_id, 1, len(vk), remainder=True))
    rejects(E.VK_MISMATCH, lambda: w.backend.send(
        [w.program.seal_vk(o.pubkey(), w.repo_id, h("x"), 0, len(vk), remainder=True)], [o]))
    w.backend.send([seal], [o])
    repo = w.client.repo(w.repo_id)
    assert repo is not None and (repo.has_remainder_key, repo.requires_proofs) == (True, False)
    data = w.backend.account_data(w.program.zkvk_address(w.repo_id, remainder=True))
    assert data is not None and w.backend.account_data(w.program.zkvk_address(w.repo_id)) is None
    stored = layout.decode_zkvk(data, remainder=True)
    assert (stored.sealed, stored.vk, stored.key_id, stored.bound2) == (True, vk, key_id, 0)
    with pytest.raises(layout.LayoutError):
        layout.decode_zkvk(data)  # the other tag: never read as the update key
    rejects(E.VK_SEALED, lambda: w.backend.send([w.program.write_vk(o.pubkey(), w.repo_id, 0, b"x",
                                                                    remainder=True)], [o]))  # fmt: skip


def test_eight_inputs_and_what_fits_a_transaction(world: World, rkeys: zp.Keys) -> None:
    """prove_merge of 8 inputs (CU), and the largest n whose prove_merge fits 1,232 bytes, without and
    with the four NFT accounts: at least what a merge with C(d) and C(r) fits (7, and 5 NFT-bound)."""
    w = world
    set_rkey(w, rkeys)
    m = fedavg(rkeys, 3, (1, 2, 3, 4, 5, 6, 7, 8), h("eight"))
    labels = anchor_inputs(w, m)
    merge(w, "m8", labels, m)
    cu = prove(w, "m8", labels, m)
    assert proven(w, "m8") and cu <= CU_TARGET, cu
    print(f"prove_merge, 8 inputs: {cu} CU")
    fits = {}
    for bound in (False, True):
        nft = NftRef(Keypair().pubkey(), Keypair().pubkey()) if bound else None
        sizes = {n: prove_merge_tx_bytes(w, n, nft) for n in range(1, layout.MAX_PARENTS + 1)}
        fits[bound] = max(n for n, size in sizes.items() if size <= PACKET)
    print(f"prove_merge fits one transaction with up to {fits[False]} inputs ({fits[True]} NFT-bound)")
    assert fits[False] >= 7 and fits[True] >= 5


def test_the_nft_holder_proves_a_merge_of_a_bound_repository(elves: dict[int, bytes], rkeys: zp.Keys,  # noqa: F811
                                                             two: FedAvg) -> None:  # fmt: skip
    """Holder-gated like every owner action: after a transfer the former owner gets NOT_HOLDER, and the
    holder's prove_merge (with the four NFT accounts) fits 1,232 bytes and proves the merge."""
    from test_nft_program import BOB, OWNER, make_chain

    chain = make_chain(elves[3])
    c, rid = chain.client, chain.repo_id
    mint, _ = chain.mint()
    c.bind_nft(OWNER, rid, mint)
    for ixs in chain.program.set_vk(OWNER.pubkey(), rid, rkeys.vk.encode(), 0, nft=c.nft_ref(rid, OWNER.pubkey()),
                                    remainder=True):  # fmt: skip
        chain.backend.send(ixs, [OWNER])
    me, genesis = bytes(OWNER.pubkey()), rid
    inputs = []
    for i, commitment in enumerate(two.inputs):
        h_i = layout.commit_hash(me, Kind.UPDATE, (genesis,), h(f"in{i}"))
        c.anchor_commit(OWNER, rid, h(f"in{i}"), bytes(OWNER.sign_message(h_i)), kind=Kind.UPDATE, branch=None,
                        parents=(genesis,), commitment=commitment)  # fmt: skip
        inputs.append(h_i)
    merged = layout.commit_hash(me, Kind.MERGE, inputs, h("merged"))
    c.merge(OWNER, rid, h("merged"), bytes(OWNER.sign_message(merged)), branch="main", inputs=inputs,
            weights=two.weights, commitment=two.c_d, remainder=two.c_r)
    chain.transfer(OWNER, BOB.pubkey(), mint)
    body = layout.ProveMerge(merged, two.proof_hash, two.weights, two.c_r, two.proof)
    stale = chain.program.prove_merge_ixs(OWNER.pubkey(), rid, body, inputs, nft=c.nft_ref(rid, OWNER.pubkey()))
    rejects(E.NOT_HOLDER, lambda: chain.backend.send(stale, [OWNER]))
    ixs = chain.program.prove_merge_ixs(BOB.pubkey(), rid, body, inputs, nft=c.nft_ref(rid, BOB.pubkey()))
    assert len(bytes(Transaction([BOB], Message(ixs, BOB.pubkey()), chain.backend.svm.latest_blockhash()))) <= PACKET
    chain.backend.send(ixs, [BOB])
    record = c.commit(rid, merged)
    assert record is not None and record.proven


def prove_merge_tx_bytes(w: World, n: int, nft: NftRef | None) -> int:
    body = layout.ProveMerge(h("m"), h("p"), (1,) * n, bytes(64), bytes(layout.PROOF_BYTES))
    ixs = w.program.prove_merge_ixs(w.owner.pubkey(), w.repo_id, body, [h(str(i)) for i in range(n)], nft=nft)
    tx = Transaction([w.owner], Message(ixs, w.owner.pubkey()), w.backend.svm.latest_blockhash())
    return len(bytes(tx))


def test_codec_round_trips_the_remainder_instructions(two: FedAvg) -> None:
    for ix in (layout.WriteVk(10, b"\x02" * 40, remainder=True), layout.SealVk(h("k"), 0, 1147, remainder=True),
               layout.ProveMerge(h("m"), two.proof_hash, two.weights, two.c_r, two.proof)):
        assert layout.decode_instruction(layout.encode_instruction(ix)) == ix
    for bad in (layout.ProveMerge(h("m"), h("p"), (), two.c_r, two.proof),
                layout.ProveMerge(h("m"), h("p"), (1,) * 17, two.c_r, two.proof),
                layout.ProveMerge(h("m"), h("p"), (1,), two.c_r[:63], two.proof),
                layout.ProveMerge(h("m"), h("p"), (1 << 64,), two.c_r, two.proof)):
        with pytest.raises(layout.LayoutError):
            layout.encode_instruction(bad)
    data = layout.encode_instruction(layout.ProveMerge(h("m"), h("p"), (1, 2), two.c_r, two.proof))
    with pytest.raises(layout.LayoutError):
        layout.decode_instruction(data[:-1])


def test_readme_lists_the_zkrvk_record() -> None:
    readme = (Path(__file__).resolve().parents[2] / "programs" / "README.md").read_text()
    assert f"| zkrvk | `\"zkrvk\", repo_id` | {layout.ZKVK_SIZE} |" in readme
    assert "| 17 | prove_merge |" in readme
