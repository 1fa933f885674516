"""Network messages of the fednode daemon: topics, protocol ids and schemas (pure codecs, no I/O).

Every gossip message is one DAG-CBOR map ``{"t": kind, "v": 1, ...}``:

- ``commit``: a signed commit envelope ``{block}``; the commit's own Ed25519 signature
  (over its commit hash) authenticates it, the envelope adds nothing.
- ``head``: a branch-head announcement ``{repo, branch, head, seq, time, from, sig}``.
- ``proposal``: a merge proposal ``{repo, branch, head, message, seq, time, from, sig}``.
- ``members``: the repository's membership ``{repo, members, public, seq, time, from, sig}``,
  valid only when ``from`` is the repository owner (the genesis author).
- ``keys``: a private repository's key of ``epoch``, wrapped for the owner and each member
  ``{repo, epoch, wrapped: [[member key, wrapped key], ...], seq, time, from, sig}``, valid only
  when ``from`` is the owner (a list of pairs: DAG-CBOR map keys are strings).
- ``sealed``: on a private repository's topic every other kind travels inside
  ``{epoch, box}``, ``box`` = XChaCha20-Poly1305 of the inner message under the repository key
  of ``epoch``, bound to the topic name; nothing of the inner message shows. Membership and key
  messages stay readable there (anyone on the topic must be able to check who is a member) but
  travel without their ``repo`` field (``without_repo``; receivers put it back from the topic).

Signed messages carry ``sig`` = Ed25519 over ``sha256(DOMAIN + kind + 0 + dagcbor(body))``
where ``body`` is the map without ``sig``: the domain prefix keeps these signatures apart
from commit signatures (sha256 of a commit body) made with the same wallet key.
``seq`` is strictly increasing per (repository, announcer, kind[, branch]): receivers drop
anything not newer than what they have (replays).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from protocol import dagcbor
from protocol.multiformats import CID, DAG_CBOR, FormatError, b58encode

VERSION = 1
TOPIC_PREFIX = "/fednode/repo/"
BLOCKS_PROTOCOL = "/fednode/blocks/1.0.0"
HEADS_PROTOCOL = "/fednode/heads/1.0.0"
MAX_GOSSIP_BYTES = 512 * 1024  # ours; GossipSub itself silently drops RPCs over 1 MiB
MAX_BLOCK_BYTES = 4 * 1024 * 1024  # UnixFS chunks are 256 KiB; manifests/commits stay far below
MAX_WANT = 256  # CIDs per block request
MAX_MEMBERS = 1024
MAX_PROPOSAL_MESSAGE = 4096
DOMAIN = b"fednode/net/v1/"
WRAPPED_KEY_BYTES = 80  # fednode.sealing.WRAPPED_BYTES: ephemeral X25519 key, 32-byte key, MAC
MAX_EPOCH = 2**32  # fednode.storage.keyring.MAX_EPOCH
MIN_BOX = 24 + 16  # a sealed box: nonce, ciphertext, tag
SEAL_OVERHEAD = MIN_BOX + 64  # the box's and the envelope's own bytes
MAX_SEALED_BYTES = MAX_GOSSIP_BYTES + SEAL_OVERHEAD
TOPIC_DOMAIN = b"fednode/topic/v1"


def topic_for(repo_id: bytes, private: bool = False) -> str:
    """A repository's GossipSub topic. A private repository's is opaque (a hash of its id): a topic
    name or a subscription list does not reveal the id to whoever does not know it already."""
    if private:
        return f"{TOPIC_PREFIX}p/{b58encode(hashlib.sha256(TOPIC_DOMAIN + repo_id).digest())}/{VERSION}"
    return f"{TOPIC_PREFIX}{b58encode(repo_id)}/{VERSION}"


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise FormatError(what)


def _key32(v: Any, what: str) -> bytes:
    _require(isinstance(v, bytes) and len(v) == 32, f"{what} must be 32 bytes")
    return v


def _uint(v: Any, what: str) -> int:
    _require(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63, f"{what} must be a uint")
    return v


def _branch(v: Any) -> str:
    _require(isinstance(v, str) and 0 < len(v) <= 100 and ".." not in v, "bad branch name")
    return v


@dataclass(frozen=True)
class CommitEnvelope:
    block: bytes
    kind = "commit"

    def encode(self) -> bytes:
        return dagcbor.encode({"t": self.kind, "v": VERSION, "block": self.block})


class _Signed:
    """Shared signing logic: subclasses define ``kind`` and ``body()``."""

    kind: str
    sig: bytes
    announcer: bytes

    def body(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def signing_hash(self) -> bytes:
        return hashlib.sha256(DOMAIN + self.kind.encode() + b"\0" + dagcbor.encode(self.body())).digest()

    def encode(self) -> bytes:
        _require(len(self.sig) == 64, "message is not signed")
        return dagcbor.encode({**self.body(), "sig": self.sig})


@dataclass(frozen=True)
class HeadAnnouncement(_Signed):
    repo: bytes
    branch: str
    head: CID
    seq: int
    time_ms: int
    announcer: bytes
    sig: bytes = b""
    kind = "head"

    def body(self) -> dict[str, Any]:
        return {"t": self.kind, "v": VERSION, "repo": self.repo, "branch": self.branch, "head": self.head,
                "seq": self.seq, "time": self.time_ms, "from": self.announcer}


@dataclass(frozen=True)
class MergeProposal(_Signed):
    repo: bytes
    branch: str
    head: CID
    message: str
    seq: int
    time_ms: int
    announcer: bytes
    sig: bytes = b""
    kind = "proposal"

    def body(self) -> dict[str, Any]:
        return {"t": self.kind, "v": VERSION, "repo": self.repo, "branch": self.branch, "head": self.head,
                "message": self.message, "seq": self.seq, "time": self.time_ms, "from": self.announcer}


@dataclass(frozen=True)
class Membership(_Signed):
    repo: bytes
    members: tuple[bytes, ...]
    public: bool
    seq: int
    time_ms: int
    announcer: bytes  # must be the repository owner
    sig: bytes = b""
    kind = "members"

    def body(self) -> dict[str, Any]:
        return {"t": self.kind, "v": VERSION, "repo": self.repo, "members": sorted(self.members),
                "public": self.public, "seq": self.seq, "time": self.time_ms, "from": self.announcer}


@dataclass(frozen=True)
class RepoKeys(_Signed):
    """The repository key of ``epoch``, wrapped (``fednode.sealing.wrap``) for each member key."""

    repo: bytes
    epoch: int
    wrapped: tuple[tuple[bytes, bytes], ...]  # (member key, wrapped key), sorted by member key
    seq: int
    time_ms: int
    announcer: bytes  # must be the repository owner
    sig: bytes = b""
    kind = "keys"

    def body(self) -> dict[str, Any]:
        return {"t": self.kind, "v": VERSION, "repo": self.repo, "epoch": self.epoch,
                "wrapped": [[k, w] for k, w in sorted(self.wrapped)], "seq": self.seq, "time": self.time_ms,
                "from": self.announcer}

    def wrapped_for(self, member: bytes) -> bytes | None:
        return dict(self.wrapped).get(member)


@dataclass(frozen=True)
class Sealed:
    """A message sealed with a private repository's key of ``epoch`` (see the module docstring)."""

    epoch: int
    box: bytes
    kind = "sealed"

    def encode(self) -> bytes:
        return dagcbor.encode({"t": self.kind, "v": VERSION, "epoch": self.epoch, "box": self.box})


