"""Private repositories on the network: their topic, sealing gossip, and taking key messages.

A private repository's gossip travels on an opaque topic (``messages.topic_for(repo, private=True)``)
and, apart from its membership and key messages (which must stay checkable by everyone on the
topic; they travel without their repo id, put back by receivers from the topic), sealed with the
repository key of an epoch (``fednode.sealing``), bound to the topic name.
Members learn each epoch's key from the owner's signed ``RepoKeys`` message, by gossip or in a heads
reply; the owner makes a new epoch when a member is removed (``routes.h_members``).
"""

from __future__ import annotations

from fednode.errors import FednodeError
from fednode.history import repos
from fednode.logs import log
from fednode.sealing import SealError, seal, unwrap
from fednode.storage.keyring import Keyring
from fednode.storage.netstate import NetState
from fednode.storage.store import Store
from protocol import messages as m


def is_private(store: Store, repo_id: bytes) -> bool:
    """Whether ``repo_id`` is private now; one this store does not hold yet counts as private unless
    it was followed as public (``fednode follow --public``): private is the default visibility, and
    the public topic's name would tell every peer the id."""
    with store.read() as txn:
        visibility = repos.visibility(txn, repo_id)
    if visibility is None:
        return not NetState(store).followed_public(repo_id)
    return visibility == "private"


def topic_of(store: Store, repo_id: bytes) -> str:
    return m.topic_for(repo_id, is_private(store, repo_id))


def seal_message(keyring: Keyring, repo_id: bytes, data: bytes, owner: bool) -> bytes:
    """``data`` sealed under our newest key of ``repo_id`` (the owner makes epoch 0 if it has none).

    A new holder of a bound repository's NFT without a key makes none here: epoch 0 is the former
    holder's, which members hold under another key (they would refuse our boxes as altered). Its
    daemon signs the takeover's key message (``routes``), and sealing works from then on."""
    held = keyring.latest(repo_id)
    if held is None and owner and NetState(keyring.store).controller(repo_id) is not None:
        raise FednodeError("no key for this private repository yet: its new holder's daemon signs one when it "
                           "takes over (or run 'fednode members add' once it is running)")
    held = held or (keyring.ensure(repo_id) if owner else None)
    if held is None:
        raise FednodeError("no key for this private repository yet: pull from its owner first "
                           "(the owner's membership must list you)")
    epoch, key = held
    return m.Sealed(epoch, seal(key, data, m.topic_for(repo_id, True).encode())).encode()


def take_keys(keyring: Keyring, seed: bytes, me: bytes, msg: m.RepoKeys) -> bool:
    """Keep the key ``msg`` wraps for us (``me``, with secret ``seed``); False when there is none
    for us or we held it already. ``msg`` was validated (the owner signed it)."""
    wrapped = msg.wrapped_for(me)
    if wrapped is None:
        return False
    try:
        key = unwrap(wrapped, seed)
        new = keyring.put(msg.repo, msg.epoch, key)
    except (SealError, FednodeError) as exc:  # the owner signed a key we cannot use: nothing kept
        log("repo_key_refused", "warning", epoch=msg.epoch, error=str(exc))
        return False
    if new:
        log("repo_key_received", epoch=msg.epoch)  # the epoch only: keys are never logged
    return new
