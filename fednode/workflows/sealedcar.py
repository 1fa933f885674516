"""Encrypted exports (backups) of private repositories: a CAR sealed for the repository's members.

A private repository's weights must not be readable by whoever stores or carries its backup (a
pinning service, a disk, a courier). ``fednode export`` of a private repository therefore writes:

    b"FEDNODE-SEALED-CAR/1\\n"
    u32 big-endian length || header: DAG-CBOR {repo_tag: sha256(b"fednode/backup/v1" || repo id),
                                                readers: {base58 wallet address: wrap(file key)},
                                                chunk: 1048576}
    then per chunk of the CAR's bytes: u32 big-endian length || seal(file key, chunk, aad)
        aad = sha256(header) || chunk index (u64 big-endian) || final flag (1 byte: 1 on the last)

The file key is fresh and random per export, wrapped (``sealing.wrap``: a sealed box to the X25519
image of the Ed25519 wallet key) for the owner and every member of the latest signed membership.
The aad binds each chunk to this header, its position and whether it ends the file, so chunks
cannot be reordered, dropped, truncated at a boundary or moved between files without a tag
failing. The reader learns whether a chunk is the last from the end of the file, so a truncated
or extended file opens its last chunk with the wrong flag and fails. Both directions stream: memory
holds one chunk, whatever the repository's size.

Import decrypts into an unnamed temporary file beside the store (mode 0600, gone when closed,
even after a crash), then imports that CAR exactly as a plain one (``carfiles.import_car_fd``):
every tag is checked before anything is stored, so a tampered file stores nothing.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from fednode.atomic import atomic_file
from fednode.errors import Corrupt, FednodeError
from fednode.history import History, RepoInfo
from fednode.sealing import NONCE_BYTES, TAG_BYTES, WRAPPED_BYTES, SealError, new_key, seal, unseal, unwrap, wrap
from fednode.workflows.carfiles import DEFAULT_MAX_BYTES, ExportReport, ImportReport, import_car_fd, write_car
from protocol import dagcbor
from protocol.multiformats import CID, FormatError, b58decode, b58encode

if TYPE_CHECKING:
    from fednode.identity import Identity
    from fednode.node import Node

MAGIC = b"FEDNODE-SEALED-CAR/1\n"
DOMAIN = b"fednode/backup/v1"
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 16 << 20  # a header asking for bigger chunks is refused (memory holds one)
MAX_HEADER_BYTES = 1 << 20  # about 8,000 readers
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
_LEN = struct.Struct(">I")


def repo_tag(repo_id: bytes) -> bytes:
    """What the header says of the repository: a hash, so the file does not name it in clear."""
    return hashlib.sha256(DOMAIN + repo_id).digest()


def chunk_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


@dataclass(frozen=True)
class Header:
    repo_tag: bytes
    readers: dict[bytes, bytes]  # 32-byte wallet key -> the file key wrapped for it
    chunk: int

    def encode(self) -> bytes:
        return dagcbor.encode({"repo_tag": self.repo_tag, "chunk": self.chunk,
                               "readers": {b58encode(k): w for k, w in self.readers.items()}})

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        """The header, strictly: exactly its three fields, of the right types and sizes."""
        obj = dagcbor.decode(raw)
        if not isinstance(obj, dict) or set(obj) != {"repo_tag", "readers", "chunk"}:
            raise FormatError("the header does not have exactly the fields repo_tag, readers, chunk")
        tag, readers, chunk = obj["repo_tag"], obj["readers"], obj["chunk"]
        if not isinstance(tag, bytes) or len(tag) != 32:
            raise FormatError("repo_tag is not 32 bytes")
        if type(chunk) is not int or not 0 < chunk <= MAX_CHUNK_BYTES:
            raise FormatError(f"chunk size {chunk!r} is not between 1 and {MAX_CHUNK_BYTES}")
        if not isinstance(readers, dict) or not readers:
            raise FormatError("the header names no reader")
        keys: dict[bytes, bytes] = {}
        for address, wrapped in readers.items():
            if not isinstance(address, str) or len(address) > 44:  # base58 decoding is quadratic in length
                raise FormatError("a reader entry is not a wallet address with a wrapped key")
            key = b58decode(address)
            if len(key) != 32 or not isinstance(wrapped, bytes) or len(wrapped) != WRAPPED_BYTES:
                raise FormatError("a reader entry is not a wallet address with a wrapped key")
            keys[key] = wrapped
        return cls(tag, keys, chunk)


# --- export ----------------------------------------------------------------------------------


def backup_readers(node: Node, repo: RepoInfo) -> list[bytes]:
    """Who can open a backup of ``repo``: its owner first, then the members of the owner's latest
    signed membership this node holds, sorted (the daemon's read rule, ``daemon/access.py``)."""
    from fednode.storage.netstate import NetState
    from fednode.workflows.membership import owner

    first = owner(node, repo)
    members = NetState(node.store).listed_members(repo.repo_id, first)  # after an NFT sale too
    return [first, *sorted(members - {first})]


class _SealingWriter:
    """A write-only file that seals what it is given in chunks into ``out``. The last full chunk is
    held back until ``finish``: only then is it known whether it is the final one."""

    def __init__(self, out: BinaryIO, key: bytes, header_digest: bytes, chunk: int) -> None:
        self._out, self._key, self._digest, self._chunk = out, key, header_digest, chunk
        self._buf = bytearray()
        self.index = 0
        self.written = 0  # bytes written to ``out``

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) > self._chunk:
            with memoryview(self._buf) as view:
                piece = bytes(view[:self._chunk])  # one copy (a bytearray slice would be two)
            self._emit(piece, final=False)
            del self._buf[:self._chunk]
        return len(data)

    def finish(self) -> None:
        self._emit(bytes(self._buf), final=True)
        self._buf.clear()

    def _emit(self, plain: bytes, final: bool) -> None:
        sealed = seal(self._key, plain, chunk_aad(self._digest, self.index, final))
        self.written += self._out.write(_LEN.pack(len(sealed)))
        self.written += self._out.write(sealed)
        self.index += 1


