"""``make demo``: the network walkthrough (fednode/demo/network.py); ``--local``: one node's history.

``python -m fednode.demo`` runs a devchain and three hospital daemons on 127.0.0.1 and three
federated rounds (see ``fednode.demo.network``). ``python -m fednode.demo --local`` runs the
single-node walkthrough below: fednode's history commands on real data.

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


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    print(f"\n$ fednode {shlex.join(args)}", flush=True)
    env = {**os.environ, "FEDNODE_HOME": str(home), "COLUMNS": "110"}
    proc = subprocess.run([sys.executable, "-m", "cli", *args], env=env, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo step failed: fednode {shlex.join(args)}")
    return proc


def global_accuracy(path: Path) -> float:
    """The repository owner's own check: accuracy on the global held-out test set."""
    import torch
    from safetensors.torch import load_file

    from fednode.examples import cancer_torch
    from fednode.examples.cancer_data import test_set

    model = cancer_torch.model()
    model.load_state_dict(load_file(str(path)))
    x, y = test_set()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def local() -> None:
    import torch
    from safetensors.torch import save_file

    from fednode.examples import cancer_torch

    examples = Path(__file__).resolve().parent.parent / "examples"  # fednode/examples
    torch_script, numpy_script = examples / "cancer_torch.py", examples / "cancer_numpy.py"
    work = Path(tempfile.mkdtemp(prefix="fednode-demo-"))
    home = work / "home"
    print(f"fednode demo: node home {home}")
    run(home, "init")
    run(home, "id")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in cancer_torch.model().state_dict().items()},
              str(work / "genesis.safetensors"))
    run(home, "repo", "create", "cancer", "--from", str(work / "genesis.safetensors"), "-m", "untrained MLP 30-16-2")
    for site in (1, 2, 3):
        run(home, "branch", f"hospital-{site}", "main")
    for rnd in range(1, 4):
        print(f"\n=== round {rnd}: each hospital trains on its own patients; only weights are committed ===")
        for site in (1, 2, 3):
            os.environ["FEDNODE_SITE"] = str(site)
            branch = f"hospital-{site}"
            if rnd > 1:
                run(home, "merge", "main", "--into", branch)  # fast-forward to the merged model
            script = numpy_script if site == 2 else torch_script  # hospital 2 uses no PyTorch at all
            extra = ["--dp", "3.0"] if site == 3 else []  # hospital 3 trains with differential privacy
            run(home, "train", "cancer", "--script", str(script), "-b", branch, "--epochs", "5", "--quiet",
                "--seed", str(rnd), *extra)
        if rnd == 1:
            os.environ["FEDNODE_SITE"] = "1"
            run(home, "review", "hospital-2", "--eval", str(torch_script))
        run(home, "merge", "hospital-1", "hospital-2", "hospital-3", "--strategy", "fedavg", "--weights", "samples")
        run(home, "checkout", "main", "--out", str(work / "main.safetensors"))
        print(f"global test accuracy of the merged model after round {rnd}: "
              f"{global_accuracy(work / 'main.safetensors'):.3f}")
    run(home, "log", "cancer", "--all", "-n", "12")
    run(home, "show", "main")
    run(home, "diff", "main~1", "main")
    run(home, "tag", "v1", "main")
    run(home, "verify", "main")
    print("\n=== a bad update: revert it (a new commit; history is kept) ===")
    run(home, "commit", "cancer", "--from", str(work / "genesis.safetensors"), "-m", "accidental reset",
        "--encoding", "int8")
    run(home, "revert", "main~1")
    run(home, "log", "cancer", "main", "-n", "3")
    run(home, "branch", "-d", "hospital-3")
    run(home, "gc")
    run(home, "fsck")
    print("\nbad input is refused with a one-line error and nothing stored:")
    run(home, "show", "no-such-rev", check=False)
    run(home, "commit", "cancer", "--from", "/etc/hostname", "-m", "not a model", check=False)
    run(home, "merge", "hospital-1", "hospital-2", "--strategy", "mean-of-vibes", check=False)
    print(f"\ndemo finished; node home kept at {home}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fednode.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="the single-node history walkthrough instead")
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1:
        parser.error("--epochs and --rounds must be at least 1")
    if args.local:
        local()
        return 0
    from fednode.demo.network import run as run_network

    return run_network(args.epochs, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
