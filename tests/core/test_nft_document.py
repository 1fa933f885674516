"""The NFT metadata document (fednode/nft/document.py, summary.py): what it says about a real
history, that it is deterministic, that a private repository's leaks nothing, and the strict reader."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from helpers import fixed_identity, model_arrays, perturb

from fednode.errors import FednodeError, NotFound
from fednode.history import History, RepoInfo
from fednode.nft.document import (
    MetadataError,
    document_from,
    encode_document,
    explorer_url,
    metadata_document,
    parse_metadata_document,
)
from fednode.nft.summary import summarize
from fednode.tensors.modelio import ArraySource
from protocol.multiformats import CID, RAW

IMAGE = f"ipfs://{CID.hash(RAW, b'png')}"
OTHER_IMAGE = f"ipfs://{CID.hash(RAW, b'other')}"
OTHER = fixed_identity(bytes(range(2, 34)))


def _build(history: History, visibility: str) -> tuple[RepoInfo, list[CID]]:
    """main: genesis (loss 0.9) -> a (loss 0.5, by OTHER) -> merge of b (side branch, by us, loss 0.1)."""
    base = model_arrays(0)
    info, genesis = history.create_repo("demo", ArraySource(base), "init secret text", visibility=visibility,
                                        metrics={"loss": 0.9, "accuracy": 0.5})
    other = History(history.store, OTHER)
    a = other.commit(info, ArraySource(perturb(base, 1)), "round 1 secret text", metrics={"loss": 0.5})
    history.create_branch(info, "side", genesis.cid)
    b = history.commit(info, ArraySource(perturb(base, 2)), "side secret text", branch="side",
                       metrics={"loss": 0.1, "accuracy": 0.8})
    m = history.commit(info, ArraySource(perturb(base, 3)), "merge secret text", kind="merge",
                       extra_parents=(b.cid,))
    return info, [genesis.cid, a.cid, b.cid, m.cid]


@pytest.fixture
def public(history: History) -> Iterator[tuple[History, RepoInfo, list[CID]]]:
    info, cids = _build(history, "public")
    yield history, info, cids


def test_the_document_of_a_public_repository(public: tuple[History, RepoInfo, list[CID]]) -> None:
    history, info, (genesis, a, b, m) = public
    doc = metadata_document(history, info, "main", image_uri=IMAGE, license="MIT",
                            external_url=explorer_url("Mint111", "devnet"))
    head_hash = history.load_commit(m).commit_hash().hex()
    attrs = {x["trait_type"]: x["value"] for x in doc["attributes"]}
    assert attrs == {"repository": info.repo_id.hex(), "head": head_hash, "commits": 4, "contributors": 2,
                     "license": "MIT", "visibility": "public", "metric:accuracy": 0.5, "metric:loss": 0.5}
    # latest values along the first-parent chain (genesis -> a -> merge); b is a merge input, not charted
    assert [x["trait_type"] for x in doc["attributes"]][:3] == ["repository", "head", "commits"]
    assert doc["name"] == "demo" and doc["symbol"] == "FED" and doc["image"] == IMAGE
    assert doc["properties"] == {"category": "image", "files": [{"type": "image/png", "uri": IMAGE}]}
    assert doc["external_url"] == "https://explorer.solana.com/address/Mint111?cluster=devnet"
    assert "4 commits by 2 contributors" in doc["description"]
    s = summarize(history, info, "main")
    assert s.metric == "loss" and s.series == (0.9, 0.5)  # merge m records no loss
    raw = encode_document(doc)
    assert parse_metadata_document(raw) == doc
    assert b"secret" not in raw and OTHER.public_key.hex().encode() not in raw
    # at another head: the side branch (genesis -> b)
    side = metadata_document(history, info, "side", image_uri=IMAGE, symbol="FEDX")
    assert side["symbol"] == "FEDX"
    side_attrs = {x["trait_type"]: x["value"] for x in side["attributes"]}
    assert side_attrs["commits"] == 2 and side_attrs["head"] == history.load_commit(b).commit_hash().hex()
    assert side_attrs["license"] == "NOASSERTION" and "external_url" not in side


def test_same_state_same_bytes_and_a_new_commit_changes_them(public: tuple[History, RepoInfo, list[CID]]) -> None:
    history, info, _ = public
    first = encode_document(metadata_document(history, info, "main", image_uri=IMAGE))
    again = encode_document(metadata_document(history, info, "main", image_uri=IMAGE))
    assert first == again and json.loads(first) == json.loads(again)
    assert first == json.dumps(json.loads(first), sort_keys=True, separators=(",", ":")).encode()  # canonical
    history.commit(info, ArraySource(perturb(model_arrays(0), 9)), "next", metrics={"loss": 0.2})
    assert encode_document(metadata_document(history, info, "main", image_uri=IMAGE)) != first


def test_a_private_repositorys_document_leaks_nothing(history: History) -> None:
    info, (genesis, a, b, m) = _build(history, "private")
    doc = metadata_document(history, info, "main", image_uri=IMAGE, license="proprietary")
    raw = encode_document(doc)
    attrs = [(x["trait_type"], x["value"]) for x in doc["attributes"]]
    assert attrs == [("repository", info.repo_id.hex()), ("head", history.load_commit(m).commit_hash().hex()),
                     ("commits", 4), ("license", "proprietary"), ("visibility", "private")]
    assert "private" in doc["description"]
    for secret in (b"secret", b"loss", b"accuracy", b"0.9", b"0.5", OTHER.public_key.hex().encode(),
                   fixed_identity().public_key.hex().encode(), b"contributors\""):
        assert secret not in raw, secret
    summary = summarize(history, info, "main")
    assert summary.private and summary.metric is None and summary.series == () and summary.contributors == 0
    assert parse_metadata_document(raw) == doc


def test_bad_arguments_are_one_line_errors(public: tuple[History, RepoInfo, list[CID]]) -> None:
    history, info, (genesis, *_rest) = public
    for kwargs, needle in [({"license": ""}, "license"), ({"license": "x" * 65}, "license"),
                           ({"license": "MIT\nevil"}, "license"), ({"external_url": "ftp://x"}, "external_url"),
                           ({"external_url": "https://a b"}, "external_url"), ({"symbol": " FED"}, "symbol"),
                           ({"symbol": "x" * 11}, "symbol")]:
        with pytest.raises(FednodeError, match=needle) as err:
            metadata_document(history, info, "main", image_uri=IMAGE, **kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
    with pytest.raises(FednodeError, match="image"):
        metadata_document(history, info, "main", image_uri="https://example.com/x.png")
    with pytest.raises(NotFound, match="branch"):
        metadata_document(history, info, "nope", image_uri=IMAGE)
    other_info, _ = history.create_repo("other", ArraySource(model_arrays(5)), "x", visibility="public")
    with pytest.raises(NotFound, match="not in repository"):
        metadata_document(history, info, "main", image_uri=IMAGE, head=other_info.genesis)
    summary = summarize(history, info, "main", head=genesis)
    assert summary.commits == 1 and summary.head == history.load_commit(genesis).commit_hash()


def _valid() -> dict:
    return {
        "name": "demo", "symbol": "FED", "description": "d", "image": IMAGE,
        "external_url": "https://explorer.solana.com/address/x",
        "attributes": [{"trait_type": "repository", "value": "ab" * 32}, {"trait_type": "head", "value": "cd" * 32},
                       {"trait_type": "commits", "value": 3}, {"trait_type": "contributors", "value": 1},
                       {"trait_type": "license", "value": "MIT"}, {"trait_type": "visibility", "value": "public"},
                       {"trait_type": "metric:loss", "value": 0.25}],
        "properties": {"category": "image", "files": [{"type": "image/png", "uri": IMAGE}]},
    }


def _with(change) -> bytes:  # type: ignore[no-untyped-def]
    doc = _valid()
    change(doc)
    return json.dumps(doc).encode()


def _attr(i: int, value: object):  # type: ignore[no-untyped-def]
    return lambda d: d["attributes"][i].__setitem__("value", value)


BAD: list[tuple[str, bytes]] = [
    ("not UTF-8", b"\xff{}"),
    ("not JSON", b"{"),
    ("not a JSON object", b"[]"),
    ("twice", b'{"name":"a","name":"b"}'),
    ("is not JSON", _with(lambda d: None).replace(b"0.25", b"NaN")),
    ("larger than", b" " * (64 * 1024 + 1)),
    ("missing fields", _with(lambda d: d.pop("image"))),
    ("unknown fields", _with(lambda d: d.__setitem__("seller_fee_basis_points", 0))),
    ("name", _with(lambda d: d.__setitem__("name", ""))),
    ("name has control", _with(lambda d: d.__setitem__("name", "a\nb"))),
    ("symbol", _with(lambda d: d.__setitem__("symbol", 5))),
    ("image must be", _with(lambda d: d.__setitem__("image", "https://x/y.png"))),
    ("bad CID", _with(lambda d: d.__setitem__("image", "ipfs://bafyNOTACID"))),
    ("external_url", _with(lambda d: d.__setitem__("external_url", "javascript:alert(1)"))),
    ("64 lowercase hex", _with(_attr(0, "AB" * 32))),
    ("64 lowercase hex", _with(_attr(1, "cd" * 31))),
    ("positive integer", _with(_attr(2, 0))),
    ("positive integer", _with(_attr(2, True))),
    ("positive integer", _with(_attr(3, "1"))),
    ("license", _with(_attr(4, ""))),
    ("visibility", _with(_attr(5, "secret"))),
    ("finite number", _with(_attr(6, "low"))),
    ("finite number", _with(_attr(6, 7.5)).replace(b"7.5", b"1e999")),  # a float that overflows to inf
    ("unknown attribute", _with(lambda d: d["attributes"].append({"trait_type": "author", "value": "k"}))),
    ("appears twice", _with(lambda d: d["attributes"].append({"trait_type": "commits", "value": 3}))),
    ("exactly {trait_type, value}", _with(lambda d: d["attributes"][0].__setitem__("display_type", "x"))),
    ("start with repository", _with(lambda d: d["attributes"].reverse())),
    ("lists no contributors", _with(_attr(5, "private"))),
    ("lists its contributors", _with(lambda d: d["attributes"].pop(3))),
    ("properties must be", _with(lambda d: d["properties"].__setitem__("category", "video"))),
    ("exactly one file", _with(lambda d: d["properties"]["files"].append({}))),
    ("properties.files[0]", _with(lambda d: d["properties"]["files"][0].__setitem__("uri", OTHER_IMAGE))),
    ("deeper than", b"[" * 100 + b"]" * 100),
]


def test_the_reader_takes_the_valid_document() -> None:
    assert parse_metadata_document(json.dumps(_valid()).encode()) == _valid()


@pytest.mark.parametrize(("needle", "data"), BAD, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD)])
def test_the_reader_refuses(needle: str, data: bytes) -> None:
    with pytest.raises(MetadataError) as err:
        parse_metadata_document(data)
    message = str(err.value)
    assert needle in message and "\n" not in message and message.startswith("metadata document: ")


def test_document_from_refuses_what_the_reader_would(public: tuple[History, RepoInfo, list[CID]]) -> None:
    history, info, _ = public
    summary = summarize(history, info, "main")
    bad = summary.__class__(**{**summary.__dict__, "name": "evil\x00name"})
    with pytest.raises(FednodeError, match="cannot make the NFT metadata document: .*control"):
        document_from(bad, IMAGE)


GOLDEN = (
    '{"attributes":[{"trait_type":"repository","value":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b'
    '1c1d1e1f"},{"trait_type":"head","value":"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"},'
    '{"trait_type":"commits","value":3},{"trait_type":"contributors","value":2},{"trait_type":"license","value":'
    '"MIT"},{"trait_type":"visibility","value":"public"},{"trait_type":"metric:loss","value":0.5}],"description":'
    '"demo: a federated model on fednode, 3 commits by 2 contributors. Whoever holds this NFT controls the '
    'repository: its merges, its heads and its members.","image":"IMG","name":"demo","properties":{"category":'
    '"image","files":[{"type":"image/png","uri":"IMG"}]},"symbol":"FED"}'
)


def test_the_bytes_are_pinned() -> None:
    """The exact bytes of one document: a change alters every future NFT's CID, so it must be deliberate."""
    from fednode.nft.summary import RepoSummary

    summary = RepoSummary(name="demo", repo_id=bytes(range(32)), head=bytes(range(32, 64)), private=False,
                          commits=3, contributors=2, metric="loss", series=(1.0, 0.5), latest=(("loss", 0.5),))
    assert encode_document(document_from(summary, IMAGE, "MIT")) == GOLDEN.replace("IMG", IMAGE).encode()
