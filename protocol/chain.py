"""On-chain layouts of the federity program: instruction data, account data, error codes.

Pure data and codecs (no I/O, no Solana libraries); programs/federity/federity.c is the other
side of every layout here and programs/README.md documents them. All integers little-endian.

Identity contract: repo_id, commit_hash, body_digest, author keys and branch hashes are 32 bytes;
a branch name is hashed with sha256(utf-8 name); a commitment is a BN254 G1 point, 64 bytes
big-endian x||y (the alt_bn128 syscall format); merge weights are u64.

Commit hashes are not sent: instructions carry the commit's body digest
(``protocol.objects.Commit.body_digest()``) and the program recomputes
``commit_hash(author, kind, parents, body_digest)`` (``protocol.objects.commit_hash_from``) with the
proving signer as author, so a commit can only be anchored (or, for a genesis, registered as a
repository) under the key that authored it and with the kind and parents it was signed with.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from protocol.multiformats import FormatError
from protocol.objects import KINDS, commit_hash_from

PROGRAM_NAME = "federity"
LAYOUT_VERSION = 1


class Ix(IntEnum):
    """First byte of the instruction data."""

    CREATE_REPO = 0
    ADD_MEMBER = 1
    REMOVE_MEMBER = 2
    ANCHOR_COMMIT = 3
    MERGE = 4
    SET_HEAD = 5
    BIND_NFT = 6
    SYNC_HOLDER = 7
    SET_SHARE = 8
    SELL = 9
    SET_URI = 10
    CLAIM = 11
    WRITE_VK = 12
    SEAL_VK = 13
    PROVE_COMMIT = 14
    WRITE_RVK = 15  # write_vk's layout, for the merge remainder key
    SEAL_RVK = 16  # seal_vk's layout (bound2 zero), for the merge remainder key
    PROVE_MERGE = 17


class Kind(IntEnum):
    """Commit kinds, same order as protocol.objects.KINDS."""

    INIT = 0
    UPDATE = 1
    MERGE = 2
    REVERT = 3


class Tag(IntEnum):
    """First byte of every account the program owns."""

    REPO = 1
    MEMBER = 2
    COMMIT = 3
    NFT = 4
    ZKVK = 5  # a repository's verifying key for update proofs
    ZKRVK = 6  # a repository's verifying key for merge remainder proofs (same layout)


class ErrorCode(IntEnum):
    """Custom program error numbers (InstructionError::Custom(n)); one per rejection."""

    INVALID_INSTRUCTION = 1  # unknown instruction tag
    INVALID_INSTRUCTION_DATA = 2  # wrong length or counts
    NOT_ENOUGH_ACCOUNTS = 3
    MISSING_REQUIRED_SIGNATURE = 4
    ACCOUNT_NOT_WRITABLE = 5
    INVALID_PDA = 6  # account key is not the PDA the seeds give
    INVALID_SYSTEM_PROGRAM = 7
    INVALID_INSTRUCTIONS_SYSVAR = 8
    REPO_ALREADY_EXISTS = 9
    INVALID_REPO_ACCOUNT = 10  # not a repo account owned by this program
    NOT_OWNER = 11
    MEMBER_ALREADY_EXISTS = 12
    NOT_A_MEMBER = 13
    INVALID_KIND = 14  # unknown kind, merge via anchor_commit, init with parents or vice versa
    TOO_MANY_PARENTS = 15
    DUPLICATE_PARENT = 16
    PARENT_NOT_ANCHORED = 17
    COMMIT_ALREADY_ANCHORED = 18  # replay
    MISSING_SIGNATURE_PROOF = 19  # no Ed25519 precompile instruction in the transaction
    # precompile present, but not for (author, commit_hash), or for create_repo (owner, repo_id)
    SIGNATURE_PROOF_MISMATCH = 20
    INVALID_COMMITMENT = 21  # not a point of BN254 G1
    NOT_FAST_FORWARD = 22
    UNKNOWN_BRANCH = 23
    BRANCH_TABLE_FULL = 24
    INPUT_NOT_ANCHORED = 25
    MISSING_INPUT_COMMITMENT = 26
    MERGE_COMMITMENT_MISMATCH = 27
    HEAD_NOT_IN_REPO = 28  # set_head target is not an anchored commit of this repository
    RENT_UNAVAILABLE = 29
    INVALID_BRANCH = 30  # zero branch hash where a branch is required
    TOO_MANY_ACCOUNTS = 31  # more than MAX_ACCOUNTS accounts
    # create_repo: commit_hash(owner, init, no parents, body_digest) is not the repo id
    COMMIT_HASH_MISMATCH = 32
    NFT_ALREADY_BOUND = 33  # bind_nft on a repo that has a mint (or an nft record)
    INVALID_MINT = 34  # create_repo with a mint; bind_nft with a mint that is not a clean NFT of this repo
    NOT_HOLDER = 35  # NFT-bound repo: the signer does not hold the NFT (a former holder gets this)
    INVALID_NFT_ACCOUNT = 36  # trailing nft PDA / mint / token account is not the repo's
    MISSING_NFT_ACCOUNTS = 37  # NFT-bound repo without the four trailing accounts
    INVALID_TOKEN_PROGRAM = 38  # Token-2022 program account expected
    SHARE_LOCKED = 39
    INVALID_SHARE = 40  # share_bps > 10000
    CONTRIBUTOR_TABLE_FULL = 41
    CONTRIBUTOR_MISMATCH = 42  # sell: contributor accounts are not the table's keys in order
    STALE_OFFER = 43  # sell: sale_seq is not the nft record's
    INVALID_BUYER_ACCOUNT = 44  # sell: buyer token account not a Token-2022 account of the mint owned by the buyer
    ARITHMETIC_OVERFLOW = 45
    NOTHING_OWED = 46  # claim: the contributor's owed amount is 0
    CONTRIBUTOR_UNFUNDED = 47  # claim: the payment would leave the wallet below rent-exempt (fund it first)
    INVALID_VK_ACCOUNT = 48  # not this repository's zkvk record (prove_commit: or not sealed)
    VK_SEALED = 49  # write_vk / seal_vk after the key was sealed
    VK_MISMATCH = 50  # seal_vk: sha256 of the written key is not the key id given
    INVALID_VK = 51  # seal_vk: not a key's shape (magic, length, n, k, sb), or B^2 >= 2^sb
    NO_VERIFYING_KEY = 52  # prove_commit in a repository that does not require proofs (no sealed key)
    COMMIT_NOT_ANCHORED = 53  # prove_commit: no record of this commit in this repository
    NOT_AUTHOR = 54  # prove_commit: the signer is not the record's author
    # an update without a commitment in a repository that requires proofs (anchor_commit, prove_commit)
    MISSING_COMMITMENT = 55
    INVALID_PROOF_POINT = 56  # prove_commit: a proof point the alt_bn128 syscalls refuse
    PROOF_LINK_FAILS = 57  # prove_commit: the proof is for another vector than the record's commitment
    PROOF_GROTH16_FAILS = 58  # prove_commit: another proof hash or bound, or a false statement
    INPUT_NOT_PROVEN = 59  # merge in a repository that requires proofs: an unproven update of nonzero weight
    NO_REMAINDER_KEY = 60  # prove_merge in a repository without a sealed remainder key
    NOT_A_MERGE = 61  # prove_merge of a record that is not a merge
    MERGE_WEIGHT_TOO_LARGE = 62  # prove_merge: W >= 2^sb of the remainder key (past what its circuit takes)


MAX_BRANCHES = 8
MAX_ACCOUNTS = 32
MAX_CONTRIBUTORS = 16  # slots of the nft record's contributor table
MAX_SHARE_BPS = 10_000
MAX_URI = 200  # set_uri: uri bytes
FLAG_SHARE_LOCKED = 1  # nft record flags / bind_nft flags
MAX_PARENTS = 16  # also the merge input limit; a legacy 1232-byte tx fits about 8 merge inputs
FLAG_HAS_COMMITMENT = 1
FLAG_HAS_REMAINDER = 2  # merge only, and only with FLAG_HAS_COMMITMENT: merge flags are 0, 1 or 3
FLAG_PROVEN = 4  # commit record flags: prove_commit verified the update's proof
REPO_REQUIRES_PROOFS = 1  # repo flags (byte 3): a sealed verifying key; set by seal_vk
REPO_HAS_REMAINDER_KEY = 2  # repo flags: a sealed remainder key (seal_rvk); merges may be proven
VK_SEALED = 1  # zkvk flags
VK_CAPACITY = 1248  # key bytes a zkvk record holds (update_proof keys are 1120 + the seed's length)
PROOF_BYTES = 384  # an update proof (fednode.zk.update_proof.PROOF_BYTES)
ZERO32 = bytes(32)

REPO_SEED = b"repo"
MEMBER_SEED = b"member"
COMMIT_SEED = b"commit"
NFT_SEED = b"nft"
ZKVK_SEED = b"zkvk"
ZKRVK_SEED = b"zkrvk"

# Accounts the instructions take, in order (s = signer, w = writable).
ACCOUNTS: dict[Ix, tuple[str, ...]] = {
    Ix.CREATE_REPO: ("owner [s,w]", "repo PDA [w]", "instructions sysvar", "system program"),
    Ix.ADD_MEMBER: ("owner [s,w]", "repo", "member PDA [w]", "system program"),
    Ix.REMOVE_MEMBER: ("owner [s,w]", "repo", "member PDA [w]"),
    Ix.ANCHOR_COMMIT: (
        "author [s,w]", "repo [w]", "commit PDA [w]", "author's member PDA (owner: the repo)",
        "instructions sysvar", "system program", "parent commit PDAs...",
    ),
    Ix.MERGE: (
        "owner [s,w]", "repo [w]", "commit PDA [w]", "instructions sysvar", "system program",
        "input commit PDAs...",
    ),
    Ix.SET_HEAD: ("owner [s]", "repo [w]", "commit PDA (any account when deleting)"),
    Ix.BIND_NFT: ("owner [s,w]", "repo [w]", "nft PDA [w]", "mint", "holder token account", "system program"),
    Ix.SYNC_HOLDER: ("repo", "nft PDA [w]", "holder token account"),
    Ix.SET_SHARE: ("holder [s]", "repo", "nft PDA [w]", "holder token account"),
    Ix.SELL: (
        "seller [s,w]", "buyer [s,w]", "repo", "nft PDA [w]", "mint", "seller token account [w]",
        "buyer token account [w]", "token-2022 program", "system program", "contributors [w]...",
    ),
    Ix.SET_URI: (
        "holder [s,w]", "repo", "nft PDA", "holder token account", "mint [w]", "token-2022 program",
        "system program",
    ),
    Ix.CLAIM: ("repo", "nft PDA [w]", "contributor [w] (the table entry's key)"),
    Ix.WRITE_VK: ("owner [s,w]", "repo", "zkvk PDA [w]", "system program"),
    Ix.SEAL_VK: ("owner [s]", "repo [w]", "zkvk PDA [w]"),
    Ix.PROVE_COMMIT: ("author [s]", "repo", "zkvk PDA", "commit PDA [w]"),
    Ix.WRITE_RVK: ("owner [s,w]", "repo", "zkrvk PDA [w]", "system program"),
    Ix.SEAL_RVK: ("owner [s]", "repo [w]", "zkrvk PDA [w]"),
    Ix.PROVE_MERGE: ("owner [s]", "repo", "zkrvk PDA", "merge commit PDA [w]", "input commit PDAs..."),
}  # fmt: skip
# NFT-bound repos: add_member, remove_member, set_head, merge, anchor_commit, write_vk, seal_vk, their
# remainder-key twins and prove_merge take these four
# after their own accounts (after the parent / input list).
NFT_TRAILING_ACCOUNTS = ("holder token account", "nft PDA [w]", "mint [w]", "token-2022 program")


class LayoutError(FormatError):
    """Bytes that are not a valid encoding (a FormatError: decoders of outside bytes raise only that)."""


def _b32(name: str, value: bytes) -> bytes:
    if len(value) != 32:
        raise LayoutError(f"{name} must be 32 bytes, got {len(value)}")
    return bytes(value)


def _g1(value: bytes | None) -> bytes:
    if value is not None and len(value) != 64:
        raise LayoutError(f"commitment must be 64 bytes, got {len(value)}")
    return b"" if value is None else bytes(value)


def branch_hash(name: str) -> bytes:
    """The 32-byte key of a branch in the on-chain table."""
    if not name:
        raise LayoutError("empty branch name")
    return hashlib.sha256(name.encode("utf-8")).digest()


def accumulate(acc: bytes, commit_hash: bytes) -> bytes:
    """acc' = sha256(acc || commit_hash); the chain starts from 32 zero bytes."""
    return hashlib.sha256(_b32("acc", acc) + _b32("commit_hash", commit_hash)).digest()


