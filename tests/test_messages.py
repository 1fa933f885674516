"""Gossip message codecs: round trips, strict decoding, signing domain, request/response frames."""

from __future__ import annotations

import hashlib

import pytest
from helpers import fixed_identity

from fednode.identity import verify_signature
from protocol import dagcbor
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, RAW, FormatError, b58encode

REPO = bytes(range(32))
HEAD = CID.hash(DAG_CBOR, b"a commit")


def _signed(msg: m.HeadAnnouncement | m.Membership | m.MergeProposal):  # noqa: ANN202
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
