"""The node's identity: one Ed25519 key that is both the Solana wallet and the libp2p peer id.

Keys live in solana-keygen's JSON format (64 integers: 32-byte seed then the
public key), mode 0600. The private key is never logged or printed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from fednode import safejson
from fednode.errors import FednodeError
from protocol.multiformats import b58encode

MAX_KEYPAIR_FILE = 64 * 1024  # bytes of a keypair file read at most

# libp2p PublicKey protobuf for Ed25519: field 1 (KeyType) = 1, field 2 (Data) = 32 bytes.
_LIBP2P_ED25519_PREFIX = b"\x08\x01\x12\x20"


def peer_id_from_public_key(public_key: bytes) -> str:
    """libp2p peer id of an Ed25519 key: base58 of an identity multihash (``12D3KooW...``)."""
    proto = _LIBP2P_ED25519_PREFIX + public_key
    return b58encode(bytes([0x00, len(proto)]) + proto)


def check_owned(home: Path, key_path: Path) -> None:
    """Refuse a home or keypair owned by another user, like a too-open mode: its owner could swap the
    key or the store under us, or read the key (ssh's StrictModes does the same)."""
    me = os.geteuid()
    for path, fix in ((home, f"chown -R {me} {home}"), (key_path, f"chown {me} {key_path}")):
        try:
            owner = path.stat().st_uid
        except OSError as exc:
            raise FednodeError(f"cannot read {path}: {exc.strerror}") from None
        if owner != me:
            raise FednodeError(f"{path} is owned by another user (uid {owner}, you are {me}); "
                               f"run: {fix}, or use your own --home")


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        return Signature.from_bytes(signature).verify(Pubkey.from_bytes(public_key), message)
    except ValueError:
        return False


@dataclass(frozen=True)
class Identity:
    keypair: Keypair

    @property
    def public_key(self) -> bytes:
        return bytes(self.keypair.pubkey())

    @property
    def address(self) -> str:
        return str(self.keypair.pubkey())

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed (for deriving the libp2p key pair)."""
        return bytes(self.keypair)[:32]

    def sign(self, message: bytes) -> bytes:
        return bytes(self.keypair.sign_message(message))

    def __repr__(self) -> str:  # never show the secret
        return f"Identity({self.address})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(Keypair())

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            with path.open("rb") as f:
                raw_file = f.read(MAX_KEYPAIR_FILE + 1)  # solana-keygen's file is about 250 bytes
        except OSError as exc:
            raise FednodeError(f"cannot read keypair {path}: {exc.strerror}") from exc
        try:
            if len(raw_file) > MAX_KEYPAIR_FILE:
                raise ValueError
            values = safejson.loads(raw_file)  # not json.loads: a deep nest could crash the process
            if (
                not isinstance(values, list)
                or len(values) != 64
                or not all(type(v) is int and 0 <= v < 256 for v in values)
            ):
                raise ValueError
            raw = bytes(values)
            keypair = Keypair.from_seed(raw[:32])
        except ValueError:
            raise FednodeError(
                f"invalid keypair file {path}: expected solana-keygen JSON (64 byte values)"
            ) from None
        if bytes(keypair.pubkey()) != raw[32:]:
            raise FednodeError(f"invalid keypair file {path}: public key does not match the seed")
        return cls(keypair)

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 from the first byte (no window where it is readable)."""
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(list(bytes(self.keypair))).encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # no half-written key left behind
            raise FednodeError(f"cannot write keypair {path}: {exc.strerror or exc}") from None