def parents_digest(parents: Sequence[bytes]) -> bytes:
    """sha256 of the concatenated parent (or merge input) hashes, in instruction order."""
    return hashlib.sha256(b"".join(_b32("parent", p) for p in parents)).digest()


def commit_hash(author: bytes, kind: Kind, parents: Sequence[bytes], body_digest: bytes) -> bytes:
    """The commit hash the program recomputes (and anchors) from an instruction's fields."""
    return commit_hash_from(_b32("author", author), KINDS[kind], tuple(parents), _b32("body_digest", body_digest))


def repo_seeds(repo_id: bytes) -> list[bytes]:
    return [REPO_SEED, _b32("repo_id", repo_id)]


def member_seeds(repo_id: bytes, member: bytes) -> list[bytes]:
    return [MEMBER_SEED, _b32("repo_id", repo_id), _b32("member", member)]


def commit_seeds(repo_id: bytes, commit_hash: bytes) -> list[bytes]:
    return [COMMIT_SEED, _b32("repo_id", repo_id), _b32("commit_hash", commit_hash)]


def nft_seeds(repo_id: bytes) -> list[bytes]:
    return [NFT_SEED, _b32("repo_id", repo_id)]


def zkvk_seeds(repo_id: bytes, remainder: bool = False) -> list[bytes]:
    """The update key's record, or with ``remainder`` the merge remainder key's."""
    return [ZKRVK_SEED if remainder else ZKVK_SEED, _b32("repo_id", repo_id)]


