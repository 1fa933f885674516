"""Fuzzing every decoder of bytes that come from outside (issue 10, items 1 and 3).

A registry of decoders, each with a seed corpus of valid encodings built with the project's own
encoders (a real signed commit, manifests, gossip messages, want/heads frames, CIDs, UnixFS nodes,
chain layouts, a safetensors header, a config text), and a mutator: bit flips, byte inserts and
deletes, truncation, splicing and, for DAG-CBOR, JSON and TOML inputs, type swaps inside the
decoded value re-encoded canonically (so the decoder, not the parser, meets the wrong type).

Two properties are checked for every input:
- the decoder returns or raises its own error type (FormatError; FednodeError for files a user
  hands over); any other exception is *foreign*;
- where an encoder exists, an accepted input re-encodes to the very same bytes (*one value, one
  block*): a decoder that accepts a second encoding of a signed object makes it malleable.

The long run (10**5 inputs per decoder, a few minutes a decoder on 2 cores)::

    .venv/bin/python tests/protocol/fuzz_decoders.py --inputs 100000
    .venv/bin/python tests/protocol/fuzz_decoders.py --inputs 2000 --only commit --seed 7
    .venv/bin/python tests/protocol/fuzz_decoders.py --save-corpus tests/protocol/fuzz_corpus --per-decoder 24
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent, HERE.parents[1]):  # standalone: `python tests/protocol/fuzz_decoders.py`
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402
from helpers import fixed_identity  # noqa: E402

from fednode.errors import FednodeError  # noqa: E402
from fednode.node import DEFAULT_CONFIG, parse_config  # noqa: E402
from fednode.tensors.modelio import ArraySource, parse_header, write_safetensors  # noqa: E402
from protocol import car, chain, dag, dagcbor, messages, symlinks, token2022, unixfs  # noqa: E402
from protocol.multiformats import (  # noqa: E402
    CID,
    DAG_CBOR,
    DAG_PB,
    RAW,
    FormatError,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)
from protocol.objects import Commit, Manifest, TensorEntry  # noqa: E402

CORPUS = HERE / "fuzz_corpus"
HEADER_DATA = 1 << 16  # data-section bytes the fuzzed safetensors headers are checked against
MAX_INPUT = 1 << 16  # mutated inputs are cut here: the decoders' cost grows with size, not their paths


@dataclass
class Decoder:
    name: str
    decode: Callable[[bytes], Any]
    allowed: tuple[type[BaseException], ...]
    seeds: list[bytes]
    kind: str = "bytes"  # how type swaps apply: "cbor", "json", "toml" or "bytes" (none)
    reencode: Callable[[Any], bytes] | None = None  # accepted value -> bytes, must equal the input


@dataclass
class Stats:
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    foreign: list[tuple[str, bytes]] = field(default_factory=list)  # (what, input)
    seconds: float = 0.0


# --- seeds, built with the project's own encoders ----------------------------------------------

ID = fixed_identity()
OTHER = fixed_identity(bytes(range(33, 65)))


def _sign(commit: Commit) -> Commit:
    return replace(commit, sig=ID.sign(commit.commit_hash()))


def _state(data: bytes) -> CID:
    return unixfs.add_bytes(data)


def _manifests() -> list[Manifest]:
    s4, s8 = _state(bytes(8)), _state(bytes(range(16)))
    raw = TensorEntry("F32", (2,), "raw", 0, s4, 8, state=s4)
    fixed = TensorEntry("F32", (2, 2), "fixed", 1, _state(b"d" * 8), 8, 16, 24, state=s8)
    same = TensorEntry("I64", (1,), "same", 2, state=s4)
    fp16 = TensorEntry("F16", (3,), "fp16", 1, _state(b"h" * 6), 6, state=_state(b"x" * 6))
    int8 = TensorEntry("F32", (4,), "int8", 3, _state(b"q" * 4), 4, scale=0.25, state=s8)
    topk = TensorEntry("BF16", (8,), "topk", 1, _state(b"t" * 10), 10, 16, 20, "zstd", k=1, state=s8)
    xor = TensorEntry("F64", (2,), "xor", 1, _state(b"z" * 16), 16, state=s8)  # the lossless default
    xor_zstd = TensorEntry("I32", (3, 2), "xor", 4, _state(b"c" * 9), 9, compression="zstd", state=s8)
    return [Manifest({"w": raw}), Manifest({"a.weight": fixed, "b": same, "c": fp16, "d": int8, "e": topk}),
            Manifest({"x": xor, "y": xor_zstd})]


def _commits() -> list[Commit]:
    weights = CID.hash(DAG_CBOR, _manifests()[0].encode())
    genesis = _sign(Commit(None, (), "init", weights, ID.public_key, 1_700_000_000_000, "initial weights",
                           {"loss": 0.5}, {"settings": {"name": "cancer", "scale_bits": 24, "snapshot_interval": 8}}))
    g, gh, rid = genesis.cid(), genesis.commit_hash(), genesis.commit_hash()
    update = _sign(Commit(rid, (g,), "update", weights, ID.public_key, 1_700_000_000_001, "train",
                          {"accuracy": 0.9, "loss": 0.25},
                          {"training": {"samples": 100, "epochs": 2, "duration_s": 1.5, "framework": "torch",
                                        "dp": {"epsilon": 3.0}}}, parent_hashes=(gh,)))
    u, uh = update.cid(), update.commit_hash()
    merge = _sign(Commit(rid, (u, g), "merge", weights, ID.public_key, 1_700_000_000_002, "merge",
                         info={"merge": {"strategy": {"name": "fedavg"}, "base": g, "inputs": [g, u],
                                         "weights": [1, 3], "weighting": "samples", "plan": {}, "samples": 4}},
                         parent_hashes=(uh, gh)))
    revert = _sign(Commit(rid, (merge.cid(),), "revert", weights, ID.public_key, 1_700_000_000_003, "revert",
                          info={"revert": {"target": g}}, parent_hashes=(merge.commit_hash(),)))
    return [genesis, update, merge, revert]


def _signed(msg: Any, who: Any = ID) -> Any:
    return replace(msg, sig=who.sign(msg.signing_hash()))


def _messages() -> list[bytes]:
    commit = _commits()[1]
    repo, head = commit.repo or bytes(32), commit.cid()
    return [
        messages.CommitEnvelope(commit.encode()).encode(),
        _signed(messages.HeadAnnouncement(repo, "main", head, 3, 1_700_000_000_000, ID.public_key)).encode(),
        _signed(messages.MergeProposal(repo, "feature/x", head, "please merge", 1, 5, ID.public_key)).encode(),
        _signed(messages.Membership(repo, tuple(sorted((ID.public_key, OTHER.public_key))), False, 2, 9,
                                    ID.public_key)).encode(),
    ]


def _cids() -> list[CID]:
    return [CID.hash(RAW, b"leaf"), CID.hash(DAG_PB, b"node"), CID.hash(DAG_CBOR, b"commit"),
            CID(0, DAG_PB, hashlib.sha256(b"v0").digest())]


def _pb_nodes() -> list[bytes]:
    blocks: list[bytes] = []

    def put(cid: CID, block: bytes | memoryview) -> None:
        if cid.codec == DAG_PB:
            blocks.append(bytes(block))

    for raw_leaves in (True, False):
        builder = unixfs.UnixFSBuilder(put, raw_leaves=raw_leaves, chunk_size=4, max_links=3)
        builder.write(b"fednode fuzz seed file!")
        builder.finish()
    return blocks[:6] + blocks[-2:]


def _accounts() -> dict[str, list[bytes]]:
    def head(tag: chain.Tag, rest: bytes = bytes(5)) -> bytes:
        return bytes([tag, chain.LAYOUT_VERSION, 254]) + rest

    branches = hashlib.sha256(b"main").digest() + bytes(range(32)) + bytes(64 * (chain.MAX_BRANCHES - 1))
    repo = head(chain.Tag.REPO) + bytes(range(32)) + b"o" * 32 + bytes(32) + (7).to_bytes(8, "little") \
        + b"a" * 32 + branches
    member = head(chain.Tag.MEMBER) + bytes(range(32)) + b"m" * 32 + (99).to_bytes(8, "little")
    commit = head(chain.Tag.COMMIT, bytes([2, 1, 2, 0, 0])) + b"r" * 32 + b"h" * 32 + b"a" * 32 + b"p" * 32 \
        + b"g" * 64 + (5).to_bytes(8, "little") + (1).to_bytes(8, "little")
    bare = head(chain.Tag.COMMIT, bytes([1, 0, 1, 0, 0])) + bytes(208)
    table = b"".join(bytes([i + 1]) * 32 + (i + 1).to_bytes(8, "little") + (1000 * i).to_bytes(8, "little")
                     for i in range(3))  # key, weight, owed
    nft = bytes([chain.Tag.NFT, chain.LAYOUT_VERSION, 253, 1]) + bytes(4) + b"r" * 32 + b"m" * 32 + b"h" * 32 \
        + b"b" * 32 + (2).to_bytes(8, "little") + (250).to_bytes(2, "little") + (3).to_bytes(2, "little") + bytes(4) \
        + table + bytes(chain.CONTRIBUTOR_SIZE * (chain.MAX_CONTRIBUTORS - 3))
    empty = bytes([chain.Tag.NFT, chain.LAYOUT_VERSION, 255, 0]) + bytes(chain.NFT_SIZE - 4)
    def zkvk(tag: chain.Tag, sealed: bool, key: bytes) -> bytes:
        return bytes([tag, chain.LAYOUT_VERSION, 252, chain.VK_SEALED if sealed else 0]) + bytes(4) + b"r" * 32 \
            + hashlib.sha256(key).digest() + (12345).to_bytes(32, "big") + len(key).to_bytes(2, "little") \
            + bytes(6) + key + bytes(chain.VK_CAPACITY - len(key))

    key = bytes(range(256)) * 4 + b"k" * 123  # the length of an encoded update key with a 3-byte seed
    return {"repo": [repo], "member": [member], "commit": [commit, bare], "nft": [nft, empty],
            "zkvk": [zkvk(chain.Tag.ZKVK, True, key), zkvk(chain.Tag.ZKVK, False, key[:768])],
            "zkrvk": [zkvk(chain.Tag.ZKRVK, True, key)]}


def _token_accounts() -> tuple[list[bytes], list[bytes]]:
    """A repository NFT's mint (both extensions, two fields) and a bare mint; an ATA-style token
    account (ImmutableOwner) and a plain one."""
    from solders.pubkey import Pubkey

    k = [Pubkey.from_bytes(bytes([i + 1]) * 32) for i in range(4)]
    fields = (("repo", "ab" * 32), ("head", "cd" * 32))
    meta = token2022.TokenMetadata(k[0], k[1], "demo", "FED", "ipfs://bafkrei", fields)
    nft = token2022.MintState(None, 1, 0, True, None, {}, token2022.MetadataPointer(None, k[1]), meta)
    bare = token2022.MintState(k[2], 5, 6, True, k[3])
    held = token2022.TokenAccount(k[1], k[2], 1, None, 1, {token2022.Ext.IMMUTABLE_OWNER: b""})
    plain = token2022.TokenAccount(k[1], k[3], 0, k[0], 2)
    return ([token2022.encode_mint(nft), token2022.encode_mint(bare)],
            [token2022.encode_token_account(held), token2022.encode_token_account(plain)])


def _nft_documents() -> list[bytes]:
    from fednode.nft.document import document_from, encode_document
    from fednode.nft.summary import RepoSummary

    public = RepoSummary("demo", bytes(range(32)), bytes(32), False, 3, 2, "loss", (1.0, 0.5), (("loss", 0.5),))
    private = RepoSummary("p", bytes(32), bytes(range(32)), True, 1, 0, None, (), ())
    image = "ipfs://bafkreigoug3zrqitybcwuupy5xc7hqgcmmrhcppbziowrwj6l235aguwoy"
    return [encode_document(document_from(s, image)) for s in (public, private)]


def _offers() -> list[bytes]:
    from solders.hash import Hash
    from solders.keypair import Keypair
    from solders.message import Message
    from solders.system_program import TransferParams, transfer
    from solders.transaction import Transaction

    seller, buyer = Keypair.from_seed(bytes([1]) * 32), Keypair.from_seed(bytes([2]) * 32)
    ix = transfer(TransferParams(from_pubkey=buyer.pubkey(), to_pubkey=seller.pubkey(), lamports=5))
    tx = Transaction.new_unsigned(Message([ix], buyer.pubkey()))
    tx.partial_sign([buyer], Hash.default())
    offer = {"version": 1, "repo": b58encode(bytes(range(32))), "mint": str(Keypair.from_seed(bytes(32)).pubkey()),
             "seller": str(seller.pubkey()), "buyer": str(buyer.pubkey()), "price_lamports": 10**9, "sale_seq": 0,
             "share_bps": 250, "contributors": [[str(seller.pubkey()), 3, 25_000_000]],
             "transaction": __import__("base64").b64encode(bytes(tx)).decode()}
    return [json.dumps(offer).encode()]


def _instructions() -> list[chain.Instruction]:
    h = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    return [chain.CreateRepo(h[0], h[1], h[2]), chain.AddMember(h[1]), chain.RemoveMember(h[2]),
            chain.AnchorCommit(h[0], chain.Kind.UPDATE, chain.branch_hash("main"), (h[1],)),
            chain.AnchorCommit(h[0], chain.Kind.INIT, bytes(32), (), bytes(range(64))),
            chain.Merge(h[0], chain.branch_hash("main"), (h[1], h[2]), (1, 2**64 - 1)),
            chain.SetHead(chain.branch_hash("dev"), h[3]),
            chain.BindNft(250, True, chain.branch_hash("main")), chain.SyncHolder(), chain.SetShare(10_000),
            chain.Sell(10**9, 3), chain.SetUri("ipfs://bafy\u00e9"), chain.Claim(2)]


def _safetensors_headers() -> list[bytes]:
    out = []
    sources = [{"w": ("F32", np.ones((2, 3), np.float32)), "b": ("I64", np.arange(2, dtype=np.int64))},
               {"x": ("BF16", np.zeros(4, np.uint16)), "flag": ("BOOL", np.zeros((1, 1), bool))}]
    for i, arrays in enumerate(sources):
        src = ArraySource(arrays)
        buf = io.BytesIO()
        write_safetensors(buf, [(info, src.chunks(n)) for n, info in src.tensors.items()],
                          {"format": "pt"} if i else None)
        raw = buf.getvalue()
        out.append(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    return out


def _configs() -> list[bytes]:
    text = DEFAULT_CONFIG.format(name="fuzz")
    extra = text.replace("mdns = false", "mdns = false\nban_threshold = 5\nban_seconds = 60.5\nsync_interval = 30\n"
                         "max_fetch_bytes = 1000000\nmin_free_bytes = 0")
    rpc = text.replace('backend = "embedded"', 'backend = "rpc"\nurl = "http://127.0.0.1:8899"\nairdrop = true\n'
                       'timeout_s = 5\nflush_interval = 2.5\nprogram_elf = "p.so"')
    return [t.encode() for t in (text, extra, rpc)]


def _cars() -> list[bytes]:
    """CARs of real blocks: a commit with its manifest, UnixFS nodes, a duplicate; and a CARv2 of one."""
    commits = [c.encode() for c in _commits()]
    manifest = _manifests()[0].encode()
    blocks = [(CID.hash(DAG_CBOR, b), b) for b in [*commits[:2], manifest]]
    blocks += [(CID.hash(DAG_PB, b), b) for b in _pb_nodes()[:2]] + [(CID.hash(RAW, b"leaf"), b"leaf")]
    out = []
    for chosen in (blocks, blocks[:1], blocks[2:] + blocks[2:3], []):
        buf = io.BytesIO()
        car.write_car(buf, [c for c, _ in chosen[:1]], chosen)
        out.append(buf.getvalue())
    v1 = out[1]
    offset = len(car.CARV2_PRAGMA) + car.CARV2_HEADER
    fixed = bytes(16) + b"".join(n.to_bytes(8, "little") for n in (offset, len(v1), 0))
    return out + [car.CARV2_PRAGMA + fixed + v1]


def _dir_nodes() -> list[bytes]:
    """Plain UnixFS directories as Kubo writes them, and HAMT shards (a root and a sub-shard)."""
    leaf = CID.hash(RAW, b"leaf")
    plain = [unixfs.encode_directory([unixfs.DirEntry(n, leaf, 4) for n in names])
             for names in ([], ["a"], ["notes.txt", "sub", "ünï"])]
    hamt = b"\x08\x05" + bytes([0x28, 0x22, 0x30]) + encode_varint(256)

    def shard(links: list[tuple[bytes, CID]]) -> bytes:
        out = b""
        for name, cid in links:
            body = b"\x0a" + encode_varint(len(bytes(cid))) + bytes(cid) + b"\x12" + encode_varint(len(name)) + name
            out += b"\x12" + encode_varint(len(body) + 2) + body + b"\x18\x04"
        return out + b"\x0a" + encode_varint(len(hamt)) + hamt

    inner = shard([(b"03x.txt", leaf), (b"FFlast", leaf)])
    return plain + [inner, shard([(b"00first", leaf), (b"7C", CID.hash(DAG_PB, inner))])]


def _links(codec: int) -> Callable[[bytes], list[CID]]:
    return lambda data: dag.links(CID.hash(codec, data), data)


def _text(fn: Callable[[str], Any]) -> Callable[[bytes], Any]:
    # text reaches these from argv or JSON, where lone surrogates can occur: half the inputs carry them
    return lambda data: fn(data.decode("utf-8", "surrogateescape" if len(data) % 2 else "replace"))


def _varint(data: bytes) -> int:
    value, pos = decode_varint(data)
    if pos != len(data):
        raise FormatError("trailing bytes")  # the harness's framing: one varint per input
    return value


def _tensor_entry(data: bytes) -> TensorEntry:
    return TensorEntry.from_obj(dagcbor.decode(data))


def _nft_document(data: bytes) -> Any:
    from fednode.nft.document import parse_metadata_document

    return parse_metadata_document(data)


def _nft_offer(data: bytes) -> Any:
    from fednode.chain.nftoffer import parse_offer

    return parse_offer(data)


def _header(data: bytes) -> Any:
    return parse_header(data, HEADER_DATA, "fuzz.safetensors")


def registry() -> dict[str, Decoder]:
    """Every decoder of outside bytes, with seeds; names are the corpus folders."""
    commits = [c.encode() for c in _commits()]
    manifests = [m.encode() for m in _manifests()]
    msgs = _messages()
    cids = _cids()
    acc = _accounts()
    heads = msgs[1]
    fmt = (FormatError,)
    user = (FednodeError,)
    decoders = [
        Decoder("dagcbor", dagcbor.decode, fmt, commits[:2] + manifests[:1] + msgs[1:2], "cbor", dagcbor.encode),
        Decoder("dag_links_cbor", _links(DAG_CBOR), fmt, commits[2:] + manifests[1:], "cbor"),
        Decoder("dag_links_pb", _links(DAG_PB), fmt, _pb_nodes()),
        Decoder("message", messages.decode, fmt, msgs, "cbor", lambda m: m.encode()),
        Decoder("want", messages.decode_want, fmt, [messages.encode_want(cids[:3]), messages.encode_want(cids[1:2])],
                "cbor", messages.encode_want),
        Decoder("heads_reply", messages.HeadsReply.decode, fmt,
                [messages.HeadsReply(cids[2], [heads], msgs[3]).encode(), messages.HeadsReply(None).encode()],
                "cbor", lambda r: r.encode()),
        Decoder("heads_query", messages.decode_heads_query, fmt, [messages.encode_heads_query(bytes(range(32)))],
                "cbor", messages.encode_heads_query),
        Decoder("commit", Commit.decode, fmt, commits, "cbor", lambda c: c.encode()),
        Decoder("manifest", Manifest.decode, fmt, manifests, "cbor", lambda m: m.encode()),
        Decoder("tensor_entry", _tensor_entry, fmt,
                [dagcbor.encode(e.to_obj()) for m in _manifests() for e in m.tensors.values()], "cbor",
                lambda e: dagcbor.encode(e.to_obj())),
        Decoder("cid_bytes", CID.from_bytes, fmt, [bytes(c) for c in cids], "bytes", bytes),
        Decoder("cid_text", _text(CID.parse), fmt, [str(c).encode() for c in cids]),
        Decoder("varint", _varint, fmt, [encode_varint(n) for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1)],
                "bytes", encode_varint),
        Decoder("b58", _text(b58decode), fmt, [b58encode(b).encode() for b in (b"\0\0abc", bytes(range(34)))]),
        Decoder("unixfs_node", unixfs.decode_node, fmt, _pb_nodes()),
        Decoder("unixfs_directory", unixfs.decode_directory, fmt, _dir_nodes()[:3]),
        Decoder("unixfs_hamt", unixfs.decode_hamt, fmt, _dir_nodes()[3:]),
        Decoder("unixfs_symlink", symlinks.decode_symlink, fmt,
                [symlinks.encode_symlink(t) for t in ("../../blobs/abc", "x", "ünï/../y")]),
        Decoder("car", car.read_car, fmt, _cars()),
        Decoder("chain_instruction", chain.decode_instruction, fmt,
                [chain.encode_instruction(ix) for ix in _instructions()], "bytes", chain.encode_instruction),
        Decoder("chain_repo", chain.decode_repo, fmt, acc["repo"]),
        Decoder("chain_member", chain.decode_member, fmt, acc["member"]),
        Decoder("chain_commit", chain.decode_commit, fmt, acc["commit"]),
        Decoder("chain_nft", chain.decode_nft, fmt, acc["nft"]),
        Decoder("chain_zkvk", chain.decode_zkvk, fmt, acc["zkvk"]),
        Decoder("chain_zkrvk", functools.partial(chain.decode_zkvk, remainder=True), fmt, acc["zkrvk"]),
        Decoder("token_mint", token2022.decode_mint, fmt, _token_accounts()[0]),  # chain state: never hashed,
        Decoder("token_account", token2022.decode_token_account, fmt, _token_accounts()[1]),  # so no canonicity
        Decoder("nft_document", _nft_document, user, _nft_documents(), "json"),
        Decoder("nft_offer", _nft_offer, user, _offers(), "json"),
        Decoder("chain_return", chain.decode_return_data, fmt, [bytes(range(32)) + (3).to_bytes(8, "little")]),
        Decoder("safetensors_header", _header, user, _safetensors_headers(), "json"),
        Decoder("config", _text(lambda t: parse_config(t, "config.toml")), user, _configs(), "toml"),
    ]
    return {d.name: d for d in decoders}


def _with(data: bytes, **changes: Any) -> bytes:
    """A canonical DAG-CBOR copy of ``data`` with top-level fields replaced."""
    return dagcbor.encode({**dagcbor.decode(data), **changes})


def _in(data: bytes, path: tuple, value: Any) -> bytes:
    obj = dagcbor.decode(data)
    _get(obj, path[:-1])[path[-1]] = value
    return dagcbor.encode(obj)


def _header_json(**spec: Any) -> bytes:
    return json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **spec}}).encode()


def regressions() -> dict[str, dict[str, bytes]]:
    """One input per bug found (each crashed a decoder or was a second accepted encoding); every one
    must be refused. Stored as tests/protocol/fuzz_corpus/<decoder>/refuse-<name>.bin."""
    genesis, update, merge, revert = (c.encode() for c in _commits())
    head = _messages()[1]
    manifest = _manifests()[1].encode()
    fixed = dagcbor.encode(_manifests()[1].tensors["a.weight"].to_obj())
    xor = dagcbor.encode(_manifests()[2].tensors["x"].to_obj())
    link = _pb_nodes()[0]
    cid_text = str(CID.hash(DAG_CBOR, b"x"))
    deep = b"[" * 100_000 + b"]" * 100_000
    # a fixed text, not DEFAULT_CONFIG: the stored inputs must not go stale when the default changes
    config = ('[node]\nname = "r"\n\n[network]\nlisten = ["/ip4/127.0.0.1/tcp/4001"]\nbootstrap = []\n'
              'mdns = false\n\n[api]\nhost = "127.0.0.1"\nport = 5710\n\n[repository_defaults]\nscale_bits = 24\n'
              'snapshot_interval = 8\n')
    return {
        "message": {
            "13-byte-list-kind": dagcbor.encode({"t": [], "v": 1}),
            "map-kind": dagcbor.encode({"t": {}, "v": 1}),
            "v-true-head": _with(head, v=True),
            "v-float-head": _with(head, v=1.0),
        },
        "commit": {
            "v-true-copy": _with(update, v=True),
            "v-float-copy": _with(update, v=1.0),
            "list-kind": _with(update, kind=[]),
            "scale-bits-true": _in(genesis, ("info", "settings", "scale_bits"), True),
            "snapshot-interval-float": _in(genesis, ("info", "settings", "snapshot_interval"), 8.0),
            "settings-name-bytes": _in(genesis, ("info", "settings", "name"), b"cancer"),
            "training-samples-true": _in(update, ("info", "training", "samples"), True),
            "training-not-a-map": _in(update, ("info", "training"), [1]),
            "merge-weight-float": _in(merge, ("info", "merge", "weights"), [1.0, 3]),
            "merge-weight-negative": _in(merge, ("info", "merge", "weights"), [1, -1]),
            "merge-input-bytes": _in(merge, ("info", "merge", "inputs"), [b"x"]),
            "revert-without-target": _in(revert, ("info", "revert"), {}),
        },
        "manifest": {
            "v-true": _with(manifest, v=True),
            "dtype-list": _in(manifest, ("tensors", "a.weight", "dtype"), []),
            "encoding-map": _in(manifest, ("tensors", "a.weight", "encoding"), {}),
            "int-bits-float": _in(manifest, ("tensors", "a.weight", "int_bits"), 8.0),
            "explicit-no-compression": _in(manifest, ("tensors", "a.weight", "compression"), "none"),
            "hidden-2^64-dim": _in(manifest, ("tensors", "b", "shape"), [0, 2**64 - 1]),
        },
        "tensor_entry": {
            "dtype-list": _in(fixed, ("dtype",), ["F32"]),
            "scale-bits-true": _in(fixed, ("scale_bits",), True),
            "depth-float": _in(fixed, ("depth",), 1.0),
            "xor-with-int-bits": _in(xor, ("int_bits",), 8),
            "xor-explicit-no-compression": _in(xor, ("compression",), "none"),
            "xor-short-payload": _in(xor, ("size",), 15),
            "xor-bool": _in(xor, ("dtype",), "BOOL"),
        },
        "varint": {"ten-bytes": b"\x80" * 9 + b"\x01"},
        "cid_text": {"trailing-bits": (cid_text[:-1] + chr(ord(cid_text[-1]) ^ 1)).encode()},
        "unixfs_node": {
            "tsize-as-bytes": unixfs._bytes_field(2, unixfs._bytes_field(1, bytes(CID.hash(RAW, b"a")))
                                                  + unixfs._bytes_field(3, b"x")) + link[-12:],
            "link-without-hash": unixfs._bytes_field(2, unixfs._bytes_field(2, b"")) + link[-12:],
            "ten-byte-varint": b"\x08" + b"\x80" * 9 + b"\x01",
        },
        "chain_commit": {"kind-9": _accounts()["commit"][0][:3] + b"\x09" + _accounts()["commit"][0][4:]},
        "safetensors_header": {
            "nested-100k-deep": b'{"w": ' + deep + b"}",
            "dim-2^64": _header_json(shape=[2**64, 0], data_offsets=[0, 0]),
            "dim-negative": _header_json(shape=[-2]),
            "dim-true": _header_json(shape=[True, 2]),
            "dim-float": _header_json(shape=[2.0]),
            "offsets-out-of-range": _header_json(data_offsets=[HEADER_DATA, HEADER_DATA + 8]),
            "offset-5000-digits": b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1' + b"0" * 5000 + b"]}}",
            "not-a-map": b"[1, 2]",
            "dtype-list": _header_json(dtype=["F32"]),
        },
        "config": {
            "scale-bits-string": config.replace("scale_bits = 24", 'scale_bits = "x"').encode(),
            "sync-interval-string": config.replace("mdns = false", 'mdns = false\nsync_interval = "abc"').encode(),
            "port-true": config.replace("port = 5710", "port = true").encode(),
            "nested-arrays": config.replace("bootstrap = []", "bootstrap = " + "[" * 5000 + "]" * 5000).encode(),
            "int-5000-digits": config.replace("port = 5710", "port = 1" + "0" * 5000).encode(),
        },
    }


# --- mutation ----------------------------------------------------------------------------------

_CBOR_HEADS = [b"\x1b" + b"\xff" * 8, b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", b"\xbf", b"\x9f", b"\xd8\x2a",
               b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xf9\x00\x00", b"\xf7", b"\x5a\xff\xff\xff\xff",
               b"\xff" * 10, b"\x80" * 9 + b"\x01", b"\x00"]


def _palette() -> list[Any]:
    deep: Any = 0
    for _ in range(60):
        deep = [deep]
    return [None, True, False, 0, 1, -1, 8, 24, 2**63, 2**64 - 1, -(2**64), 0.0, 1.0, 8.0, -0.5, 1e308, "", "x",
            "init", "merge", "raw", "fixed", "F32", "commit", "head", "zstd", "none", "\u00e9" * 3, b"", b"\x00",
            bytes(32), bytes(64), [], [1], [[]], ["x"], {}, {"name": "x"}, {"target": 1}, CID.hash(DAG_CBOR, b"x"),
            CID.hash(RAW, b"x"), CID(0, DAG_PB, bytes(32)), deep]


PALETTE = _palette()


def _twins(v: Any) -> list[Any]:
    """Values equal to ``v`` in Python (or the same text in another type): malleability candidates."""
    if type(v) is bool:
        return [int(v), float(v)]
    if type(v) is int:
        return [float(v)] + ([bool(v)] if v in (0, 1) else []) if abs(v) < 2**53 else [str(v)]
    if type(v) is float:
        return [int(v)] if v.is_integer() and abs(v) < 2**63 else [str(v)]
    if type(v) is str:
        return [v.encode(), [v], {v: v}]
    if type(v) is bytes:
        return [v.decode("latin-1"), [v]]
    if isinstance(v, list):
        return [tuple(v), {str(i): x for i, x in enumerate(v)}, v[:-1], v + v[-1:]]
    if isinstance(v, dict):
        return [list(v.values()), list(v.items())]
    return [bytes(v)] if isinstance(v, CID) else []


def _paths(value: Any, path: tuple = (), out: list | None = None) -> list[tuple]:
    out = [] if out is None else out
    out.append(path)
    if len(out) < 400:
        if isinstance(value, dict):
            for k, v in value.items():
                _paths(v, (*path, k), out)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                _paths(v, (*path, i), out)
    return out


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def swap_types(value: Any, rnd: random.Random, rounds: int = 1) -> Any:
    """A copy of a decoded value with one node replaced, removed or added (json.loads round trip copies)."""
    for _ in range(rounds):
        path = rnd.choice(_paths(value))
        node = _get(value, path)
        op = rnd.random()
        if path and op < 0.1:  # remove the node from its parent
            parent = _get(value, path[:-1])
            del parent[path[-1]]
            continue
        if isinstance(node, dict) and op < 0.2:
            node[rnd.choice(["x", "v", "t", "sig", "compression", "k", "scale", rnd.choice(list(node) or ["a"])])] = \
                _copy(rnd.choice(PALETTE))
            continue
        twins = _twins(node)
        new = rnd.choice(twins) if twins and op < 0.6 else _copy(rnd.choice(PALETTE))  # never alias the palette
        if not path:
            value = new
        else:
            _get(value, path[:-1])[path[-1]] = new
    return value


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | CID):
        return v.hex() if isinstance(v, bytes) else str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _toml_value(rnd: random.Random) -> str:
    return rnd.choice(['"x"', "true", "false", "1.5", "-1", "0", "[1]", '["a", 2]', "{a = 1}", "1979-05-27",
                       "nan", "inf", '""', "99999999999999999999", "[[[[[[1]]]]]]", "65536", "1e400"])


def _typed_mutation(dec: Decoder, data: bytes, rnd: random.Random) -> bytes | None:
    """A type swap inside the decoded value, re-encoded in the value's own (canonical) syntax."""
    try:
        if dec.kind == "cbor":
            value = swap_types(_copy(dagcbor.decode(data)), rnd, rnd.choice((1, 1, 2)))
            return dagcbor.encode(value)
        if dec.kind == "json":
            value = swap_types(json.loads(data), rnd, rnd.choice((1, 1, 2)))
            return json.dumps(_jsonable(value), separators=(",", ":")).encode()
        if dec.kind == "toml":
            lines = data.decode().split("\n")
            spots = [i for i, line in enumerate(lines) if re.match(r"^[a-z_]+ = ", line)]
            i = rnd.choice(spots)
            lines[i] = lines[i].split(" = ")[0] + " = " + _toml_value(rnd)
            return "\n".join(lines).encode()
    except (ValueError, RecursionError, KeyError, IndexError, TypeError):
        return None  # not encodable (a NaN, a non-string key, nested too deep): no input from this one
    return None


