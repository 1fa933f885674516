"""Lossless by default (issue 11, item 1): create, commit and train store exactly the bytes given.

Every test runs a real History on a real LMDB store (or the real CLI on a real node home) and
compares bytes, never values: -0.0 == 0.0 and NaN != NaN would hide exactly the losses these
tests are about. The lossy encodings stay selectable and report their error per tensor.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import fixed_identity, read_model, write_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fednode.errors import Corrupt
from fednode.history import History, RepoInfo
from fednode.storage.store import Store
from fednode.tensors import encodings
from fednode.tensors.modelio import ArraySource
from fednode.workflows.verify import verify
from protocol import dagcbor
from protocol.multiformats import CID, RAW, FormatError
from protocol.objects import DTYPES, Manifest, TensorEntry

Arrays = dict[str, tuple[str, np.ndarray]]


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 values as BF16 bit patterns (truncated: any pattern is a valid BF16)."""
    return (np.asarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def commit_and_read(history: History, repo: RepoInfo, new: Arrays, **kw) -> tuple[object, Arrays]:
    result = history.commit(repo, ArraySource(new), "update", **kw)
    state = {n: (e.dtype, arr.reshape(e.shape)) for n, (e, arr) in history.state(result.cid).items()}
    return result, state


def assert_bits(got: Arrays, want: Arrays) -> None:
    assert sorted(got) == sorted(want)
    for name, (dtype, arr) in want.items():
        assert got[name][0] == dtype, name
        assert got[name][1].shape == arr.shape, name
        assert got[name][1].tobytes() == arr.tobytes(), f"{name} ({dtype}) did not come back bit for bit"


def entries(history: History, cid: CID) -> dict[str, TensorEntry]:
    return history.load_manifest(history.load_commit(cid).weights).tensors


def round_trip(history: History, base: Arrays, *updates: Arrays, **kw) -> list:
    repo, genesis = history.create_repo("m", ArraySource(base))
    assert_bits({n: (e.dtype, a.reshape(e.shape)) for n, (e, a) in history.state(genesis.cid).items()}, base)
    results = []
    for new in updates:
        result, state = commit_and_read(history, repo, new, **kw)
        assert_bits(state, new)
        results.append(result)
    assert verify(history, repo, results[-1].cid).problems == []
    return results


# --- magnitudes the old fixed grid (2**-24) lost ---------------------------------------------------


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
def test_values_near_1e_minus_6_come_back_exactly(history: History, dtype: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5e-6, 2e-6, 4096) * rng.choice([-1.0, 1.0], 4096)
    y = x * (1 + rng.normal(0, 1e-3, x.size))  # a training step of 0.1 %
    cast = (lambda v: bf16(v)) if dtype == "BF16" else (lambda v: v.astype(DTYPES[dtype][0]))
    base, new = {"w": (dtype, cast(x))}, {"w": (dtype, cast(y))}
    assert base["w"][1].tobytes() != new["w"][1].tobytes()
    (result,) = round_trip(history, base, new)
    assert result.errors == {} and result.lossless and result.max_quantization_error == 0.0
    assert entries(history, result.cid)["w"].encoding == "xor"


@pytest.mark.parametrize("dtype", ["F64", "F32", "BF16"])
def test_values_near_1e_minus_30_come_back_exactly(history: History, dtype: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1000) * 1e-30
    y = x + rng.standard_normal(1000) * 1e-33
    cast = (lambda v: bf16(v)) if dtype == "BF16" else (lambda v: v.astype(DTYPES[dtype][0]))
    round_trip(history, {"w": (dtype, cast(x))}, {"w": (dtype, cast(y))})


def test_subnormals_and_signed_zeros(history: History) -> None:
    f32_sub = np.array([1e-45, -1e-45, 1.1754942e-38, 3e-40, 0.0, -0.0, 1.0, -2.0], dtype=np.float32)
    f64_sub = np.array([5e-324, -5e-324, 2.2250738585072e-308, 1e-310, 0.0, -0.0, 1.0, -2.0])
    f16_sub = np.array([6e-8, -6e-8, 6.1e-5, 3e-6, 0.0, -0.0, 1.0, -2.0], dtype=np.float16)
    bf_sub = np.array([0x0001, 0x8001, 0x007F, 0x0000, 0x8000, 0x3F80], dtype=np.uint16)
    base = {"f32": ("F32", f32_sub), "f64": ("F64", f64_sub), "f16": ("F16", f16_sub), "bf16": ("BF16", bf_sub)}
    # each subnormal moves by one ulp, and every zero flips its sign: -0.0 == 0.0 numerically
    new = {}
    for name, (dtype, arr) in base.items():
        bits = arr.view(f"<u{arr.itemsize}").copy()
        zero = (bits << np.uint8(1)) == 0
        bits[zero] ^= np.array(1 << (8 * arr.itemsize - 1), dtype=bits.dtype)
        bits[~zero] += np.array(1, dtype=bits.dtype)
        new[name] = (dtype, bits.view(arr.dtype))
    result, later = round_trip(history, base, new, base)
    # 6-8 values: a snapshot where a delta would be no smaller than the tensor; never "same"
    assert {e.encoding for e in entries(history, result.cid).values()} <= {"raw", "xor"}
    assert {e.encoding for e in entries(history, later.cid).values()} <= {"raw", "xor"}


def test_zero_sign_flip_alone_is_a_change(history: History) -> None:
    base = {"w": ("F32", np.zeros(64, dtype=np.float32))}
    new = {"w": ("F32", -np.zeros(64, dtype=np.float32))}
    (result,) = round_trip(history, base, new)
    assert entries(history, result.cid)["w"].encoding != "same"


def test_nan_payloads_are_kept_in_a_compact_delta(history: History) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1 << 14).astype(np.float32)
    bits = x.view(np.uint32).copy()
    bits[:4] = [0x7FC00000, 0x7FC00001, 0xFFC00002, 0x7F800001]  # quiet, payload, negative, signalling
    base = {"w": ("F32", bits.view(np.float32)), "d": ("F64", np.array([np.nan, 1.0, 2.0]))}
    bits2 = bits.copy()
    bits2[:4] = [0x7FC0BEEF, 0xFFC00001, 0x7FC00002, 0x7F800002]  # other payloads at the same places
    bits2[100] = 0x7FA00000  # a NaN appears
    d2 = np.array([1.0, np.nan, 2.0]).view(np.uint64)
    d2[1] |= np.uint64(0xDEAD)
    new = {"w": ("F32", bits2.view(np.float32)), "d": ("F64", d2.view(np.float64))}
    (result,) = round_trip(history, base, new)
    w = entries(history, result.cid)["w"]
    assert w.encoding == "xor" and w.size < w.nbytes // 20, "five changed values must not cost a snapshot"


