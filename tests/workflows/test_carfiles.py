"""CAR export and import (issue 16 item 5) on real stores with real commits, through the real CLI:
what export writes, that import stores everything or nothing, every hostile CAR refused in one
line with the store unchanged, and interop both ways with npm's @ipld/car (car_interop.mjs)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import (
    ROOT,
    SEED,
    assert_cli_refuses,
    dag_bomb,
    fixed_identity,
    model_arrays,
    perturb,
    store_fingerprint,
    write_model,
)
from solders.keypair import Keypair

from cli.app import main as cli_main
from fednode.node import init_home, open_node
from protocol.car import CARV2_PRAGMA, read_car, write_car
from protocol.multiformats import CID, DAG_CBOR, RAW
from protocol.objects import Commit, Manifest

INTEROP = Path(__file__).with_name("car_interop.mjs")


def invoke(home: Path, *args: object) -> str:
    result = CliRunner().invoke(cli_main, ["--home", str(home), *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, f"{args}: {result.output} {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A node with repository r: genesis, two delta commits, a side branch merged, a revert; CARs of
    its head with and without ancestry, and of the genesis alone. The repository is private (the
    default), so ``--plain`` asks for the unencrypted CAR these tests read (sealed: test_sealed_export)."""
    tmp = tmp_path_factory.mktemp("carsrc")
    home = tmp / "home"
    key = tmp / "id.json"
    key.write_text(Keypair.from_seed(SEED).to_json())
    init_home(home, key)
    arrays = model_arrays(0)
    invoke(home, "repo", "create", "r", "--from", write_model(tmp / "m0.safetensors", arrays))
    genesis = json.loads(invoke(home, "log", "--json"))[0]["cid"]
    for i in (1, 2):
        arrays = perturb(arrays, i)
        invoke(home, "commit", "--from", write_model(tmp / f"m{i}.safetensors", arrays), "-m", f"round {i}")
    rounds = [c["cid"] for c in json.loads(invoke(home, "log", "--json"))[:2]]  # round 2, round 1
    invoke(home, "branch", "side", "HEAD~1", "--switch")
    invoke(home, "commit", "--from", write_model(tmp / "m3.safetensors", perturb(arrays, 3)), "-m", "side")
    invoke(home, "switch", "main")
    invoke(home, "merge", "side", "--weights", "equal", "-m", "merged")
    invoke(home, "revert", "HEAD~1")  # history: genesis, 2 rounds, a side commit, a merge, a revert
    head = json.loads(invoke(home, "log", "--json"))[0]["cid"]
    invoke(home, "export", "--plain", "HEAD", "--car", tmp / "all.car", "--ancestry")
    invoke(home, "export", "--plain", "HEAD", "--car", tmp / "head.car")
    invoke(home, "export", "--plain", genesis, "--car", tmp / "genesis.car", "--ancestry")
    return {"home": home, "head": head, "genesis": genesis, "round2": rounds[0], "round1": rounds[1],
            "all": tmp / "all.car", "one": tmp / "head.car",
            "genesis_car": tmp / "genesis.car", "tmp": tmp}


def refused(cli, home: Path, car: Path, *needles: str, extra: tuple[str, ...] = ()) -> str:
    """The real CLI refuses ``car`` in one line; the store, every database of it, is unchanged."""
    before = store_fingerprint(home)
    stderr = assert_cli_refuses(cli, home, "import", car, *extra, needles=needles)
    assert store_fingerprint(home) == before
    return stderr


def sections(car: Path) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    roots, found = read_car(car.read_bytes())
    return roots, [(s.cid, s.block) for s in found]


def write(path: Path, roots: list[CID], blocks: list[tuple[CID, bytes]]) -> Path:
    out = io.BytesIO()
    write_car(out, roots, blocks)
    path.write_bytes(out.getvalue())
    return path


# --- export ----------------------------------------------------------------------------------


