"""The program's merge check with the remainder (issue 15 item 2): sum_k w_k C_k == W C(d) + C(r),
with commitments made by fednode.zk on random integer vectors, in LiteSVM with our compiled program."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from solders.instruction import Instruction
from test_program import GENESIS, World, h, make_world, rejects  # tests/programs/ is on sys.path

from fednode.chain.client import Anchored
from fednode.chain.program import ed25519_proof
from fednode.zk import merge_check as mc
from fednode.zk import pedersen as pd
from programs.build import build
from protocol import chain as layout
from protocol.chain import ErrorCode as E
from protocol.chain import Kind

N = 64  # values per input vector
NOT_ON_CURVE = bytes(63) + b"\x01"  # (0, 1): 1 != 0 + 3
CU_TARGET = 300_000


@pytest.fixture(scope="module")
def elves(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    return {v: Path(p).read_bytes() for v, p in build(tmp_path_factory.mktemp("programs")).items()}


def fedavg(seed: int, k: int) -> dict:
    """k committed random int16 updates with weights, and the FedAvg (d, r) with C(d), C(r)."""
    rng = np.random.default_rng(seed)
    qs = [rng.integers(-(1 << 15), 1 << 15, N) for _ in range(k)]
    ws = [int(w) for w in rng.integers(1, 5000, k)]
    d, r = mc.fedavg_delta(qs, ws)
    c_d, c_r = mc.merge_commitments(d, r)
    return {"cs": [pd.commit(q) for q in qs], "ws": ws, "d": d, "r": r, "c_d": c_d, "c_r": c_r}


def committed_world(elf: bytes, m: dict) -> tuple[World, tuple[str, ...]]:
    """The repository with one anchored update per input commitment (labels u0, u1, ...)."""
    w = make_world(elf)
    labels = tuple(f"u{i}" for i in range(len(m["cs"])))
    for i, (label, c) in enumerate(zip(labels, m["cs"], strict=True)):
        w.anchor(w.alice if i % 2 else w.owner, label, parents=(GENESIS,), branch=None, commitment=c)
    return w, labels


def merge(w: World, label: str, inputs: tuple[str | bytes, ...], weights: tuple[int, ...], c: bytes | None,
          r: bytes | None) -> Anchored:
    o = w.owner
    commit = w.hash_of(o, label, Kind.MERGE, inputs)
    return w.client.merge(o, w.repo_id, h(label), bytes(o.sign_message(commit)), branch="main",
                          inputs=[w.ref(i) for i in inputs], weights=weights, commitment=c, remainder=r)


def raw_merge(w: World, label: str, inputs: tuple[str, ...], weights: tuple[int, ...], flags: int,
              tail: bytes) -> object:
    """A merge whose flags byte and trailing bytes are set by hand (what the codec refuses to write)."""
    o = w.owner
    commit = w.hash_of(o, label, Kind.MERGE, inputs)
    body = layout.Merge(h(label), layout.branch_hash("main"), tuple(w[i] for i in inputs), weights)
    ix = w.program.merge(o.pubkey(), w.repo_id, body)
    data = bytearray(ix.data)
    data[33] = flags
    proof = ed25519_proof(o.pubkey(), bytes(o.sign_message(commit)), commit)
    return w.backend.send([proof, Instruction(ix.program_id, bytes(data) + tail, ix.accounts)], [o])


@pytest.mark.parametrize("version", [0, 3])
def test_two_inputs_with_remainder_record_c_d(elves: dict[int, bytes], version: int) -> None:
    m = fedavg(1, 2)
    w, (u0, u1) = committed_world(elves[version], m)
    ws = tuple(m["ws"])
    assert mc.check_linear_merge(m["cs"], ws, m["c_d"], m["c_r"])
    merge(w, "m", (u0, u1), ws, m["c_d"], m["c_r"])
    record = w.client.commit(w.repo_id, w["m"])
    assert record is not None and record.commitment == m["c_d"]  # C(d), not C(S)
    assert w.client.head(w.repo_id, "main") == w["m"]


def test_eight_inputs_pass_within_the_compute_budget(elves: dict[int, bytes]) -> None:
    m = fedavg(2, 8)
    w, labels = committed_world(elves[3], m)
    anchored = merge(w, "m8", labels, tuple(m["ws"]), m["c_d"], m["c_r"])
    cu = anchored.tx.compute_units
    print(f"merge of 8 committed inputs with the remainder check: {cu} CU (target <= {CU_TARGET})")
    assert cu <= CU_TARGET
    assert w.client.commit(w.repo_id, w["m8"]).commitment == m["c_d"]  # type: ignore[union-attr]


def test_wrong_weight_remainder_and_points_refused(elves: dict[int, bytes]) -> None:
    m = fedavg(3, 2)
    w, (u0, u1) = committed_world(elves[3], m)
    ws, c_d, c_r = tuple(m["ws"]), m["c_d"], m["c_r"]
    wrong = (ws[0] + 1, ws[1])
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: merge(w, "m", (u0, u1), wrong, c_d, c_r))
    r2 = m["r"].copy()
    r2[5] += 1
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: merge(w, "m", (u0, u1), ws, c_d, pd.commit(r2)))
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: merge(w, "m", (u0, u1), ws, c_r, c_d))  # swapped
    rejects(E.INVALID_COMMITMENT, lambda: merge(w, "m", (u0, u1), ws, NOT_ON_CURVE, c_r))
    rejects(E.INVALID_COMMITMENT, lambda: merge(w, "m", (u0, u1), ws, c_d, NOT_ON_CURVE))
    rejects(E.INVALID_COMMITMENT, lambda: merge(w, "m", (u0, u1), (0, 0), NOT_ON_CURVE, bytes(64)))  # W = 0
    # The old rule reads C(d) as a claimed C(S): a mismatch, never accepted by accident.
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: merge(w, "m", (u0, u1), ws, c_d, None))
    assert w.client.head(w.repo_id, "main") == GENESIS and w.client.commit(w.repo_id, w["m"]) is None


def test_remainder_off_by_w_passes_the_algebra(elves: dict[int, bytes]) -> None:
    """d + 1 and r - W in one coordinate satisfy sum w_k q_k = W d + r too: only a range proof on r
    (|r_i| <= W / 2) tells them apart. The program accepts it; documented in docs/zk.md."""
    m = fedavg(4, 2)
    w, (u0, u1) = committed_world(elves[3], m)
    total = sum(m["ws"])
    d, r = m["d"].copy(), m["r"].copy()
    d[0] += 1
    r[0] -= total
    merge(w, "m", (u0, u1), tuple(m["ws"]), pd.commit(d), pd.commit(r))
    assert w.client.commit(w.repo_id, w["m"]).commitment == pd.commit(d)  # type: ignore[union-attr]


def test_malformed_flags_and_weight_overflow_refused(elves: dict[int, bytes]) -> None:
    m = fedavg(5, 2)
    w, (u0, u1) = committed_world(elves[3], m)
    ws, c_d, c_r = tuple(m["ws"]), m["c_d"], m["c_r"]
    bad = E.INVALID_INSTRUCTION_DATA
    rejects(bad, lambda: raw_merge(w, "m", (u0, u1), ws, layout.FLAG_HAS_REMAINDER, c_r))  # remainder alone
    rejects(bad, lambda: raw_merge(w, "m", (u0, u1), ws, 4, b""))
    rejects(bad, lambda: raw_merge(w, "m", (u0, u1), ws, 7, c_d + c_r))
    rejects(bad, lambda: raw_merge(w, "m", (u0, u1), ws, 3, c_d))  # flag 3 needs both points
    rejects(bad, lambda: merge(w, "m", (u0, u1), (2**64 - 1, 1), c_d, c_r))  # W overflows u64
    raw_merge(w, "m", (u0, u1), ws, 3, c_d + c_r)  # the same bytes as the codec writes: accepted
    with pytest.raises(layout.LayoutError):
        layout.encode_instruction(layout.Merge(h("m"), h("b"), (h("a"),), (1,), None, c_r))
    for flags in (2, 4, 7):
        good = bytearray(layout.encode_instruction(layout.Merge(h("m"), h("b"), (h("a"),), (1,), c_d, c_r)))
        good[33] = flags
        with pytest.raises(layout.LayoutError):
            layout.decode_instruction(bytes(good))
    ix = layout.Merge(h("m"), h("b"), (h("a"), h("c")), (3, 0), c_d, c_r)
    assert layout.decode_instruction(layout.encode_instruction(ix)) == ix


def test_weight_zero_inputs_need_no_commitment(elves: dict[int, bytes]) -> None:
    """The merge base (GENESIS: no commitment) as a weight-0 parent: accepted by both rules; with a
    nonzero weight it is still MISSING_INPUT_COMMITMENT."""
    m = fedavg(6, 2)
    w, (u0, u1) = committed_world(elves[3], m)
    ws, c_d, c_r = tuple(m["ws"]), m["c_d"], m["c_r"]
    rejects(E.MISSING_INPUT_COMMITMENT, lambda: merge(w, "x", (GENESIS, u0, u1), (1, *ws), c_d, c_r))
    merge(w, "m", (GENESIS, u0, u1), (0, *ws), c_d, c_r)
    c_s = mc.sum_commitment(m["cs"], ws)
    merge(w, "old", (GENESIS, u0, u1), (0, *ws), c_s, None)  # the old rule, weight-0 base
    assert w.client.commit(w.repo_id, w["old"]).commitment == c_s  # type: ignore[union-attr]


def test_old_rule_still_accepted(elves: dict[int, bytes]) -> None:
    m = fedavg(7, 2)
    w, (u0, u1) = committed_world(elves[3], m)
    ws = tuple(m["ws"])
    c_s = pd.combine([m["c_d"], m["c_r"]], [sum(ws), 1])
    assert c_s == mc.sum_commitment(m["cs"], ws)
    rejects(E.MERGE_COMMITMENT_MISMATCH, lambda: merge(w, "bad", (u0, u1), (ws[1], ws[0]), c_s, None))
    merge(w, "m", (u0, u1), ws, c_s, None)
    assert w.client.commit(w.repo_id, w["m"]).commitment == c_s  # type: ignore[union-attr]
    merge(w, "plain", (u0, u1), ws, None, None)  # no commitment: no check, as before


def test_merge_instruction_sizes() -> None:
    """The remainder costs 64 bytes: flags 3 carry commitment[64] || remainder[64] after the weights."""
    body = layout.Merge(h("m"), h("b"), (h("a"),), (5,), bytes(64), b"\x01" * 64)
    data = layout.encode_instruction(body)
    assert data[33] == 3 and len(data) == 67 + 40 + 128 and data[-64:] == b"\x01" * 64
    assert struct.unpack_from("<Q", data, 67 + 32)[0] == 5


b32 = st.binary(min_size=32, max_size=32)
g1_bytes = st.binary(min_size=64, max_size=64)
merges = st.integers(1, layout.MAX_PARENTS).flatmap(lambda n: st.builds(
    layout.Merge, b32, b32, st.lists(b32, min_size=n, max_size=n).map(tuple),
    st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n).map(tuple), g1_bytes, st.none() | g1_bytes))


@given(merges)
def test_merge_codec_round_trips_with_and_without_remainder(ix: layout.Merge) -> None:
    data = layout.encode_instruction(ix)
    assert data[33] == (3 if ix.remainder is not None else 1)
    assert layout.decode_instruction(data) == ix
