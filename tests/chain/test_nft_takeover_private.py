"""A private repository changes hands (issue 14, node side): a real `fednode devchain`, three real
daemons (the genesis owner, a member, the buyer). After `fednode nft transfer` the buyer's daemon
reads that it holds the NFT and signs, by itself, the membership it inherits and a key message of a
new epoch wrapped for itself and the member only: the member takes the new key; the former owner
(whose daemon reads the new holder too) gets none, keeps the keys of the epochs it held, and is no
longer among the readers the member's node serves."""

from __future__ import annotations

import time
from pathlib import Path

from daemon_harness import DaemonProc, daemons, network_config, wait_for
from helpers import copy_home, model_arrays, run_fednode, write_model
from test_devchain import devchain, fed_json, program_cache  # noqa: F401  (fixtures)
from test_nft_control import controller, use_devchain

from fednode.daemon.access import Reader
from fednode.node import open_node
from fednode.storage.keyring import Keyring
from fednode.storage.netstate import NetState
from protocol.multiformats import b58decode

_ED25519_PEER = b"\x00\x24\x08\x01\x12\x20"  # a libp2p peer id embedding an Ed25519 key


def keys_seen(home: Path, repo_id: bytes) -> tuple[set[int], bytes | None, tuple[bytes, ...] | None]:
    """(epochs held, signer of the latest key message, members of the latest membership)."""
    node = open_node(home)
    try:
        state = NetState(node.store)
        keys, ms = state.keys_message(repo_id), state.membership(repo_id)
        return (set(Keyring(node.store).epochs(repo_id)), keys.announcer if keys else None,
                ms.members if ms else None)  # fmt: skip
    finally:
        node.close()


def wrapped_for(home: Path, repo_id: bytes) -> set[bytes]:
    """Whom the latest key message ``home`` holds wraps the key for."""
    node = open_node(home)
    try:
        msg = NetState(node.store).keys_message(repo_id)
        return {k for k, _ in msg.wrapped} if msg else set()
    finally:
        node.close()


def reads(home: Path, repo_id: bytes, key: bytes) -> bool:
    """Whether the daemon of ``home`` serves ``repo_id``'s heads and blocks to the peer of wallet ``key``."""
    node = open_node(home)
    try:
        return Reader(node.store, _ED25519_PEER + key).may_read_repo(repo_id)
    finally:
        node.close()


def test_the_new_holder_of_a_private_repository_starts_an_epoch_the_former_owner_cannot_open(
        tmp_path: Path, devchain: str) -> None:  # noqa: F811
    a_home, m_home, b_home = (tmp_path / n for n in ("former", "member", "buyer"))
    run_fednode(a_home, "init")
    use_devchain(a_home, devchain, 0.5)
    run_fednode(a_home, "repo", "create", "secret", "--from", write_model(tmp_path / "m0.safetensors",
                                                                        model_arrays(0)))  # private
    repo_id = b58decode(fed_json(a_home, "repo", "list")[0]["id"])
    assert fed_json(a_home, "anchor", "main")["error"] is None
    for home in (m_home, b_home):  # copies of the repository (no key made yet), wallets of their own
        copy_home(a_home, home)
        run_fednode(home, "init", "--force")
        use_devchain(home, devchain, 0.5)
    for home in (a_home, m_home, b_home):
        network_config(home, sync_interval=1.0)
    a_key, m_key, b_key = (b58decode(fed_json(h, "id")["address"]) for h in (a_home, m_home, b_home))
    a = DaemonProc(a_home).start()
    mm = DaemonProc(m_home, (a.addr,)).start()
    b = DaemonProc(b_home, (a.addr, mm.addr)).start()
    with daemons(a, mm, b):
        out = a.api("POST", "/members", {"repo": "secret", "members": [fed_json(m_home, "id")["address"]]})
        assert out["epoch"] == 0
        wait_for(lambda: keys_seen(m_home, repo_id)[0] == {0}, 15, "the member to take epoch 0")
        assert reads(m_home, repo_id, a_key) and not reads(m_home, repo_id, b_key)
        fed_json(a_home, "nft", "mint", "secret")
        started = int(time.time())
        run_fednode(a_home, "nft", "transfer", "secret", fed_json(b_home, "id")["address"])

        def member_took_new_epoch() -> bool:
            epochs, signer, members = keys_seen(m_home, repo_id)
            return signer == b_key and members == (m_key,) and len(epochs) == 2

        wait_for(member_took_new_epoch, 20, "the member to take the new holder's epoch")
        new_epoch = max(keys_seen(m_home, repo_id)[0])
        assert new_epoch >= started  # above the former owner's counted epochs
        assert keys_seen(b_home, repo_id)[0] == {new_epoch}  # the buyer never held the former key
        assert wrapped_for(m_home, repo_id) == {b_key, m_key}  # never for the former owner
        # the former owner reads the new holder too; it keeps epoch 0 (what was sealed before), no more
        wait_for(lambda: controller(a_home, repo_id) == b_key, 20, "the former owner to read the new holder")
        assert keys_seen(a_home, repo_id)[0] == {0}
        # the member's node now serves the holder and no longer the former owner
        assert reads(m_home, repo_id, b_key) and reads(m_home, repo_id, m_key) and not reads(m_home, repo_id, a_key)
