"""The federity on-chain program, run in LiteSVM: every instruction and every rejection."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from py_ecc.optimized_bn128 import G1, curve_order, multiply, normalize
from solders.account import Account
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from fednode.chain.backend import ChainError, LiteSVMBackend
from fednode.chain.client import Anchored, FederityClient
from fednode.chain.elf import federity_elf
from fednode.chain.program import (
    ED25519_PROGRAM_ID,
    INSTRUCTIONS_SYSVAR_ID,
    SYSTEM_PROGRAM_ID,
    FederityProgram,
    ed25519_proof,
)
from programs.build import build
from protocol import chain as layout
from protocol.chain import ErrorCode as E
from protocol.chain import Kind
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, commit_hash_from

PROGRAM_ID = Keypair.from_seed(bytes([7]) * 32).pubkey()


@pytest.fixture(scope="session")
def elves(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    """Both builds of the program, compiled and linked once per test session."""
    paths = build(tmp_path_factory.mktemp("programs"))
    return {version: Path(path).read_bytes() for version, path in paths.items()}


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


@cache
def g1(scalar: int) -> bytes:
    """scalar * G on BN254 as the 64-byte big-endian x||y the alt_bn128 syscalls use."""
    x, y = normalize(multiply(G1, scalar % curve_order))
    return int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


def make_commit(author: Keypair, kind: str = "update", parents: Sequence[Commit] = (), message: str = "",
                repo: bytes | None = None) -> Commit:
    """A real, signed fednode commit (its signature is over its commit hash)."""
    info = {"settings": {"name": message or "m", "scale_bits": 16, "snapshot_interval": 8}} if kind == "init" else {}
    unsigned = Commit(repo=repo, parents=tuple(p.cid() for p in parents), kind=kind,
                      weights=CID.hash(DAG_CBOR, message.encode()), author=bytes(author.pubkey()), time_ms=1,
                      message=message, info=info, parent_hashes=tuple(p.commit_hash() for p in parents))
    return replace(unsigned, sig=bytes(author.sign_message(unsigned.commit_hash())))


OWNER, ALICE, MALLORY = (Keypair.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
GENESIS_COMMIT = make_commit(OWNER, "init", message="genesis")
GENESIS = GENESIS_COMMIT.commit_hash()  # fednode's repo id is its genesis commit hash

Ref = str | bytes  # a label of a test commit (World.hashes) or a raw commit hash


@dataclass
class World:
    """The program with one repository (GENESIS, owned by ``owner``, ``alice`` a member).

    Test commits are named by labels: label L has body digest h(L), and its commit hash, as the
    program recomputes it from (author, kind, parents, h(L)), is ``world[L]``."""

    backend: LiteSVMBackend
    client: FederityClient
    owner: Keypair
    alice: Keypair  # a member
    mallory: Keypair  # not a member
    repo_id: bytes
    hashes: dict[str, bytes] = field(default_factory=dict)

    @property
    def program(self) -> FederityProgram:
        return self.client.program

    def __getitem__(self, label: str) -> bytes:
        return self.hashes[label]

    def ref(self, ref: Ref) -> bytes:
        return ref if isinstance(ref, bytes) else self.hashes[ref]

    def hash_of(self, author: Keypair, label: str, kind: Kind = Kind.UPDATE, parents: tuple[Ref, ...] = ()) -> bytes:
        """The commit hash of test commit ``label``; remembered as ``world[label]``."""
        self.hashes[label] = layout.commit_hash(bytes(author.pubkey()), kind, [self.ref(p) for p in parents], h(label))
        return self.hashes[label]

    def anchor(self, author: Keypair, label: str, *, parents: tuple[Ref, ...] = (), branch: str | None = "main",
               kind: Kind = Kind.UPDATE, commitment: bytes | None = None, repo_id: bytes | None = None) -> Anchored:
        commit = self.hash_of(author, label, kind, parents)
        return self.client.anchor_commit(author, repo_id or self.repo_id, h(label), bytes(author.sign_message(commit)),
                                         kind=kind, branch=branch, parents=[self.ref(p) for p in parents],
                                         commitment=commitment)  # fmt: skip

    def anchor_ixs(self, author: Keypair, label: str, parents: tuple[Ref, ...] = (),
                   kind: Kind = Kind.UPDATE, branch: str | None = "main") -> list[Instruction]:
        """The two instructions of an anchor, for tests that tamper with them."""
        commit = self.hash_of(author, label, kind, parents)
        body = layout.AnchorCommit(h(label), kind, layout.branch_hash(branch) if branch else layout.ZERO32,
                                   tuple(self.ref(p) for p in parents))  # fmt: skip
        as_owner = author.pubkey() == self.owner.pubkey()
        return [ed25519_proof(author.pubkey(), bytes(author.sign_message(commit)), commit),
                self.program.anchor_commit(author.pubkey(), self.repo_id, body, as_owner=as_owner)]

    def anchor_real(self, author: Keypair, commit: Commit, *, branch: str | None = "main",
                    repo_id: bytes | None = None, commitment: bytes | None = None) -> Anchored:
        """Anchor a real fednode commit from its own fields and stored signature, as the node does."""
        rid = repo_id or self.repo_id
        if commit.kind == "merge":
            n = len(commit.parent_hashes)
            return self.client.merge(author, rid, commit.body_digest(), commit.sig, branch=branch or "main",
                                     inputs=commit.parent_hashes, weights=(1,) * n, commitment=commitment)
        return self.client.anchor_commit(author, rid, commit.body_digest(), commit.sig,
                                         kind=Kind[commit.kind.upper()], branch=branch,
                                         parents=commit.parent_hashes, commitment=commitment)  # fmt: skip

    def create_repo(self, owner: Keypair, genesis: Commit, mint: bytes = layout.ZERO32) -> object:
        """create_repo for a genesis, with the genesis commit's own signature over its hash."""
        return self.client.create_repo(owner, genesis.commit_hash(), genesis.body_digest(), genesis.sig, mint)

    def new_repo(self, owner: Keypair, name: str) -> bytes:
        """Another repository, created by ``owner`` with its genesis anchored; returns its id."""
        genesis = make_commit(owner, "init", message=name)
        self.create_repo(owner, genesis)
        self.anchor_real(owner, genesis, repo_id=genesis.commit_hash())
        return genesis.commit_hash()

    def merge(self, label: str, inputs: tuple[Ref, ...], weights: tuple[int, ...],
              commitment: bytes | None = None, signer: Keypair | None = None, branch: str = "main") -> Anchored:
        signer = signer or self.owner
        commit = self.hash_of(signer, label, Kind.MERGE, inputs)
        return self.client.merge(signer, self.repo_id, h(label), bytes(signer.sign_message(commit)), branch=branch,
                                 inputs=[self.ref(i) for i in inputs], weights=weights, commitment=commitment)