Message = CommitEnvelope | HeadAnnouncement | MergeProposal | Membership | RepoKeys | Sealed
INNER_KINDS = ("commit", "head", "proposal")  # what a sealed envelope may hold
CLEAR_KINDS = ("members", "keys")  # what stays readable on a private topic (membership must be checkable)
_KEYS = {
    "commit": {"t", "v", "block"},
    "head": {"t", "v", "repo", "branch", "head", "seq", "time", "from", "sig"},
    "proposal": {"t", "v", "repo", "branch", "head", "message", "seq", "time", "from", "sig"},
    "members": {"t", "v", "repo", "members", "public", "seq", "time", "from", "sig"},
    "keys": {"t", "v", "repo", "epoch", "wrapped", "seq", "time", "from", "sig"},
    "sealed": {"t", "v", "epoch", "box"},
}


def _wrapped(v: Any) -> tuple[tuple[bytes, bytes], ...]:
    _require(isinstance(v, list) and len(v) <= MAX_MEMBERS + 1, f"wrapped must be a list of at most {MAX_MEMBERS + 1}")
    pairs = []
    for item in v:
        _require(isinstance(item, list) and len(item) == 2, "a wrapped entry is [member, wrapped key]")
        key = _key32(item[0], "member")
        _require(isinstance(item[1], bytes) and len(item[1]) == WRAPPED_KEY_BYTES,
                 f"a wrapped key is {WRAPPED_KEY_BYTES} bytes")
        pairs.append((key, item[1]))
    keys = [k for k, _ in pairs]
    _require(keys == sorted(set(keys)), "wrapped keys must be sorted by member and unique")
    return tuple(pairs)


