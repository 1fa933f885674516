"""``make demo``: a walkthrough of fednode's history on one node, on real data.

Three "hospitals" hold disjoint, non-IID slices of scikit-learn's bundled
breast-cancer data set (569 patients). Each trains the shared model locally on
its own branch; only the weights become commits. The walkthrough runs the real
``fednode`` command line in a throwaway node home and prints every command.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    print(f"\n$ fednode {shlex.join(args)}", flush=True)
    env = {**os.environ, "FEDNODE_HOME": str(home), "COLUMNS": "110"}
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo step failed: fednode {shlex.join(args)}")
    return proc


def hospital_splits(seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Non-IID split: sorted by tumour radius, so each hospital sees a different population."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, train = order[:114], order[114:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = ((x - mean) / std).astype(np.float32)
    train = train[np.argsort(x[train, 0], kind="stable")]
    parts = np.array_split(train, 3)
    return [(x[p], y[p].astype(np.int64)) for p in parts], (x[test], y[test].astype(np.int64))


def make_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def train_local(model, x: np.ndarray, y: np.ndarray, epochs: int = 20) -> float:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for i in range(0, len(yt), 32):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[i : i + 32]), yt[i : i + 32])
            loss.backward()
            opt.step()
    return float(loss)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def save(model, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def main() -> None:
    from safetensors.torch import load_file

    work = Path(tempfile.mkdtemp(prefix="fednode-demo-"))
    home = work / "home"
    print(f"fednode demo: node home {home}")
    run(home, "init")
    run(home, "id")
    model = make_model()
    save(model, work / "genesis.safetensors")
    run(home, "repo", "create", "cancer", "--from", str(work / "genesis.safetensors"), "-m", "untrained MLP 30-16-2")
    splits, (xt, yt) = hospital_splits()
    for i, (x, y) in enumerate(splits):
        branch = f"hospital-{i + 1}"
        run(home, "branch", branch, "main")
        local = make_model()
        local.load_state_dict(load_file(str(work / "genesis.safetensors")))
        loss = train_local(local, x, y)
        acc = accuracy(local, xt, yt)
        save(local, work / f"{branch}.safetensors")
        run(home, "commit", "cancer", "--branch", branch, "--from", str(work / f"{branch}.safetensors"),
            "-m", f"local training on {len(y)} patients", "--metric", f"loss={loss:.4f}",
            "--metric", f"accuracy={acc:.4f}")
    run(home, "log", "cancer", "--all")
    run(home, "show", "hospital-1")
    run(home, "diff", "main", "hospital-1")
    run(home, "tag", "baseline", "main")
    run(home, "checkout", "hospital-2", "--out", str(work / "checkout.safetensors"))
    # one more round on hospital-1, then undo it with a revert (a new commit; history is kept)
    local = make_model()
    local.load_state_dict(load_file(str(work / "checkout.safetensors")))
    train_local(local, *splits[0], epochs=5)
    save(local, work / "round2.safetensors")
    run(home, "commit", "cancer", "--branch", "hospital-1", "--from", str(work / "round2.safetensors"),
        "-m", "second round (to be reverted)")
    run(home, "revert", "hospital-1~1", "--branch", "hospital-1")
    run(home, "log", "cancer", "hospital-1")
    run(home, "verify", "hospital-1")
    run(home, "branch", "-d", "hospital-3")
    run(home, "gc")
    run(home, "fsck")
    print("\nbad input is refused with a one-line error and nothing stored:")
    run(home, "show", "no-such-rev", check=False)
    run(home, "commit", "cancer", "--from", "/etc/hostname", "-m", "not a model", check=False)
    print(f"\ndemo finished; node home kept at {home}")


if __name__ == "__main__":
    main()
