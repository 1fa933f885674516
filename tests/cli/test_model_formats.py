"""Models as users have them, through the real CLI: sharded Hugging Face checkpoints, nested PyTorch
checkpoints (--key), explicit dtype changes (--cast), checkout into a directory, diff against a file,
and unknown file types refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    assert_cli_refuses,
    assert_same_arrays,
    model_arrays,
    perturb,
    read_model,
    write_model,
)
from safetensors.numpy import save_file

ACCEPTED = "a .safetensors file, a PyTorch .pt/.pth/.bin state_dict, or a directory with model.safetensors.index.json"


refused = assert_cli_refuses


def write_sharded(directory: Path, arrays: dict[str, tuple[str, np.ndarray]], shards: list[list[str]],
                  weight_map: dict[str, str] | None = None) -> Path:
    """A Hugging Face sharded checkpoint written with the ``safetensors`` package: shard files
    model-0000i-of-0000n.safetensors and model.safetensors.index.json."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    files = {}
    for i, names in enumerate(shards, 1):
        shard = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({name: arrays[name][1] for name in names}, str(directory / shard), metadata={"format": "pt"})
        files.update(dict.fromkeys(names, shard))
    total = sum(arrays[name][1].nbytes for names in shards for name in names)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map if weight_map is not None else files}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


def torch_state(arrays: dict[str, tuple[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(arr.copy()) for name, (_, arr) in arrays.items()}


SHARDS = [["layer1.weight", "layer1.bias"], ["layer2.weight", "steps"]]


# --- sharded checkpoints -------------------------------------------------------------------------------------


def test_sharded_checkpoint_create_commit_checkout(cli, home: Path, tmp_path: Path) -> None:
    v0, v1 = model_arrays(0), perturb(model_arrays(0), 1)
    created = json.loads(cli("repo", "create", "m", "--from", write_sharded(tmp_path / "v0", v0, SHARDS),
                             "--json").stdout)
    cli("checkout", created["genesis"], "--out", tmp_path / "g.safetensors")
    assert_same_arrays(read_model(tmp_path / "g.safetensors"), v0)
    # the index file itself may be given too; shards split differently from the first commit's
    d1 = write_sharded(tmp_path / "v1", v1, [["layer1.weight"], ["layer1.bias", "steps"], ["layer2.weight"]])
    cli("commit", "--from", d1 / "model.safetensors.index.json", "-m", "sharded update")
    cli("checkout", "main", "--out", tmp_path / "c1.safetensors")
    assert_same_arrays(read_model(tmp_path / "c1.safetensors"), v1)
    diff = json.loads(cli("diff", "main", "--file", d1, "--json").stdout)
    assert {t["status"] for t in diff["tensors"]} == {"same"}


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing_shard", ("model-00002-of-00002.safetensors", "missing")),
        ("unlisted_tensor", ("holds tensor 'steps'", "does not list it")),
        ("listed_elsewhere", ("holds tensor 'steps'", "puts it in")),
        ("listed_not_present", ("lists tensor 'ghost'", "not in")),
        ("twice", ("in two shards",)),
        ("escape", ("names the shard", "../")),
        ("not_json", ("not a sharded safetensors index", "not valid JSON")),
        ("no_weight_map", ("no weight_map",)),
        ("bad_shard", ("not a safetensors file",)),
        ("empty_dir", ("is a directory without model.safetensors.index.json", "give")),
    ],
)
def test_broken_sharded_checkpoints_refused(cli, home: Path, tmp_path: Path, case: str,
                                            needles: tuple[str, ...]) -> None:
    v0 = model_arrays(0)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    v1 = perturb(v0, 1)
    d = tmp_path / case
    names = {"layer1.weight": "model-00001-of-00002.safetensors", "layer1.bias": "model-00001-of-00002.safetensors",
             "layer2.weight": "model-00002-of-00002.safetensors", "steps": "model-00002-of-00002.safetensors"}
    if case == "missing_shard":
        write_sharded(d, v1, SHARDS)
        (d / "model-00002-of-00002.safetensors").unlink()
    elif case == "unlisted_tensor":
        write_sharded(d, v1, SHARDS, {k: v for k, v in names.items() if k != "steps"})
    elif case == "listed_elsewhere":
        write_sharded(d, v1, SHARDS, {**names, "steps": "model-00001-of-00002.safetensors"})
    elif case == "listed_not_present":
        write_sharded(d, v1, SHARDS, {**names, "ghost": "model-00001-of-00002.safetensors"})
    elif case == "twice":
        write_sharded(d, v1, [["layer1.weight", "layer1.bias", "steps"], ["layer2.weight", "steps"]])
    elif case == "escape":
        write_sharded(d, v1, SHARDS, {**names, "steps": "../v0.safetensors"})
    elif case == "not_json":
        write_sharded(d, v1, SHARDS)
        (d / "model.safetensors.index.json").write_text("{not json")
    elif case == "no_weight_map":
        write_sharded(d, v1, SHARDS)
        (d / "model.safetensors.index.json").write_text('{"metadata": {}}')
    elif case == "bad_shard":
        write_sharded(d, v1, SHARDS)
        (d / "model-00001-of-00002.safetensors").write_bytes(b"\x00" * 64)
    else:
        d.mkdir()
    refused(cli, home, "commit", "--from", d, "-m", "x", needles=needles)
    refused(cli, home, "repo", "create", "fresh", "--from", d, needles=needles)