def make_world(elf: bytes) -> World:
    backend = LiteSVMBackend()
    backend.deploy(PROGRAM_ID, elf)
    for kp in (OWNER, ALICE, MALLORY):
        backend.airdrop(kp.pubkey(), 10**10)
    w = World(backend, FederityClient(backend, PROGRAM_ID), OWNER, ALICE, MALLORY, GENESIS)
    w.create_repo(OWNER, GENESIS_COMMIT)
    w.client.add_member(OWNER, GENESIS, ALICE.pubkey())
    w.anchor_real(OWNER, GENESIS_COMMIT)
    return w


@pytest.fixture
def world(elves: dict[int, bytes]) -> World:
    return make_world(elves[3])


def rejects(code: E, action: Callable[[], object]) -> ChainError:
    with pytest.raises(ChainError) as info:
        action()
    assert info.value.code == code, f"expected {code!r}, got {info.value} {info.value.logs[-3:]}"
    return info.value


def with_account(ix: Instruction, index: int, key: Pubkey, writable: bool = False) -> Instruction:
    metas = list(ix.accounts)
    metas[index] = AccountMeta(key, is_signer=False, is_writable=writable)
    return Instruction(ix.program_id, ix.data, metas)


# --- create_repo, members -------------------------------------------------------------------------


def test_create_repo_and_genesis_state(world: World) -> None:
    repo = world.client.repo(world.repo_id)
    assert repo is not None
    assert repo.owner == bytes(world.owner.pubkey())
    assert repo.mint == layout.ZERO32  # bound later by bind_nft (tests/programs/test_nft_program.py)
    assert repo.repo_id == GENESIS
    assert repo.commit_count == 1
    assert repo.accumulator == layout.accumulate(layout.ZERO32, GENESIS)
    assert repo.branches == {layout.branch_hash("main"): GENESIS}
    record = world.client.commit(world.repo_id, GENESIS)
    assert record is not None
    assert (record.kind, record.n_parents, record.index) == (Kind.INIT, 0, 0)
    assert record.commit_hash == GENESIS_COMMIT.commit_hash()
    assert record.author == bytes(world.owner.pubkey())
    assert record.parents_digest == layout.parents_digest([])
    assert record.commitment is None
    assert record.slot == world.backend.slot()


def create_repo_ixs(owner: Keypair, repo_id: bytes, body_digest: bytes, prover: Keypair | None = None,
                    message: bytes | None = None) -> list[Instruction]:
    """create_repo for ``owner`` with a proof by ``prover`` (default: the owner) over ``message``
    (default: repo_id)."""
    prover, message = prover or owner, message or repo_id
    proof = ed25519_proof(prover.pubkey(), bytes(prover.sign_message(message)), message)
    return [proof, FederityProgram(PROGRAM_ID).create_repo(owner.pubkey(), repo_id, body_digest)]


def test_create_repo_twice_rejected(world: World) -> None:
    rejects(E.REPO_ALREADY_EXISTS, lambda: world.create_repo(world.owner, GENESIS_COMMIT))
    m = world.mallory
    rejects(E.REPO_ALREADY_EXISTS,
            lambda: world.backend.send(create_repo_ixs(m, GENESIS, GENESIS_COMMIT.body_digest()), [m]))


def test_create_repo_at_wrong_address_rejected(world: World) -> None:
    o, other = world.owner, make_commit(world.owner, "init", message="other")
    ix = world.program.create_repo(o.pubkey(), other.commit_hash(), other.body_digest())
    ix = with_account(ix, 1, world.program.repo_address(h("another")), writable=True)
    proof = ed25519_proof(o.pubkey(), other.sig, other.commit_hash())
    rejects(E.INVALID_PDA, lambda: world.backend.send([proof, ix], [o]))