def _byte_mutation(data: bytes, rnd: random.Random, seeds: list[bytes]) -> bytes:
    buf = bytearray(data)
    op = rnd.randrange(8)
    pos = rnd.randrange(len(buf) + 1)
    if op == 0 and buf:
        i = min(pos, len(buf) - 1)
        buf[i] ^= 1 << rnd.randrange(8)
    elif op == 1 and buf:
        buf[min(pos, len(buf) - 1)] = rnd.choice((0, 0x7F, 0x80, 0xFF, 0x18, 0x1B, 0x20, 0x40, 0x5B, 0x7B))
    elif op == 2:
        buf[pos:pos] = rnd.randbytes(rnd.randint(1, 8))
    elif op == 3:
        del buf[pos : pos + rnd.randint(1, 16)]
    elif op == 4:
        del buf[pos:]
    elif op == 5 and buf:
        a = rnd.randrange(len(buf))
        buf[pos:pos] = buf[a : a + rnd.randint(1, 64)]
    elif op == 6:
        other = rnd.choice(seeds)
        buf = buf[:pos] + other[rnd.randrange(len(other) + 1) :]
    else:
        buf[pos:pos] = rnd.choice(_CBOR_HEADS)
    return bytes(buf)


def mutate(dec: Decoder, rnd: random.Random) -> bytes:
    data = rnd.choice(dec.seeds)
    if dec.kind != "bytes" and rnd.random() < 0.5:
        typed = _typed_mutation(dec, data, rnd)
        if typed is not None:
            return typed[:MAX_INPUT]
    for _ in range(rnd.choice((1, 1, 2, 3))):
        data = _byte_mutation(data, rnd, dec.seeds)
    return data[:MAX_INPUT]