def export_sealed(history: History, repo: RepoInfo, root: CID, path: Path, readers: Sequence[bytes],
                  ancestry: bool = False) -> ExportReport:
    """``carfiles.export_car`` sealed for ``readers`` (32-byte wallet keys) under a fresh file key,
    atomically: a failure leaves no file. ``report.bytes`` counts the CAR, ``file_bytes`` the file."""
    history.check_in_repo(repo, root)
    if not readers:
        raise FednodeError("a sealed export needs at least one reader")
    file_key = new_key()
    wrapped = {}
    for reader in readers:
        try:
            wrapped[reader] = wrap(file_key, reader)
        except SealError:
            raise FednodeError(f"cannot seal a backup for {b58encode(reader)}: not an Ed25519 public key") from None
    header = Header(repo_tag(repo.repo_id), wrapped, CHUNK_BYTES).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise FednodeError(f"too many readers for one backup ({len(readers)})")
    report = ExportReport(root, path, readers=len(readers))
    with atomic_file(path.resolve()) as out, history.store.read() as txn:
        written = out.write(MAGIC + _LEN.pack(len(header)) + header)
        writer = _SealingWriter(out, file_key, hashlib.sha256(header).digest(), CHUNK_BYTES)
        write_car(cast(BinaryIO, writer), txn, root, ancestry, report)
        writer.finish()
        report.file_bytes = written + writer.written
    return report


# --- import ----------------------------------------------------------------------------------


def is_sealed(path: Path) -> bool:
    with open(path, "rb") as src:
        return src.read(len(MAGIC)) == MAGIC