def without_repo(data: bytes) -> bytes:
    """A membership or key message as it travels on a private repository's topic: without its
    ``repo`` field, which receivers put back from the topic before checking the signature (the
    opaque topic name would be of little use if every membership change spelled the id)."""
    obj = dagcbor.decode(data)
    _require(isinstance(obj, dict) and obj.get("t") in CLEAR_KINDS and "repo" in obj, "not a members or keys message")
    del obj["repo"]
    return dagcbor.encode(obj)


def decode(data: bytes, implied_repo: bytes | None = None) -> Message:
    """Parse and structurally validate one gossip message (signatures are checked by the caller).
    ``implied_repo``: received on that private repository's topic, where membership and key
    messages travel without their ``repo`` field (``without_repo``): required absent, put back."""
    _require(len(data) <= MAX_SEALED_BYTES, "message too large")
    obj = dagcbor.decode(data)
    # ``type(...) is int``: True and 1.0 equal 1 in Python, and a copy carrying them would be a
    # second block for the same signed message.
    _require(isinstance(obj, dict) and type(obj.get("v")) is int and obj["v"] == VERSION, "not a fednode v1 message")
    kind = obj.get("t")
    if implied_repo is not None and kind in CLEAR_KINDS:
        _require("repo" not in obj, "a private topic's membership and key messages name no repository")
        obj["repo"] = implied_repo
    _require(isinstance(kind, str) and kind in _KEYS and set(obj) == _KEYS[kind], "bad fields for this message kind")
    if kind == "sealed":
        _require(isinstance(obj["box"], bytes) and MIN_BOX <= len(obj["box"]), "bad sealed box")
        epoch = _uint(obj["epoch"], "epoch")
        _require(epoch < MAX_EPOCH, "bad epoch")
        return Sealed(epoch, obj["box"])
    _require(len(data) <= MAX_GOSSIP_BYTES, "message too large")
    if kind == "commit":
        _require(isinstance(obj["block"], bytes) and len(obj["block"]) > 0, "commit block must be bytes")
        return CommitEnvelope(obj["block"])
    sig = obj["sig"]
    _require(isinstance(sig, bytes) and len(sig) == 64, "signature must be 64 bytes")
    repo, announcer = _key32(obj["repo"], "repo"), _key32(obj["from"], "from")
    seq, time_ms = _uint(obj["seq"], "seq"), _uint(obj["time"], "time")
    if kind == "members":
        members = obj["members"]
        _require(isinstance(members, list) and len(members) <= MAX_MEMBERS, "members must be a list")
        keys = tuple(_key32(m, "member") for m in members)
        _require(list(keys) == sorted(set(keys)), "members must be sorted and unique")
        _require(isinstance(obj["public"], bool), "public must be a bool")
        return Membership(repo, keys, obj["public"], seq, time_ms, announcer, sig)
    if kind == "keys":
        epoch = _uint(obj["epoch"], "epoch")
        _require(epoch < MAX_EPOCH, "bad epoch")
        return RepoKeys(repo, epoch, _wrapped(obj["wrapped"]), seq, time_ms, announcer, sig)
    head = obj["head"]
    _require(isinstance(head, CID) and head.codec == DAG_CBOR, "head must be a commit CID")
    branch = _branch(obj["branch"])
    if kind == "head":
        return HeadAnnouncement(repo, branch, head, seq, time_ms, announcer, sig)
    message = obj["message"]
    _require(isinstance(message, str) and len(message) <= MAX_PROPOSAL_MESSAGE, "bad proposal message")
    return MergeProposal(repo, branch, head, message, seq, time_ms, announcer, sig)