def test_f64_change_of_1e_minus_12_is_stored(history: History) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal(500)
    y = x + 1e-12
    assert (y != x).all()
    (result,) = round_trip(history, {"w": ("F64", x)}, {"w": ("F64", y)})
    w = entries(history, result.cid)["w"]
    assert w.encoding == "xor" and w.state != entries(history, history.load_commit(result.cid).parents[0])["w"].state


def test_every_dtype_in_one_model(history: History) -> None:
    rng = np.random.default_rng(5)
    base: Arrays = {
        "f64": ("F64", rng.standard_normal((6, 5)) * 1e-7),
        "f32": ("F32", rng.standard_normal((6, 5)).astype(np.float32) * np.float32(1e-6)),
        "f16": ("F16", rng.standard_normal((6, 5)).astype(np.float16)),
        "bf16": ("BF16", bf16(rng.standard_normal((6, 5)) * 1e-5)),
        "i64": ("I64", rng.integers(-(2**63), 2**63 - 1, (6, 5), dtype=np.int64)),
        "i32": ("I32", rng.integers(-(2**31), 2**31 - 1, (6, 5), dtype=np.int32)),
        "i16": ("I16", rng.integers(-(2**15), 2**15 - 1, (6, 5), dtype=np.int16)),
        "i8": ("I8", rng.integers(-128, 127, (6, 5), dtype=np.int8)),
        "u8": ("U8", rng.integers(0, 255, (6, 5), dtype=np.uint8)),
        "bool": ("BOOL", rng.integers(0, 2, (6, 5)).astype(bool)),
        "scalar": ("F32", np.array(1e-6, dtype=np.float32)),
        "empty": ("F64", np.zeros((0, 3))),
    }
    new = {}
    for name, (dtype, arr) in base.items():
        flat = arr.reshape(-1).view(f"<u{arr.itemsize}").copy() if arr.size else arr.reshape(-1).copy()
        if dtype == "BOOL":
            new[name] = (dtype, ~arr)
            continue
        if arr.size:
            flat[::3] ^= np.array(1, dtype=flat.dtype)  # the lowest bit of every third element
            flat = flat.view(arr.dtype)
        new[name] = (dtype, flat.reshape(arr.shape))
    (result,) = round_trip(history, base, new)
    got = entries(history, result.cid)
    # one element, or none: a snapshot costs no more than a delta
    assert {n for n, e in got.items() if e.encoding == "xor"} == set(base) - {"bool", "empty", "scalar"}
    assert got["bool"].encoding == got["scalar"].encoding == "raw" and got["empty"].encoding == "same"
    assert result.lossless