def test_create_repo_requires_the_owners_signature_over_the_repo_id(world: World) -> None:
    """The signer who becomes owner must prove (Ed25519 precompile, same rules as anchor_commit)
    a signature by their own key over exactly repo_id, read from the precompile's own data."""
    m, a = world.mallory, world.alice
    genesis = make_commit(m, "init", message="new genesis")  # mallory's own: the hash check passes
    rid, digest = genesis.commit_hash(), genesis.body_digest()
    ixs = create_repo_ixs(m, rid, digest)
    rejects(E.MISSING_SIGNATURE_PROOF, lambda: world.backend.send(ixs[1:], [m]))
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: world.backend.send(create_repo_ixs(m, rid, digest, prover=a), [m]))
    rejects(E.SIGNATURE_PROOF_MISMATCH,
            lambda: world.backend.send(create_repo_ixs(m, rid, digest, message=h("x")), [m]))
    fake = with_account(ixs[1], 2, Keypair().pubkey())  # not the Instructions sysvar
    rejects(E.INVALID_INSTRUCTIONS_SYSVAR, lambda: world.backend.send([ixs[0], fake], [m]))
    # Another's real signature, presented under mallory's key, dies in the precompile.
    replayed = ed25519_proof(m.pubkey(), bytes(a.sign_message(rid)), rid)
    with pytest.raises(ChainError) as info:
        world.backend.send([replayed, ixs[1]], [m])
    assert info.value.index == 0
    # A valid proof of (mallory, rid) whose message the precompile reads from another instruction
    # (which holds rid at the same offset) does not count.
    data = bytearray(ixs[0].data)
    data[14:16] = (2).to_bytes(2, "little")  # message_instruction_index -> instruction 2
    helper = ed25519_proof(a.pubkey(), bytes(a.sign_message(rid)), rid)
    rejects(E.SIGNATURE_PROOF_MISMATCH,
            lambda: world.backend.send([Instruction(ED25519_PROGRAM_ID, bytes(data), []), ixs[1], helper], [m]))
    assert world.client.repo(rid) is None
    world.backend.send(ixs, [m])  # her own genesis, her own signature: fine
    assert world.client.repo(rid).owner == bytes(m.pubkey())  # type: ignore[union-attr]


def test_genesis_author_creates_the_repository(world: World) -> None:
    """The legitimate path: a real fednode genesis commit; its author creates the repository with
    the signature stored in the commit, and owns it."""
    genesis = make_commit(world.alice, "init", message="initial weights")
    rid = genesis.commit_hash()
    with pytest.raises(ChainError) as info:  # the genesis signature is not mallory's: the precompile fails
        world.client.create_repo(world.mallory, rid, genesis.body_digest(), genesis.sig)
    assert info.value.index == 0 and world.client.repo(rid) is None
    world.create_repo(world.alice, genesis)
    repo = world.client.repo(rid)
    assert repo is not None and repo.owner == bytes(world.alice.pubkey()) and repo.commit_count == 0
    world.anchor_real(world.alice, genesis, repo_id=rid)
    record = world.client.commit(rid, rid)
    assert record is not None and record.author == bytes(world.alice.pubkey()) and record.kind == Kind.INIT


def test_create_repo_by_a_key_that_is_not_the_genesis_author_rejected(world: World) -> None:
    """Anyone can sign the 32 public bytes of a repo id with their own key, but the program
    recomputes the repo id as the commit hash of a genesis (kind init, no parents) authored by the
    signer: only the genesis author can register it."""
    m, a = world.mallory, world.alice
    genesis = make_commit(a, "init", message="alice's model")
    rid, digest = genesis.commit_hash(), genesis.body_digest()
    own = bytes(m.sign_message(rid))
    rejects(E.COMMIT_HASH_MISMATCH, lambda: world.client.create_repo(m, rid, digest, own))
    rejects(E.COMMIT_HASH_MISMATCH, lambda: world.client.create_repo(m, rid, h("any digest"), own))
    # A commit hash that is not a genesis' (kind update, one parent) is no repo id, even for its author.
    update = make_commit(a, "update", (GENESIS_COMMIT,), "work", repo=GENESIS)
    rejects(E.COMMIT_HASH_MISMATCH,
            lambda: world.client.create_repo(a, update.commit_hash(), update.body_digest(), update.sig))
    assert world.client.repo(rid) is None and world.client.repo(update.commit_hash()) is None
    world.create_repo(a, genesis)  # the genesis author still can
    assert world.client.repo(rid).owner == bytes(a.pubkey())  # type: ignore[union-attr]


def test_a_second_genesis_cannot_be_anchored(world: World) -> None:
    """kind init is only the commit whose hash is the repository id, even for a member or the owner."""
    rejects(E.COMMIT_HASH_MISMATCH, lambda: world.anchor(world.alice, "second genesis", kind=Kind.INIT, branch=None))
    rejects(E.COMMIT_HASH_MISMATCH, lambda: world.anchor(world.owner, "another genesis", kind=Kind.INIT, branch=None))
    assert world.client.commit(world.repo_id, world["second genesis"]) is None
    assert world.client.repo(world.repo_id).commit_count == 1  # type: ignore[union-attr]


def test_owner_must_sign(world: World) -> None:
    ix = world.program.add_member(world.owner.pubkey(), world.repo_id, world.mallory.pubkey())
    metas = [AccountMeta(world.owner.pubkey(), is_signer=False, is_writable=True), *ix.accounts[1:]]
    ix = Instruction(ix.program_id, ix.data, metas)
    rejects(E.MISSING_REQUIRED_SIGNATURE, lambda: world.backend.send([ix], [world.mallory]))


def test_add_and_remove_member(world: World) -> None:
    bob = Keypair.from_seed(bytes([9]) * 32).pubkey()
    world.client.add_member(world.owner, world.repo_id, bob)
    data = world.backend.account_data(world.program.member_address(world.repo_id, bob))
    assert data is not None
    member = layout.decode_member(data)
    assert (member.repo_id, member.member) == (world.repo_id, bytes(bob))
    before = world.backend.balance(world.owner.pubkey())
    rent = world.backend.balance(world.program.member_address(world.repo_id, bob))
    tx = world.client.remove_member(world.owner, world.repo_id, bob)
    assert not world.client.is_member(world.repo_id, bob)
    assert world.backend.balance(world.owner.pubkey()) == before + rent - tx.fee
    world.client.add_member(world.owner, world.repo_id, bob)  # re-adding works after a close
    assert world.client.is_member(world.repo_id, bob)


