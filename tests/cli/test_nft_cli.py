"""``fednode nft`` on the embedded chain (real LiteSVM with the real Token-2022 program and our
compiled federity): mint then show (chain fields, the metadata document fetched by its CID from
the store), transfer then show, a transfer made outside fednode shown honestly and synced, and the
one-line refusals that store nothing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import trio
from helpers import assert_cli_refuses, copy_home, model_arrays, perturb, run_fednode, write_model
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from fednode.chain.config import DEV_PROGRAM_ID, open_backend
from fednode.chain.program import FederityProgram, token_account_address
from fednode.history.repos import parse_repo_id
from fednode.nft.document import parse_metadata_document
from fednode.node import open_node
from fednode.workflows.ipfsfiles import write_file
from protocol import token2022 as tok
from protocol.multiformats import CID


@pytest.fixture(autouse=True)
def program_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def as_json(cli, *args: object) -> dict:
    return json.loads(cli(*args, "--json").stdout)


@pytest.fixture
def anchored(cli, tmp_path: Path) -> dict:
    """Repository "demo" with two commits, both anchored on this node's embedded chain."""
    arrays = model_arrays(0)
    cli("repo", "create", "demo", "--from", write_model(tmp_path / "m0.safetensors", arrays))
    cli("commit", "--from", write_model(tmp_path / "m1.safetensors", perturb(arrays, 1)), "-m", "round 1")
    cli("anchor", "main", "-r", "demo")
    repo_id = parse_repo_id(as_json(cli, "repo", "list")[0]["id"])
    return {"repo_id": repo_id, "head": as_json(cli, "show", "main")["commit_hash"]}


def my_address(home: Path) -> str:
    node = open_node(home)
    try:
        return node.identity.address
    finally:
        node.close()


def test_mint_then_show(cli, home: Path, anchored: dict, tmp_path: Path) -> None:
    minted = as_json(cli, "nft", "mint", "demo", "--share", "250", "--license", "MIT")
    assert minted["head"] == anchored["head"] and minted["uri"].startswith("ipfs://")
    assert 0 < minted["compute_units"] <= 60_000, minted  # issue target for the mint
    view = as_json(cli, "nft", "show", "demo")
    repo_pda = FederityProgram(DEV_PROGRAM_ID).repo_address(anchored["repo_id"])
    assert view["mint"] == minted["mint"] and view["holder"] == my_address(home) and view["holder_holds"] is True
    assert (view["name"], view["symbol"], view["uri"]) == ("demo", "FED", minted["uri"])
    assert view["repo_field"] == anchored["repo_id"].hex() and view["head"] == anchored["head"]
    assert view["update_authority"] == str(repo_pda)  # only the program can change the metadata
    assert (view["supply"], view["decimals"], view["mint_authority"], view["freeze_authority"]) == (1, 0, None, None)
    assert view["share_bps"] == 250 and view["share_locked"] is False and view["sale_seq"] == 0
    # show by repository id (base58), as a node without the repository would name it
    by_id = as_json(cli, "nft", "show", as_json(cli, "repo", "list")[0]["id"])
    assert by_id == view
    text = cli("nft", "show", "demo").stdout
    assert f"holder     {view['holder']} (holds it)" in text and f"head       {anchored['head']}" in text
    # the metadata document is an IPFS file in the store, fetchable by the uri's CID
    node = open_node(home)
    try:
        write_file(node.store, CID.parse(minted["uri"].removeprefix("ipfs://")), tmp_path / "doc.json")
    finally:
        node.close()
    doc = parse_metadata_document((tmp_path / "doc.json").read_bytes())
    attrs = {a["trait_type"]: a["value"] for a in doc["attributes"]}
    assert doc["name"] == "demo" and attrs["repository"] == anchored["repo_id"].hex()
    assert attrs["head"] == anchored["head"] and attrs["license"] == "MIT" and attrs["commits"] == 2
    assert view["document"] == doc and view["document_note"] is None  # show reads it too
    assert "document   demo: 2 commit(s)" in text and "license MIT" in text
    # a second mint is refused before anything is stored or sent
    assert_cli_refuses(cli, home, "nft", "mint", "demo", needles=("already has an NFT", minted["mint"]))


def test_show_follows_the_anchored_head(cli, anchored: dict, tmp_path: Path) -> None:
    """The program rewrites the mint's "head" field when the tracked branch moves; show reads it."""
    cli("nft", "mint", "demo")
    cli("commit", "--from", write_model(tmp_path / "m2.safetensors", perturb(model_arrays(0), 2)), "-m", "round 2")
    new_head = as_json(cli, "show", "main")["commit_hash"]
    assert new_head != anchored["head"] and as_json(cli, "nft", "show", "demo")["head"] == anchored["head"]
    cli("anchor", "main", "-r", "demo")
    assert as_json(cli, "nft", "show", "demo")["head"] == new_head