def test_a_long_delta_chain_stays_exact(history: History) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal(2000).astype(np.float32) * np.float32(1e-6)
    states = [{"w": ("F32", x)}]
    for _ in range(5):
        x = (x * (1 + rng.normal(0, 1e-4, x.size))).astype(np.float32)
        states.append({"w": ("F32", x)})
    repo, _ = history.create_repo("m", ArraySource(states[0]))
    cids = [history.commit(repo, ArraySource(s), "step").cid for s in states[1:]]
    for cid, want in zip(cids, states[1:], strict=True):
        assert history.tensor_array(cid, "w").tobytes() == want["w"][1].tobytes()
    assert [entries(history, c)["w"].depth for c in cids] == [1, 2, 3, 4, 5]


# --- the property: any tensor, any small change ---------------------------------------------------

DTYPE_NAMES = sorted(DTYPES)
REPO_NAMES = itertools.count()


@pytest.fixture(scope="module")
def shared_history() -> Iterator[History]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        try:
            yield History(store, fixed_identity())
        finally:
            store.close()


@st.composite
def tensor_and_changes(draw) -> tuple[str, np.ndarray, list[np.ndarray]]:
    dtype = draw(st.sampled_from(DTYPE_NAMES))
    np_dtype, size = DTYPES[dtype]
    n = draw(st.integers(0, 40))
    if dtype in ("F16", "F32", "F64") and draw(st.booleans()):
        floats = st.floats(width=size * 8, allow_nan=True, allow_infinity=True, allow_subnormal=True)
        base = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np_dtype)
    else:
        base = np.frombuffer(draw(st.binary(min_size=n * size, max_size=n * size)), dtype=f"<u{size}").copy()
        base = base.view(np_dtype)
    if dtype == "BOOL":
        base = base.view(np.uint8) & np.uint8(1)
        base = base.view(bool)
    changes = []
    current = base
    for _ in range(draw(st.integers(1, 3))):
        bits = current.view(f"<u{size}").copy()
        if n:
            for _ in range(draw(st.integers(1, 4))):
                i = draw(st.integers(0, n - 1))
                if dtype == "BOOL":
                    bits[i] ^= np.uint8(1)
                elif draw(st.booleans()):  # a few ulps up or down: a small numeric change at any magnitude
                    bits[i] = bits[i] + np.array(draw(st.integers(-3, 3)), dtype=np.int64).astype(bits.dtype)
                else:  # any one bit: sign, exponent, mantissa, NaN payload
                    bits[i] ^= np.array(1 << draw(st.integers(0, 8 * size - 1)), dtype=np.uint64).astype(bits.dtype)
        current = bits.view(base.dtype)
        changes.append(current)
    return dtype, base, changes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tensor_and_changes())