def test_member_admin_rejections(world: World) -> None:
    c, o, m = world.client, world.owner, world.mallory
    rejects(E.NOT_OWNER, lambda: c.add_member(m, world.repo_id, m.pubkey()))
    rejects(E.NOT_OWNER, lambda: c.remove_member(m, world.repo_id, world.alice.pubkey()))
    rejects(E.MEMBER_ALREADY_EXISTS, lambda: c.add_member(o, world.repo_id, world.alice.pubkey()))
    rejects(E.NOT_A_MEMBER, lambda: c.remove_member(o, world.repo_id, m.pubkey()))
    ix = with_account(world.program.add_member(o.pubkey(), world.repo_id, m.pubkey()), 1,
                      world.program.member_address(world.repo_id, world.alice.pubkey()))
    rejects(E.INVALID_REPO_ACCOUNT, lambda: world.backend.send([ix], [o]))
    ix = world.program.add_member(o.pubkey(), world.repo_id, m.pubkey())
    ix = with_account(ix, 2, world.program.member_address(world.repo_id, world.owner.pubkey()), writable=True)
    rejects(E.INVALID_PDA, lambda: world.backend.send([ix], [o]))


# --- anchor_commit ------------------------------------------------------------------------------


def test_member_anchor_fast_forwards(world: World) -> None:
    anchored = world.anchor(world.alice, "c1", parents=(GENESIS,), commitment=g1(5))
    c1 = world["c1"]
    assert c1 == commit_hash_from(bytes(world.alice.pubkey()), "update", [GENESIS], h("c1"))
    expected_acc = layout.accumulate(layout.accumulate(layout.ZERO32, GENESIS), c1)
    assert (anchored.accumulator, anchored.commit_count) == (expected_acc, 2)
    assert world.client.head(world.repo_id, "main") == c1
    record = world.client.commit(world.repo_id, c1)
    assert record is not None
    assert record.commit_hash == c1
    assert record.author == bytes(world.alice.pubkey())
    assert (record.kind, record.index, record.n_parents) == (Kind.UPDATE, 1, 1)
    assert record.parents_digest == layout.parents_digest([GENESIS])
    assert record.commitment == g1(5)
    repo = world.client.repo(world.repo_id)
    assert repo is not None and repo.accumulator == expected_acc and repo.commit_count == 2


def test_real_commits_are_anchored_under_their_own_hash(world: World) -> None:
    """fednode commits (protocol.objects.Commit) anchored from their own fields and stored
    signatures: the program's recomputed hash is Commit.commit_hash(), merges included."""
    a, o = world.alice, world.owner
    u1 = make_commit(a, "update", (GENESIS_COMMIT,), "alice's update", repo=GENESIS)
    u2 = make_commit(o, "update", (GENESIS_COMMIT,), "owner's update", repo=GENESIS)
    merge = make_commit(o, "merge", (u2, u1), "merge", repo=GENESIS)  # parent order: u2, then u1
    revert = make_commit(o, "revert", (merge,), "revert to u2", repo=GENESIS)
    world.anchor_real(a, u1, branch=None)
    world.anchor_real(o, u2)
    world.anchor_real(o, merge)
    world.anchor_real(o, revert)
    for commit in (u1, u2, merge, revert):
        record = world.client.commit(world.repo_id, commit.commit_hash())
        assert record is not None and record.commit_hash == commit.commit_hash()
        assert record.author == commit.author and record.kind == Kind[commit.kind.upper()]
        assert record.parents_digest == layout.parents_digest(commit.parent_hashes)
    assert world.client.head(world.repo_id, "main") == revert.commit_hash()


def test_anchoring_another_authors_commit_with_ones_own_signature_rejected(world: World) -> None:
    """A member (alice) signs the owner's commit hash with her own key and tries to anchor it as
    hers: the program recomputes the hash with alice as author, which is not what she proved."""
    a, o = world.alice, world.owner
    victim = make_commit(o, "update", (GENESIS_COMMIT,), "owner's work", repo=GENESIS)
    target = victim.commit_hash()
    body = layout.AnchorCommit(victim.body_digest(), Kind.UPDATE, layout.ZERO32, (GENESIS,))
    proof = ed25519_proof(a.pubkey(), bytes(a.sign_message(target)), target)
    ix = world.program.anchor_commit(a.pubkey(), world.repo_id, body)  # record at alice's recomputed hash
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: world.backend.send([proof, ix], [a]))
    at_target = with_account(ix, 2, world.program.commit_address(world.repo_id, target), writable=True)
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: world.backend.send([proof, at_target], [a]))
    # The owner's own stored signature does not help alice either: it proves (owner, target).
    stolen = ed25519_proof(o.pubkey(), victim.sig, target)
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: world.backend.send([stolen, at_target], [a]))
    assert world.client.commit(world.repo_id, target) is None
    world.anchor_real(o, victim)  # not squatted: its author anchors it
    record = world.client.commit(world.repo_id, target)
    assert record is not None and record.author == bytes(o.pubkey())


def test_body_digest_kind_and_parents_must_give_the_signed_hash(world: World) -> None:
    """The proof is the commit's own signature over its real hash; any other body digest, kind or
    parent order recomputes to another hash, which nobody signed."""
    a = world.alice
    world.anchor(world.owner, "side", parents=(GENESIS,), branch=None)
    commit = make_commit(a, "update", (GENESIS_COMMIT,), "alice", repo=GENESIS)
    two = replace(commit, parent_hashes=(GENESIS, world["side"]))  # two parents (CIDs do not matter here)
    two = replace(two, sig=bytes(a.sign_message(two.commit_hash())))
    proof = ed25519_proof(a.pubkey(), two.sig, two.commit_hash())

    def send(digest: bytes, kind: Kind, parents: tuple[bytes, ...]) -> object:
        body = layout.AnchorCommit(digest, kind, layout.ZERO32, parents)
        ix = world.program.anchor_commit(a.pubkey(), world.repo_id, body)
        return world.backend.send([proof, ix], [a])

    digest, parents = two.body_digest(), two.parent_hashes
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: send(commit.body_digest(), Kind.UPDATE, parents))  # other body
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: send(h("tampered"), Kind.UPDATE, parents))
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: send(digest, Kind.REVERT, parents))  # wrong kind
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: send(digest, Kind.UPDATE, parents[::-1]))  # reordered parents
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: send(digest, Kind.UPDATE, parents[:1]))  # a parent dropped
    assert world.client.repo(world.repo_id).commit_count == 2  # type: ignore[union-attr]
    send(digest, Kind.UPDATE, parents)
    record = world.client.commit(world.repo_id, two.commit_hash())
    assert record is not None and record.parents_digest == layout.parents_digest(parents)