# --- instructions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateRepo:
    """repo_id must equal commit_hash(owner, INIT, (), body_digest) (the genesis' commit hash);
    the transaction must also prove the owner's Ed25519 signature over it."""

    repo_id: bytes
    body_digest: bytes  # of the genesis commit
    mint: bytes = ZERO32


@dataclass(frozen=True)
class AddMember:
    member: bytes


@dataclass(frozen=True)
class RemoveMember:
    member: bytes


@dataclass(frozen=True)
class AnchorCommit:
    body_digest: bytes  # the anchored hash is commit_hash(author, kind, parents, body_digest)
    kind: Kind
    branch: bytes  # branch_hash(name), or ZERO32 to anchor without moving any head
    parents: tuple[bytes, ...] = ()  # commit hashes, in the commit's order
    commitment: bytes | None = None

    def commit_hash(self, author: bytes) -> bytes:
        return commit_hash(author, self.kind, self.parents, self.body_digest)


@dataclass(frozen=True)
class Merge:
    body_digest: bytes  # the anchored hash is commit_hash(owner, MERGE, inputs, body_digest)
    branch: bytes
    inputs: tuple[bytes, ...]  # the merge commit's parents, in the commit's order
    weights: tuple[int, ...]
    # Without remainder: C(S), S = sum_k w_k q_k, checked as sum_k w_k C_k (old clients). With it:
    # C(d) of the merged delta and C(r) of r = S - W d, checked as sum_k w_k C_k == W C(d) + C(r).
    commitment: bytes | None = None
    remainder: bytes | None = None  # only with a commitment

    def commit_hash(self, owner: bytes) -> bytes:
        return commit_hash(owner, Kind.MERGE, self.inputs, self.body_digest)


