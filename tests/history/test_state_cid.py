"""Every manifest entry carries the UnixFS CID of the tensor's full state, whatever its encoding."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from helpers import model_arrays, perturb, write_model

from fednode.history import History
from fednode.tensors.modelio import ArraySource
from fednode.workflows.verify import verify
from protocol.multiformats import CID, DAG_CBOR
from protocol.objects import Commit, Manifest
from protocol.unixfs import add_bytes


def _state_cids(history: History, cid: CID) -> dict[str, CID]:
    return {n: e.state for n, e in history.load_manifest(history.load_commit(cid).weights).tensors.items()}


def test_state_cid_is_the_ipfs_cid_of_the_reconstructed_bytes(history: History) -> None:
    base = model_arrays(seed=1)
    repo, genesis = history.create_repo("m", ArraySource(base))
    changed = perturb(base, seed=2, names=("layer1.weight",))
    for encoding in ("fixed", "int8", "topk", "fp16"):
        result = history.commit(repo, ArraySource(changed), encoding, encoding=encoding)
        for name, (entry, arr) in history.state(result.cid).items():
            assert entry.state == add_bytes(arr.tobytes()), (encoding, name)
        changed = perturb(changed, seed=3, names=("layer1.weight",))
    # unchanged tensors keep the very CID they had at genesis, through every encoding
    head = history.branch_head(repo, "main")
    for name in ("layer1.bias", "layer2.weight", "steps"):
        assert _state_cids(history, head)[name] == _state_cids(history, genesis.cid)[name]
        assert _state_cids(history, genesis.cid)[name] == add_bytes(base[name][1].tobytes())


def test_verify_rejects_a_manifest_whose_state_lies(history: History) -> None:
    base = model_arrays(seed=1)
    repo, _ = history.create_repo("m", ArraySource(base))
    good = history.commit(repo, ArraySource(perturb(base, seed=4)), "update")
    assert verify(history, repo, good.cid).problems == []
    # a signed commit whose manifest claims another state for a delta-encoded tensor
    manifest = history.load_manifest(good.commit.weights)
    name = "layer1.weight"
    lie = dict(manifest.tensors)
    lie[name] = replace(lie[name], state=add_bytes(b"something else"))
    forged_manifest = Manifest(lie)
    block = forged_manifest.encode()
    unsigned = replace(good.commit, weights=CID.hash(DAG_CBOR, block), sig=b"")
    forged: Commit = history._signed(unsigned)
    with history.store.write() as txn:
        txn.put_block(CID.hash(DAG_CBOR, block), block)
        txn.put_block(forged.cid(), forged.encode())
        txn.index_commit(forged.cid(), repo.repo_id, forged.commit_hash())
    problems = verify(history, repo, forged.cid()).problems
    assert problems and "does not match its state CID" in problems[0] and name in problems[0]


def test_show_json_lists_state_cids(cli, tmp_path) -> None:
    base = model_arrays(seed=5)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "a.safetensors", base))
    cli("commit", "m", "--from", write_model(tmp_path / "b.safetensors", perturb(base, seed=6)), "-m", "u")
    shown = json.loads(cli("show", "HEAD", "--json").output)
    for t in shown["tensors"]:
        arr = base[t["name"]][1] if t["encoding"] == "same" else None
        assert t["state"].startswith("bafk") or t["state"].startswith("bafy")
        if arr is not None:
            assert t["state"] == str(add_bytes(np.ascontiguousarray(arr).tobytes()))