def test_detached_anchor_moves_no_head(world: World) -> None:
    world.anchor(world.alice, "side", parents=(GENESIS,), branch=None)
    assert world.client.head(world.repo_id, "main") == GENESIS
    assert world.client.commit(world.repo_id, world["side"]) is not None


def test_non_member_rejected(world: World) -> None:
    rejects(E.NOT_A_MEMBER, lambda: world.anchor(world.mallory, "x", parents=(GENESIS,)))


def test_removed_member_rejected(world: World) -> None:
    world.client.remove_member(world.owner, world.repo_id, world.alice.pubkey())
    rejects(E.NOT_A_MEMBER, lambda: world.anchor(world.alice, "x", parents=(GENESIS,)))


def test_member_record_of_another_member_rejected(world: World) -> None:
    ixs = world.anchor_ixs(world.mallory, "x", (GENESIS,))
    ixs[1] = with_account(ixs[1], 3, world.program.member_address(world.repo_id, world.alice.pubkey()))
    rejects(E.NOT_A_MEMBER, lambda: world.backend.send(ixs, [world.mallory]))


def test_unanchored_parent_rejected(world: World) -> None:
    rejects(E.PARENT_NOT_ANCHORED, lambda: world.anchor(world.alice, "x", parents=(h("nowhere"),)))


def test_parent_from_another_repo_rejected(world: World) -> None:
    other = world.new_repo(world.alice, "other")
    ixs = world.anchor_ixs(world.alice, "x", (other,))
    ixs[1] = with_account(ixs[1], 6, world.program.commit_address(other, other))
    rejects(E.PARENT_NOT_ANCHORED, lambda: world.backend.send(ixs, [world.alice]))


def test_duplicate_parent_rejected(world: World) -> None:
    rejects(E.DUPLICATE_PARENT, lambda: world.anchor(world.owner, "x", parents=(GENESIS, GENESIS)))


def test_replay_rejected(world: World) -> None:
    world.anchor(world.alice, "c1", parents=(GENESIS,))
    rejects(E.COMMIT_ALREADY_ANCHORED, lambda: world.anchor(world.alice, "c1", parents=(GENESIS,), branch=None))
    rejects(E.COMMIT_ALREADY_ANCHORED, lambda: world.anchor_real(world.owner, GENESIS_COMMIT, branch=None))
    repo = world.client.repo(world.repo_id)
    assert repo is not None and repo.commit_count == 2


def test_missing_signature_proof_rejected(world: World) -> None:
    ixs = world.anchor_ixs(world.alice, "x", (GENESIS,))
    rejects(E.MISSING_SIGNATURE_PROOF, lambda: world.backend.send(ixs[1:], [world.alice]))


def test_proof_over_another_message_rejected(world: World) -> None:
    ixs = world.anchor_ixs(world.alice, "x", (GENESIS,))
    ixs[0] = ed25519_proof(world.alice.pubkey(), bytes(world.alice.sign_message(h("y"))), h("y"))
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: world.backend.send(ixs, [world.alice]))


def test_proof_by_another_key_rejected(world: World) -> None:
    ixs = world.anchor_ixs(world.alice, "x", (GENESIS,))
    x = world["x"]
    ixs[0] = ed25519_proof(world.mallory.pubkey(), bytes(world.mallory.sign_message(x)), x)
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: world.backend.send(ixs, [world.alice]))


@pytest.mark.parametrize("field", ["public_key", "message"])
def test_proof_reading_another_instruction_rejected(world: World, field: str) -> None:
    """A proof whose key or message the precompile reads from another instruction is refused, even
    though the precompile accepts it and the proof's own bytes would match (author, commit)."""
    a, m = world.alice, world.mallory
    ixs = world.anchor_ixs(a, "x", (GENESIS,))
    x = world["x"]
    # Instruction 2: a valid proof that is not (alice, x) but holds alice's key (at 16) or x (at 112).
    helper = (ed25519_proof(a.pubkey(), bytes(a.sign_message(h("y"))), h("y")) if field == "public_key"
              else ed25519_proof(m.pubkey(), bytes(m.sign_message(x)), x))
    data = bytearray(ixs[0].data)
    index_at = 8 if field == "public_key" else 14  # *_instruction_index in the offsets record
    data[index_at : index_at + 2] = (2).to_bytes(2, "little")
    ixs = [Instruction(ixs[0].program_id, bytes(data), []), ixs[1], helper]
    error = rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: world.backend.send(ixs, [a]))
    assert error.index == 1  # the precompile accepted both proofs; our program refused


def test_forged_signature_fails_in_the_precompile(world: World) -> None:
    ixs = world.anchor_ixs(world.alice, "x", (GENESIS,))
    data = bytearray(ixs[0].data)
    data[60] ^= 1  # inside the signature
    ixs[0] = Instruction(ixs[0].program_id, bytes(data), [])
    with pytest.raises(ChainError) as info:
        world.backend.send(ixs, [world.alice])
    assert info.value.index == 0  # the transaction died in the precompile, before the program ran
    assert world.client.commit(world.repo_id, world["x"]) is None