def test_export_writes_the_commit_first_then_its_closure_and_is_deterministic(source, tmp_path: Path) -> None:
    roots, blocks = sections(source["all"])
    assert [str(r) for r in roots] == [source["head"]]
    assert str(blocks[0][0]) == source["head"]
    commits = [Commit.decode(b) for c, b in blocks if c.codec == DAG_CBOR and _is_commit(b)]
    assert len(commits) == 6 and sorted(c.kind for c in commits)[:3] == ["init", "merge", "revert"]
    assert blocks[1][0] == commits[0].weights  # each commit is followed by its manifest
    invoke(source["home"], "export", "--plain", "HEAD", "--car", tmp_path / "again.car", "--ancestry")
    assert (tmp_path / "again.car").read_bytes() == source["all"].read_bytes()
    _, one = sections(source["one"])
    assert [c for c, _ in one] == [c for c, _ in blocks[:len(one)]]  # the head's own blocks only
    assert sum(_is_commit(b) for c, b in one if c.codec == DAG_CBOR) == 1


def _is_commit(block: bytes) -> bool:
    try:
        Commit.decode(block)
    except ValueError:
        return False
    return True


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    """A block missing from the store: the export fails in one line and leaves neither file nor temp."""
    home = tmp_path / "damaged"
    key = tmp_path / "id.json"
    key.write_text(Keypair.from_seed(SEED).to_json())
    init_home(home, key)
    invoke(home, "repo", "create", "r", "--from", write_model(tmp_path / "m.safetensors", model_arrays(0)))
    invoke(home, "export", "--plain", "HEAD", "--car", tmp_path / "ok.car")
    _, blocks = sections(tmp_path / "ok.car")
    node = open_node(home)
    try:
        with node.store.write() as txn:
            txn.delete_block(blocks[-1][0])
    finally:
        node.close()
    result = CliRunner().invoke(cli_main, ["--home", str(home), "export", "HEAD", "--car", tmp_path / "x.car"])
    assert result.exit_code == 1 and "is not in the store" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "id.json", "m.safetensors", "ok.car"]


# --- import ----------------------------------------------------------------------------------


def test_import_with_ancestry_registers_the_repository_and_verifies(source, home: Path, cli) -> None:
    out = json.loads(cli("import", source["all"], "--json").stdout)
    assert out["registered"] and out["repo"] == "r" and out["commits"] == 6 and out["roots"] == [source["head"]]
    assert out["new_blocks"] == out["blocks"] == len(sections(source["all"])[1])
    cli("branch", "imported", source["head"], "-r", "r")
    assert "6 commits ok" in cli("verify", "imported", "-r", "r").stdout
    node = open_node(home)
    src = open_node(source["home"])
    try:
        head = CID.parse(source["head"])
        mine, theirs = node.history.state(head), src.history.state(head)
        assert all(mine[n][1].tobytes() == theirs[n][1].tobytes() for n in theirs)
    finally:
        node.close()
        src.close()
    again = json.loads(cli("import", source["all"], "--json").stdout)  # idempotent
    assert not again["registered"] and again["new_blocks"] == 0


def test_import_without_ancestry_needs_the_parents_here(source, home: Path, cli) -> None:
    refused(cli, home, source["one"], "incomplete", "--ancestry")
    cli("import", source["genesis_car"])
    refused(cli, home, source["one"], "incomplete")  # the parent (round 1) is still missing
    cli("import", source["all"])
    assert json.loads(cli("import", source["one"], "--json").stdout)["new_blocks"] == 0


def test_every_prefix_of_a_car_stores_nothing(source, home: Path, cli) -> None:
    data = source["genesis_car"].read_bytes()
    car = home.parent / "cut.car"
    for n in range(len(data)):
        car.write_bytes(data[:n])
        refused(cli, home, car)


def test_a_block_that_lies_about_its_cid_stores_nothing(source, home: Path, cli, tmp_path: Path) -> None:
    data = bytearray(source["all"].read_bytes())
    data[-1] ^= 1  # the last tensor block
    car = tmp_path / "lie.car"
    car.write_bytes(bytes(data))
    refused(cli, home, car, "does not match its hash")