# --- nested PyTorch checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_nested_checkpoint_with_key(cli, home: Path, tmp_path: Path, key: str) -> None:
    v0, v1 = model_arrays(0), perturb(model_arrays(0), 1)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({key: torch_state(v0), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3}, ckpt)
    refused(cli, home, "repo", "create", "m", "--from", ckpt,
            needles=("nests its state_dict", f"--key {key}", "optimizer", "epoch"))
    refused(cli, home, "repo", "create", "m", "--from", ckpt, "--key", "weights",
            needles=("no 'weights' (--key) entry", key, "optimizer"))
    refused(cli, home, "repo", "create", "m", "--from", ckpt, "--key", "epoch", needles=("'epoch' is a int",))
    cli("repo", "create", "m", "--from", ckpt, "--key", key)
    torch.save({key: torch_state(v1), "epoch": 4}, tmp_path / "ckpt1.pth")
    cli("commit", "--from", tmp_path / "ckpt1.pth", "--key", key, "-m", "epoch 4")
    cli("checkout", "main", "--out", tmp_path / "out.safetensors")
    assert_same_arrays(read_model(tmp_path / "out.safetensors"), v1)
    diff = json.loads(cli("diff", "main~1", "--file", tmp_path / "ckpt1.pth", "--key", key, "--json").stdout)
    assert {t["name"] for t in diff["tensors"] if t["status"] == "changed"} == {
        "layer1.weight", "layer1.bias", "layer2.weight"}
    # --key is for torch files only; a plain state_dict needs none
    plain = write_model(tmp_path / "p.safetensors", perturb(v1, 2))
    refused(cli, home, "commit", "--from", plain, "--key", key, "-m", "x", needles=("--key is for PyTorch",))
    torch.save(torch_state(perturb(v1, 3)), tmp_path / "plain.bin")
    cli("commit", "--from", tmp_path / "plain.bin", "-m", "plain state_dict")


def test_nested_key_path(cli, tmp_path: Path) -> None:
    v0 = model_arrays(0)
    torch.save({"ema": {"model": torch_state(v0)}, "step": 10}, tmp_path / "c.pt")
    cli("repo", "create", "m", "--from", tmp_path / "c.pt", "--key", "ema/model")
    cli("checkout", "main", "--out", tmp_path / "o.safetensors")
    assert_same_arrays(read_model(tmp_path / "o.safetensors"), v0)


# --- --cast ---------------------------------------------------------------------------------------------------