def test_property_any_tensor_any_small_change_comes_back_bit_for_bit(shared_history: History, case) -> None:
    dtype, base, changes = case
    history = shared_history
    other = ("I8", np.ones(1, "i1"))
    repo, genesis = history.create_repo(f"p{next(REPO_NAMES)}", ArraySource({"t": (dtype, base), "k": other}))
    cids = [genesis.cid]
    for arr in changes:
        cids.append(history.commit(repo, ArraySource({"t": (dtype, arr), "k": other}), "c").cid)
    for cid, want in zip(cids, [base, *changes], strict=True):
        assert history.tensor_array(cid, "t").tobytes() == want.tobytes()
        entry = entries(history, cid)["t"]
        assert entry.encoding in ("raw", "same", "xor")


# --- compactness -------------------------------------------------------------------------------------


def test_a_small_update_costs_less_than_zstd_of_the_raw_bytes(history: History) -> None:
    import zstandard

    rng = np.random.default_rng(7)
    w = (rng.standard_normal(1 << 16) * 0.05).astype(np.float32)
    new = (w - np.float32(0.01) * (rng.standard_normal(w.size) * 0.01).astype(np.float32)).astype(np.float32)
    (result,) = round_trip(history, {"w": ("F32", w)}, {"w": ("F32", new)})
    stored = entries(history, result.cid)["w"].size
    assert stored < 0.85 * len(zstandard.ZstdCompressor(level=3).compress(new.tobytes()))


# --- the manifest schema -----------------------------------------------------------------------------


def _xor_obj(**over) -> dict:
    state = CID.hash(RAW, b"s" * 12)
    obj = {"dtype": "F32", "shape": [3], "encoding": "xor", "depth": 1, "state": bytes(state),
           "cid": CID.hash(RAW, b"x" * 12), "size": 12}
    obj.update(over)
    return {k: v for k, v in obj.items() if v is not None}


def test_xor_entries_decode_strictly() -> None:
    entry = TensorEntry.from_obj(_xor_obj())
    assert entry.encoding == "xor" and entry.payload_size == 12
    assert TensorEntry.from_obj(dagcbor.decode(dagcbor.encode(entry.to_obj()))) == entry
    packed = TensorEntry.from_obj(_xor_obj(size=5, compression="zstd"))
    assert packed.compression == "zstd" and packed.payload_size == 12
    for bad in (_xor_obj(size=11), _xor_obj(int_bits=8), _xor_obj(scale=1.0), _xor_obj(dtype="BOOL", size=3),
                _xor_obj(depth=0), _xor_obj(compression="none"), _xor_obj(k=1), _xor_obj(cid=None)):
        with pytest.raises(FormatError):
            TensorEntry.from_obj(bad)
    manifest = Manifest({"w": entry})
    assert Manifest.decode(manifest.encode()) == manifest


def test_a_wrong_size_xor_payload_is_corrupt() -> None:
    entry = TensorEntry.from_obj(_xor_obj())
    parent = np.ones(3, dtype=np.float32)
    with pytest.raises(Corrupt):
        encodings.apply(parent, b"\x00" * 11, entry)
    assert encodings.apply(parent, b"\x00" * 12, entry).tobytes() == parent.tobytes()


# --- lossy encodings: only by choice, with their error reported ----------------------------------------