@dataclass(frozen=True)
class SetHead:
    branch: bytes
    commit_hash: bytes  # ZERO32 deletes the branch


@dataclass(frozen=True)
class BindNft:
    """Bind the repository to its NFT (mint checked by the program); the metadata "head" field
    follows the head of branch ``head_branch`` (branch_hash of its name)."""

    share_bps: int  # contributors' share of every sale, 0..10000
    lock_share: bool  # True: set_share is refused for ever
    head_branch: bytes


@dataclass(frozen=True)
class SyncHolder:
    """Permissionless: record the owner of the given token account (holding the NFT) as holder."""


@dataclass(frozen=True)
class SetShare:
    share_bps: int


@dataclass(frozen=True)
class Sell:
    price: int  # lamports the buyer pays in all (seller + contributors)
    sale_seq: int  # must equal the nft record's sale_seq (an offer is valid for one holder change)


@dataclass(frozen=True)
class SetUri:
    uri: str  # 1..MAX_URI utf-8 bytes


@dataclass(frozen=True)
class Claim:
    """Permissionless: pay contributor table entry ``index`` what sales left owed to it."""

    index: int  # 0..MAX_CONTRIBUTORS-1


@dataclass(frozen=True)
class WriteVk:
    """Owner only, until sealed: copy ``data`` into the repository's key buffer at ``offset``
    (``remainder``: the merge remainder key's buffer, instruction write_rvk)."""

    offset: int
    data: bytes  # 1.. bytes, offset + len <= VK_CAPACITY
    remainder: bool = False


@dataclass(frozen=True)
class SealVk:
    """Owner only: the first ``vk_len`` bytes written must hash to ``key_id`` and be a key with
    ``bound2 < 2^sb``; then the key is final and the repository requires proofs."""

    key_id: bytes  # sha256 of VerifyingKey.encode(): ZkPolicy.key_id
    bound2: int  # B^2 (< 2^256), sent big-endian; 0 for the remainder key
    vk_len: int
    remainder: bool = False  # seal_rvk: the merge remainder key (sets REPO_HAS_REMAINDER_KEY)


@dataclass(frozen=True)
class ProveCommit:
    """The author proves an anchored update: ``proof`` for the record's commitment, bound to
    ``proof_hash`` (fednode.zk.policy.proof_hash of the commit: the author's word, see
    programs/README.md), against the repository's key and B^2."""

    commit_hash: bytes
    proof_hash: bytes
    proof: bytes  # PROOF_BYTES


@dataclass(frozen=True)
class ProveMerge:
    """The owner (holder) proves an anchored FedAvg merge rounded to nearest: the program checks
    ``sum_k w_k C_k == W C(d) + C(r)`` (the record's C(d), the input records' commitments, W = sum of
    ``weights``) and the remainder proof for ``remainder`` = C(r) with X = W, bound to ``proof_hash``
    (the owner's word, as in ProveCommit). The inputs are the merge's parents, in order (accounts)."""

    commit_hash: bytes
    proof_hash: bytes
    weights: tuple[int, ...]  # one per parent of the merge, in the commit's order (0: the merge base)
    remainder: bytes  # C(r), 64 bytes
    proof: bytes  # PROOF_BYTES


Instruction = (CreateRepo | AddMember | RemoveMember | AnchorCommit | Merge | SetHead | BindNft | SyncHolder
               | SetShare | Sell | SetUri | Claim | WriteVk | SealVk | ProveCommit | ProveMerge)  # fmt: skip


def _share(bps: int) -> int:
    if not 0 <= bps <= MAX_SHARE_BPS:
        raise LayoutError(f"share must be 0..{MAX_SHARE_BPS} basis points, got {bps}")
    return bps


def _u64(name: str, value: int) -> bytes:
    if not 0 <= value < 2**64:
        raise LayoutError(f"{name} must be a u64, got {value}")
    return struct.pack("<Q", value)


def _uri(uri: str) -> bytes:
    raw = uri.encode("utf-8")
    if not 0 < len(raw) <= MAX_URI:
        raise LayoutError(f"uri must be 1..{MAX_URI} utf-8 bytes, got {len(raw)}")
    return raw


def _proof(value: bytes) -> bytes:
    if len(value) != PROOF_BYTES:
        raise LayoutError(f"a proof is {PROOF_BYTES} bytes, got {len(value)}")
    return bytes(value)