# --- checking ----------------------------------------------------------------------------------


class Foreign(AssertionError):
    """A decoder raised another exception type, or accepted a non-canonical encoding."""


def check(dec: Decoder, data: bytes) -> bool:
    """True if accepted, False if refused with the decoder's own error; Foreign otherwise."""
    try:
        value = dec.decode(data)
    except dec.allowed as exc:
        if "\n" in str(exc):
            raise Foreign(f"{dec.name}: multi-line error {str(exc)[:80]!r}") from exc
        return False
    except Exception as exc:
        raise Foreign(f"{dec.name}: {type(exc).__name__}: {str(exc)[:120]}") from exc
    if dec.reencode is not None:
        try:
            again = dec.reencode(value)
        except Exception as exc:
            raise Foreign(f"{dec.name}: accepted value does not re-encode: {type(exc).__name__}: {exc}") from exc
        if again != data:
            raise Foreign(f"{dec.name}: accepted a non-canonical encoding (one value, two blocks)")
    return True


def run(dec: Decoder, inputs: int, seed: int = 0, keep: int = 0) -> tuple[Stats, list[bytes]]:
    """Fuzz one decoder; returns its stats and up to ``keep`` sampled inputs (for a corpus)."""
    rnd = random.Random(f"{seed}/{dec.name}")
    stats, sample = Stats(), []
    start = time.perf_counter()
    for i in range(inputs):
        data = rnd.choice(dec.seeds) if i < len(dec.seeds) else mutate(dec, rnd)
        stats.inputs += 1
        try:
            if check(dec, data):
                stats.accepted += 1
            else:
                stats.refused += 1
        except Foreign as exc:
            stats.foreign.append((str(exc), data))
        if keep and i >= len(dec.seeds) and len(sample) < keep and rnd.random() < 4 * keep / max(inputs, 1):
            sample.append(data)
    stats.seconds = time.perf_counter() - start
    return stats, sample