def test_dtype_change_needs_cast(cli, home: Path, tmp_path: Path) -> None:
    v0 = model_arrays(0)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    v1 = perturb(v0, 1)
    half = {n: ("F16", a.astype(np.float16)) if d == "F32" else (d, a) for n, (d, a) in v1.items()}
    path = write_model(tmp_path / "half.safetensors", half)
    refused(cli, home, "commit", "--from", path, "-m", "half", needles=("F16", "parent has F32", "--cast F32"))
    bad = cli("commit", "--from", path, "-m", "half", "--cast", "F8", ok=False)  # click's usage error
    assert bad.exit_code == 2 and "'--cast'" in bad.stderr and "Traceback" not in bad.output
    cli("commit", "--from", path, "-m", "half, cast back", "--cast", "f32")
    cli("checkout", "main", "--out", tmp_path / "o.safetensors")
    want = {n: ("F32", a.astype(np.float32)) if d == "F16" else (d, a) for n, (d, a) in half.items()}
    assert_same_arrays(read_model(tmp_path / "o.safetensors"), want)
    # a repository created in BF16 from an F32 file: round to nearest even, integers untouched
    cli("repo", "create", "b", "--from", write_model(tmp_path / "v0b.safetensors", v0), "--cast", "BF16")
    cli("checkout", "b:main", "--out", tmp_path / "b.safetensors")
    got = read_model(tmp_path / "b.safetensors")
    assert got["steps"][0] == "I64" and got["layer1.weight"][0] == "BF16"
    expect = torch.from_numpy(v0["layer1.weight"][1]).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(got["layer1.weight"][1], expect)
    # values the target dtype cannot hold are refused, not turned into infinities
    big = {**v1, "layer1.bias": ("F32", np.full(16, 1e30, np.float32))}
    refused(cli, home, "repo", "create", "h", "--from", write_model(tmp_path / "big.safetensors", big),
            "--cast", "F16", needles=("too large for F16",))


# --- checkout into a directory, unknown extensions -----------------------------------------------------------------


def test_checkout_into_a_directory(cli, home: Path, tmp_path: Path) -> None:
    v0 = model_arrays(0)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    out = cli("checkout", "main", "--out", f"{tmp_path}/new/dir/").stdout
    assert "new/dir/model.safetensors" in out
    assert_same_arrays(read_model(tmp_path / "new" / "dir" / "model.safetensors"), v0)
    (tmp_path / "existing").mkdir()
    cli("checkout", "main", "--out", tmp_path / "existing")
    assert_same_arrays(read_model(tmp_path / "existing" / "model.safetensors"), v0)
    cli("checkout", "main", "--out", tmp_path / "pytorch_model.bin")
    loaded = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert np.array_equal(loaded["layer1.weight"].numpy(), v0["layer1.weight"][1])
    for name in ("o.npy", "o.onnx", "noext"):
        refused(cli, home, "checkout", "main", "--out", tmp_path / name, needles=("unknown model file type",
                                                                                 ".safetensors", "DIR/"))
        assert not (tmp_path / name).exists()
    (tmp_path / "afile").write_text("x")
    refused(cli, home, "checkout", "main", "--out", f"{tmp_path}/afile/", needles=("not a directory",))


@pytest.mark.parametrize("name", ["model.npz", "model.onnx", "model.gguf", "weights", "model.json"])
def test_unknown_model_files_refused(cli, home: Path, tmp_path: Path, name: str) -> None:
    v0 = model_arrays(0)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    path = tmp_path / name
    write_model(path, perturb(v0, 1))  # safetensors bytes under another name: still not guessed
    refused(cli, home, "commit", "--from", path, "-m", "x", needles=("unknown model file type", ACCEPTED))
    refused(cli, home, "repo", "create", "n", "--from", path, needles=("unknown model file type",))


def test_diff_against_a_file(cli, home: Path, tmp_path: Path) -> None:
    v0 = model_arrays(0)
    cli("repo", "create", "m", "--from", write_model(tmp_path / "v0.safetensors", v0))
    v1 = perturb(v0, 1, names=("layer2.weight",))
    path = write_model(tmp_path / "v1.safetensors", v1)
    rows = {t["name"]: t for t in json.loads(cli("diff", "main", "--file", path, "--json").stdout)["tensors"]}
    assert {n for n, t in rows.items() if t["status"] == "changed"} == {"layer2.weight"}
    a, b = v0["layer2.weight"][1].astype(np.float64), v1["layer2.weight"][1].astype(np.float64)
    assert rows["layer2.weight"]["l2"] == pytest.approx(float(np.linalg.norm(b - a)))
    assert rows["layer2.weight"]["changed_fraction"] == pytest.approx(float((a != b).mean()))
    extra = write_model(tmp_path / "x.safetensors", {**v1, "head.bias": ("F32", np.zeros(2, np.float32))})
    rows = {t["name"]: t["status"]
            for t in json.loads(cli("diff", "main", "--file", extra, "--json").stdout)["tensors"]}
    assert rows["head.bias"] == "added"
    assert "layer2.weight" in cli("diff", "main", "--file", path).stdout
    refused(cli, home, "diff", "main", needles=("diff A --file PATH",))
    refused(cli, home, "diff", "main", "main", "--file", path, needles=("diff A B",))
    refused(cli, home, "diff", "main", "main", "--key", "model", needles=("--key and --cast are for --file",))