# --- request/response protocols (one length-prefixed DAG-CBOR frame each way) --------------------


def encode_want(cids: list[CID]) -> bytes:
    _require(0 < len(cids) <= MAX_WANT, f"a request wants 1..{MAX_WANT} blocks")
    return dagcbor.encode({"want": list(cids)})


def decode_want(data: bytes) -> list[CID]:
    obj = dagcbor.decode(data)
    _require(isinstance(obj, dict) and set(obj) == {"want"}, "bad block request")
    want = obj["want"]
    _require(isinstance(want, list) and 0 < len(want) <= MAX_WANT, "bad want list")
    _require(all(isinstance(c, CID) for c in want), "want list holds CIDs only")
    return want


@dataclass(frozen=True)
class HeadsReply:
    """Answer to a heads query: the genesis CID and the signed objects the peer holds.

    ``refused`` is set (and nothing else) when the peer will not answer this asker: "private" for a
    private repository the asker is not a member of. ``keys`` is the repository's latest signed
    key message (encoded ``RepoKeys``) for a private repository, for members only."""

    genesis: CID | None
    heads: list[bytes] = field(default_factory=list)  # encoded HeadAnnouncements
    members: bytes | None = None  # encoded Membership
    refused: str | None = None
    keys: bytes | None = None

    def encode(self) -> bytes:
        obj: dict[str, Any] = {"genesis": self.genesis, "heads": self.heads, "members": self.members}
        if self.refused is not None:
            obj["refused"] = self.refused
        if self.keys is not None:
            obj["keys"] = self.keys
        return dagcbor.encode(obj)

    @classmethod
    def decode(cls, data: bytes) -> HeadsReply:
        obj = dagcbor.decode(data)
        _require(isinstance(obj, dict) and {"genesis", "heads", "members"} <= set(obj)
                 <= {"genesis", "heads", "members", "refused", "keys"}, "bad heads reply")
        genesis, heads, members = obj["genesis"], obj["heads"], obj["members"]
        refused, keys = obj.get("refused"), obj.get("keys")
        _require(genesis is None or (isinstance(genesis, CID) and genesis.codec == DAG_CBOR), "bad genesis")
        _require(isinstance(heads, list) and len(heads) <= 256, "bad heads list")
        _require(all(isinstance(h, bytes) for h in heads), "heads are encoded announcements")
        _require(members is None or isinstance(members, bytes), "bad members")
        _require(refused is None or refused in REFUSALS, "bad refusal")
        _require(keys is None or isinstance(keys, bytes), "bad keys")
        return cls(genesis, heads, members, refused, keys)


REFUSALS = ("private",)


def encode_heads_query(repo_id: bytes) -> bytes:
    return dagcbor.encode({"repo": _key32(repo_id, "repo")})


def decode_heads_query(data: bytes) -> bytes:
    obj = dagcbor.decode(data)
    _require(isinstance(obj, dict) and set(obj) == {"repo"}, "bad heads query")
    return _key32(obj["repo"], "repo")
