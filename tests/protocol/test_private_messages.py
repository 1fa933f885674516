"""Private repositories' messages: the key message's codec, the sealed envelope, opaque topic names."""

from __future__ import annotations

import hashlib

import pytest
from helpers import fixed_identity

from fednode import sealing
from fednode.identity import Identity, verify_signature
from protocol import dagcbor
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, FormatError, b58encode

REPO = hashlib.sha256(b"a private repository").digest()
HEAD = CID.hash(DAG_CBOR, b"a commit")


def _keys(owner: Identity, members: list[bytes], epoch: int = 3, key: bytes | None = None) -> m.RepoKeys:
    key = key or sealing.new_key()
    wrapped = tuple(sorted((k, sealing.wrap(key, k)) for k in {owner.public_key, *members}))
    msg = m.RepoKeys(REPO, epoch, wrapped, 11, 1000, owner.public_key)
    return m.RepoKeys(**{**msg.__dict__, "sig": owner.sign(msg.signing_hash())})


def test_wrapped_size_agrees_with_sealing() -> None:
    assert m.WRAPPED_KEY_BYTES == sealing.WRAPPED_BYTES  # protocol/ may not import fednode/


def test_keys_message_round_trip_and_each_member_unwraps_its_key() -> None:
    owner, member, stranger = fixed_identity(), Identity.generate(), Identity.generate()
    key = sealing.new_key()
    msg = _keys(owner, [member.public_key], key=key)
    back = m.decode(msg.encode())
    assert back == msg and isinstance(back, m.RepoKeys)
    assert verify_signature(owner.public_key, back.signing_hash(), back.sig)
    for ident in (owner, member):
        wrapped = back.wrapped_for(ident.public_key)
        assert wrapped is not None and sealing.unwrap(wrapped, ident.seed) == key
    assert back.wrapped_for(stranger.public_key) is None
    with pytest.raises(sealing.SealError):  # a member's entry opens for that member only
        sealing.unwrap(back.wrapped_for(member.public_key) or b"", stranger.seed)


def test_keys_signature_covers_epoch_and_entries() -> None:
    owner, member = fixed_identity(), Identity.generate()
    msg = _keys(owner, [member.public_key])
    for change in ({"epoch": msg.epoch + 1}, {"wrapped": msg.wrapped[:1]}, {"repo": bytes(32)}, {"seq": 12}):
        moved = m.RepoKeys(**{**msg.__dict__, **change})
        assert not verify_signature(owner.public_key, moved.signing_hash(), msg.sig), change
    # a signature over the same fields by anyone but ``from`` does not verify
    forged = m.RepoKeys(**{**msg.__dict__, "sig": member.sign(msg.signing_hash())})
    back = m.decode(forged.encode())
    assert isinstance(back, m.RepoKeys) and not verify_signature(owner.public_key, back.signing_hash(), forged.sig)


def _raw(msg: m.RepoKeys, **change: object) -> bytes:
    obj = {**msg.body(), "sig": msg.sig, **change}
    return dagcbor.encode(obj)


def test_keys_message_strict_decoding() -> None:
    owner, member = fixed_identity(), Identity.generate()
    msg = _keys(owner, [member.public_key])
    pairs = [[k, w] for k, w in msg.wrapped]
    assert m.decode(_raw(msg)) == msg
    bad = {
        "short wrapped key": [[pairs[0][0], pairs[0][1][:-1]], pairs[1]],
        "long wrapped key": [[pairs[0][0], pairs[0][1] + b"\0"], pairs[1]],
        "short member key": [[pairs[0][0][:31], pairs[0][1]], pairs[1]],
        "unsorted": list(reversed(sorted(pairs))),
        "duplicate member": [pairs[0], pairs[0]],
        "not a pair": [[pairs[0][0]]],
        "a map": {"a": pairs[0][1]},
        "too many": [[i.to_bytes(32, "big"), bytes(m.WRAPPED_KEY_BYTES)] for i in range(m.MAX_MEMBERS + 2)],
    }
    for what, wrapped in bad.items():
        with pytest.raises(FormatError):
            m.decode(_raw(msg, wrapped=wrapped))
            pytest.fail(what)
    # at most MAX_MEMBERS + 1 entries (the owner and every member) is fine
    most = [[i.to_bytes(32, "big"), bytes(m.WRAPPED_KEY_BYTES)] for i in range(m.MAX_MEMBERS + 1)]
    assert isinstance(m.decode(_raw(msg, wrapped=most)), m.RepoKeys)
    for field, value in (("epoch", -1), ("epoch", m.MAX_EPOCH), ("epoch", True), ("sig", b"\0" * 63)):
        with pytest.raises(FormatError):
            m.decode(_raw(msg, **{field: value}))
    with pytest.raises(FormatError):  # an unknown field
        m.decode(dagcbor.encode({**msg.body(), "sig": msg.sig, "extra": 1}))


