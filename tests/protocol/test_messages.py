"""Gossip message codecs: round trips, strict decoding, signing domain, request/response frames."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from helpers import fixed_identity

from fednode.identity import verify_signature
from protocol import dagcbor
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, RAW, FormatError, b58encode
from protocol.objects import Commit, Manifest, TensorEntry, _check_metrics

REPO = bytes(range(32))
HEAD = CID.hash(DAG_CBOR, b"a commit")


def _signed(msg: m.HeadAnnouncement | m.Membership | m.MergeProposal):
    ident = fixed_identity()
    return type(msg)(**{**msg.__dict__, "sig": ident.sign(msg.signing_hash())})


def test_topic_names_the_repository() -> None:
    assert m.topic_for(REPO) == f"/fednode/repo/{b58encode(REPO)}/1"
    assert m.topic_for(REPO) != m.topic_for(bytes(32))


def test_round_trips() -> None:
    pub = fixed_identity().public_key
    msgs = [
        m.CommitEnvelope(b"\xa1abc"),
        _signed(m.HeadAnnouncement(REPO, "main", HEAD, 7, 1000, pub)),
        _signed(m.MergeProposal(REPO, "alice/exp", HEAD, "please merge", 8, 1001, pub)),
        _signed(m.Membership(REPO, (bytes(32), bytes([1]) * 32), True, 9, 1002, pub)),
    ]
    for msg in msgs:
        assert m.decode(msg.encode()) == msg


def test_signature_covers_every_field_and_is_domain_separated() -> None:
    ident = fixed_identity()
    ann = _signed(m.HeadAnnouncement(REPO, "main", HEAD, 7, 1000, ident.public_key))
    assert verify_signature(ident.public_key, ann.signing_hash(), ann.sig)
    for change in ({"seq": 8}, {"branch": "dev"}, {"head": CID.hash(DAG_CBOR, b"x")}, {"repo": bytes(32)}):
        moved = m.HeadAnnouncement(**{**ann.__dict__, **change})
        assert not verify_signature(ident.public_key, moved.signing_hash(), ann.sig), change
    # the same fields under another kind hash differently: no cross-kind signature reuse
    prop = m.MergeProposal(REPO, "main", HEAD, "", 7, 1000, ident.public_key)
    assert prop.signing_hash() != ann.signing_hash()
    # the signed hash is not the bare body hash (a commit signature is sha256 of a bare body)
    assert ann.signing_hash() == hashlib.sha256(m.DOMAIN + b"head\0" + dagcbor.encode(ann.body())).digest()
    assert ann.signing_hash() != hashlib.sha256(dagcbor.encode(ann.body())).digest()


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "commit", "v": 2, "block": b"x"},
        {"t": "commit", "v": 1, "block": b"x", "extra": 1},
        {"t": "commit", "v": 1, "block": ""},
        {"t": "nope", "v": 1},
        {"t": "head", "v": 1, "repo": REPO, "branch": "main", "head": HEAD, "seq": 1, "time": 1,
         "from": bytes(32), "sig": b"short"},
        {"t": "head", "v": 1, "repo": REPO[:31], "branch": "main", "head": HEAD, "seq": 1, "time": 1,
         "from": bytes(32), "sig": bytes(64)},
        {"t": "head", "v": 1, "repo": REPO, "branch": "main", "head": CID.hash(RAW, b"x"), "seq": 1, "time": 1,
         "from": bytes(32), "sig": bytes(64)},
        {"t": "head", "v": 1, "repo": REPO, "branch": "a/../b", "head": HEAD, "seq": 1, "time": 1,
         "from": bytes(32), "sig": bytes(64)},
        {"t": "head", "v": 1, "repo": REPO, "branch": "main", "head": HEAD, "seq": -1, "time": 1,
         "from": bytes(32), "sig": bytes(64)},
        {"t": "members", "v": 1, "repo": REPO, "members": [bytes([2]) * 32, bytes([1]) * 32], "public": False,
         "seq": 1, "time": 1, "from": bytes(32), "sig": bytes(64)},
        {"t": "members", "v": 1, "repo": REPO, "members": [], "public": 1, "seq": 1, "time": 1,
         "from": bytes(32), "sig": bytes(64)},
    ],
)
def test_malformed_messages_are_refused(obj: dict) -> None:
    with pytest.raises(FormatError):
        m.decode(dagcbor.encode(obj))


def test_non_canonical_oversize_and_garbage_are_refused() -> None:
    good = m.CommitEnvelope(b"x").encode()
    with pytest.raises(FormatError):
        m.decode(good + b"\x00")
    with pytest.raises(FormatError):
        m.decode(b"\xff\x00garbage")
    with pytest.raises(FormatError, match="too large"):
        m.decode(m.CommitEnvelope(bytes(m.MAX_GOSSIP_BYTES)).encode())


def test_unsigned_messages_cannot_be_encoded() -> None:
    with pytest.raises(FormatError):
        m.HeadAnnouncement(REPO, "main", HEAD, 1, 1, bytes(32)).encode()


def test_block_requests_and_heads_replies() -> None:
    cids = [CID.hash(RAW, bytes([i])) for i in range(3)]
    assert m.decode_want(m.encode_want(cids)) == cids
    with pytest.raises(FormatError):
        m.encode_want([])
    with pytest.raises(FormatError):
        m.encode_want([cids[0]] * (m.MAX_WANT + 1))
    with pytest.raises(FormatError):
        m.decode_want(dagcbor.encode({"want": [b"not a cid"]}))
    reply = m.HeadsReply(HEAD, [b"a", b"b"], None)
    assert m.HeadsReply.decode(reply.encode()) == reply
    with pytest.raises(FormatError):
        m.HeadsReply.decode(dagcbor.encode({"genesis": CID.hash(RAW, b""), "heads": [], "members": None}))
    assert m.decode_heads_query(m.encode_heads_query(REPO)) == REPO
    with pytest.raises(FormatError):
        m.decode_heads_query(dagcbor.encode({"repo": b"short"}))


# --- one value, one block: exact types in every decoded field (issue 10, items 1 and 3) -------------


@pytest.mark.parametrize("kind", [[], {}, [1], {"a": 1}, b"head", 1, None])
def test_a_kind_of_another_type_is_a_format_error_not_a_crash(kind: object) -> None:
    """{"t": [], "v": 1}: a list is unhashable, and a membership test against a dict raised TypeError."""
    data = dagcbor.encode({"t": kind, "v": 1})
    with pytest.raises(FormatError):
        m.decode(data)


def _genesis_and_update() -> tuple[Commit, Commit]:
    ident = fixed_identity()
    weights = CID.hash(DAG_CBOR, b"a manifest")
    settings = {"name": "r", "scale_bits": 24, "snapshot_interval": 8}
    g = Commit(None, (), "init", weights, ident.public_key, 1, "genesis", info={"settings": settings})
    g = replace(g, sig=ident.sign(g.commit_hash()))
    u = Commit(g.commit_hash(), (g.cid(),), "update", weights, ident.public_key, 2, "u", {"loss": 0.5},
               {"training": {"samples": 10}}, parent_hashes=(g.commit_hash(),))
    return g, replace(u, sig=ident.sign(u.commit_hash()))


@pytest.mark.parametrize("v", [True, 1.0])
def test_v_true_and_v_float_copies_of_a_signed_commit_are_refused(v: object) -> None:
    """Such a copy has the same commit hash and a valid signature but another CID: it must not decode,
    neither from a store nor out of a gossiped commit envelope."""
    _, update = _genesis_and_update()
    block = update.encode()
    assert Commit.decode(block) == update
    copy = dagcbor.encode({**dagcbor.decode(block), "v": v})
    assert copy != block and CID.hash(DAG_CBOR, copy) != update.cid()
    with pytest.raises(FormatError, match="bad commit fields"):
        Commit.decode(copy)
    envelope = m.decode(m.CommitEnvelope(copy).encode())  # the envelope only carries bytes ...
    with pytest.raises(FormatError):
        Commit.decode(envelope.block)  # ... the commit inside is refused


@pytest.mark.parametrize("v", [True, 1.0])
def test_v_true_and_v_float_copies_of_signed_messages_are_refused(v: object) -> None:
    pub = fixed_identity().public_key
    for msg in (_signed(m.HeadAnnouncement(REPO, "main", HEAD, 7, 1000, pub)), m.CommitEnvelope(b"x"),
                _signed(m.Membership(REPO, (bytes(32),), True, 9, 1002, pub))):
        copy = dagcbor.encode({**dagcbor.decode(msg.encode()), "v": v})
        with pytest.raises(FormatError, match="not a fednode v1 message"):
            m.decode(copy)


@pytest.mark.parametrize(("path", "value"), [
    (("settings", "scale_bits"), True),
    (("settings", "scale_bits"), 24.0),
    (("settings", "snapshot_interval"), 8.0),
    (("settings", "snapshot_interval"), True),
    (("settings", "name"), b"r"),
    (("settings", "extra"), 1),
])
def test_genesis_settings_have_exact_types(path: tuple[str, str], value: object) -> None:
    genesis, _ = _genesis_and_update()
    obj = dagcbor.decode(genesis.encode())
    obj["info"][path[0]][path[1]] = value
    with pytest.raises(FormatError, match="settings"):
        Commit.decode(dagcbor.encode(obj))


@pytest.mark.parametrize("info", [
    {"training": [10]},
    {"training": {"samples": True}},
    {"training": {"samples": 10.0}},
    {"merge": {"weights": [1.0]}},
    {"merge": {"weights": [-1]}},
    {"merge": {"inputs": [b"not a link"]}},
    {"merge": {"base": CID.hash(RAW, b"x")}},
    {"merge": {"strategy": {"name": 1}}},
    {"merge": {"samples": False}},
    {"merge": []},
])
def test_info_fields_later_code_reads_have_exact_types(info: dict) -> None:
    _, update = _genesis_and_update()
    obj = dagcbor.decode(update.encode())
    obj["info"] = info
    with pytest.raises(FormatError, match="info"):
        Commit.decode(dagcbor.encode(obj))


def test_a_revert_commit_records_its_target() -> None:
    genesis, update = _genesis_and_update()
    obj = dagcbor.decode(update.encode())
    obj["kind"] = "revert"
    obj["info"] = {"revert": {"target": genesis.cid()}}
    assert Commit.decode(dagcbor.encode(obj)).info["revert"]["target"] == genesis.cid()
    for bad in ({}, {"revert": {}}, {"revert": {"target": bytes(genesis.cid())}}, {"revert": [genesis.cid()]}):
        obj["info"] = bad
        with pytest.raises(FormatError, match="revert"):
            Commit.decode(dagcbor.encode(obj))


def _manifest_obj() -> dict:
    state = CID.hash(RAW, bytes(16))
    fixed = TensorEntry("F32", (2, 2), "fixed", 1, CID.hash(RAW, b"d"), 8, 16, 24, state=state)
    return dagcbor.decode(Manifest({"w": fixed}).encode())


@pytest.mark.parametrize(("field", "value"), [
    ("v", True), ("v", 1.0), ("dtype", []), ("dtype", {}), ("encoding", []), ("encoding", {"x": 1}),
    ("int_bits", 8.0), ("int_bits", True), ("scale_bits", True), ("depth", 1.0), ("size", 8.0),
    ("compression", "none"), ("compression", ["zstd"]), ("shape", [2.0, 2]), ("shape", [True, 4]),
    ("shape", [0, 2**64 - 1]),
])
def test_manifest_fields_have_exact_types_and_one_encoding(field: str, value: object) -> None:
    obj = _manifest_obj()
    assert Manifest.decode(dagcbor.encode(obj)).encode() == dagcbor.encode(obj)
    if field == "v":
        obj["v"] = value
    else:
        obj["tensors"]["w"][field] = value
    with pytest.raises(FormatError):
        Manifest.decode(dagcbor.encode(obj))


def test_metric_names_and_tensor_names_must_be_strings() -> None:
    with pytest.raises(FormatError, match="metric names"):
        _check_metrics({1: 0.5})
    with pytest.raises(FormatError, match="tensor names"):
        Manifest.from_obj({**_manifest_obj(), "tensors": {b"w": _manifest_obj()["tensors"]["w"]}})