def test_a_bad_signature_stores_nothing(source, home: Path, cli, tmp_path: Path) -> None:
    roots, blocks = sections(source["all"])
    head = Commit.decode(blocks[0][1])
    forged = replace(head, message="not what was signed")
    block = forged.encode()
    car = write(tmp_path / "forged.car", [CID.hash(DAG_CBOR, block)], [(CID.hash(DAG_CBOR, block), block), *blocks[1:]])
    refused(cli, home, car, "invalid signature")


def test_an_incomplete_closure_stores_nothing(source, home: Path, cli, tmp_path: Path) -> None:
    roots, blocks = sections(source["all"])
    refused(cli, home, write(tmp_path / "short.car", roots, blocks[:-1]), "incomplete")
    refused(cli, home, write(tmp_path / "stray.car", roots, [*blocks, (CID.hash(DAG_CBOR, b"\xa0"), b"\xa0")]),
            "not reachable")
    manifest = blocks[1]
    refused(cli, home, write(tmp_path / "noroot.car", [manifest[0]], blocks[1:]), "not a valid commit")


def test_a_car_over_the_limit_stores_nothing(source, home: Path, cli) -> None:
    size = source["all"].stat().st_size
    refused(cli, home, source["all"], "over the limit", extra=("--max-bytes", str(size - 1)))
    refused(cli, home, source["all"], "positive integer", extra=("--max-bytes", "0"))


