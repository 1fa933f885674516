"""Sealed backups through the real ``fednode`` console script (subprocesses, real homes): export of a
private repository is sealed for its owner and members, a member's fresh node restores it, anyone
else gets one error line and an unchanged store; ``--plain`` warns; a public repository exports plain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SEED, fixed_identity, model_arrays, perturb, run_fednode, store_fingerprint, write_model
from solders.keypair import Keypair

from fednode.node import open_node
from fednode.storage.netstate import NetState
from fednode.tensors.modelio import ArraySource
from fednode.workflows.sealedcar import MAGIC
from protocol import messages as m
from protocol.car import read_car
from protocol.multiformats import b58encode

MEMBER_SEED = bytes(range(101, 133))
OUTSIDER_SEED = bytes(range(201, 233))


def new_home(tmp: Path, name: str, seed: bytes) -> Path:
    """``fednode init --keypair`` of a fresh home holding only that keypair, its store opened once."""
    key = tmp / f"{name}.json"
    key.write_text(Keypair.from_seed(seed).to_json())
    home = tmp / name
    run_fednode(home, "init", "--keypair", key)
    open_node(home).close()
    return home


def one_line(stderr: str, prefix: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sealedcli")
    home = new_home(tmp, "owner", SEED)
    arrays = model_arrays(3)
    run_fednode(home, "repo", "create", "r", "--from", write_model(tmp / "m0.safetensors", arrays))
    run_fednode(home, "commit", "--from", write_model(tmp / "m1.safetensors", perturb(arrays, 1)), "-m", "round 1")
    head = json.loads(run_fednode(home, "log", "--json").stdout)[0]["cid"]
    member = fixed_identity(MEMBER_SEED)
    with open_node(home) as node:  # the owner's signed membership, as the daemon records it
        info = node.history.repo("r")
        msg = m.Membership(info.repo_id, (member.public_key,), False, 1, 1, node.identity.public_key)
        signed = m.decode(type(msg)(**{**msg.__dict__, "sig": node.identity.sign(msg.signing_hash())}).encode())
        assert isinstance(signed, m.Membership)
        NetState(node.store).put_membership(signed)
    run_fednode(home, "checkout", head, "--out", tmp / "owner.safetensors")
    return {"tmp": tmp, "home": home, "head": head, "member": member}


def test_export_seals_and_a_members_fresh_node_restores_it(owner, tmp_path: Path) -> None:
    backup = tmp_path / "r.backup"
    proc = run_fednode(owner["home"], "export", "HEAD", "--car", backup, "--ancestry")
    assert "sealed for 2 reader(s): the owner and 1 member(s)" in proc.stdout and proc.stderr == ""
    assert backup.read_bytes().startswith(MAGIC)
    data = json.loads(run_fednode(owner["home"], "export", "HEAD", "--car", tmp_path / "j.backup", "--ancestry",
                                  "--json").stdout)
    assert data["sealed"] is True
    assert data["readers"] == [b58encode(fixed_identity().public_key), b58encode(owner["member"].public_key)]

    member = new_home(tmp_path, "member", MEMBER_SEED)
    proc = run_fednode(member, "import", backup)
    assert "(new here: registered): 2 commits" in proc.stdout, proc.stdout
    run_fednode(member, "checkout", owner["head"], "-r", "r", "--out", tmp_path / "member.safetensors")
    assert (tmp_path / "member.safetensors").read_bytes() == (owner["tmp"] / "owner.safetensors").read_bytes()


def test_a_non_member_gets_one_line_and_nothing_is_stored(owner, tmp_path: Path) -> None:
    backup = tmp_path / "r.backup"
    run_fednode(owner["home"], "export", "HEAD", "--car", backup, "--ancestry")
    outsider = new_home(tmp_path, "outsider", OUTSIDER_SEED)
    before = store_fingerprint(outsider)
    proc = run_fednode(outsider, "import", backup, check=False)
    assert proc.returncode == 1
    address = b58encode(fixed_identity(OUTSIDER_SEED).public_key)
    assert one_line(proc.stderr, "error: ") == (
        f"error: this backup is encrypted for the members of its repository; your address {address} "
        "is not among its 2 readers")
    assert store_fingerprint(outsider) == before


def test_a_tampered_backup_gets_one_line_and_nothing_is_stored(owner, tmp_path: Path) -> None:
    backup = tmp_path / "r.backup"
    run_fednode(owner["home"], "export", "HEAD", "--car", backup, "--ancestry")
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x80
    backup.write_bytes(bytes(data))
    member = new_home(tmp_path, "member", MEMBER_SEED)
    before = store_fingerprint(member)
    proc = run_fednode(member, "import", backup, check=False)
    assert proc.returncode == 1
    assert "fails authentication" in one_line(proc.stderr, "error: ")
    assert store_fingerprint(member) == before


def test_plain_warns_and_writes_a_car(owner, tmp_path: Path) -> None:
    proc = run_fednode(owner["home"], "export", "HEAD", "--car", tmp_path / "r.car", "--plain")
    line = one_line(proc.stderr, "warning: ")
    assert "UNENCRYPTED" in line and "private repository r" in line
    roots, _ = read_car((tmp_path / "r.car").read_bytes())
    assert [str(r) for r in roots] == [owner["head"]]


def test_a_public_repository_exports_a_plain_car_without_warning(tmp_path: Path) -> None:
    home = new_home(tmp_path, "pub", SEED)
    with open_node(home) as node:
        _, result = node.history.create_repo("p", ArraySource(model_arrays(0)), visibility="public")
    proc = run_fednode(home, "export", result.cid, "-r", "p", "--car", tmp_path / "p.car", "--json")
    assert proc.stderr == "" and json.loads(proc.stdout)["sealed"] is False
    roots, _ = read_car((tmp_path / "p.car").read_bytes())
    assert roots == [result.cid]


def test_an_imported_publish_decision_is_said(tmp_path: Path) -> None:
    """A backup holding the owner's publish commit makes the repository public where it is imported,
    and the import says so (text and --json); one without it says nothing of the kind."""
    owner = new_home(tmp_path, "pub-owner", SEED)
    run_fednode(owner, "repo", "create", "p", "--from", write_model(tmp_path / "p0.safetensors", model_arrays(4)))
    run_fednode(owner, "export", "HEAD", "--car", tmp_path / "before.car", "--plain")
    published = json.loads(run_fednode(owner, "repo", "publish", "-r", "p", "--yes", "--no-chain", "--json").stdout)
    run_fednode(owner, "export", "HEAD", "--car", tmp_path / "after.car", "--ancestry")  # public now: plain

    other = new_home(tmp_path, "pub-other", MEMBER_SEED)
    quiet = run_fednode(other, "import", tmp_path / "before.car").stdout
    assert "now public" not in quiet
    said = run_fednode(other, "import", tmp_path / "after.car").stdout
    assert f"it is now public (the owner's publish commit {published['commit']})" in said, said
    listed = json.loads(run_fednode(other, "repo", "list", "--json").stdout)
    assert [r["visibility"] for r in listed] == ["public"]
    again = json.loads(run_fednode(new_home(tmp_path, "pub-third", MEMBER_SEED), "import", tmp_path / "after.car",
                                   "--json").stdout)
    assert again["published"] == published["commit"]