def test_fake_instructions_sysvar_rejected(world: World) -> None:
    """An account that imitates the Instructions sysvar, "proving" a signature never checked."""
    a = world.alice
    ixs = world.anchor_ixs(a, "x", (GENESIS,))
    forged = layout.ed25519_instruction_data(bytes(a.pubkey()), bytes(64), world["x"])
    one_ix = struct.pack("<H", 0) + bytes(ED25519_PROGRAM_ID) + struct.pack("<H", len(forged)) + forged
    fake = Keypair().pubkey()
    world.backend.svm.set_account(fake, Account(10**9, struct.pack("<HH", 1, 4) + one_ix + bytes(2), SYSTEM_PROGRAM_ID))
    rejects(E.INVALID_INSTRUCTIONS_SYSVAR, lambda: world.backend.send([with_account(ixs[1], 4, fake)], [a]))


def test_kind_rules(world: World) -> None:
    a, ow = world.alice, world.owner
    rejects(E.INVALID_KIND, lambda: world.anchor(ow, "m", parents=(GENESIS,), kind=Kind.MERGE))
    rejects(E.INVALID_KIND, lambda: world.anchor(a, "i", parents=(GENESIS,), kind=Kind.INIT))
    rejects(E.INVALID_KIND, lambda: world.anchor(a, "u", parents=(), kind=Kind.UPDATE))
    ixs = world.anchor_ixs(a, "k", (GENESIS,))
    data = bytearray(ixs[1].data)
    data[33] = 9
    ixs[1] = Instruction(ixs[1].program_id, bytes(data), list(ixs[1].accounts))
    rejects(E.INVALID_KIND, lambda: world.backend.send(ixs, [a]))


def test_invalid_commitment_rejected(world: World) -> None:
    not_on_curve = (1).to_bytes(32, "big") + (3).to_bytes(32, "big")
    rejects(E.INVALID_COMMITMENT,
            lambda: world.anchor(world.alice, "x", parents=(GENESIS,), commitment=not_on_curve))


def test_not_fast_forward_rejected(world: World) -> None:
    world.anchor(world.alice, "c1", parents=(GENESIS,))
    rejects(E.NOT_FAST_FORWARD, lambda: world.anchor(world.alice, "c2", parents=(GENESIS,)))
    world.anchor(world.alice, "c2", parents=(GENESIS,), branch=None)  # fine detached


def test_only_owner_creates_branches(world: World) -> None:
    rejects(E.UNKNOWN_BRANCH, lambda: world.anchor(world.alice, "x", parents=(GENESIS,), branch="dev"))
    world.anchor(world.owner, "d1", parents=(GENESIS,), branch="dev")
    world.anchor(world.alice, "d2", parents=("d1",), branch="dev")
    assert world.client.head(world.repo_id, "dev") == world["d2"]


@pytest.mark.parametrize("prefund", [1_000_000, 5_000_000])
def test_prefunded_commit_address_still_anchors(world: World, prefund: int) -> None:
    """Anyone can send lamports to a future PDA (below or above its rent); that must not block
    anchoring, or gossiped commits could be griefed off the chain."""
    address = world.program.commit_address(world.repo_id, world.hash_of(world.alice, "c1", parents=(GENESIS,)))
    world.backend.airdrop(address, prefund)
    world.anchor(world.alice, "c1", parents=(GENESIS,))
    assert world.client.commit(world.repo_id, world["c1"]) is not None
    rent = world.backend.svm.minimum_balance_for_rent_exemption(layout.COMMIT_SIZE)
    assert world.backend.balance(address) == max(prefund, rent)


# --- merge ----------------------------------------------------------------------------------------


@pytest.fixture
def committed(world: World) -> World:
    """Two member updates with commitments C_k = c_k * G, c = (11, 13)."""
    world.anchor(world.alice, "u1", parents=(GENESIS,), branch=None, commitment=g1(11))
    world.anchor(world.owner, "u2", parents=(GENESIS,), branch=None, commitment=g1(13))
    return world


def test_merge_checks_commitments_and_moves_head(committed: World) -> None:
    w = committed
    anchored = w.merge("m", ("u1", "u2"), (3, 5), commitment=g1(3 * 11 + 5 * 13))
    assert anchored.commit_count == 4
    assert w["m"] == commit_hash_from(bytes(w.owner.pubkey()), "merge", [w["u1"], w["u2"]], h("m"))
    assert w.client.head(w.repo_id, "main") == w["m"]
    record = w.client.commit(w.repo_id, w["m"])
    assert record is not None
    assert (record.kind, record.n_parents, record.commitment) == (Kind.MERGE, 2, g1(3 * 11 + 5 * 13))
    assert record.parents_digest == layout.parents_digest([w["u1"], w["u2"]])
    assert record.author == bytes(w.owner.pubkey())


def test_merge_with_wrong_arithmetic_rejected(committed: World) -> None:
    w = committed
    rejects(E.MERGE_COMMITMENT_MISMATCH,
            lambda: w.merge("m", ("u1", "u2"), (3, 5), commitment=g1(3 * 11 + 5 * 13 + 1)))
    rejects(E.MERGE_COMMITMENT_MISMATCH,
            lambda: w.merge("m", ("u1", "u2"), (5, 3), commitment=g1(3 * 11 + 5 * 13)))
    assert w.client.head(w.repo_id, "main") == GENESIS


def test_merge_without_commitment_skips_the_check(committed: World) -> None:
    committed.merge("m", ("u1", GENESIS), (1, 1))
    assert committed.client.head(committed.repo_id, "main") == committed["m"]


