"""Update proofs on chain (issue 15 item 4), in LiteSVM: the owner's verifying key (write_vk, seal_vk),
prove_commit with real proofs (fednode.workflows.zkprove, n = 8), and what a repository that requires
proofs refuses: updates without a commitment, merges of unproven updates."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest
from test_program import GENESIS, World, elves, g1, h, make_commit, make_world, rejects  # noqa: F401

from fednode.chain.backend import ChainError
from fednode.workflows import zkprove as zp
from fednode.zk import pedersen as ped
from protocol import chain as layout
from protocol.chain import ErrorCode as E
from protocol.chain import Kind

N, BOUND2 = 8, 10_000
CU_TARGET = 200_000


@pytest.fixture(scope="module")
def keys(zk_policy_keys: Path) -> zp.Keys:
    """The session's n = 8 keys (tests/conftest.py: a local powers of tau 2^8)."""
    k = zp.load_keys(zk_policy_keys)
    assert k.vk.n == N
    return k


class Update:
    """A vector, its commitment and a real proof bound to ``proof_hash``."""

    def __init__(self, keys: zp.Keys, values: list[int], proof_hash: bytes) -> None:
        self.values, self.blinding, self.proof_hash = values, secrets.randbelow(1 << 200), proof_hash
        self.commitment = ped.commit(values, self.blinding)
        self.proof = zp.prove(keys, values, self.blinding, proof_hash, BOUND2)


@pytest.fixture(scope="module")
def updates(keys: zp.Keys) -> tuple[Update, Update]:
    return Update(keys, [30, -40, 0, 5, -1, 12, 7, -9], h("ph1")), Update(keys, [1, 2, 3, 4, 5, 6, 7, 8], h("ph2"))


def set_key(w: World, keys: zp.Keys, repo_id: bytes | None = None, bound2: int = BOUND2) -> None:
    o = w.owner
    for ixs in w.program.set_vk(o.pubkey(), repo_id or w.repo_id, keys.vk.encode(), bound2):
        w.backend.send(ixs, [o])


def prove(w: World, label: str, u: Update, signer: object | None = None, proof_hash: bytes | None = None,
          proof: bytes | None = None, repo_id: bytes | None = None) -> int:  # fmt: skip
    """prove_commit of test commit ``label``; the compute units it took."""
    author = signer or w.alice
    ix = w.program.prove_commit(author.pubkey(), repo_id or w.repo_id, w[label],  # type: ignore[attr-defined]
                                proof_hash or u.proof_hash, proof or u.proof)
    return w.backend.send([ix], [author]).compute_units  # type: ignore[list-item]


def record(w: World, label: str, repo_id: bytes | None = None) -> layout.CommitAccount:
    rec = w.client.commit(repo_id or w.repo_id, w[label])
    assert rec is not None
    return rec


@pytest.fixture
def world(elves: dict[int, bytes]) -> World:  # noqa: F811
    return make_world(elves[3])


def test_the_owner_writes_and_seals_the_key(world: World, keys: zp.Keys) -> None:
    w, o, a = world, world.owner, world.alice
    vk = keys.vk.encode()
    key_id = hashlib.sha256(vk).digest()
    assert len(vk) == 1147 and w.client.repo(w.repo_id).requires_proofs is False  # type: ignore[union-attr]
    rejects(E.NOT_OWNER, lambda: w.backend.send([w.program.write_vk(a.pubkey(), w.repo_id, 0, vk[:100])], [a]))
    *writes, last = w.program.set_vk(o.pubkey(), w.repo_id, vk, BOUND2)
    assert len(writes) == 1 and len(last) == 2  # 768 bytes, then 379 bytes with the seal
    for ixs in writes:
        w.backend.send(ixs, [o])
    w.backend.send(last[:1], [o])
    seal = w.program.seal_vk  # every refusal leaves the key open
    rejects(E.NOT_OWNER, lambda: w.backend.send([seal(a.pubkey(), w.repo_id, key_id, BOUND2, len(vk))], [a]))
    rejects(E.VK_MISMATCH, lambda: w.backend.send([seal(o.pubkey(), w.repo_id, h("other"), BOUND2, len(vk))], [o]))
    rejects(E.INVALID_VK, lambda: w.backend.send([seal(o.pubkey(), w.repo_id, key_id, 1 << keys.vk.sb, len(vk))], [o]))
    short = hashlib.sha256(vk[:-1]).digest()  # the right bytes, one short: not a key's length
    rejects(E.INVALID_VK, lambda: w.backend.send([seal(o.pubkey(), w.repo_id, short, BOUND2, len(vk) - 1)], [o]))
    w.backend.send([seal(o.pubkey(), w.repo_id, key_id, BOUND2, len(vk))], [o])
    assert w.client.repo(w.repo_id).requires_proofs is True  # type: ignore[union-attr]
    data = w.backend.account_data(w.program.zkvk_address(w.repo_id))
    assert data is not None and len(data) == layout.ZKVK_SIZE
    stored = layout.decode_zkvk(data)
    assert (stored.sealed, stored.vk, stored.key_id, stored.bound2) == (True, vk, key_id, BOUND2)
    rejects(E.VK_SEALED, lambda: w.backend.send([w.program.write_vk(o.pubkey(), w.repo_id, 0, b"x")], [o]))
    rejects(E.VK_SEALED, lambda: w.backend.send([seal(o.pubkey(), w.repo_id, key_id, 1, len(vk))], [o]))