def test_refresh_points_the_uri_at_a_document_of_the_head_now(cli, home: Path, anchored: dict, tmp_path: Path) -> None:
    """The document is a snapshot of the head at mint time; `nft refresh` (holder only) stores one
    for the anchored head now and moves the uri to it through the program (set_uri)."""
    minted = as_json(cli, "nft", "mint", "demo", "--license", "MIT")
    cli("commit", "--from", write_model(tmp_path / "m2.safetensors", perturb(model_arrays(0), 2)), "-m", "round 2")
    cli("anchor", "main", "-r", "demo")
    new_head = as_json(cli, "show", "main")["commit_hash"]
    done = as_json(cli, "nft", "refresh", "demo")
    assert done["uri"] != minted["uri"] and done["head"] == new_head and done["compute_units"] > 0
    assert as_json(cli, "nft", "show", "demo")["uri"] == done["uri"]
    node = open_node(home)
    try:
        write_file(node.store, CID.parse(done["uri"].removeprefix("ipfs://")), tmp_path / "doc.json")
    finally:
        node.close()
    attrs = {a["trait_type"]: a["value"] for a in parse_metadata_document((tmp_path / "doc.json").read_bytes())
             ["attributes"]}  # fmt: skip
    assert attrs["head"] == new_head and attrs["commits"] == 3 and attrs["license"] == "MIT"  # license kept
    assert_cli_refuses(cli, home, "nft", "refresh", "demo", needles=("already points at this document",))
    cli("nft", "transfer", "demo", str(Keypair().pubkey()))
    assert_cli_refuses(cli, home, "nft", "refresh", "demo", needles=("does not hold",))


def test_mint_refusals_store_nothing(cli, home: Path, tmp_path: Path) -> None:
    arrays = model_arrays(0)
    cli("repo", "create", "fresh", "--from", write_model(tmp_path / "m0.safetensors", arrays))
    assert_cli_refuses(cli, home, "nft", "mint", "fresh", needles=("not on chain", "fednode anchor"))
    assert_cli_refuses(cli, home, "nft", "mint", "nosuch", needles=("nosuch",))
    cli("anchor", "main", "-r", "fresh")
    assert_cli_refuses(cli, home, "nft", "mint", "fresh", "-b", "other", needles=("branch other", "no head on chain"))
    assert_cli_refuses(cli, home, "nft", "mint", "fresh", "--share", "10001", needles=("invalid share",))
    assert_cli_refuses(cli, home, "nft", "mint", "fresh", "--symbol", "TOO-LONG-SYMBOL", needles=("--symbol",))
    assert_cli_refuses(cli, home, "nft", "show", "fresh", needles=("has no NFT",))


def test_transfer_then_show_and_the_former_holder_is_refused(cli, home: Path, anchored: dict) -> None:
    cli("nft", "mint", "demo")
    to = str(Keypair().pubkey())
    done = as_json(cli, "nft", "transfer", "demo", to)
    assert done["holder"] == to and done["compute_units"] > 0 and done["fee"] == 5000
    view = as_json(cli, "nft", "show", "demo")
    assert view["holder"] == to and view["holder_holds"] is True and view["sale_seq"] == 1
    assert_cli_refuses(cli, home, "nft", "transfer", "demo", str(Keypair().pubkey()), needles=("does not hold",))
    assert_cli_refuses(cli, home, "nft", "share", "demo", "100", needles=("does not hold",))
    assert "already recorded" in cli("nft", "sync", "demo").stdout


def test_share_set_by_the_holder_unless_locked(cli, home: Path, anchored: dict, tmp_path: Path) -> None:
    cli("nft", "mint", "demo", "--share", "100")
    assert "700 bps" in cli("nft", "share", "demo", "700").stdout
    assert as_json(cli, "nft", "show", "demo")["share_bps"] == 700
    cli("repo", "create", "fixed", "--from", write_model(tmp_path / "f.safetensors", model_arrays(5)))
    cli("anchor", "main", "-r", "fixed")
    cli("nft", "mint", "fixed", "--share", "300", "--lock-share", "--symbol", "FIX")
    view = as_json(cli, "nft", "show", "fixed")
    assert (view["share_bps"], view["share_locked"], view["symbol"]) == (300, True, "FIX")
    assert_cli_refuses(cli, home, "nft", "share", "fixed", "500", needles=("locked at 300",))
    assert as_json(cli, "nft", "show", "fixed")["share_bps"] == 300