def test_a_car_of_more_blocks_than_the_limit_stores_nothing(source, home: Path, cli, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fednode.workflows import carfiles

    roots, blocks = sections(source["all"])
    monkeypatch.setattr(carfiles, "MAX_CAR_BLOCKS", len(blocks) - 1)
    refused(cli, home, source["all"], f"more than {len(blocks) - 1} blocks")
    monkeypatch.setattr(carfiles, "MAX_CAR_BLOCKS", len(blocks))
    assert json.loads(cli("import", source["all"], "--json").stdout)["registered"]


def test_a_lying_carv2_stores_nothing_and_an_honest_one_imports(source, home: Path, cli, tmp_path: Path) -> None:
    payload = source["genesis_car"].read_bytes()

    def carv2(data_size: int) -> Path:
        offset = len(CARV2_PRAGMA) + 40
        fixed = bytes(16) + b"".join(n.to_bytes(8, "little") for n in (offset, data_size, 0))
        path = tmp_path / f"v2-{data_size}.car"
        path.write_bytes(CARV2_PRAGMA + fixed + payload)
        return path

    refused(cli, home, carv2(len(payload) + 9), "truncated")
    refused(cli, home, carv2(len(payload) - 9), "crosses the end")
    honest = carv2(len(payload))
    theirs = json.loads(node_script("read", honest))  # the CARv2 built here is one to @ipld/car too
    assert theirs["version"] == 2 and len(theirs["blocks"]) == len(sections(source["genesis_car"])[1])
    assert json.loads(cli("import", honest, "--json").stdout)["registered"]


def test_an_unknown_codec_stores_nothing(source, home: Path, cli, tmp_path: Path) -> None:
    data = source["genesis_car"].read_bytes()
    cid = bytes([1]) + bytes([0xA9, 0x02]) + bytes([0x12, 32]) + bytes(32)  # dag-json (0x0129)
    car = tmp_path / "codec.car"
    car.write_bytes(data + bytes([len(cid) + 2]) + cid + b"{}")
    refused(cli, home, car, "unsupported CID codec")


def test_a_dag_bomb_in_a_signed_commit_stores_nothing(source, home: Path, cli, tmp_path: Path) -> None:
    """A genesis whose tensor is a DAG expanding to 174**3 KiB: signed by its author, every block
    present and hashing to its CID, yet refused by the size-bounded walk before anything is stored."""
    _, blocks = sections(source["genesis_car"])
    by_cid = dict(blocks)
    genesis = Commit.decode(blocks[0][1])
    manifest = Manifest.decode(by_cid[genesis.weights])
    name, entry = next(iter(manifest.tensors.items()))
    bomb, bomb_blocks = dag_bomb(levels=3)
    tensors = {**manifest.tensors, name: replace(entry, cid=bomb, state=bomb)}
    bad_manifest = Manifest(tensors).encode()
    unsigned = replace(genesis, weights=CID.hash(DAG_CBOR, bad_manifest), sig=b"")
    signed = replace(unsigned, sig=fixed_identity().sign(unsigned.commit_hash()))
    block = signed.encode()
    root = CID.hash(DAG_CBOR, block)
    rest = [(c, b) for c, b in blocks[2:] if c not in {entry.cid}]
    car = write(tmp_path / "bomb.car", [root], [(root, block), (CID.hash(DAG_CBOR, bad_manifest), bad_manifest),
                                                *bomb_blocks.items(), *rest])
    refused(cli, home, car, "fails verification")


def test_a_signed_commit_whose_reconstruction_lies_stores_nothing(source, home: Path, cli, tmp_path: Path) -> None:
    """Signed by its author, every block present and true to its CID: only verify's reconstruction
    of the delta finds that the state it records is not what the delta rebuilds, before any write."""
    invoke(source["home"], "export", "--plain", source["round1"], "--car", tmp_path / "r1.car", "--ancestry")
    invoke(source["home"], "export", "--plain", source["round2"], "--car", tmp_path / "r2.car")
    _, ancestry = sections(tmp_path / "r1.car")
    _, own = sections(tmp_path / "r2.car")
    commit = Commit.decode(own[0][1])
    manifest = Manifest.decode(own[1][1])
    name, entry = next((n, e) for n, e in manifest.tensors.items() if e.encoding == "xor")
    lying = Manifest({**manifest.tensors, name: replace(entry, state=CID.hash(RAW, b"another state"))}).encode()
    unsigned = replace(commit, weights=CID.hash(DAG_CBOR, lying), sig=b"")
    block = replace(unsigned, sig=fixed_identity().sign(unsigned.commit_hash())).encode()
    root = CID.hash(DAG_CBOR, block)
    car = write(tmp_path / "lying-state.car", [root],
                [(root, block), (CID.hash(DAG_CBOR, lying), lying), *own[2:], *ancestry])
    refused(cli, home, car, "fails verification", "reconstruction does not match its state CID")


# --- interop with npm's @ipld/car --------------------------------------------------------------


def node_script(*args: object) -> str:
    """Run car_interop.mjs; fails (never skips) when node or the npm set-up is missing."""
    node = shutil.which("node")
    assert node, "node is not installed: the CAR interop test needs node 20"
    assert (ROOT / "node_modules" / "@ipld" / "car").is_dir(), \
        "node_modules/@ipld/car is missing: run 'make test' (its set-up runs npm ci)"
    proc = subprocess.run([node, str(INTEROP), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_ipld_car_reads_what_fednode_exports(source) -> None:
    import hashlib

    for car in (source["all"], source["one"]):
        theirs = json.loads(node_script("read", car))
        roots, blocks = sections(car)
        assert theirs["version"] == 1 and theirs["roots"] == [str(r) for r in roots]
        assert theirs["blocks"] == [[str(c), hashlib.sha256(b).hexdigest(), len(b)] for c, b in blocks]


def test_fednode_imports_what_ipld_car_writes(source, home: Path, cli, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.car"
    node_script("rewrite", source["all"], theirs)
    assert theirs.read_bytes() != source["all"].read_bytes()  # another writer, another order
    out = json.loads(cli("import", theirs, "--json").stdout)
    assert out["registered"] and out["commits"] == 6 and out["roots"] == [source["head"]]
    cli("branch", "theirs", source["head"], "-r", "r")
    assert "6 commits ok" in cli("verify", "theirs", "-r", "r").stdout


# --- a publish decision ----------------------------------------------------------------------


def test_an_imported_publish_decision_makes_the_repository_public(home: Path, cli, tmp_path: Path) -> None:
    """A CAR holding the owner's verified decision to publish records the ``published`` ref, as a fetch
    does; one without it leaves the repository private; a non-owner's forged decision stores nothing."""
    src_home = tmp_path / "owner"
    (tmp_path / "owner.json").write_text(Keypair().to_json())
    init_home(src_home, tmp_path / "owner.json")
    invoke(src_home, "repo", "create", "r", "--from", write_model(tmp_path / "m0.safetensors", model_arrays(0)))
    invoke(src_home, "commit", "--from", write_model(tmp_path / "m1.safetensors", perturb(model_arrays(0), 1)),
           "-m", "round 1")
    invoke(src_home, "export", "--plain", "HEAD", "--car", tmp_path / "before.car", "--ancestry")
    published = json.loads(invoke(src_home, "repo", "publish", "--yes", "--no-chain", "--json"))["commit"]
    invoke(src_home, "export", "HEAD", "--car", tmp_path / "after.car")  # public now: plain, its own blocks

    # a non-owner's decision (re-signed by another key) fails verification: nothing stored
    roots, blocks = sections(tmp_path / "after.car")
    mallory = fixed_identity(bytes(32))
    forged = Commit.decode(blocks[0][1])
    forged = replace(forged, author=mallory.public_key, sig=b"")
    forged = replace(forged, sig=mallory.sign(forged.commit_hash()))
    fcid = CID.hash(DAG_CBOR, forged.encode())
    cli("import", tmp_path / "before.car")
    refused(cli, home, write(tmp_path / "forged.car", [fcid], [(fcid, forged.encode()), *blocks[1:]]),
            "only the repository owner")

    node = open_node(home)
    try:
        info = node.history.repo("r")
        assert node.history.visibility(info.repo_id) == "private" and node.history.published(info.repo_id) is None
    finally:
        node.close()
    cli("import", tmp_path / "after.car")
    node = open_node(home)
    try:
        assert str(node.history.published(info.repo_id)) == published
        assert node.history.visibility(info.repo_id) == "public"
    finally:
        node.close()
    again = json.loads(cli("import", tmp_path / "after.car", "--json").stdout)  # idempotent: nothing new
    assert again["new_blocks"] == 0


def test_a_new_repository_imported_with_its_publish_decision_is_public(home: Path, cli, tmp_path: Path) -> None:
    """The repository is registered and recorded public in the import's one transaction."""
    src_home = tmp_path / "owner"
    (tmp_path / "owner.json").write_text(Keypair().to_json())
    init_home(src_home, tmp_path / "owner.json")
    invoke(src_home, "repo", "create", "r", "--from", write_model(tmp_path / "m0.safetensors", model_arrays(0)))
    published = json.loads(invoke(src_home, "repo", "publish", "--yes", "--no-chain", "--json"))["commit"]
    invoke(src_home, "export", "HEAD", "--car", tmp_path / "all.car", "--ancestry")
    assert json.loads(cli("import", tmp_path / "all.car", "--json").stdout)["registered"]
    node = open_node(home)
    try:
        rid = node.history.repo("r").repo_id
        assert str(node.history.published(rid)) == published and node.history.visibility(rid) == "public"
    finally:
        node.close()


def test_roots_that_repeat_or_list_a_whole_chain_verify_each_commit_once(source, home: Path, cli, tmp_path: Path,
                                                                         monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fednode.workflows import carfiles

    _, blocks = sections(source["all"])
    commits = [c for c, b in blocks if c.codec == DAG_CBOR and b"parents" in b]
    roots = [CID.parse(source["head"])] * 50 + commits  # a header is free to say this
    checked: list[int] = []
    real = carfiles.verify

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        report = real(*args, **kwargs)
        checked.append(report.commits)
        return report

    monkeypatch.setattr(carfiles, "verify", counting)
    out = json.loads(cli("import", write(tmp_path / "roots.car", roots, blocks), "--json").stdout)
    assert out["commits"] == 6 and sum(checked) == 6  # was 50 full walks of the 6 and one per listed commit