def _encode_zk(ix: WriteVk | SealVk | ProveCommit | ProveMerge) -> bytes:
    if isinstance(ix, WriteVk):
        if not ix.data or not 0 <= ix.offset or ix.offset + len(ix.data) > VK_CAPACITY:
            raise LayoutError(f"write_vk: 1.. bytes within the {VK_CAPACITY}-byte key buffer")
        tag = Ix.WRITE_RVK if ix.remainder else Ix.WRITE_VK
        return bytes([tag]) + struct.pack("<H", ix.offset) + bytes(ix.data)
    if isinstance(ix, SealVk):
        if not 0 <= ix.bound2 < 1 << 256 or not 0 <= ix.vk_len <= VK_CAPACITY:
            raise LayoutError(f"seal_vk: B^2 must fit 32 bytes and the key {VK_CAPACITY} bytes")
        if ix.remainder and ix.bound2:
            raise LayoutError("seal_rvk: the remainder key takes no bound (X is each merge's W)")
        return (bytes([Ix.SEAL_RVK if ix.remainder else Ix.SEAL_VK]) + _b32("key_id", ix.key_id)
                + ix.bound2.to_bytes(32, "big") + struct.pack("<H", ix.vk_len))  # fmt: skip
    if isinstance(ix, ProveMerge):
        if not 0 < len(ix.weights) <= MAX_PARENTS:
            raise LayoutError(f"prove_merge: 1..{MAX_PARENTS} weights")
        if len(ix.remainder) != 64:
            raise LayoutError(f"remainder must be 64 bytes, got {len(ix.remainder)}")
        return (bytes([Ix.PROVE_MERGE]) + _b32("commit_hash", ix.commit_hash) + _b32("proof_hash", ix.proof_hash)
                + bytes([len(ix.weights)]) + b"".join(_u64("weight", w) for w in ix.weights)
                + bytes(ix.remainder) + _proof(ix.proof))  # fmt: skip
    return bytes([Ix.PROVE_COMMIT]) + _b32("commit_hash", ix.commit_hash) + _b32("proof_hash", ix.proof_hash) \
        + _proof(ix.proof)


def _decode_zk(tag: int, body: bytes) -> Instruction | None:
    if tag in (Ix.WRITE_VK, Ix.WRITE_RVK) and len(body) >= 3:
        offset = struct.unpack_from("<H", body)[0]
        if offset + len(body) - 2 > VK_CAPACITY:
            raise LayoutError("write_vk: past the key buffer")
        return WriteVk(offset, body[2:], tag == Ix.WRITE_RVK)
    if tag in (Ix.SEAL_VK, Ix.SEAL_RVK) and len(body) == 66:
        bound2 = int.from_bytes(body[32:64], "big")
        if tag == Ix.SEAL_RVK and bound2:  # the program: INVALID_VK
            raise LayoutError("seal_rvk: the remainder key takes no bound")
        return SealVk(body[:32], bound2, struct.unpack_from("<H", body, 64)[0], tag == Ix.SEAL_RVK)
    if tag == Ix.PROVE_COMMIT and len(body) == 64 + PROOF_BYTES:
        return ProveCommit(body[:32], body[32:64], body[64:])
    if tag == Ix.PROVE_MERGE and len(body) >= 65:
        n = body[64]
        if not 0 < n <= MAX_PARENTS or len(body) != 65 + 8 * n + 64 + PROOF_BYTES:
            raise LayoutError("malformed prove_merge")
        at = 65 + 8 * n
        return ProveMerge(body[:32], body[32:64], struct.unpack_from(f"<{n}Q", body, 65), body[at : at + 64],
                          body[at + 64 :])  # fmt: skip
    return None


def _encode_nft(ix: BindNft | SyncHolder | SetShare | Sell | SetUri | Claim) -> bytes:
    if isinstance(ix, BindNft):
        flags = FLAG_SHARE_LOCKED if ix.lock_share else 0
        return (bytes([Ix.BIND_NFT]) + struct.pack("<H", _share(ix.share_bps)) + bytes([flags])
                + _b32("head_branch", ix.head_branch))  # fmt: skip
    if isinstance(ix, SyncHolder):
        return bytes([Ix.SYNC_HOLDER])
    if isinstance(ix, SetShare):
        return bytes([Ix.SET_SHARE]) + struct.pack("<H", _share(ix.share_bps))
    if isinstance(ix, Sell):
        return bytes([Ix.SELL]) + _u64("price", ix.price) + _u64("sale_seq", ix.sale_seq)
    if isinstance(ix, Claim):
        if not 0 <= ix.index < MAX_CONTRIBUTORS:
            raise LayoutError(f"contributor index must be 0..{MAX_CONTRIBUTORS - 1}, got {ix.index}")
        return bytes([Ix.CLAIM, ix.index])
    return bytes([Ix.SET_URI]) + _uri(ix.uri)