def test_merge_inputs_are_the_signed_parents_in_order(committed: World) -> None:
    """The merge commit hash covers its parents in the commit's order: the same inputs in another
    order (weights kept with their inputs), or under another body digest, are not what was signed."""
    w, o = committed, committed.owner
    merge_hash = w.hash_of(o, "m", Kind.MERGE, ("u1", "u2"))
    proof = ed25519_proof(o.pubkey(), bytes(o.sign_message(merge_hash)), merge_hash)
    commitment = g1(3 * 11 + 5 * 13)

    def send(digest: bytes, inputs: tuple[bytes, ...], weights: tuple[int, ...]) -> object:
        body = layout.Merge(digest, layout.branch_hash("main"), inputs, weights, commitment)
        return w.backend.send([proof, w.program.merge(o.pubkey(), w.repo_id, body)], [o])

    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: send(h("m"), (w["u2"], w["u1"]), (5, 3)))
    rejects(E.SIGNATURE_PROOF_MISMATCH, lambda: send(h("not m"), (w["u1"], w["u2"]), (3, 5)))
    send(h("m"), (w["u1"], w["u2"]), (3, 5))
    assert w.client.head(w.repo_id, "main") == merge_hash


def test_merge_rejections(committed: World) -> None:
    w = committed
    rejects(E.NOT_OWNER, lambda: w.merge("m", ("u1",), (1,), signer=w.alice))
    rejects(E.INPUT_NOT_ANCHORED, lambda: w.merge("m", ("u1", h("zz")), (1, 1)))
    rejects(E.MISSING_INPUT_COMMITMENT, lambda: w.merge("m", ("u1", GENESIS), (1, 1), commitment=g1(11)))
    rejects(E.DUPLICATE_PARENT, lambda: w.merge("m", ("u1", "u1"), (1, 1)))
    body = layout.Merge(h("m"), layout.branch_hash("main"), (w["u1"],), (1,))
    ix = w.program.merge(w.owner.pubkey(), w.repo_id, body)
    rejects(E.MISSING_SIGNATURE_PROOF, lambda: w.backend.send([ix], [w.owner]))
    w.merge("m", ("u2",), (1,))
    rejects(E.COMMIT_ALREADY_ANCHORED, lambda: w.merge("m", ("u2",), (1,), branch="other"))


# --- set_head -------------------------------------------------------------------------------------


def test_set_head_reverts_and_deletes(world: World) -> None:
    world.anchor(world.alice, "c1", parents=(GENESIS,))
    world.client.set_head(world.owner, world.repo_id, "main", GENESIS)
    assert world.client.head(world.repo_id, "main") == GENESIS
    world.client.set_head(world.owner, world.repo_id, "release", world["c1"])
    assert world.client.head(world.repo_id, "release") == world["c1"]
    world.client.delete_branch(world.owner, world.repo_id, "release")
    assert world.client.head(world.repo_id, "release") is None


def test_set_head_rejections(world: World) -> None:
    c, o, rid = world.client, world.owner, world.repo_id
    rejects(E.NOT_OWNER, lambda: c.set_head(world.alice, rid, "main", GENESIS))
    rejects(E.HEAD_NOT_IN_REPO, lambda: c.set_head(o, rid, "main", h("never anchored")))
    other = world.new_repo(world.alice, "other")
    ix = with_account(world.program.set_head(o.pubkey(), rid, layout.branch_hash("main"), other), 2,
                      world.program.commit_address(other, other))
    rejects(E.HEAD_NOT_IN_REPO, lambda: world.backend.send([ix], [o]))
    rejects(E.UNKNOWN_BRANCH, lambda: c.delete_branch(o, rid, "nope"))
    ix = world.program.set_head(o.pubkey(), rid, layout.ZERO32, GENESIS)
    rejects(E.INVALID_BRANCH, lambda: world.backend.send([ix], [o]))
    assert world.client.head(rid, "main") == GENESIS


def test_branch_table_full(world: World) -> None:
    for i in range(layout.MAX_BRANCHES - 1):
        world.client.set_head(world.owner, world.repo_id, f"b{i}", GENESIS)
    rejects(E.BRANCH_TABLE_FULL, lambda: world.client.set_head(world.owner, world.repo_id, "one more", GENESIS))
    world.client.delete_branch(world.owner, world.repo_id, "b0")
    world.client.set_head(world.owner, world.repo_id, "one more", GENESIS)
    repo = world.client.repo(world.repo_id)
    assert repo is not None and len(repo.branches) == layout.MAX_BRANCHES


# --- malformed input --------------------------------------------------------------------------------