@pytest.mark.parametrize("encoding", ["fixed", "fp16", "int8", "topk"])
def test_lossy_encodings_report_their_error_per_tensor(history: History, encoding: str) -> None:
    rng = np.random.default_rng(8)
    base = {"small": ("F32", (rng.standard_normal(256) * 1e-6).astype(np.float32)),
            "big": ("F64", rng.standard_normal(256)),
            "ints": ("I32", np.arange(256, dtype=np.int32))}
    new = {"small": ("F32", (base["small"][1] * np.float32(1.3)).astype(np.float32)),
           "big": ("F64", base["big"][1] + rng.normal(0, 1e-3, 256)),
           "ints": ("I32", base["ints"][1] + 7)}
    repo, _ = history.create_repo("m", ArraySource(base))
    result, state = commit_and_read(history, repo, new, encoding=encoding, topk_fraction=0.5)
    assert set(result.errors) == {"small", "big"} and result.encoding == encoding
    assert state["ints"][1].tobytes() == new["ints"][1].tobytes()  # integer tensors stay exact
    for name in ("small", "big"):
        want = new[name][1].astype(np.float64)
        got = state[name][1].astype(np.float64)
        err = result.errors[name]
        assert err.max_abs == np.abs(got - want).max() > 0
        assert err.max_rel == pytest.approx(float((np.abs(got - want) / np.abs(want)).max()))
    assert not result.lossless and result.max_quantization_error == max(e.max_abs for e in result.errors.values())
    if encoding == "fixed":  # the old default: values near 1e-6 moved by tens of percent
        assert result.errors["small"].max_rel > 0.01


# --- the CLI ---------------------------------------------------------------------------------------


