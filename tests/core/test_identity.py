"""Node identity: one Ed25519 key for wallet and libp2p peer id; key files and their permissions."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, run_fednode
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from solders.keypair import Keypair

from cli.app import main as cli_main
from fednode.errors import FednodeError
from fednode.identity import Identity, peer_id_from_public_key, verify_signature
from fednode.node import init_home, open_node
from protocol.multiformats import b58encode


def secret_forms(kp: Keypair) -> list[str]:
    raw = bytes(kp)
    seed = raw[:32]
    return [kp.to_json(), json.dumps(list(raw)), json.dumps(list(seed))[1:-1], raw.hex(), seed.hex(),
            b58encode(raw), b58encode(seed), str(kp)]


def invoke(*args: str):
    return CliRunner().invoke(cli_main, list(map(str, args)), catch_exceptions=False)


def test_init_and_id_real_console_script(tmp_path: Path) -> None:
    kp = Keypair()
    key = tmp_path / "wallet.json"
    key.write_text(kp.to_json())
    key.chmod(0o600)
    home = tmp_path / "node-home"
    init = run_fednode(home, "init", "--keypair", key)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "keypair.json").stat().st_mode) == 0o600
    assert json.loads((home / "keypair.json").read_text()) == list(bytes(kp))
    assert (home / "config.toml").exists() and (home / "store").is_dir()

    ident = run_fednode(home, "id")
    as_json = json.loads(run_fednode(home, "id", "--json").stdout)
    libp2p_kp = create_new_key_pair(bytes(kp)[:32])
    expected_peer = ID.from_pubkey(libp2p_kp.public_key).to_base58()
    assert libp2p_kp.public_key.to_bytes() == bytes(kp.pubkey())
    assert as_json["address"] == str(kp.pubkey())
    assert as_json["peer_id"] == expected_peer
    assert as_json["peer_id"].startswith("12D3KooW")
    assert str(kp.pubkey()) in ident.stdout and expected_peer in ident.stdout
    for output in (init.stdout + init.stderr, ident.stdout + ident.stderr):
        for secret in secret_forms(kp):
            assert secret not in output


def test_init_generates_fresh_key_with_safe_modes(tmp_path: Path) -> None:
    home = tmp_path / "h"
    result = invoke("--home", home, "init")
    assert result.exit_code == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "keypair.json").stat().st_mode) == 0o600
    ident = Identity.load(home / "keypair.json")
    assert ident.address in result.output and ident.peer_id in result.output
    for secret in secret_forms(ident.keypair):
        assert secret not in result.output
    assert secret_forms(ident.keypair)[3] not in repr(ident)


def test_init_refuses_to_overwrite_identity(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert invoke("--home", home, "init").exit_code == 0
    before = (home / "keypair.json").read_bytes()
    again = invoke("--home", home, "init")
    assert again.exit_code != 0
    assert_one_line_error(again.stderr, "already initialised")
    assert (home / "keypair.json").read_bytes() == before
    forced = invoke("--home", home, "init", "--force")
    assert forced.exit_code == 0
    assert (home / "keypair.json").read_bytes() != before


@pytest.mark.parametrize("seed", [bytes(32), bytes(range(32)), b"\xff" * 32, hashlib.sha256(b"another seed").digest()])
def test_peer_id_equals_py_libp2p(seed: bytes) -> None:
    ident = Identity(Keypair.from_seed(seed))
    libp2p_kp = create_new_key_pair(seed)
    assert ident.peer_id == ID.from_pubkey(libp2p_kp.public_key).to_base58()
    assert peer_id_from_public_key(ident.public_key) == ident.peer_id
    assert ident.seed == seed
    # one key: libp2p and solders sign identically
    assert libp2p_kp.private_key.sign(b"msg") == ident.sign(b"msg")


def test_signatures_verify_and_reject_tampering() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"commit hash")
    assert verify_signature(ident.public_key, b"commit hash", sig)
    assert not verify_signature(ident.public_key, b"commit hasH", sig)
    assert not verify_signature(ident.public_key, b"commit hash", bytes([sig[0] ^ 1]) + sig[1:])
    assert not verify_signature(Identity.generate().public_key, b"commit hash", sig)
    assert not verify_signature(ident.public_key[:31], b"commit hash", sig)
    assert not verify_signature(ident.public_key, b"commit hash", sig[:63])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    ident = Identity.generate()
    path = tmp_path / "k" / "keypair.json"
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).public_key == ident.public_key
    assert Keypair.from_json(path.read_text()) == ident.keypair


def _bad_keypairs() -> dict[str, str]:
    good = list(bytes(Keypair()))
    other = list(bytes(Keypair()))
    return {
        "wrong length": json.dumps(good[:63]),
        "too long": json.dumps(good + [0]),
        "bad json": "[1, 2, 3",
        "not a list": json.dumps({"secret": good}),
        "out of range": json.dumps([256] + good[1:]),
        "negative": json.dumps([-1] + good[1:]),
        "floats": json.dumps([float(v) for v in good]),
        "pubkey mismatch": json.dumps(good[:32] + other[32:]),
        "empty": "",
    }


@pytest.mark.parametrize("name", list(_bad_keypairs()))
def test_init_rejects_invalid_keypair(tmp_path: Path, name: str) -> None:
    key = tmp_path / "bad.json"
    key.write_text(_bad_keypairs()[name])
    home = tmp_path / "h"
    result = invoke("--home", home, "init", "--keypair", key)
    assert result.exit_code != 0
    assert_one_line_error(result.stderr, "invalid keypair file")
    assert not (home / "keypair.json").exists()
    assert result.stdout == ""
    with pytest.raises(FednodeError):
        Identity.load(key)


def test_init_rejects_missing_keypair_file(tmp_path: Path) -> None:
    result = invoke("--home", tmp_path / "h", "init", "--keypair", tmp_path / "nope.json")
    assert result.exit_code != 0
    assert_one_line_error(result.stderr, "cannot read keypair")


def test_invalid_keypair_real_console_script(tmp_path: Path) -> None:
    key = tmp_path / "bad.json"
    kp = Keypair()
    values = list(bytes(kp))
    key.write_text(json.dumps(values[:32] + list(bytes(Keypair().pubkey()))))
    proc = run_fednode(tmp_path / "h", "init", "--keypair", key, check=False)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "public key does not match")
    for secret in secret_forms(kp):
        assert secret not in proc.stdout + proc.stderr


def test_world_readable_key_refused(home: Path) -> None:
    key = home / "keypair.json"
    key.chmod(0o644)
    result = invoke("--home", home, "id")
    assert result.exit_code != 0
    assert_one_line_error(result.stderr, "readable by others", "chmod 600")
    with pytest.raises(FednodeError, match="readable by others"):
        open_node(home)
    key.chmod(0o600)
    assert invoke("--home", home, "id").exit_code == 0


def test_corrupt_home_key_refused(home: Path) -> None:
    (home / "keypair.json").write_text("[1,2,3]")
    result = invoke("--home", home, "id")
    assert result.exit_code != 0
    assert_one_line_error(result.stderr, "invalid keypair file")


def test_missing_home(tmp_path: Path) -> None:
    result = invoke("--home", tmp_path / "absent", "id")
    assert result.exit_code != 0
    assert_one_line_error(result.stderr, "no node home", "fednode init")
    assert not (tmp_path / "absent").exists()
    proc = run_fednode(tmp_path / "absent2", "log", check=False)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "no node home")
    assert not (tmp_path / "absent2").exists()


def test_init_home_api(tmp_path: Path) -> None:
    ident = init_home(tmp_path / "h")
    with open_node(tmp_path / "h") as node:
        assert node.identity.public_key == ident.public_key
        assert node.config["repository_defaults"]["snapshot_interval"] == 8


def test_home_writable_by_others_is_refused(home: Path) -> None:
    os.chmod(home, 0o777)
    try:
        with pytest.raises(FednodeError, match="writable by others"):
            open_node(home)
    finally:
        os.chmod(home, 0o700)
    open_node(home).close()


@pytest.mark.parametrize("target", ["home", "key"])
def test_home_or_key_of_another_user_is_refused(home: Path, target: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    path = home if target == "home" else home / "keypair.json"
    os.chown(path, 12345, -1)  # the other user could swap the key or the store, or read the key
    try:
        with pytest.raises(FednodeError, match=f"{path.name} is owned by another user \\(uid 12345"):
            open_node(home)
    finally:
        os.chown(path, os.geteuid(), -1)
    open_node(home).close()


def test_keypair_write_failure_is_one_error_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FednodeError, match="cannot write keypair"):
        Identity.generate().save(tmp_path / "file" / "keypair.json")  # its directory is a regular file
    target = tmp_path / "ro" / "keypair.json"
    target.parent.mkdir()
    os.symlink("/proc/version", target.with_name("keypair.json.tmp"))  # the temporary file cannot be written
    with pytest.raises(FednodeError, match="cannot write keypair"):
        Identity.generate().save(target)
    assert not target.exists()
