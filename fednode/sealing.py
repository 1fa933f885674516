"""Encryption for private repositories: symmetric sealing with a repository key, and key wrapping
for members with X25519 keys derived from their Ed25519 wallet keys.

- ``seal``/``unseal``: XChaCha20-Poly1305 (libsodium's IETF AEAD, RFC 8439's cipher with a 24-byte
  random nonce, so random nonces never collide in practice); ``aad`` binds what the ciphertext is
  for (a topic, a file header) so a sealed message cannot be replayed in another context.
- ``wrap``/``unwrap``: a libsodium sealed box (an ephemeral X25519 key, then XSalsa20-Poly1305) to
  the recipient's X25519 key. The X25519 keys are the birational images of the Ed25519 wallet keys
  (libsodium ``crypto_sign_ed25519_pk_to_curve25519``), so a member needs no second key pair and
  anyone can wrap for an address. The wrapper is anonymous: who wrapped is proved by the owner's
  signature over the message that carries the wrapped keys, not here.

Pure functions over bytes: no store, no network.
"""

from __future__ import annotations

import os

from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from fednode.errors import FednodeError

KEY_BYTES = 32
NONCE_BYTES = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_BYTES = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
WRAPPED_BYTES = 32 + KEY_BYTES + 16  # ephemeral public key, the key, the MAC


class SealError(FednodeError):
    """A ciphertext that does not open with the key given: wrong key, or altered bytes."""


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """nonce || ciphertext || tag of ``plaintext`` under ``key``, bound to ``aad``."""
    _check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def unseal(key: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """The plaintext of ``seal(key, plaintext, aad)``; SealError for any other key, aad or byte."""
    _check_key(key)
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SealError("sealed data is too short")
    try:
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(sealed[NONCE_BYTES:]), aad, bytes(sealed[:NONCE_BYTES]), key)
    except CryptoError:
        raise SealError("cannot decrypt: not sealed with this key (or altered)") from None


def x25519_public(ed25519_public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key (a wallet address's 32 bytes)."""
    try:
        return bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public)
    except Exception:
        raise SealError("not an Ed25519 public key") from None


def x25519_secret(ed25519_seed: bytes) -> bytes:
    """The X25519 secret key of an Ed25519 key given by its 32-byte seed."""
    public, secret = bindings.crypto_sign_seed_keypair(ed25519_seed)
    return bindings.crypto_sign_ed25519_sk_to_curve25519(secret)


def wrap(key: bytes, recipient_ed25519_public: bytes) -> bytes:
    """``key`` encrypted so that only the holder of ``recipient_ed25519_public``'s secret opens it."""
    _check_key(key)
    return bytes(SealedBox(PublicKey(x25519_public(recipient_ed25519_public))).encrypt(key))


def unwrap(wrapped: bytes, ed25519_seed: bytes) -> bytes:
    """The key ``wrap`` encrypted for the Ed25519 key with ``ed25519_seed``; SealError otherwise."""
    try:
        key = SealedBox(PrivateKey(x25519_secret(ed25519_seed))).decrypt(bytes(wrapped))
    except CryptoError:
        raise SealError("this wrapped key is not for us (or altered)") from None
    _check_key(key)
    return key


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise SealError(f"a repository key is {KEY_BYTES} bytes")