def corpus_files(name: str) -> list[Path]:
    folder = CORPUS / name
    return sorted(folder.glob("*.bin")) if folder.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=2000, help="inputs per decoder (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", help="decoder name (repeatable)")
    ap.add_argument("--save-corpus", type=Path, help="write sampled inputs and findings under DIR/<decoder>/")
    ap.add_argument("--per-decoder", type=int, default=24)
    args = ap.parse_args(argv)
    decoders = registry()
    names = args.only or list(decoders)
    print(f"{'decoder':<20} {'inputs':>8} {'accepted':>9} {'refused':>9} {'foreign':>8} {'seconds':>8}")
    total = 0
    for name in names:
        stats, sample = run(decoders[name], args.inputs, args.seed, args.per_decoder if args.save_corpus else 0)
        total += len(stats.foreign)
        print(f"{name:<20} {stats.inputs:>8} {stats.accepted:>9} {stats.refused:>9} {len(stats.foreign):>8} "
              f"{stats.seconds:>8.1f}", flush=True)
        for what, _ in stats.foreign[:3]:
            print(f"    {what}")
        if args.save_corpus:
            folder = args.save_corpus / name
            folder.mkdir(parents=True, exist_ok=True)
            for data in sample + [d for _, d in stats.foreign[:8]]:
                (folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)
            for label, data in regressions().get(name, {}).items():
                (folder / f"refuse-{label}.bin").write_bytes(data)
    print(f"foreign exceptions: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