def test_transfer_outside_fednode_is_shown_then_synced(cli, home: Path, anchored: dict) -> None:
    """A plain Token-2022 transfer (a wallet's) moves the token but not the program's record: show
    says so instead of naming a holder that holds nothing; sync records the real holder."""
    cli("nft", "mint", "demo")
    mint = Pubkey.from_string(as_json(cli, "nft", "show", "demo")["mint"])
    other = Keypair().pubkey()
    node = open_node(home)
    try:
        backend = open_backend(node.config, node.store)
        me = node.identity.keypair.pubkey()
        ixs = [tok.create_associated_token_account_idempotent(me, other, mint),
               tok.transfer_checked(token_account_address(me, mint), mint, token_account_address(other, mint), me,
                                    1, 0)]  # fmt: skip
        trio.run(backend.send, ixs, [node.identity.keypair])
    finally:
        node.close()
    view = as_json(cli, "nft", "show", "demo")
    assert view["holder"] == my_address(home) and view["holder_holds"] is False
    assert "run 'fednode nft sync'" in cli("nft", "show", "demo").stdout
    assert_cli_refuses(cli, home, "nft", "sync", "demo", needles=("does not hold", "--holder"))
    assert as_json(cli, "nft", "sync", "demo", "--holder", str(other))["holder"] == str(other)
    assert as_json(cli, "nft", "sync", "demo") == {"holder": str(other), "signature": None}
    view = as_json(cli, "nft", "show", "demo")
    assert view["holder"] == str(other) and view["holder_holds"] is True and view["sale_seq"] == 1


def test_not_the_owner(anchored: dict, home: Path, tmp_path: Path) -> None:
    """A copy of the home with another wallet sees the same embedded chain but does not own the repository."""
    other = tmp_path / "other"
    copy_home(home, other)
    run_fednode(other, "init", "--force")
    refused = run_fednode(other, "nft", "mint", "demo", check=False)
    assert refused.returncode == 1 and "only the repository owner" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    run_fednode(home, "nft", "mint", "demo")
    later = tmp_path / "later"  # a copy made after the mint: the NFT is there, held by the other wallet
    copy_home(home, later)
    run_fednode(later, "init", "--force")
    refused = run_fednode(later, "nft", "transfer", "demo", str(Keypair().pubkey()), check=False)
    assert refused.returncode == 1 and "does not hold the NFT" in refused.stderr


@pytest.mark.parametrize("price", ["abc", "-1", "0", "0.0000000001", "1e30", "nan", ""])
def test_bad_price(cli, home: Path, price: str) -> None:
    assert_cli_refuses(cli, home, "nft", "offer", "demo", "--price", price, "--to", str(Keypair().pubkey()),
                       "--out", home.parent / "o.json", needles=("invalid --price",))  # fmt: skip
    assert not (home.parent / "o.json").exists()


def test_bad_input_one_line_each(cli, home: Path, anchored: dict, tmp_path: Path) -> None:
    cli("nft", "mint", "demo")
    buyer = str(Keypair().pubkey())
    assert_cli_refuses(cli, home, "nft", "show", "unknown-repo", needles=("no repository 'unknown-repo'",))
    assert_cli_refuses(cli, home, "nft", "transfer", "demo", "not-an-address", needles=("invalid recipient",))
    pda = FederityProgram(DEV_PROGRAM_ID).repo_address(anchored["repo_id"])
    assert_cli_refuses(cli, home, "nft", "transfer", "demo", pda, needles=("not a wallet", "nothing was sent"))
    assert_cli_refuses(cli, home, "nft", "transfer", "demo", my_address(home), needles=("is the recipient",))
    assert_cli_refuses(cli, home, "nft", "offer", "demo", "--price", "1", "--to", "nobody", "--out",
                       tmp_path / "o.json", needles=("invalid buyer",))  # fmt: skip
    assert_cli_refuses(cli, home, "nft", "offer", "demo", "--price", "1", "--to", buyer, "--out",
                       tmp_path / "o.json", needles=("embedded chain",))  # fmt: skip
    assert_cli_refuses(cli, home, "nft", "share", "demo", "10001", needles=("invalid share",))
    assert_cli_refuses(cli, home, "nft", "share", "demo", "ten", needles=("invalid share",))
    assert_cli_refuses(cli, home, "nft", "accept", tmp_path / "missing.json", needles=("cannot read",))
    for body in (b"not json", b"[]", b'{"version": 2}', json.dumps({"version": 1, "repo": "x"}).encode(),
                 json.dumps({"version": 1, "repo": as_json(cli, "repo", "list")[0]["id"],
                             "transaction": "%%%"}).encode(),
                 json.dumps({"version": 1, "repo": as_json(cli, "repo", "list")[0]["id"],
                             "transaction": base64.b64encode(bytes(200)).decode()}).encode()):  # fmt: skip
        (tmp_path / "bad.json").write_bytes(body)
        assert_cli_refuses(cli, home, "nft", "accept", tmp_path / "bad.json", "--yes", needles=("malformed offer",))


def test_claim_refusals_store_nothing(cli, home: Path, anchored: dict) -> None:
    """claim checks the chain's contributor table first: one line, no transaction."""
    cli("nft", "mint", "demo")
    me = my_address(home)
    assert_cli_refuses(cli, home, "nft", "claim", "demo", needles=(f"{me} is not a contributor of demo",))
    other = str(Keypair().pubkey())
    assert_cli_refuses(cli, home, "nft", "claim", "demo", "--contributor", other, needles=(other, "not a contributor"))
    assert_cli_refuses(cli, home, "nft", "claim", "demo", "--contributor", "nobody", needles=("invalid contributor",))
    assert as_json(cli, "nft", "show", "demo")["contributors"] == []
