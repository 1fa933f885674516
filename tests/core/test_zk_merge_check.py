"""fednode.zk.merge_check: a FedAvg merge checked from commitments alone; and by the program."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fednode.strategies.exact import round_div
from fednode.strategies.fedavg import FedAvg
from fednode.zk import mcl
from fednode.zk import merge_check as mc
from fednode.zk import pedersen as pd
from fednode.zk.curve import R, ZkError

N = 300 if mcl.available() else 3  # coordinate-wise: length adds only time (py_ecc: ~3 ms a value)


def merge_case(seed: int = 0, k: int = 8, blinded: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    qs = [rng.integers(-(1 << 15), 1 << 15, N) for _ in range(k)]
    ws = [int(w) for w in rng.integers(1, 5000, k)]
    bs = [int(b) for b in rng.integers(1, 1 << 62, k)] if blinded else [0] * k
    cs = [pd.commit(q, b) for q, b in zip(qs, bs, strict=True)]
    d, r = mc.fedavg_delta(qs, ws)
    b_d, b_r = mc.split_blinding(bs, ws)
    c_d, c_r = mc.merge_commitments(d, r, b_d, b_r)
    return {"qs": qs, "ws": ws, "cs": cs, "d": d, "r": r, "c_d": c_d, "c_r": c_r, "b_d": b_d, "b_r": b_r}


def test_fedavg_delta_is_the_repository_merge() -> None:
    m = merge_case()
    assert (m["d"] == FedAvg().combine(m["qs"], tuple(m["ws"]))).all()
    s = sum(w * q for w, q in zip(m["ws"], m["qs"], strict=True))
    assert (s == sum(m["ws"]) * m["d"] + m["r"]).all()
    assert np.abs(m["r"]).max() <= sum(m["ws"]) // 2
    # ties to even, as exact.round_div: 5/2 -> 2, 7/2 -> 4, -5/2 -> -2
    d, r = mc.fedavg_delta([np.array([5, 7, -5, -7, 3]), np.zeros(5, dtype=np.int64)], [1, 1])
    assert d.tolist() == [2, 4, -2, -4, 2] and r.tolist() == [1, -1, -1, 1, -1]
    d, _ = mc.fedavg_delta([np.array([5, 7, -5])], [1])
    assert d.tolist() == [5, 7, -5]
    big = [np.array([(1 << 62) - 1, -(1 << 62)]), np.array([(1 << 62) - 1, 3])]  # the exact (object) path
    d, r = mc.fedavg_delta(big, [3, 1])
    assert [int(v) for v in d] == FedAvg().combine(big, (3, 1)).tolist()
    assert int(d[1]) == round_div(3 * -(1 << 62) + 3, 4) and int(r[1]) == 3 * -(1 << 62) + 3 - 4 * int(d[1])
    assert pd.commit(d) == pd.commit([int(v) for v in d], backend_name="reference")


@pytest.mark.parametrize("blinded", [True, False])
def test_merge_check_passes(blinded: bool) -> None:
    m = merge_case(1, blinded=blinded)
    assert mc.check_linear_merge(m["cs"], m["ws"], m["c_d"], m["c_r"])
    if not blinded:
        assert (m["b_d"], m["b_r"]) == (0, 0)
    # a zero weight leaves an input out, as in the repository's FedAvg
    ws = [*m["ws"][:-1], 0]
    d, r = mc.fedavg_delta(m["qs"], ws)
    b_d, b_r = mc.split_blinding([0] * 8, ws)
    cs = [pd.commit(q) for q in m["qs"]]
    assert mc.check_linear_merge(cs, ws, *mc.merge_commitments(d, r, b_d, b_r))


def test_merge_check_agrees_with_reference_backend() -> None:
    m = merge_case(2, k=3)
    assert mc.check_linear_merge(m["cs"], m["ws"], m["c_d"], m["c_r"], backend_name="reference")
    assert not mc.check_linear_merge(m["cs"], [m["ws"][0] + 1, *m["ws"][1:]], m["c_d"], m["c_r"],
                                     backend_name="reference")


def test_merge_check_fails_for_wrong_inputs() -> None:
    m = merge_case(3)
    cs, ws, c_d, c_r = m["cs"], m["ws"], m["c_d"], m["c_r"]
    assert not mc.check_linear_merge(cs, [ws[0] + 1, *ws[1:]], c_d, c_r)  # a wrong weight
    assert not mc.check_linear_merge(cs, ws[::-1], c_d, c_r)  # weights to the wrong inputs
    wrong_r = m["r"].copy()
    wrong_r[0] += 1
    assert not mc.check_linear_merge(cs, ws, c_d, pd.commit(wrong_r, m["b_r"]))  # a wrong remainder
    other = m["qs"][0].copy()
    other[N - 1] += 1
    assert not mc.check_linear_merge([pd.commit(other), *cs[1:]], ws, c_d, c_r)  # a commitment to another vector
    wrong_d = m["d"].copy()
    wrong_d[0] += 1
    assert not mc.check_linear_merge(cs, ws, pd.commit(wrong_d, m["b_d"]), c_r)
    assert not mc.check_linear_merge(cs, ws, c_d, pd.commit(m["r"], m["b_r"] + 1))  # wrong blinding


def test_merge_check_gap_without_range_proof() -> None:
    """Documented limitation: d + 1 with r - W still satisfies the linear relation (item 3 closes it)."""
    m = merge_case(4, k=2)
    total = sum(m["ws"])
    c_d = pd.commit(m["d"] + 1, m["b_d"])
    c_r = pd.commit(m["r"] - total, m["b_r"])
    assert mc.check_linear_merge(m["cs"], m["ws"], c_d, c_r)


def test_merge_check_bad_points_and_weights_are_one_line_errors() -> None:
    m = merge_case(5, k=2)
    not_on_curve = (1).to_bytes(32, "big") + (3).to_bytes(32, "big")
    with pytest.raises(ZkError, match="input commitment 1 is not a point of BN254 G1") as info:
        mc.check_linear_merge([m["cs"][0], not_on_curve], m["ws"], m["c_d"], m["c_r"])
    assert "\n" not in str(info.value)
    with pytest.raises(ZkError, match="remainder commitment"):
        mc.check_linear_merge(m["cs"], m["ws"], m["c_d"], not_on_curve)
    with pytest.raises(ZkError, match="64 bytes"):
        mc.check_linear_merge(m["cs"], m["ws"], m["c_d"][:63], m["c_r"])
    with pytest.raises(ZkError, match="weight 0"):
        mc.check_linear_merge(m["cs"], [-1, 2], m["c_d"], m["c_r"])
    with pytest.raises(ZkError, match="sum to zero"):
        mc.check_linear_merge(m["cs"], [0, 0], m["c_d"], m["c_r"])
    with pytest.raises(ZkError, match="2 weights for 1"):
        mc.check_linear_merge(m["cs"][:1], m["ws"], m["c_d"], m["c_r"])


def test_split_blinding_relation() -> None:
    bs, ws = [11, 22, 33], [2, 3, 4]
    b_d, b_r = mc.split_blinding(bs, ws, b_d=5)
    assert (b_d, b_r) == (5, (2 * 11 + 3 * 22 + 4 * 33 - 9 * 5) % R)
    b_d, b_r = mc.split_blinding(bs, ws)
    assert (9 * b_d + b_r) % R == (2 * 11 + 3 * 22 + 4 * 33) % R


def _program_tests() -> Any:
    """tests/programs/test_program.py as a module (its World, without duplicating it here)."""
    path = Path(__file__).resolve().parents[1] / "programs" / "test_program.py"
    name = "_zk_program_world"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_program_accepts_library_commitments(tmp_path: Path) -> None:
    """Inputs committed here, anchored; the merge's commitment is C(S) = W C(d) + C(r), which the
    program checks as sum_k w_k C_k; a wrong weight is MERGE_COMMITMENT_MISMATCH."""
    tp = _program_tests()
    from programs.build import build

    world = tp.make_world(Path(build(tmp_path)[3]).read_bytes())
    m = merge_case(6, k=2)
    for label, author, c in (("u1", world.alice, m["cs"][0]), ("u2", world.owner, m["cs"][1])):
        world.anchor(author, label, parents=(tp.GENESIS,), branch=None, commitment=c)
    c_s = pd.combine([m["c_d"], m["c_r"]], [sum(m["ws"]), 1])
    assert c_s == mc.sum_commitment(m["cs"], m["ws"])
    wrong = (m["ws"][0] + 1, m["ws"][1])
    tp.rejects(tp.E.MERGE_COMMITMENT_MISMATCH, lambda: world.merge("bad", ("u1", "u2"), wrong, commitment=c_s))
    world.merge("m", ("u1", "u2"), tuple(m["ws"]), commitment=c_s)
    record = world.client.commit(world.repo_id, world["m"])
    assert record is not None and record.commitment == c_s