def _decode_nft(tag: int, body: bytes) -> Instruction | None:
    if tag == Ix.BIND_NFT and len(body) == 35:
        if body[2] & ~FLAG_SHARE_LOCKED:
            raise LayoutError("malformed bind_nft: unknown flags")
        share = _share(struct.unpack_from("<H", body)[0])
        return BindNft(share, bool(body[2] & FLAG_SHARE_LOCKED), body[3:])
    if tag == Ix.SYNC_HOLDER and not body:
        return SyncHolder()
    if tag == Ix.SET_SHARE and len(body) == 2:
        return SetShare(_share(struct.unpack("<H", body)[0]))
    if tag == Ix.SELL and len(body) == 16:
        return Sell(*struct.unpack("<QQ", body))
    if tag == Ix.CLAIM and len(body) == 1:
        if body[0] >= MAX_CONTRIBUTORS:  # the program: CONTRIBUTOR_MISMATCH
            raise LayoutError(f"claim: contributor index {body[0]} is past the {MAX_CONTRIBUTORS}-entry table")
        return Claim(body[0])
    if tag == Ix.SET_URI and 0 < len(body) <= MAX_URI:
        try:
            return SetUri(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise LayoutError("set_uri: uri is not utf-8") from None
    return None


def encode_instruction(ix: Instruction) -> bytes:
    """Instruction data for one federity instruction."""
    if isinstance(ix, CreateRepo):
        return (bytes([Ix.CREATE_REPO]) + _b32("repo_id", ix.repo_id) + _b32("mint", ix.mint)
                + _b32("body_digest", ix.body_digest))  # fmt: skip
    if isinstance(ix, AddMember | RemoveMember):
        tag = Ix.ADD_MEMBER if isinstance(ix, AddMember) else Ix.REMOVE_MEMBER
        return bytes([tag]) + _b32("member", ix.member)
    if isinstance(ix, AnchorCommit):
        if len(ix.parents) > MAX_PARENTS:
            raise LayoutError(f"at most {MAX_PARENTS} parents")
        flags = FLAG_HAS_COMMITMENT if ix.commitment is not None else 0
        return (
            bytes([Ix.ANCHOR_COMMIT]) + _b32("body_digest", ix.body_digest)
            + bytes([int(ix.kind), flags, len(ix.parents)]) + _b32("branch", ix.branch)
            + b"".join(_b32("parent", p) for p in ix.parents) + _g1(ix.commitment)
        )  # fmt: skip
    if isinstance(ix, Merge):
        if not 0 < len(ix.inputs) <= MAX_PARENTS or len(ix.weights) != len(ix.inputs):
            raise LayoutError(f"1..{MAX_PARENTS} inputs, one u64 weight each")
        if ix.remainder is not None and ix.commitment is None:
            raise LayoutError("a merge remainder needs a commitment")
        flags = ((FLAG_HAS_COMMITMENT if ix.commitment is not None else 0)
                 | (FLAG_HAS_REMAINDER if ix.remainder is not None else 0))  # fmt: skip
        return (
            bytes([Ix.MERGE]) + _b32("body_digest", ix.body_digest)
            + bytes([flags, len(ix.inputs)]) + _b32("branch", ix.branch)
            + b"".join(_b32("input", p) for p in ix.inputs)
            + b"".join(_u64("weight", w) for w in ix.weights) + _g1(ix.commitment) + _g1(ix.remainder)
        )  # fmt: skip
    if isinstance(ix, SetHead):
        return bytes([Ix.SET_HEAD]) + _b32("branch", ix.branch) + _b32("commit", ix.commit_hash)
    if isinstance(ix, BindNft | SyncHolder | SetShare | Sell | SetUri | Claim):
        return _encode_nft(ix)
    if isinstance(ix, WriteVk | SealVk | ProveCommit | ProveMerge):
        return _encode_zk(ix)
    raise TypeError(f"not a federity instruction: {ix!r}")


def decode_instruction(data: bytes) -> Instruction:
    """Inverse of encode_instruction; raises LayoutError where the program would reject."""
    if not data:
        raise LayoutError("empty instruction data")
    tag, body = data[0], bytes(data[1:])
    if tag == Ix.CREATE_REPO and len(body) == 96:
        return CreateRepo(body[:32], body[64:], body[32:64])
    if tag in (Ix.ADD_MEMBER, Ix.REMOVE_MEMBER) and len(body) == 32:
        return AddMember(body) if tag == Ix.ADD_MEMBER else RemoveMember(body)
    if tag == Ix.SET_HEAD and len(body) == 64:
        return SetHead(body[:32], body[32:])
    if tag == Ix.ANCHOR_COMMIT and len(body) >= 67:
        kind, flags, n = body[32], body[33], body[34]
        g1 = 64 if flags & FLAG_HAS_COMMITMENT else 0
        if flags & ~FLAG_HAS_COMMITMENT or n > MAX_PARENTS or len(body) != 67 + 32 * n + g1:
            raise LayoutError("malformed anchor_commit")
        if kind not in Kind.__members__.values():
            raise LayoutError(f"unknown kind {kind}")
        parents = tuple(body[67 + 32 * i : 99 + 32 * i] for i in range(n))
        return AnchorCommit(body[:32], Kind(kind), body[35:67], parents,
                            body[67 + 32 * n :] if g1 else None)  # fmt: skip
    if tag == Ix.MERGE and len(body) >= 66:
        flags, n = body[32], body[33]
        g1 = 64 * bin(flags & (FLAG_HAS_COMMITMENT | FLAG_HAS_REMAINDER)).count("1")
        if (flags not in (0, FLAG_HAS_COMMITMENT, FLAG_HAS_COMMITMENT | FLAG_HAS_REMAINDER)
                or not 0 < n <= MAX_PARENTS or len(body) != 66 + 40 * n + g1):  # fmt: skip
            raise LayoutError("malformed merge")
        inputs = tuple(body[66 + 32 * i : 98 + 32 * i] for i in range(n))
        w_at = 66 + 32 * n
        weights = struct.unpack_from(f"<{n}Q", body, w_at)
        c_at = w_at + 8 * n
        return Merge(body[:32], body[34:66], inputs, weights,
                     body[c_at : c_at + 64] if g1 else None,
                     body[c_at + 64 :] if g1 == 128 else None)  # fmt: skip
    other = _decode_nft(tag, body) or _decode_zk(tag, body)
    if other is not None:
        return other
    raise LayoutError(f"malformed instruction (tag {tag}, {len(body)} bytes)")


# --- accounts ----------------------------------------------------------------------------------

REPO_SIZE = 144 + 64 * MAX_BRANCHES  # 656
MEMBER_SIZE = 80
COMMIT_SIZE = 216
ZKVK_SIZE = 112 + VK_CAPACITY  # 1360
CONTRIBUTOR_SIZE = 48  # key[32], weight u64, owed u64
NFT_SIZE = 152 + CONTRIBUTOR_SIZE * MAX_CONTRIBUTORS  # 920


@dataclass(frozen=True)
class RepoAccount:
    bump: int
    repo_id: bytes
    owner: bytes
    mint: bytes
    commit_count: int
    accumulator: bytes
    branches: dict[bytes, bytes]  # branch hash -> head commit hash
    requires_proofs: bool = False  # a sealed verifying key (zkvk record): updates must be proven
    has_remainder_key: bool = False  # a sealed remainder key (zkrvk record): prove_merge proves merges


@dataclass(frozen=True)
class MemberAccount:
    bump: int
    repo_id: bytes
    member: bytes
    added_slot: int


@dataclass(frozen=True)
class CommitAccount:
    bump: int
    kind: Kind
    n_parents: int
    repo_id: bytes
    commit_hash: bytes
    author: bytes
    parents_digest: bytes
    commitment: bytes | None
    slot: int
    index: int  # 0-based position in the repository's accumulator chain
    proven: bool = False  # prove_commit verified its update proof (a merge: prove_merge, its remainder proof)


@dataclass(frozen=True)
class ZkVkAccount:
    """A repository's verifying key for update proofs (PDA seeds "zkvk", repo_id), or its merge remainder
    key (seeds "zkrvk", repo_id; ``remainder``, bound2 0)."""

    bump: int
    repo_id: bytes
    sealed: bool
    key_id: bytes  # sha256(vk) once sealed, zeros before
    bound2: int  # B^2 once sealed
    vk: bytes  # the sealed key; before the seal, the whole buffer as written so far
    remainder: bool = False


@dataclass(frozen=True)
class NftAccount:
    """The program's record of a repository's NFT (PDA seeds "nft", repo_id)."""

    bump: int
    repo_id: bytes
    mint: bytes
    holder: bytes  # as last recorded by the program (bind, a holder action, sale, sync_holder)
    head_branch: bytes  # branch hash whose head the metadata "head" field follows
    sale_seq: int  # +1 on every recorded holder change
    share_bps: int
    share_locked: bool
    # (key, weight, owed) in table order; owed: sale parts waiting in the nft PDA for claim
    contributors: tuple[tuple[bytes, int, int], ...]

    @property
    def owed(self) -> int:
        """Lamports the nft PDA holds for contributors, above its own rent-exempt minimum."""
        return sum(c[2] for c in self.contributors)


def _header(data: bytes, tag: Tag, size: int, pad: slice = slice(3, 8)) -> None:
    # The program creates accounts zero-filled and never writes the padding: nonzero padding is not its.
    if len(data) != size or data[0] != tag or data[1] != LAYOUT_VERSION or any(data[pad]):
        raise LayoutError(f"not a {tag.name.lower()} account ({len(data)} bytes)")


def decode_repo(data: bytes) -> RepoAccount:
    _header(data, Tag.REPO, REPO_SIZE, slice(4, 8))
    if data[3] & ~(REPO_REQUIRES_PROOFS | REPO_HAS_REMAINDER_KEY):
        raise LayoutError("not a repo account: unknown flags")
    branches = {}
    for i in range(MAX_BRANCHES):
        name = data[144 + 64 * i : 176 + 64 * i]
        if name != ZERO32:
            branches[bytes(name)] = bytes(data[176 + 64 * i : 208 + 64 * i])
    return RepoAccount(
        bump=data[2], repo_id=bytes(data[8:40]), owner=bytes(data[40:72]), mint=bytes(data[72:104]),
        commit_count=struct.unpack_from("<Q", data, 104)[0], accumulator=bytes(data[112:144]),
        branches=branches, requires_proofs=bool(data[3] & REPO_REQUIRES_PROOFS),
        has_remainder_key=bool(data[3] & REPO_HAS_REMAINDER_KEY),
    )  # fmt: skip


def decode_member(data: bytes) -> MemberAccount:
    _header(data, Tag.MEMBER, MEMBER_SIZE)
    return MemberAccount(data[2], bytes(data[8:40]), bytes(data[40:72]),
                         struct.unpack_from("<Q", data, 72)[0])  # fmt: skip


def decode_commit(data: bytes) -> CommitAccount:
    _header(data, Tag.COMMIT, COMMIT_SIZE, slice(6, 8))
    if data[3] >= len(Kind) or data[4] & ~(FLAG_HAS_COMMITMENT | FLAG_PROVEN) or data[5] > MAX_PARENTS:
        raise LayoutError("not a commit account: bad kind, flags or parent count")
    slot, index = struct.unpack_from("<QQ", data, 200)
    return CommitAccount(
        bump=data[2], kind=Kind(data[3]), n_parents=data[5], repo_id=bytes(data[8:40]),
        commit_hash=bytes(data[40:72]), author=bytes(data[72:104]),
        parents_digest=bytes(data[104:136]),
        commitment=bytes(data[136:200]) if data[4] & FLAG_HAS_COMMITMENT else None,
        slot=slot, index=index, proven=bool(data[4] & FLAG_PROVEN),
    )  # fmt: skip


def decode_zkvk(data: bytes, remainder: bool = False) -> ZkVkAccount:
    """The update key's record, or with ``remainder`` the remainder key's (another tag: one never
    decodes as the other)."""
    _header(data, Tag.ZKRVK if remainder else Tag.ZKVK, ZKVK_SIZE, slice(4, 8))
    vk_len = struct.unpack_from("<H", data, 104)[0]
    if data[3] & ~VK_SEALED or any(data[106:112]) or vk_len > VK_CAPACITY:
        raise LayoutError("not a zkvk account: bad flags or key length")
    sealed = bool(data[3] & VK_SEALED)
    return ZkVkAccount(bump=data[2], repo_id=bytes(data[8:40]), sealed=sealed, key_id=bytes(data[40:72]),
                       bound2=int.from_bytes(data[72:104], "big"),
                       vk=bytes(data[112 : 112 + vk_len] if sealed else data[112:]), remainder=remainder)  # fmt: skip


def decode_nft(data: bytes) -> NftAccount:
    if len(data) != NFT_SIZE or data[0] != Tag.NFT or data[1] != LAYOUT_VERSION or any(data[4:8]):
        raise LayoutError(f"not a nft account ({len(data)} bytes)")
    sale_seq, share, n = struct.unpack_from("<QHH", data, 136)
    if data[3] & ~FLAG_SHARE_LOCKED or n > MAX_CONTRIBUTORS or share > MAX_SHARE_BPS or any(data[148:152]):
        raise LayoutError("not a nft account: bad flags, share or contributor count")
    if any(data[152 + CONTRIBUTOR_SIZE * n :]):  # the program fills slots in order, never clears one
        raise LayoutError("not a nft account: data in a free contributor slot")
    table = tuple((bytes(data[at : at + 32]), *struct.unpack_from("<QQ", data, at + 32))
                  for at in range(152, 152 + CONTRIBUTOR_SIZE * n, CONTRIBUTOR_SIZE))  # fmt: skip
    return NftAccount(
        bump=data[2], repo_id=bytes(data[8:40]), mint=bytes(data[40:72]), holder=bytes(data[72:104]),
        head_branch=bytes(data[104:136]), sale_seq=sale_seq, share_bps=share,
        share_locked=bool(data[3] & FLAG_SHARE_LOCKED), contributors=table,
    )  # fmt: skip


def sale_amounts(price: int, share_bps: int,
                 contributors: Sequence[int] | Sequence[tuple[bytes, int]] | Sequence[tuple[bytes, int, int]]
                 ) -> tuple[int, list[int]]:  # fmt: skip
    """What sell pays: (seller, [contributor_i]) (the program's rounding rule).

    S = floor(price * share_bps / 10000); contributor i gets floor(S * w_i / W), W = sum of the
    weights; the seller gets price - sum(paid), so the floors' dust stays with the seller.
    ``contributors``: weights, or the (key, weight, owed) entries of NftAccount.contributors.
    Where a part is paid (pushed, or left owed in the nft PDA) is ``waits``'s question."""
    weights = [c if isinstance(c, int) else c[1] for c in contributors]
    _u64("price", price)
    share = price * _share(share_bps) // MAX_SHARE_BPS
    total = sum(weights)
    paid = [share * w // total if total else 0 for w in weights]
    return price - sum(paid), paid


def waits(balance: int, amount: int, rent_minimum: int) -> bool:
    """sell's rule: does a part of ``amount`` lamports for an account holding ``balance``, whose
    rent-exempt minimum (for its data size) is ``rent_minimum``, wait in the nft PDA (owed, paid by
    claim) instead of being pushed? The runtime refuses to leave an account with lamports below
    that minimum: an empty wallet cannot receive a small payment. claim refuses in the same case
    (CONTRIBUTOR_UNFUNDED)."""
    return 0 < amount and balance + amount < rent_minimum


# Return data of anchor_commit and merge: accumulator after the append || commit count (u64).
RETURN_DATA_SIZE = 40


def decode_return_data(data: bytes) -> tuple[bytes, int]:
    if len(data) != RETURN_DATA_SIZE:
        raise LayoutError(f"return data must be {RETURN_DATA_SIZE} bytes")
    return bytes(data[:32]), struct.unpack_from("<Q", data, 32)[0]


# --- Ed25519 precompile ------------------------------------------------------------------------


def ed25519_instruction_data(pubkey: bytes, signature: bytes, message: bytes) -> bytes:
    """Data of an Ed25519SigVerify111... instruction proving one signature, all offsets
    pointing into this instruction (index 0xFFFF), as the program requires. The message is the
    commit hash the program recomputes (anchor_commit, merge) or the repository id = the genesis
    commit hash (create_repo)."""
    if len(signature) != 64:
        raise LayoutError("signature must be 64 bytes")
    pk_at, sig_at, msg_at = 16, 48, 112
    offsets = struct.pack(
        "<7H", sig_at, 0xFFFF, pk_at, 0xFFFF, msg_at, len(message), 0xFFFF
    )
    return bytes([1, 0]) + offsets + _b32("pubkey", pubkey) + bytes(signature) + bytes(message)