def _read_exact(src: BinaryIO, n: int, name: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise Corrupt(f"{name} is truncated: the sealed backup ends before its final chunk")
    return data


def read_header(src: BinaryIO, name: str) -> tuple[Header, bytes]:
    """The header of the sealed backup open at ``src`` (at its start), and its raw bytes."""
    if src.read(len(MAGIC)) != MAGIC:
        raise Corrupt(f"{name} is not a sealed fednode backup")
    (size,) = _LEN.unpack(_read_exact(src, _LEN.size, name))
    if size > MAX_HEADER_BYTES:
        raise Corrupt(f"{name}: its header declares {size} bytes, over {MAX_HEADER_BYTES}")
    raw = _read_exact(src, size, name)
    try:
        return Header.decode(raw), raw
    except FormatError as exc:
        raise Corrupt(f"{name} has a malformed header: {exc}") from None


def file_key(header: Header, identity: Identity, name: str) -> bytes:
    """The file key wrapped for this node's wallet key; a one-line refusal for a non-reader."""
    wrapped = header.readers.get(identity.public_key)
    if wrapped is None:
        raise FednodeError(f"this backup is encrypted for the members of its repository; your address "
                           f"{identity.address} is not among its {len(header.readers)} readers")
    try:
        return unwrap(wrapped, identity.seed)
    except SealError:
        raise Corrupt(f"{name}: the key wrapped for your address does not open (the file was altered)") from None


def decrypt(src: BinaryIO, plain: BinaryIO, key: bytes, header: Header, raw_header: bytes, name: str,
            max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Open every chunk after the header into ``plain``, each tag checked; returns the CAR's size.
    A chunk is the final one exactly when the file ends after it."""
    digest = hashlib.sha256(raw_header).digest()
    index = total = 0
    prefix = src.read(_LEN.size)
    while True:
        if len(prefix) != _LEN.size:
            raise Corrupt(f"{name} is truncated: the sealed backup ends before its final chunk")
        (size,) = _LEN.unpack(prefix)
        if size > header.chunk + SEAL_OVERHEAD:
            raise Corrupt(f"{name}: chunk {index} declares {size} bytes, more than a chunk")
        sealed = _read_exact(src, size, name)
        prefix = src.read(_LEN.size)
        final = prefix == b""
        try:
            data = unseal(key, sealed, chunk_aad(digest, index, final))
        except SealError:
            raise Corrupt(f"{name}: chunk {index} fails authentication: the backup was altered, truncated "
                          "or its chunks reordered; nothing was stored") from None
        total += len(data)
        if total > max_bytes:
            raise FednodeError(f"{name} holds more than {max_bytes} bytes of CAR (--max-bytes)")
        try:
            plain.write(data)
        except OSError as exc:
            raise FednodeError(f"cannot write the decrypted backup beside the store: {exc.strerror}; "
                               "nothing was stored") from None
        index += 1
        if final:
            return total


@contextmanager
def _scratch(history: History) -> Iterator[BinaryIO]:
    """An unnamed 0600 file beside the store for the decrypted CAR: it vanishes when closed."""
    where = Path(history.store.path).resolve().parent
    try:
        scratch = tempfile.TemporaryFile(dir=where, prefix=".sealed-import.")
    except OSError as exc:
        raise FednodeError(f"cannot write the decrypted backup in {where}: {exc.strerror}") from None
    with scratch:
        yield cast(BinaryIO, scratch)


def import_sealed(history: History, identity: Identity, path: Path,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> ImportReport:
    """Decrypt the sealed backup at ``path`` with this node's wallet key and import its CAR as
    ``carfiles.import_car`` does: all of it, or nothing stored and a one-line error."""
    with open(path, "rb") as src:
        header, raw = read_header(src, path.name)
        key = file_key(header, identity, path.name)
        with _scratch(history) as plain:
            decrypt(src, plain, key, header, raw, path.name, max_bytes)
            try:
                plain.flush()
            except OSError as exc:
                raise FednodeError(f"cannot write the decrypted backup beside the store: {exc.strerror}; "
                                   "nothing was stored") from None

            def check_repo(repo_id: bytes) -> None:
                if repo_tag(repo_id) != header.repo_tag:
                    raise Corrupt(f"{path.name}: its header names another repository than the CAR it holds")

            return import_car_fd(history, plain.fileno(), path.name, max_bytes, check_repo)