def _tricky(seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    f32 = (rng.standard_normal(300) * 1e-6).astype(np.float32)
    f32[:4] = [0.0, -0.0, 1e-45, np.float32(3e-39)]
    return {"tiny": ("F32", f32), "f64": ("F64", rng.standard_normal(50) + 1.0),
            "bf": ("BF16", bf16(rng.standard_normal(40) * 1e-30)), "steps": ("I64", np.array([seed], dtype=np.int64))}


def test_cli_commit_then_checkout_is_bit_for_bit(cli, tmp_path: Path) -> None:
    v0 = _tricky(0)
    v1 = {n: (d, a.copy()) for n, (d, a) in v0.items()}
    v1["tiny"][1][4:] *= np.float32(1.0001)
    v1["tiny"][1][1] = 0.0  # -0.0 -> 0.0
    v1["f64"] = ("F64", v0["f64"][1] + 1e-12)
    v1["bf"][1][::2] += np.uint16(1)
    v1["steps"] = ("I64", np.array([1], dtype=np.int64))
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    plain = cli("commit", "--from", write_model(tmp_path / "v1.safetensors", v1), "-m", "one").stdout
    assert "lossless" in plain and "LOSSY" not in plain and "error" not in plain
    data = json.loads(cli("commit", "--from", write_model(tmp_path / "v0b.safetensors", v0), "-m", "back",
                          "--json").stdout)
    assert data["encoding"] == "xor" and data["lossless"] is True and data["errors"] == {}
    cli("checkout", "main~1", "--out", tmp_path / "out1.safetensors")
    cli("checkout", "main", "--out", tmp_path / "out0.safetensors")
    got1, got0 = read_model(tmp_path / "out1.safetensors"), read_model(tmp_path / "out0.safetensors")
    for name, (_, arr) in v1.items():
        assert got1[name][1].tobytes() == arr.tobytes(), name
    for name, (_, arr) in v0.items():
        assert got0[name][1].tobytes() == arr.tobytes(), name
    shown = json.loads(cli("show", "main~1", "--json").stdout)
    assert {t["name"]: t["encoding"] for t in shown["tensors"]} == {"tiny": "xor", "f64": "xor", "bf": "xor",
                                                                    "steps": "raw"}  # 8 bytes: a snapshot


def test_cli_lossy_encoding_states_its_errors(cli, tmp_path: Path) -> None:
    v0 = _tricky(1)
    v1 = {n: (d, a.copy()) for n, (d, a) in v0.items()}
    v1["tiny"][1][4:] *= np.float32(1.5)
    v1["f64"] = ("F64", v0["f64"][1] + 1e-3)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    text = cli("commit", "--from", write_model(tmp_path / "v1.safetensors", v1), "-m", "lossy",
               "--encoding", "fixed").stdout
    assert "LOSSY encoding fixed" in text and "max abs error" in text and "max rel error" in text
    assert "lossless" not in text
    cells = [line.replace("\u2502", " ").split() for line in text.splitlines()]
    rows = {c[0] for c in cells if c and c[0] in v1}
    assert rows == {"tiny", "f64", "bf"}  # every float tensor has a row; the integer one is exact
    data = json.loads(cli("commit", "--from", write_model(tmp_path / "v2.safetensors", v0), "-m", "lossy",
                          "--encoding", "fp16", "--json").stdout)
    assert data["lossless"] is False and data["encoding"] == "fp16"
    cli("checkout", "main", "--out", tmp_path / "out.safetensors")
    got = read_model(tmp_path / "out.safetensors")
    want = v0["f64"][1]
    abs_err = np.abs(got["f64"][1] - want).max()
    assert data["errors"]["f64"]["max_abs"] == abs_err > 0
    assert data["errors"]["f64"]["max_rel"] == pytest.approx((np.abs(got["f64"][1] - want) / np.abs(want)).max())


@pytest.mark.parametrize("command", ["commit", "train"])
def test_help_names_the_lossless_default_and_never_calls_a_lossy_encoding_exact(cli, command: str) -> None:
    text = " ".join(cli(command, "--help").stdout.split())
    assert "[default: xor]" in text and "lossless" in text and "LOSSY" in text
    for lossy in encodings.LOSSY:
        assert lossy in text
    start = text.index("--encoding")
    option = text[start:text.index("[default: xor]", start)]
    assert "exact" not in option.lower()


TRAIN_SCRIPT = '''
import json, os, shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file

if __name__ == "__main__":  # an executable training script: HEAD OUT (a copy of OUT is kept for the test)
    head, out = sys.argv[1], sys.argv[2]
    step = float(os.environ["FEDNODE_SEED"]) + 1
    w = load_file(head)
    save_file({k: (v * np.float32(1 + 3e-5 * step) + np.float32(1e-7)).astype(v.dtype) if v.dtype.kind == "f"
               else v + 1 for k, v in w.items()}, out)
    shutil.copy(out, os.environ["LOSSLESS_COPY"] + os.environ["FEDNODE_SEED"])
    json.dump({"samples": 10, "loss": 0.5}, open(os.environ["FEDNODE_METRICS"], "w"))
'''


def test_cli_train_commits_the_trained_bytes_and_lossy_train_reports_errors(cli, tmp_path: Path,
                                                                             monkeypatch) -> None:
    script = tmp_path / "step.py"
    script.write_text(TRAIN_SCRIPT)
    monkeypatch.setenv("LOSSLESS_COPY", str(tmp_path / "trained"))
    rng = np.random.default_rng(9)
    v0 = {"w": ("F32", (rng.standard_normal((64, 32)) * 0.1).astype(np.float32)),
          "b": ("F64", rng.standard_normal(32) * 1e-6), "n": ("I64", np.array([3, 4], dtype=np.int64))}
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    text = cli("train", "--script", script, "--quiet", "--seed", "0").stdout
    assert "lossless (xor): every tensor bit for bit" in text and "LOSSY" not in text
    cli("checkout", "main", "--out", tmp_path / "out.safetensors")
    got, want = read_model(tmp_path / "out.safetensors"), read_model(tmp_path / "trained0")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name][1].tobytes() == want[name][1].tobytes(), name
    data = json.loads(cli("train", "--script", script, "--quiet", "--seed", "1", "--encoding", "int8",
                          "--json").stdout)
    assert data["encoding"] == "int8" and data["lossless"] is False and set(data["errors"]) == {"w", "b"}
    cli("checkout", "main", "--out", tmp_path / "lossy.safetensors")
    got, want = read_model(tmp_path / "lossy.safetensors"), read_model(tmp_path / "trained1")
    assert data["errors"]["w"]["max_abs"] == np.abs(got["w"][1].astype(np.float64)
                                                    - want["w"][1].astype(np.float64)).max() > 0
    assert got["n"][1].tobytes() == want["n"][1].tobytes()