def test_prove_commit_accepts_an_honest_proof(world: World, keys: zp.Keys, updates: tuple[Update, Update]) -> None:
    u1, _ = updates
    set_key(world, keys)
    world.anchor(world.alice, "u1", parents=(GENESIS,), branch=None, commitment=u1.commitment)
    assert record(world, "u1").proven is False
    cu = prove(world, "u1", u1)
    assert record(world, "u1").proven is True
    assert cu <= CU_TARGET, cu
    print(f"prove_commit: {cu} CU")
    # idempotent: a replay (a crash after sending, a second flush) succeeds and changes nothing
    assert prove(world, "u1", u1, proof=bytes(layout.PROOF_BYTES)) < 10_000
    assert record(world, "u1").proven is True


def test_the_deployable_v0_build_proves_too(elves: dict[int, bytes], keys: zp.Keys,  # noqa: F811
                                            updates: tuple[Update, Update]) -> None:  # fmt: skip
    w, (u1, u2) = make_world(elves[0]), updates
    set_key(w, keys)
    w.anchor(w.alice, "u1", parents=(GENESIS,), branch=None, commitment=u1.commitment)
    rejects(E.PROOF_LINK_FAILS, lambda: prove(w, "u1", u2))
    assert prove(w, "u1", u1) <= CU_TARGET and record(w, "u1").proven


def test_prove_commit_refusals(world: World, keys: zp.Keys, updates: tuple[Update, Update]) -> None:
    w, (u1, u2) = world, updates
    w.anchor(w.alice, "early", parents=(GENESIS,), branch=None)  # before the key: no commitment needed
    rejects(E.NO_VERIFYING_KEY, lambda: prove(w, "early", u1))
    set_key(w, keys)
    w.anchor(w.alice, "u2", parents=(GENESIS,), branch=None, commitment=u2.commitment)
    rejects(E.PROOF_LINK_FAILS, lambda: prove(w, "u2", u1))  # u1's proof: for another vector
    rejects(E.PROOF_GROTH16_FAILS, lambda: prove(w, "u2", u2, proof_hash=h("another commit")))
    rejects(E.NOT_AUTHOR, lambda: prove(w, "u2", u2, signer=w.owner))
    rejects(E.MISSING_COMMITMENT, lambda: prove(w, "early", u1))
    w.hashes["genesis"] = GENESIS
    rejects(E.INVALID_KIND, lambda: prove(w, "genesis", u1, signer=w.owner))
    w.hash_of(w.alice, "nowhere", parents=(GENESIS,))
    rejects(E.COMMIT_NOT_ANCHORED, lambda: prove(w, "nowhere", u1))
    off_curve = u2.proof[:63] + bytes([u2.proof[63] ^ 1]) + u2.proof[64:]  # A not on the curve
    rejects(E.INVALID_PROOF_POINT, lambda: prove(w, "u2", u2, proof=off_curve))
    assert record(w, "u2").proven is False
    prove(w, "u2", u2)
    assert record(w, "u2").proven is True


def test_a_proof_is_checked_against_the_repositorys_bound(world: World, keys: zp.Keys,
                                                          updates: tuple[Update, Update]) -> None:  # fmt: skip
    """Another repository sealed with another B^2: the same proof fails Groth16 there. Its genesis is
    anchored after the seal (init needs no commitment), and an update without one is refused."""
    w, (u1, _) = world, updates
    genesis = make_commit(w.owner, "init", message="strict")
    rid = genesis.commit_hash()
    w.create_repo(w.owner, genesis)
    set_key(w, keys, rid, BOUND2 - 1)
    w.anchor_real(w.owner, genesis, repo_id=rid)
    rejects(E.MISSING_COMMITMENT, lambda: w.anchor(w.owner, "bare", parents=(rid,), repo_id=rid))
    w.anchor(w.owner, "u", parents=(rid,), commitment=u1.commitment, repo_id=rid)
    rejects(E.PROOF_GROTH16_FAILS, lambda: prove(w, "u", u1, signer=w.owner, repo_id=rid))
    assert record(w, "u", rid).proven is False


