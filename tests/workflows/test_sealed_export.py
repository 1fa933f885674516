"""Encrypted exports of private repositories (issue 13): ``fednode export`` seals the CAR for the
owner and the members (fednode/workflows/sealedcar.py), ``fednode import`` opens it for them alone.

Real stores, real commits, the in-process CLI: a member restores a backup on a fresh home bit for bit;
a non-member, a tampered, truncated, extended or reordered file is refused in one line with every
database of the store unchanged; no block of the repository appears in the sealed file.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import SEED, fixed_identity, model_arrays, perturb, store_fingerprint, write_model
from solders.keypair import Keypair

from cli.app import main as cli_main
from fednode.errors import FednodeError
from fednode.identity import Identity
from fednode.node import init_home, open_node
from fednode.storage.netstate import NetState
from fednode.workflows import sealedcar
from fednode.workflows.carfiles import export_car, write_car
from fednode.workflows.sealedcar import MAGIC, Header, export_sealed, import_sealed
from protocol import messages as m
from protocol.car import read_car
from protocol.multiformats import CID, b58encode

MEMBER_SEED = bytes(range(101, 133))
OUTSIDER_SEED = bytes(range(201, 233))
BIG = 900_000  # float32 elements: a 3.6 MiB tensor, so the backup has several 1 MiB chunks


def invoke(home: Path, *args: object, ok: bool = True):
    result = CliRunner().invoke(cli_main, ["--home", str(home), *map(str, args)], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, f"{args}: {result.output} {result.stderr}"
    return result


def make_home(path: Path, seed: bytes) -> Path:
    """A fresh node home holding only the keypair of ``seed`` (its store opened once, so later
    snapshots see only what an import does)."""
    path.mkdir(parents=True)
    key = path / "id.json"
    key.write_text(Keypair.from_seed(seed).to_json())
    init_home(path / "home", key)
    # a sealed backup is what this tests: the 900k-parameter commit would derive a generator table
    config = path / "home" / "config.toml"
    config.write_text(config.read_text().replace("commitments = true", "commitments = false"))
    open_node(path / "home").close()
    return path / "home"


def sign(identity: Identity, msg: m.Membership) -> m.Membership:
    signed = type(msg)(**{**msg.__dict__, "sig": identity.sign(msg.signing_hash())})
    decoded = m.decode(signed.encode())
    assert isinstance(decoded, m.Membership)
    return decoded


def arrays(seed: int) -> dict[str, tuple[str, np.ndarray]]:
    out = model_arrays(seed)
    rng = np.random.default_rng(seed + 50)
    out["big"] = ("F32", rng.standard_normal(BIG).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The owner's node: private repository r (genesis + one commit), a signed membership naming one
    member; a sealed backup of its history and the plain CAR of the same for comparison."""
    tmp = tmp_path_factory.mktemp("sealed")
    home = make_home(tmp / "owner", SEED)
    invoke(home, "repo", "create", "r", "--from", write_model(tmp / "m0.safetensors", arrays(0)))
    invoke(home, "commit", "--from", write_model(tmp / "m1.safetensors", perturb(arrays(0), 1)), "-m", "round 1")
    head = json.loads(invoke(home, "log", "--json").stdout)[0]["cid"]
    member = fixed_identity(MEMBER_SEED)
    with open_node(home) as node:
        info = node.history.repo("r")
        assert node.history.is_private(info.repo_id)
        NetState(node.store).put_membership(sign(node.identity, m.Membership(
            info.repo_id, (member.public_key,), False, 1, 1, node.identity.public_key)))
        assert sealedcar.backup_readers(node, info) == [node.identity.public_key, member.public_key]
    invoke(home, "export", "HEAD", "--car", tmp / "backup.fnc", "--ancestry")
    invoke(home, "export", "HEAD", "--car", tmp / "plain.car", "--ancestry", "--plain")
    invoke(home, "checkout", head, "--out", tmp / "owner.safetensors")
    return {"tmp": tmp, "home": home, "head": head, "repo_id": info.repo_id, "member": member,
            "backup": tmp / "backup.fnc", "plain": tmp / "plain.car"}


def chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    """A sealed backup split into (magic + header with its length, [each chunk with its length])."""
    (size,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
    at = len(MAGIC) + 4 + size
    head, parts = data[:at], []
    while at < len(data):
        (n,) = struct.unpack(">I", data[at:at + 4])
        parts.append(data[at:at + 4 + n])
        at += 4 + n
    return head, parts


def refused(home: Path, path: Path, *needles: str) -> str:
    """The real CLI refuses to import ``path`` in one line, and every database of the store is unchanged."""
    before = store_fingerprint(home)
    result = invoke(home, "import", path, ok=False)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert store_fingerprint(home) == before
    return lines[0]


# --- what the file holds ----------------------------------------------------------------------


def test_no_block_of_the_repository_is_in_the_sealed_file(owner) -> None:
    sealed = owner["backup"].read_bytes()
    roots, blocks = read_car(owner["plain"].read_bytes())
    assert [str(r) for r in roots] == [owner["head"]] and len(blocks) > 10
    assert sealed.startswith(MAGIC)
    for section in blocks:  # commits, manifests, tensor chunks: none in clear, not even its first 32 bytes
        assert section.block[:32] not in sealed, section.cid
        assert bytes(section.cid) not in sealed
    assert owner["repo_id"] not in sealed  # the header names the repository by a hash
    head, parts = chunks(sealed)
    header = Header.decode(head[len(MAGIC) + 4:])
    assert header.repo_tag == hashlib.sha256(b"fednode/backup/v1" + owner["repo_id"]).digest()
    car_size = owner["plain"].stat().st_size
    assert header.chunk == 1 << 20 and len(parts) == -(-car_size // header.chunk) >= 4
    assert set(header.readers) == {fixed_identity().public_key, owner["member"].public_key}
    # a fresh file key per export: the same history sealed twice shares no chunk
    again = owner["tmp"] / "again.fnc"
    invoke(owner["home"], "export", "HEAD", "--car", again, "--ancestry")
    assert not set(chunks(again.read_bytes())[1]) & set(parts)


def test_a_public_repository_exports_a_plain_car(tmp_path: Path) -> None:
    home = make_home(tmp_path / "pub", SEED)
    with open_node(home) as node:
        from fednode.tensors.modelio import ArraySource

        info, result = node.history.create_repo("p", ArraySource(model_arrays(0)), visibility="public")
    out = invoke(home, "export", str(result.cid), "--car", tmp_path / "p.car", "-r", "p", "--json")
    assert json.loads(out.stdout)["sealed"] is False and out.stderr == ""
    roots, _ = read_car((tmp_path / "p.car").read_bytes())
    assert roots == [result.cid]


def test_plain_exports_a_private_repository_unencrypted_with_a_warning(owner) -> None:
    out = invoke(owner["home"], "export", "HEAD", "--car", owner["tmp"] / "p2.car", "--plain")
    warning = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "UNENCRYPTED" in warning[0]
    roots, _ = read_car((owner["tmp"] / "p2.car").read_bytes())
    assert [str(r) for r in roots] == [owner["head"]]


def test_a_member_key_that_cannot_be_sealed_for_refuses_the_export(tmp_path: Path) -> None:
    home = make_home(tmp_path / "bad", SEED)
    invoke(home, "repo", "create", "r", "--from", write_model(tmp_path / "m.safetensors", model_arrays(0)))
    with open_node(home) as node:
        info = node.history.repo("r")
        NetState(node.store).put_membership(sign(node.identity, m.Membership(
            info.repo_id, (bytes(32),), False, 1, 1, node.identity.public_key)))  # no Ed25519 point
    result = invoke(home, "export", "HEAD", "--car", tmp_path / "r.fnc", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot seal a backup for {b58encode(bytes(32))}: not an Ed25519 public key"
    assert not list(tmp_path.glob("*.fnc*")) and not list(tmp_path.glob(".r.fnc*"))


def test_a_membership_not_signed_by_the_owner_names_no_reader(tmp_path: Path) -> None:
    home = make_home(tmp_path / "o", SEED)
    invoke(home, "repo", "create", "r", "--from", write_model(tmp_path / "m.safetensors", model_arrays(0)))
    other = fixed_identity(OUTSIDER_SEED)
    with open_node(home) as node:
        info = node.history.repo("r")
        NetState(node.store).put_membership(sign(other, m.Membership(
            info.repo_id, (other.public_key,), False, 1, 1, other.public_key)))
        assert sealedcar.backup_readers(node, info) == [node.identity.public_key]


# --- restore ----------------------------------------------------------------------------------


def test_a_member_restores_the_backup_on_a_fresh_home_bit_for_bit(owner, tmp_path: Path) -> None:
    home = make_home(tmp_path / "member", MEMBER_SEED)
    out = json.loads(invoke(home, "import", owner["backup"], "--json").stdout)
    assert out["registered"] and out["repo"] == "r" and out["roots"] == [owner["head"]] and out["commits"] == 2
    assert out["sealed"] is True
    invoke(home, "checkout", owner["head"], "-r", "r", "--out", tmp_path / "member.safetensors")
    assert (tmp_path / "member.safetensors").read_bytes() == (owner["tmp"] / "owner.safetensors").read_bytes()
    with open_node(home) as node:
        assert node.history.is_private(owner["repo_id"])  # still private on the member's node
        with node.store.read() as txn:  # its blocks are the repository's, to serve to members only
            assert list(txn.block_repos(CID.parse(owner["head"]))) == [owner["repo_id"]]
        assert sorted(p.name for p in home.iterdir() if p.name.startswith(".sealed")) == []
    again = json.loads(invoke(home, "import", owner["backup"], "--json").stdout)  # idempotent
    assert not again["registered"] and again["new_blocks"] == 0


def test_the_owner_restores_its_own_backup(owner, tmp_path: Path) -> None:
    home = make_home(tmp_path / "owner2", SEED)
    assert json.loads(invoke(home, "import", owner["backup"], "--json").stdout)["commits"] == 2


def test_a_non_member_is_refused_and_nothing_is_stored(owner, tmp_path: Path) -> None:
    home = make_home(tmp_path / "outsider", OUTSIDER_SEED)
    line = refused(home, owner["backup"])
    address = b58encode(fixed_identity(OUTSIDER_SEED).public_key)
    assert line == (f"error: this backup is encrypted for the members of its repository; your address {address} "
                    "is not among its 2 readers")


# --- hostile files: every one refused, nothing stored ----------------------------------------


@pytest.fixture
def member_home(tmp_path: Path) -> Path:
    return make_home(tmp_path / "m", MEMBER_SEED)


def test_a_tampered_byte_anywhere_is_refused(owner, member_home: Path, tmp_path: Path) -> None:
    data = owner["backup"].read_bytes()
    head, parts = chunks(data)
    offsets = {"chunk 0": len(head) + 100, "chunk 2": len(head) + len(parts[0]) + len(parts[1]) + 5000,
               "the last byte": len(data) - 1, "the header": len(MAGIC) + 10}
    for where, offset in offsets.items():
        bad = bytearray(data)
        bad[offset] ^= 0x01
        (tmp_path / "bad.fnc").write_bytes(bytes(bad))
        line = refused(member_home, tmp_path / "bad.fnc")
        assert "fails authentication" in line or "does not open" in line or "malformed header" in line, (where, line)


def test_a_truncated_or_extended_file_is_refused(owner, member_home: Path, tmp_path: Path) -> None:
    data = owner["backup"].read_bytes()
    head, parts = chunks(data)
    last = len(parts) - 1
    cases = {  # what is refused, and the error that must say so
        "last chunk dropped": (head + b"".join(parts[:-1]), f"chunk {last - 1} fails authentication"),
        "cut in a chunk": (data[:-1000], "is truncated"),
        "only the header": (head, "is truncated"),
        "a chunk repeated at the end": (data + parts[-1], f"chunk {last} fails authentication"),
        "trailing zeros": (data + b"\0" * 8, f"chunk {last} fails authentication"),
    }
    for case, (bad, needle) in cases.items():
        (tmp_path / "cut.fnc").write_bytes(bad)
        line = refused(member_home, tmp_path / "cut.fnc")
        assert needle in line, (case, line)


def test_reordered_or_swapped_chunks_are_refused(owner, member_home: Path, tmp_path: Path) -> None:
    head, parts = chunks(owner["backup"].read_bytes())
    swapped = head + parts[0] + parts[2] + parts[1] + parts[3]
    (tmp_path / "swap.fnc").write_bytes(swapped)
    assert "chunk 1 fails authentication" in refused(member_home, tmp_path / "swap.fnc")
    # a chunk of another export of the same history, same position: another header, another key
    other = owner["tmp"] / "other.fnc"
    invoke(owner["home"], "export", "HEAD", "--car", other, "--ancestry")
    _, theirs = chunks(other.read_bytes())
    (tmp_path / "mixed.fnc").write_bytes(head + parts[0] + theirs[1] + parts[2] + parts[3])
    assert "chunk 1 fails authentication" in refused(member_home, tmp_path / "mixed.fnc")


def test_a_header_naming_another_repository_is_refused(owner, member_home: Path, tmp_path: Path) -> None:
    """A reader could seal a CAR under another repository's tag (the tag is what a holder of many
    backups sorts them by): the import checks the tag against the CAR it opens."""
    member = owner["member"]
    key = sealedcar.new_key()
    header = Header(hashlib.sha256(b"another repository").digest(),
                    {member.public_key: sealedcar.wrap(key, member.public_key)}, 1 << 20).encode()
    out = io.BytesIO()
    out.write(MAGIC + struct.pack(">I", len(header)) + header)
    writer = sealedcar._SealingWriter(out, key, hashlib.sha256(header).digest(), 1 << 20)
    with open_node(owner["home"]) as node, node.store.read() as txn:
        from fednode.workflows.carfiles import ExportReport

        write_car(writer, txn, CID.parse(owner["head"]), True, ExportReport(CID.parse(owner["head"]), Path("x")))
    writer.finish()
    (tmp_path / "tag.fnc").write_bytes(out.getvalue())
    assert "names another repository" in refused(member_home, tmp_path / "tag.fnc")


def test_a_malformed_header_is_refused(member_home: Path, tmp_path: Path) -> None:
    for body in (b"\xa0", b"\xff" * 10, b""):
        (tmp_path / "h.fnc").write_bytes(MAGIC + struct.pack(">I", len(body)) + body)
        assert "malformed header" in refused(member_home, tmp_path / "h.fnc")
    (tmp_path / "h.fnc").write_bytes(MAGIC + struct.pack(">I", 1 << 30))
    assert "declares" in refused(member_home, tmp_path / "h.fnc")


# --- streaming --------------------------------------------------------------------------------


def test_export_and_decrypt_hold_one_chunk_not_the_repository(tmp_path: Path) -> None:
    """A 64 MiB repository: sealing it and opening it each allocate a few MiB at most (Python's
    allocations, tracemalloc), not the repository's size."""
    home = make_home(tmp_path / "big", SEED)
    rng = np.random.default_rng(7)
    model = {"w": ("F32", rng.standard_normal(16 << 20).astype(np.float32))}  # 64 MiB
    invoke(home, "repo", "create", "big", "--from", write_model(tmp_path / "big.safetensors", model))
    (tmp_path / "big.safetensors").unlink()
    with open_node(home) as node:
        info = node.history.repo("big")
        tracemalloc.start()
        report = export_sealed(node.history, info, info.genesis, tmp_path / "big.fnc", [node.identity.public_key])
        _, export_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert report.bytes > 64 << 20 and report.file_bytes > report.bytes
        with open(tmp_path / "big.fnc", "rb") as src, open(tmp_path / "big.car", "wb") as plain:
            header, raw = sealedcar.read_header(src, "big.fnc")
            key = sealedcar.file_key(header, node.identity, "big.fnc")
            tracemalloc.start()
            size = sealedcar.decrypt(src, plain, key, header, raw, "big.fnc")
            _, decrypt_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        export_car(node.history, info, info.genesis, tmp_path / "ref.car")
    assert size == report.bytes
    assert (tmp_path / "big.car").read_bytes() == (tmp_path / "ref.car").read_bytes()
    print(f"64 MiB repository: export peak {export_peak / 2**20:.1f} MiB, decrypt peak {decrypt_peak / 2**20:.1f} MiB")
    assert export_peak < 8 << 20 and decrypt_peak < 8 << 20


def test_import_sealed_api_refuses_a_non_reader(owner, tmp_path: Path) -> None:
    home = make_home(tmp_path / "api", OUTSIDER_SEED)
    with open_node(home) as node:
        with pytest.raises(FednodeError, match="is not among its 2 readers"):
            import_sealed(node.history, node.identity, owner["backup"])


def test_after_an_nft_sale_the_former_holders_members_still_read_backups(tmp_path: Path) -> None:
    """The daemon's read rule (access.Reader): a bound repository's stored membership, accepted from
    its holder at the time, stands until the new holder signs one; backups name the same readers."""
    from fednode.daemon.access import Reader

    home = make_home(tmp_path / "o", SEED)
    invoke(home, "repo", "create", "r", "--from", write_model(tmp_path / "m.safetensors", model_arrays(0)))
    member, buyer = fixed_identity(OUTSIDER_SEED), fixed_identity(bytes(range(101, 133)))
    with open_node(home) as node:
        info = node.history.repo("r")
        state = NetState(node.store)
        state.put_membership(sign(node.identity, m.Membership(
            info.repo_id, (member.public_key,), False, 1, 1, node.identity.public_key)))
        assert state.set_controller(info.repo_id, buyer.public_key, bytes(range(32)), 10)
        readers = sealedcar.backup_readers(node, info)
        assert readers == [buyer.public_key, member.public_key]  # before: the buyer alone
        assert set(readers) == Reader(node.store, member.public_key).members(info.repo_id)