def test_malformed_instructions_rejected(world: World) -> None:
    def raw(data: bytes, metas: list[AccountMeta] | None = None) -> Callable[[], object]:
        accounts = metas if metas is not None else [AccountMeta(world.owner.pubkey(), True, True)]
        return lambda: world.backend.send([Instruction(PROGRAM_ID, data, accounts)], [world.owner])

    rejects(E.INVALID_INSTRUCTION, raw(b""))
    rejects(E.INVALID_INSTRUCTION, raw(b"\x63"))
    rejects(E.INVALID_INSTRUCTION_DATA, raw(bytes([layout.Ix.CREATE_REPO]) + bytes(10)))
    rejects(E.INVALID_INSTRUCTION_DATA, raw(bytes([layout.Ix.CREATE_REPO]) + bytes(64)))  # the old layout
    rejects(E.NOT_ENOUGH_ACCOUNTS, raw(layout.encode_instruction(layout.CreateRepo(h("r"), h("d")))))
    genesis = make_commit(world.owner, "init", message="r")
    create = create_repo_ixs(world.owner, genesis.commit_hash(), genesis.body_digest())
    rejects(E.INVALID_SYSTEM_PROGRAM, lambda: world.backend.send(
        [create[0], with_account(create[1], 3, INSTRUCTIONS_SYSVAR_ID)], [world.owner]))
    rejects(E.NOT_ENOUGH_ACCOUNTS, lambda: world.backend.send(
        [create[0], Instruction(PROGRAM_ID, create[1].data, list(create[1].accounts[:3]))], [world.owner]))
    many = [AccountMeta(SYSTEM_PROGRAM_ID, False, False)] * (layout.MAX_ACCOUNTS + 1)
    rejects(E.TOO_MANY_ACCOUNTS, raw(b"\x00", many))
    ixs = world.anchor_ixs(world.alice, "x", (GENESIS,))
    for index in (1, 2):  # repo, commit record
        readonly = with_account(ixs[1], index, ixs[1].accounts[index].pubkey)
        rejects(E.ACCOUNT_NOT_WRITABLE, lambda ix=readonly: world.backend.send([ixs[0], ix], [world.alice]))
    too_many = layout.AnchorCommit(h("x"), Kind.UPDATE, layout.ZERO32, tuple(h(str(i)) for i in range(16)))
    data = bytearray(layout.encode_instruction(too_many))
    data[35] = layout.MAX_PARENTS + 1
    rejects(E.TOO_MANY_PARENTS, raw(bytes(data)))


# --- both builds, whole lifecycle ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 3])
def test_lifecycle_on_both_builds(elves: dict[int, bytes], version: int) -> None:
    """The deployable v0 ELF must behave exactly like the v3 one the other tests use."""
    w = make_world(elves[version])
    w.anchor(w.alice, "u1", parents=(GENESIS,), branch=None, commitment=g1(2))
    w.anchor(w.owner, "u2", parents=(GENESIS,), branch=None, commitment=g1(7))
    merged = w.merge("m", ("u1", "u2"), (10, 20), commitment=g1(10 * 2 + 20 * 7))
    acc = layout.ZERO32
    for commit in (GENESIS, w["u1"], w["u2"], w["m"]):
        acc = layout.accumulate(acc, commit)
    assert (merged.accumulator, merged.commit_count) == (acc, 4)
    w.client.set_head(w.owner, w.repo_id, "main", w["u1"])
    w.client.remove_member(w.owner, w.repo_id, w.alice.pubkey())
    rejects(E.NOT_A_MEMBER, lambda: w.anchor(w.alice, "late", parents=("u1",)))
    m = w.mallory  # the create_repo squat is refused by both builds
    genesis = make_commit(w.alice, "init", message="alice's")
    rejects(E.COMMIT_HASH_MISMATCH, lambda: w.client.create_repo(
        m, genesis.commit_hash(), genesis.body_digest(), bytes(m.sign_message(genesis.commit_hash()))))
    assert w.client.head(w.repo_id, "main") == w["u1"]


# --- protocol/chain.py codecs ------------------------------------------------------------------------

b32 = st.binary(min_size=32, max_size=32)
g1_bytes = st.none() | st.binary(min_size=64, max_size=64)
instructions = st.one_of(
    st.builds(layout.CreateRepo, b32, b32, b32),
    st.builds(layout.AddMember, b32),
    st.builds(layout.RemoveMember, b32),
    st.builds(layout.SetHead, b32, b32),
    st.builds(layout.AnchorCommit, b32, st.sampled_from(Kind), b32,
              st.lists(b32, max_size=layout.MAX_PARENTS).map(tuple), g1_bytes),
    st.integers(1, layout.MAX_PARENTS).flatmap(lambda n: st.builds(
        layout.Merge, b32, b32, st.lists(b32, min_size=n, max_size=n).map(tuple),
        st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n).map(tuple), g1_bytes)),
)


@given(instructions)
def test_instruction_codec_round_trips(ix: layout.Instruction) -> None:
    assert layout.decode_instruction(layout.encode_instruction(ix)) == ix


def test_codec_rejects_bad_lengths() -> None:
    with pytest.raises(layout.LayoutError):
        layout.encode_instruction(layout.AddMember(b"short"))
    with pytest.raises(layout.LayoutError):
        layout.decode_instruction(layout.encode_instruction(layout.AddMember(h("m"))) + b"\0")
    with pytest.raises(layout.LayoutError):
        layout.encode_instruction(layout.Merge(h("m"), h("b"), (h("a"),), (1, 2)))


def test_federity_elf_builds_once_per_source_digest(tmp_path: Path, elves: dict[int, bytes]) -> None:
    assert federity_elf(tmp_path, 3) == elves[3]
    (cached,) = tmp_path.glob("*/federity_v3.so")
    cached.write_bytes(b"cached")  # a second call must not rebuild
    assert federity_elf(tmp_path, 3) == b"cached"


def test_c_source_and_readme_agree_with_protocol() -> None:
    """protocol/chain.py, federity.c and programs/README.md describe the same errors and sizes."""
    programs = Path(__file__).resolve().parents[2] / "programs"
    source = (programs / "federity" / "federity.c").read_text()
    start = source.index("E_INVALID_INSTRUCTION = 1")
    enum = source[start : source.index("};", start)]
    c_names = [line.strip().split(" ")[0].rstrip(",").removeprefix("E_") for line in enum.splitlines()]
    assert c_names == [e.name for e in E]  # sequential from 1 in both
    for struct_name, size in (("Repo", layout.REPO_SIZE), ("Member", layout.MEMBER_SIZE),
                              ("Commit", layout.COMMIT_SIZE), ("ZkVk", layout.ZKVK_SIZE)):
        assert f"sizeof({struct_name}) == {size}," in source
    readme = (programs / "README.md").read_text()
    for e in E:
        assert f"| {e.value} | `{e.name}` |" in readme