def test_sealed_envelope_shows_nothing_of_the_inner_message() -> None:
    owner = fixed_identity()
    ann = m.HeadAnnouncement(REPO, "main", HEAD, 7, 1000, owner.public_key)
    inner = m.HeadAnnouncement(**{**ann.__dict__, "sig": owner.sign(ann.signing_hash())}).encode()
    key = sealing.new_key()
    topic = m.topic_for(REPO, private=True)
    env = m.Sealed(2, sealing.seal(key, inner, topic.encode())).encode()
    for secret in (REPO, owner.public_key, bytes(HEAD), HEAD.digest, b"main", b58encode(REPO).encode()):
        assert secret not in env
    assert set(dagcbor.decode(env)) == {"t", "v", "epoch", "box"}
    back = m.decode(env)
    assert isinstance(back, m.Sealed) and back.epoch == 2
    assert sealing.unseal(key, back.box, topic.encode()) == inner
    with pytest.raises(sealing.SealError):  # bound to its topic: not replayable on another one
        sealing.unseal(key, back.box, m.topic_for(bytes(32), private=True).encode())
    for obj in ({"t": "sealed", "v": 1, "epoch": 1, "box": b"\0" * (m.MIN_BOX - 1)},
                {"t": "sealed", "v": 1, "epoch": -1, "box": b"\0" * 64},
                {"t": "sealed", "v": 1, "epoch": 1, "box": b"\0" * 64, "repo": REPO},
                {"t": "sealed", "v": 1, "epoch": 1, "box": b"\0" * (m.MAX_SEALED_BYTES)}):
        with pytest.raises(FormatError):
            m.decode(dagcbor.encode(obj))


def test_private_topic_names_no_repository_id() -> None:
    topic = m.topic_for(REPO, private=True)
    assert topic.startswith("/fednode/repo/p/") and topic.endswith("/1")
    assert b58encode(REPO) not in topic and REPO.hex() not in topic
    assert topic == m.topic_for(REPO, True) != m.topic_for(bytes(32), True)
    assert m.topic_for(REPO) == m.topic_for(REPO, private=False) == f"/fednode/repo/{b58encode(REPO)}/1"


def test_membership_and_keys_travel_without_their_repo_id_on_a_private_topic() -> None:
    owner, member = fixed_identity(), Identity.generate()
    keys = _keys(owner, [member.public_key])
    ms = m.Membership(REPO, (member.public_key,), False, 4, 1000, owner.public_key)
    ms = m.Membership(**{**ms.__dict__, "sig": owner.sign(ms.signing_hash())})
    for msg in (keys, ms):
        wire = m.without_repo(msg.encode())
        assert REPO not in wire and b58encode(REPO).encode() not in wire
        assert m.decode(wire, implied_repo=REPO) == msg  # put back: the owner's signature holds again
        back = m.decode(wire, implied_repo=bytes(32))  # on another repository's topic it does not
        assert isinstance(back, m.RepoKeys | m.Membership)
        assert not verify_signature(owner.public_key, back.signing_hash(), msg.sig)
        with pytest.raises(FormatError):  # without the topic's id it is incomplete
            m.decode(wire)
        with pytest.raises(FormatError):  # on a private topic the id must not be spelled
            m.decode(msg.encode(), implied_repo=REPO)
    ann = m.HeadAnnouncement(REPO, "main", HEAD, 7, 1000, owner.public_key)
    ann = m.HeadAnnouncement(**{**ann.__dict__, "sig": owner.sign(ann.signing_hash())})
    assert m.decode(ann.encode(), implied_repo=REPO) == ann  # other kinds are sealed whole instead
    with pytest.raises(FormatError):
        m.without_repo(ann.encode())
