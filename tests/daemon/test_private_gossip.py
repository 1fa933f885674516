"""Private repositories' gossip: opaque topic, sealed messages, key distribution and rotation.

The first test drives the validator on a real store; the second runs real daemons: an owner, a
member and an outsider that knows the repository id and follows its topic."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from daemon_harness import DaemonProc, daemons, has_block, make_home, network_config, open_nodes, wait_for
from helpers import fixed_identity, model_arrays, perturb

from fednode import sealing
from fednode.daemon import discovery, privacy
from fednode.daemon.validate import Validator
from fednode.history import History, refs, repo_id_text
from fednode.identity import Identity
from fednode.storage.keyring import Keyring
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from fednode.tensors.modelio import ArraySource
from protocol import messages as m
from protocol.multiformats import CID, DAG_CBOR, b58encode


def _sign(ident: Identity, msg):
    return type(msg)(**{**msg.__dict__, "sig": ident.sign(msg.signing_hash())})


def test_validator_opens_sealed_gossip_only_with_the_epoch_key(tmp_path: Path) -> None:
    owner, member = fixed_identity(), Identity.generate()
    with Store(tmp_path / "store") as store:
        history = History(store, owner)
        info, _ = history.create_repo("secret", ArraySource(model_arrays(0)), visibility="private")
        rid = info.repo_id
        state, keyring = NetState(store), Keyring(store)
        v = Validator(store, state, keyring)
        state.put_membership(_sign(owner, m.Membership(rid, (member.public_key,), False, 1, 1, owner.public_key)))
        topic = m.topic_for(rid, True).encode()
        ann = _sign(member, m.HeadAnnouncement(rid, "main", CID.hash(DAG_CBOR, b"x"), 5, 1, member.public_key))
        key0 = sealing.new_key()

        def sealed(inner: bytes, epoch: int = 0, key: bytes = key0, aad: bytes = topic) -> bytes:
            return m.Sealed(epoch, sealing.seal(key, inner, aad)).encode()

        def reason(data: bytes) -> str | None:
            return v.validate_gossip(data, rid, from_self=False, private=True).reason

        assert reason(sealed(ann.encode())) == "sealed_unreadable"  # no key held: ignored
        keyring.put(rid, 0, key0)
        verdict = v.validate_gossip(sealed(ann.encode()), rid, from_self=False, private=True)
        assert verdict.ok and verdict.msg == ann  # the inner message, validated as in the clear
        assert reason(ann.encode()) == "unsealed"  # plain announcements are not taken on a private topic
        assert reason(sealed(ann.encode(), aad=m.topic_for(rid).encode())) == "bad_seal"  # another topic's
        box = bytearray(sealing.seal(key0, ann.encode(), topic))
        box[-1] ^= 1  # one bit of the tag
        assert reason(m.Sealed(0, bytes(box)).encode()) == "bad_seal"
        stranger = Identity.generate()
        forged = _sign(stranger, m.HeadAnnouncement(rid, "main", ann.head, 6, 1, stranger.public_key))
        assert reason(sealed(forged.encode())) == "not_member"  # sealing vouches for nothing
        assert reason(sealed(_sign(owner, m.Membership(rid, (), False, 2, 1, owner.public_key)).encode())) == "bad_seal"
        # membership and key messages stay in the clear, without the repo id (the topic implies it);
        # keys only from the owner
        members = _sign(owner, m.Membership(rid, (), False, 2, 1, owner.public_key)).encode()
        assert reason(members) == "malformed" and rid not in m.without_repo(members)
        verdict = v.validate_gossip(m.without_repo(members), rid, from_self=False, private=True)
        assert verdict.ok and verdict.msg is not None and verdict.msg.encode() == members
        wrapped = ((member.public_key, sealing.wrap(key0, member.public_key)),)
        keys = _sign(owner, m.RepoKeys(rid, 0, wrapped, 3, 1, owner.public_key)).encode()
        assert reason(m.without_repo(keys)) is None
        # the same bytes on another repository's topic: the signature covers the implied id
        assert v.validate_gossip(m.without_repo(keys), bytes(32), False, private=True).reason == "bad_signature"
        assert reason(m.without_repo(_sign(member, m.RepoKeys(rid, 0, wrapped, 3, 1, member.public_key)).encode())) \
            == "not_owner"
        # a newer epoch held: what is sealed under an older one is ignored, the newer one opens
        key1 = sealing.new_key()
        keyring.put(rid, 1, key1)
        assert reason(sealed(ann.encode())) == "sealed_stale"
        assert reason(sealed(ann.encode(), epoch=1, key=key1)) is None
        # the taking side: only the entry wrapped for us is kept
        got = Keyring(Store(tmp_path / "member"))
        try:
            keys = m.RepoKeys(rid, 1, ((member.public_key, sealing.wrap(key1, member.public_key)),), 4, 1,
                              owner.public_key)
            assert privacy.take_keys(got, member.seed, member.public_key, keys)
            assert got.key(rid, 1) == key1
            assert not privacy.take_keys(got, stranger.seed, stranger.public_key, keys)
        finally:
            got.store.close()
        # a public repository's topic takes no sealed messages
        pub, _ = history.create_repo("open", ArraySource(model_arrays(1)), visibility="public")
        assert not privacy.is_private(store, pub.repo_id)
        assert v.validate_gossip(sealed(ann.encode()), pub.repo_id, False, private=False).reason == "malformed"


def _rejected(d: DaemonProc, reason: str) -> int:
    return int(d.metrics()["rejected"].get(reason, 0))


def _accepted(d: DaemonProc, kind: str) -> int:
    return int(d.metrics()["accepted"].get(kind, 0))


def test_private_gossip_reaches_members_only_and_rotates_on_removal(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in ("owner", "member", "outsider")]
    na, nb, nc = open_nodes(*homes)
    try:
        v0 = model_arrays(0)
        info, genesis = na.history.create_repo("secret", ArraySource(v0), visibility="private")
        rid = info.repo_id
        # the outsider knows the id and holds the genesis (as anyone it was shown to could): its
        # daemon can name the opaque topic and validate membership, but it is no member
        with na.store.read() as txn:
            block = txn.get_block(genesis.cid)
        with nc.store.write() as txn:
            txn.put_block(genesis.cid, block)
            txn.set_ref(rid, refs.GENESIS, bytes(genesis.cid))
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        c = DaemonProc(homes[2], (a.addr,))
        with daemons(a, b, c):
            b.start()
            c.start()
            topic = m.topic_for(rid, private=True)
            followed = c.api("POST", "/follow", {"repo": repo_id_text(rid)})
            assert followed["topic"] == topic and b58encode(rid) not in topic
            added = a.api("POST", "/members", {"repo": "secret", "members": [nb.identity.address]})
            assert added["epoch"] == 0
            refused = a.api("POST", "/members", {"repo": "secret", "members": [], "public": True}, expect=400)
            assert "publish it first" in refused["error"]
            not_a_point = b58encode(b"\xff" * 32)  # 32 bytes, but no Ed25519 key: nothing to wrap for
            refused = a.api("POST", "/members", {"repo": "secret", "members": [not_a_point]}, expect=400)
            assert refused["error"] == "a member address is not an Ed25519 public key"
            membership = NetState(na.store).membership(rid)
            assert membership is not None and membership.members == (nb.identity.public_key,)
            assert Keyring(na.store).epochs(rid).keys() == {0}  # no epoch made by the refusals
            # the member clones: the heads reply carries the key message; it unwraps epoch 0
            b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
            owner_key = Keyring(na.store).key(rid, 0)
            assert owner_key is not None
            wait_for(lambda: Keyring(nb.store).key(rid, 0) == owner_key, 10, "the member to hold epoch 0")
            assert Keyring(nc.store).latest(rid) is None
            assert all(b58encode(rid) not in t for t in a.api("GET", "/status")["topics"])

            def on_topic() -> bool:
                peers = {p["peer_id"]: p["topics"] for p in a.api("GET", "/peers")}
                return all(topic in peers.get(d.peer_id, []) for d in (b, c))

            try:
                wait_for(on_topic, 15, "member and outsider on the private topic", interval=0.2)
            except AssertionError as exc:  # what each daemon sees, for a failure seen twice in CI in ~40 runs
                seen = {n: [(p["peer_id"][-6:], p.get("topics")) for p in d.api("GET", "/peers")]
                        for n, d in (("owner", a), ("member", b), ("outsider", c))}
                raise AssertionError(f"{exc}; topic {topic}; peers seen: {seen}") from None
            # the owner pushes: the member takes the commit from gossip, the outsider opens nothing
            r1 = na.history.commit(na.history.repo("secret"), ArraySource(perturb(v0, 1)), "round 1")
            a.api("POST", "/push", {"repo": "secret", "confirm": False})
            wait_for(lambda: has_block(nb, r1.cid), 10, "the member to get the commit")
            wait_for(lambda: _accepted(b, "commit") >= 1 and _accepted(b, "head") >= 1, 10, "gossip on the member")
            wait_for(lambda: _rejected(c, "sealed_unreadable") >= 2, 10, "the outsider to see sealed messages")
            time.sleep(1.0)
            assert not has_block(nc, r1.cid)
            assert _accepted(c, "commit") == _accepted(c, "head") == 0
            assert not c.metrics()["penalties"] and not b.metrics()["penalties"]

            # the owner removes the member: a new epoch, wrapped for the owner alone
            removed = a.api("POST", "/members", {"repo": "secret", "members": []})
            assert removed["epoch"] == 1
            wait_for(lambda: (k := NetState(nb.store).keys_message(rid)) is not None and k.epoch == 1, 10,
                     "the key message of epoch 1 to reach the former member")
            assert Keyring(nb.store).latest(rid) == (0, owner_key)  # nothing in it for the former member
            unreadable_b, unreadable_c = _rejected(b, "sealed_unreadable"), _rejected(c, "sealed_unreadable")
            commits_b = _accepted(b, "commit")
            r2 = na.history.commit(na.history.repo("secret"), ArraySource(perturb(v0, 2)), "round 2")
            a.api("POST", "/push", {"repo": "secret", "confirm": False})
            wait_for(lambda: _rejected(b, "sealed_unreadable") >= unreadable_b + 2, 10, "the former member to fail")
            wait_for(lambda: _rejected(c, "sealed_unreadable") >= unreadable_c + 2, 10, "the outsider to fail")
            time.sleep(1.0)
            assert _accepted(b, "commit") == commits_b
            assert not has_block(nb, r2.cid) and not has_block(nc, r2.cid)
            print(f"sealed_unreadable: former member {_rejected(b, 'sealed_unreadable')}, "
                  f"outsider {_rejected(c, 'sealed_unreadable')}")
    finally:
        for n in (na, nb, nc):
            n.close()


def test_published_repository_moves_to_the_public_topic(tmp_path: Path) -> None:
    """The owner publishes: its next push leaves the opaque topic for the public one, unsealed; a
    member moves too once anti-entropy has brought it the publish commit."""
    homes = [make_home(tmp_path, n) for n in ("owner", "member")]
    network_config(homes[1], sync_interval=1.0)
    na, nb = open_nodes(*homes)
    try:
        info, _ = na.history.create_repo("secret", ArraySource(model_arrays(0)), visibility="private")
        rid = info.repo_id
        private, public = m.topic_for(rid, True), m.topic_for(rid)
        a = DaemonProc(homes[0]).start()
        b = DaemonProc(homes[1], (a.addr,))
        with daemons(a, b):
            b.start()
            a.api("POST", "/members", {"repo": "secret", "members": [nb.identity.address]})
            b.api("POST", "/clone", {"repo": repo_id_text(rid), "timeout": 30})
            for d in (a, b):
                assert d.api("GET", "/status")["topics"] == [private]
            # the clone never named the public topic (that would tell every peer the id it wants)
            assert not [e for e in b.log_events() if e["event"] == "topic_left"]
            published = na.history.publish(na.history.repo("secret"))
            a.api("POST", "/push", {"repo": "secret", "confirm": False})
            assert a.api("GET", "/status")["topics"] == [public]
            assert [e["topic"] for e in a.log_events() if e["event"] == "topic_left"] == [private]
            wait_for(lambda: has_block(nb, published.cid) and b.api("GET", "/status")["topics"] == [public], 20,
                     "the member to move to the public topic", interval=0.2)
            wait_for(lambda: any(p["peer_id"] == b.peer_id and public in p["topics"] for p in a.api("GET", "/peers")),
                     10, "the owner to see the member on the public topic", interval=0.2)
            # on the public topic messages travel in the clear again and still arrive
            r2 = na.history.commit(na.history.repo("secret"), ArraySource(perturb(model_arrays(0), 2)), "open")
            commits = _accepted(b, "commit")
            a.api("POST", "/push", {"repo": "secret", "confirm": False})
            wait_for(lambda: _accepted(b, "commit") > commits and has_block(nb, r2.cid), 10, "gossip in the clear")
            assert a.metrics()["published"].get("commit", 0) >= 1
    finally:
        for n in (na, nb):
            n.close()


async def test_a_private_repository_is_provided_under_a_hash_of_its_id(tmp_path: Path) -> None:
    provided: list[str] = []

    class DHT:
        provider_store = SimpleNamespace(providing_keys=set(), providers={})  # republisher kept off

        def get_routing_table_size(self) -> int:
            return 1  # a node to reach

        async def provide(self, key: str) -> bool:
            provided.append(key)
            return True

    with Store(tmp_path / "store") as store:
        history = History(store, fixed_identity())
        secret, _ = history.create_repo("secret", ArraySource(model_arrays(0)), visibility="private")
        open_, _ = history.create_repo("open", ArraySource(model_arrays(1)), visibility="public")
        d = discovery.Discovery(store, NetState(store), None, None, None)  # type: ignore[arg-type]
        d.start(DHT())  # type: ignore[arg-type]
        await d.provide_all()
        assert discovery.dht_key(open_.repo_id) in provided  # public: its id, as before
        hidden = discovery.repo_key(secret.repo_id, private=True)
        assert hidden in provided and discovery.dht_key(secret.repo_id) not in provided
        assert secret.repo_id.hex() not in hidden
