"""Model files: safetensors streaming reader/writer against the reference package, state_dicts, bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_arrays, read_model, write_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from fednode.errors import FednodeError
from fednode.tensors.modelio import SafetensorsFile, open_model, state_dict_source


def test_reads_reference_safetensors(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.tensor([True, False]),
        "e": torch.randn(2, 2, dtype=torch.float16),
        "f": torch.zeros(0, 3),
    }
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    src = open_model(path)
    try:
        assert list(src.tensors) == sorted(tensors)
        assert src.metadata == {"k": "v"}
        for name, t in tensors.items():
            arr = src.array(name)
            raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            assert arr.tobytes() == raw.contiguous().numpy().tobytes(), name
            assert src.tensors[name].shape == tuple(t.shape)
        chunks = list(src.chunks("a", chunk=7))
        assert b"".join(chunks) == tensors["a"].numpy().tobytes() and len(chunks) == 7
    finally:
        src.close()


def test_writer_output_read_by_reference(tmp_path: Path) -> None:
    arrays = {"x": ("F32", np.arange(12, dtype=np.float32).reshape(3, 4)),
              "y": ("BF16", np.array([0x3F80, 0x4000], np.uint16)), "z": ("BOOL", np.array([True, False]))}
    path = write_model(tmp_path / "m.safetensors", arrays)
    assert_same_arrays(read_model(path), arrays)
    assert (path.stat().st_size - 8) % 8 == 0 or struct.unpack("<Q", path.read_bytes()[:8])[0] % 8 == 0


def test_state_dict_source() -> None:
    sd = {"w": torch.randn(2, 3), "b": torch.randn(3).to(torch.bfloat16), "n": torch.tensor(5)}
    src = state_dict_source(sd)
    assert src.tensors["w"].dtype == "F32" and src.tensors["b"].dtype == "BF16" and src.tensors["n"].shape == ()
    assert src.array("b").tobytes() == sd["b"].view(torch.int16).numpy().tobytes()
    with pytest.raises(FednodeError, match="not a tensor"):
        state_dict_source({"w": 1})
    with pytest.raises(FednodeError, match="no tensors"):
        state_dict_source({})
    with pytest.raises(FednodeError, match="unsupported dtype"):
        state_dict_source({"c": torch.zeros(2, dtype=torch.complex64)})


def test_pt_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(FednodeError, match="not a PyTorch state_dict"):
        open_model(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FednodeError, match="not a PyTorch state_dict"):
        open_model(tmp_path / "junk.pt")


def _file(tmp_path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> Path:
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    path = tmp_path / "f.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


BAD_HEADERS = {
    "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 16),
    "size mismatch": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 16),
    "past the end": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8),
    "negative dim": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}, 0),
    "float dim": ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, 8),
    "unknown dtype": ({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, 2),
    "missing key": ({"a": {"dtype": "F32", "shape": [2]}}, 8),
    "reversed offsets": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, 8),
    "list spec": ({"a": ["F32", [2], [0, 8]]}, 8),
    "list dtype": ({"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, 8),
    "string offsets": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, 8),
    "no tensors": ({"__metadata__": {"x": "y"}}, 0),
    "not an object": ([1, 2], 0),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_malformed_headers_rejected(tmp_path: Path, name: str) -> None:
    header, size = BAD_HEADERS[name]
    with pytest.raises(FednodeError) as exc:
        SafetensorsFile(_file(tmp_path, header, bytes(size))).close()
    assert "\n" not in str(exc.value)


def test_truncated_and_garbage_files_rejected(tmp_path: Path) -> None:
    for raw in [b"", b"\x01", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc"]:
        path = tmp_path / "g.safetensors"
        path.write_bytes(raw)
        with pytest.raises(FednodeError, match="not a safetensors file"):
            SafetensorsFile(path)
    with pytest.raises(FednodeError, match="no such file"):
        open_model(tmp_path / "missing.safetensors")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=False) | st.text(max_size=6)
    | st.sampled_from(["F32", "I64", "BOOL", "BF16"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "x"]), c,
                                                        max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=3), st.integers(0, 64))
def test_fuzzed_headers_parse_or_fail_cleanly(tmp_path: Path, header: dict, size: int) -> None:
    """Any JSON header either parses consistently or raises FednodeError (never another exception)."""
    try:
        src = SafetensorsFile(_file(tmp_path, header, bytes(size)))
    except FednodeError:
        return
    try:
        for name, info in src.tensors.items():
            assert len(src.array(name).tobytes()) == info.nbytes
    finally:
        src.close()


def test_float_offsets_rejected(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}
    with pytest.raises(FednodeError, match="inconsistent offsets"):
        SafetensorsFile(_file(tmp_path, header, bytes(8)))


_SPEC = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(("raw", "match"), [
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),  # json: RecursionError
    (json.dumps({"a": {**_SPEC, "shape": [2**64, 0], "data_offsets": [0, 0]}}).encode(), "too large"),
    (json.dumps({"a": {**_SPEC, "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}).encode(), "too large"),
    (json.dumps({"a": {**_SPEC, "shape": [True, 2]}}).encode(), "malformed shape"),
    (json.dumps({"a": {**_SPEC, "data_offsets": [False, 8]}}).encode(), "inconsistent offsets"),
    (json.dumps({"a": {**_SPEC, "data_offsets": [0, 8, 16]}}).encode(), "inconsistent offsets"),
    (json.dumps({"a": {**_SPEC, "data_offsets": {"0": 0, "1": 8}}}).encode(), "inconsistent offsets"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1' + b"0" * 5000 + b"]}}", "not a safetensors"),
    (json.dumps({"\ud800": _SPEC}).encode(), "not valid UTF-8"),
    (json.dumps({"a" * 1025: _SPEC}).encode(), "1..1024 characters"),
    (json.dumps({"a": _SPEC, "__metadata__": [1]}).encode(), "__metadata__"),
    (json.dumps({"a": {**_SPEC, "extra": 1}}).encode(), "malformed entry"),
], ids=["nested-100k", "dim-2^64", "dims-overflow", "dim-true", "offset-false", "three-offsets", "offsets-map",
        "5000-digits", "lone-surrogate", "long-name", "metadata-list", "extra-key"])
def test_hostile_headers_are_one_line_errors(tmp_path: Path, raw: bytes, match: str) -> None:
    """Each of these raised RecursionError, ValueError or got through to fail later (a 2**64 dimension hidden
    by a 0, a name no manifest can encode): now each is refused up front with one line."""
    with pytest.raises(FednodeError, match=match) as exc:
        SafetensorsFile(_file(tmp_path, None, bytes(8), raw_header=raw)).close()
    assert "\n" not in str(exc.value)


def test_a_hostile_header_is_one_cli_line(tmp_path: Path, cli) -> None:
    raw = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = _file(tmp_path, None, bytes(8), raw_header=raw)
    result = cli("repo", "create", "hostile", "--from", path, ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