def test_merges_take_only_proven_updates(world: World, keys: zp.Keys, updates: tuple[Update, Update]) -> None:
    w, (u1, u2) = world, updates
    set_key(w, keys)
    w.anchor(w.alice, "u1", parents=(GENESIS,), branch=None, commitment=u1.commitment)
    w.anchor(w.alice, "u2", parents=(GENESIS,), branch=None, commitment=u2.commitment)
    prove(w, "u1", u1)
    both = ped.add(u1.commitment, u2.commitment)
    rejects(E.INPUT_NOT_PROVEN, lambda: w.merge("m", ("u1", "u2"), (1, 1), commitment=both))
    rejects(E.INPUT_NOT_PROVEN, lambda: w.merge("m0", ("u1", "u2"), (1, 1)))  # also without commitments
    w.merge("m1", (GENESIS, "u1"), (0, 1), commitment=u1.commitment)  # weight 0 (the base): no proof needed
    prove(w, "u2", u2)
    w.merge("m2", ("u1", "u2"), (1, 1), commitment=both)
    assert w.client.head(w.repo_id, "main") == w["m2"]
    # a merge is not provable; as an input it stands for its own (checked) inputs
    w.merge("m3", ("m1", "m2"), (1, 2), commitment=ped.combine([u1.commitment, both], [1, 2]))


def test_eight_proven_inputs_merge(world: World, keys: zp.Keys, updates: tuple[Update, Update]) -> None:
    """The CU of a merge of 8 proven, committed inputs. The same proof proves 8 records with the same
    commitment: on chain a proof is bound to the record's commitment and to the proof hash its author
    gives, not to the commit (the Python verifiers check that binding; docs/zk.md)."""
    w, (u1, _) = world, updates
    set_key(w, keys)
    labels = [f"p{i}" for i in range(8)]
    for label in labels:
        w.anchor(w.alice, label, parents=(GENESIS,), branch=None, commitment=u1.commitment)
        prove(w, label, u1)
    merged = w.merge("m8", tuple(labels), (1,) * 8, commitment=ped.scale(u1.commitment, 8))
    cu = merged.tx.compute_units
    assert cu <= 300_000, cu
    print(f"merge of 8 proven inputs: {cu} CU")


def test_a_repository_without_a_key_behaves_as_before(world: World, updates: tuple[Update, Update]) -> None:
    w, (u1, _) = world, updates
    w.anchor(w.alice, "bare", parents=(GENESIS,), branch=None)
    w.anchor(w.alice, "c", parents=(GENESIS,), branch=None, commitment=g1(3))
    w.merge("m", ("bare", "c"), (1, 1))
    assert w.client.repo(w.repo_id).requires_proofs is False  # type: ignore[union-attr]
    with pytest.raises(ChainError) as info:
        prove(w, "c", u1)
    assert info.value.code == E.NO_VERIFYING_KEY
    assert record(w, "c").kind == Kind.UPDATE and record(w, "c").proven is False


def test_codec_round_trips_the_new_instructions(updates: tuple[Update, Update]) -> None:
    u1, _ = updates
    for ix in (layout.WriteVk(700, b"\x01" * 300), layout.SealVk(h("k"), BOUND2, 1147),
               layout.ProveCommit(h("c"), u1.proof_hash, u1.proof)):
        assert layout.decode_instruction(layout.encode_instruction(ix)) == ix
    for bad in (layout.WriteVk(layout.VK_CAPACITY, b"x"), layout.ProveCommit(h("c"), h("p"), b"short"),
                layout.SealVk(h("k"), 1 << 256, 1147)):
        with pytest.raises(layout.LayoutError):
            layout.encode_instruction(bad)


def test_the_nft_holder_sets_the_key_of_a_bound_repository(elves: dict[int, bytes], keys: zp.Keys) -> None:  # noqa: F811
    """Holder-gated like every owner action: after a transfer the former owner gets NOT_HOLDER and the
    holder's two transactions (with the four NFT accounts) fit 1,232 bytes each."""
    from solders.message import Message
    from solders.transaction import Transaction
    from test_nft_program import BOB, OWNER, make_chain

    from fednode.chain.program import NftRef, token_account_address

    chain = make_chain(elves[3])
    mint, _ = chain.mint()
    chain.client.bind_nft(OWNER, chain.repo_id, mint)
    chain.transfer(OWNER, BOB.pubkey(), mint)
    vk = keys.vk.encode()
    stale = NftRef(mint, token_account_address(OWNER.pubkey(), mint))
    first = chain.program.set_vk(OWNER.pubkey(), chain.repo_id, vk, BOUND2, nft=stale)[0]
    rejects(E.NOT_HOLDER, lambda: chain.backend.send(first, [OWNER]))
    holder = NftRef(mint, token_account_address(BOB.pubkey(), mint))
    for ixs in chain.program.set_vk(BOB.pubkey(), chain.repo_id, vk, BOUND2, nft=holder):
        assert len(bytes(Transaction([BOB], Message(ixs, BOB.pubkey()), chain.backend.svm.latest_blockhash()))) <= 1232
        chain.backend.send(ixs, [BOB])
    assert chain.client.repo(chain.repo_id).requires_proofs  # type: ignore[union-attr]


def test_readme_lists_the_zkvk_record() -> None:
    readme = (Path(__file__).resolve().parents[2] / "programs" / "README.md").read_text()
    assert f"| zkvk | `\"zkvk\", repo_id` | {layout.ZKVK_SIZE} |" in readme
