"""Members-only reads of a private repository, against real daemons on 127.0.0.1.

A non-member that knows every CID of a private repository (read here from the owner's store) asks
the owner's daemon for each over ``/fednode/blocks/1.0.0`` and gets none, while it gets a public
repository's; a member gets them all; a heads query from a non-member is refused ("private"); the
non-member's ``fednode clone`` fails with one line; a real Kubo gets no block and no generated state
of the private repository over bitswap while it does get the public one's. Plus the rule itself
(``access.may_read``, ``peer_key``).
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon_harness import DaemonProc, daemons, has_block, make_home, open_nodes, ref, wait_for
from helpers import assert_one_line_error, model_arrays, perturb, run_fednode
from libp2p.peer.id import ID
from rawpeer import ask, closure
from test_bitswap_kubo import Kubo

from fednode.daemon.access import may_read, peer_key
from fednode.history import repo_id_text
from fednode.identity import Identity
from fednode.node import Node
from fednode.storage.store import PUBLIC
from fednode.tensors.modelio import ArraySource
from protocol import messages as m

# --- the rule ------------------------------------------------------------------------------------

OWNER, MEMBER, STRANGER = b"o" * 32, b"m" * 32, b"s" * 32
PRIV, OPEN, GONE = b"P" * 32, b"O" * 32, b"G" * 32
VIS = {PRIV: "private", OPEN: "public", GONE: None}


def _rule(holders: list[bytes], key: bytes | None) -> bool:
    return may_read(holders, key, VIS.get, lambda r: frozenset({OWNER, MEMBER}) if r == PRIV else frozenset())


def test_the_rule() -> None:
    assert _rule([PRIV], OWNER) and _rule([PRIV], MEMBER)
    assert not _rule([PRIV], STRANGER) and not _rule([PRIV], None)  # a Kubo (RSA) peer is no member
    assert _rule([OPEN], STRANGER) and _rule([OPEN], None)
    assert _rule([PRIV, OPEN], STRANGER)  # held by a public repository too: anyone
    assert _rule([PUBLIC], None)  # ipfs add/get content
    assert not _rule([], OWNER)  # untagged: nobody, not even the owner (fail closed)
    assert not _rule([GONE], OWNER)  # a repository this node does not hold grants nothing


def test_peer_key_reads_ed25519_peer_ids_only() -> None:
    me = Identity.generate()
    assert peer_key(ID.from_base58(me.peer_id)) == me.public_key
    assert peer_key(bytes(ID.from_base58(me.peer_id).to_bytes())) == me.public_key
    rsa_like = ID.from_base58("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # sha2-256 multihash
    assert peer_key(rsa_like) is None
    assert peer_key(b"\x00\x24\x08\x01\x12\x20" + b"x" * 31) is None  # one byte short


# --- real daemons ---------------------------------------------------------------------------------


def _repos(owner: Node) -> tuple[bytes, bytes]:
    """A private repository of two commits (a snapshot, then an xor delta) and a public one."""
    base = model_arrays(0)
    secret, _ = owner.history.create_repo("secret", ArraySource(base))  # private: the default
    owner.history.commit(secret, ArraySource(perturb(base, 1)), "round 1")
    public, _ = owner.history.create_repo("open", ArraySource(model_arrays(7)), visibility="public")
    return secret.repo_id, public.repo_id


async def test_a_private_repository_is_served_to_members_only(tmp_path: Path) -> None:
    homes = [make_home(tmp_path, n) for n in ("owner", "member", "stranger")]
    owner, member, stranger = open_nodes(*homes)
    try:
        secret, public = _repos(owner)
        secret_cids, public_cids = closure(owner, secret), closure(owner, public)
        assert len(secret_cids) > 10 and len(public_cids) > 5
        a = DaemonProc(homes[0]).start()
        b, c = DaemonProc(homes[1], (a.addr,)), DaemonProc(homes[2], (a.addr,))
        with daemons(a, b, c):
            a.api("POST", "/members", {"repo": "secret", "members": [member.identity.address]})
            # a stranger who knows every CID gets none of the private ones, and learns nothing
            served, (refused, open_heads) = await ask(stranger.identity.seed, a.addr, secret_cids + public_cids,
                                                       [secret, public])
            assert not set(served) & set(secret_cids), "a private block was served to a non-member"
            assert set(served) == set(public_cids)  # the same request gets the public repository's
            assert refused == m.HeadsReply(None, [], None, refused="private")
            assert open_heads.genesis is not None and open_heads.heads and open_heads.refused is None
            # the member (its wallet key is its peer id) gets every block and the heads
            served, (heads,) = await ask(member.identity.seed, a.addr, secret_cids, [secret])
            assert set(served) == set(secret_cids)
            assert heads.refused is None and heads.genesis is not None and heads.heads
            # through the CLI: the stranger's clone fails in one line; the member's clone works
            b.start()
            c.start()
            out = run_fednode(homes[2], "clone", repo_id_text(secret), "--timeout", "20", check=False)
            assert out.returncode != 0
            assert_one_line_error(out.stderr, f"repository {repo_id_text(secret)} is private: only its members "
                                              f"can read it; ask its owner to run 'fednode members add "
                                              f"{stranger.identity.address}'")
            assert ref(stranger, secret, "genesis") is None
            assert not any(has_block(stranger, cid) for cid in secret_cids)
            res = json.loads(run_fednode(homes[1], "clone", repo_id_text(secret), "--json").stdout)
            assert res["name"] == "secret"
            wait_for(lambda: all(has_block(member, cid) for cid in secret_cids), 20, "the member's full copy")
            with member.store.read() as txn:  # the member's fetches recorded every block as the repository's
                assert all(txn.block_repos(cid) == [secret] for cid in secret_cids)
            refusals = [e for e in c.log_events() if e.get("event") == "heads_refused_private"]
            assert len(refusals) == 1 and refusals[0]["level"] == "info"  # logged once, at info
    finally:
        for n in (owner, member, stranger):
            n.close()


async def test_kubo_gets_no_block_nor_state_of_a_private_repository(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    (owner,) = open_nodes(home)
    try:
        secret, public = _repos(owner)
        head = ref(owner, secret, "heads/main")
        genesis = ref(owner, secret, "genesis")
        assert head is not None and genesis is not None
        manifest = owner.history.load_manifest(owner.history.load_commit(head).weights)
        delta_state = next(e.state for e in manifest.tensors.values() if e.encoding == "xor")
        stored_file = next(e.cid for e in owner.history.load_manifest(
            owner.history.load_commit(genesis).weights).tensors.values() if e.cid is not None)
        public_genesis = ref(owner, public, "genesis")
        assert public_genesis is not None
        public_file = next(e.cid for e in owner.history.load_manifest(
            owner.history.load_commit(public_genesis).weights).tensors.values() if e.cid is not None)
    finally:
        owner.close()
    kubo = Kubo(tmp_path / "kubo")
    try:
        with daemons(DaemonProc(home).start()) as (d,):
            await kubo.start()
            assert (await kubo.call(20, op="connect", addr=d.addr))["rc"] == 0
            got = await kubo.call(40, op="download", cid=str(public_file), dest=str(tmp_path / "pub.bin"), timeout=30)
            assert got == {"rc": 0, "timeout": False}, (got, d.log_events()[-12:])
            for label, cid in (("stored", stored_file), ("generated", delta_state)):
                got = await kubo.call(20, op="download", cid=str(cid), dest=str(tmp_path / f"{label}.bin"), timeout=4)
                assert got["timeout"] is True and got["rc"] is None, (label, got)
                assert not (tmp_path / f"{label}.bin").exists()
            assert not [e for e in d.log_events() if e.get("event") == "state_generated"]  # no work for a stranger
    finally:
        kubo.stop()
