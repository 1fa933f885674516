"""Local training: run the user's script on the branch head, collect the new weights.

Two paths:

* PyTorch module (a ``.py`` file defining ``model()`` and ``data()``): fednode builds the
  model, loads the head into it (strictly: names and shapes must match), trains with its
  own loop on ``data()[0]`` and evaluates on ``data()[1]``, the node's own held-out split.
  Optional module attributes: ``batch_size`` (32), ``lr`` (0.05), ``optimizer(params)``
  (SGD), ``loss(outputs, targets)`` (cross entropy), ``evaluate(model, heldout) -> dict``.
  ``dp`` trains with DP-SGD through Opacus and records the spent epsilon.
* Any executable (anything else, or a ``.py`` without ``model``/``data``): run as
  ``SCRIPT HEAD.safetensors OUT.safetensors`` with $FEDNODE_EPOCHS, $FEDNODE_SEED and
  $FEDNODE_METRICS (where it writes a JSON object of metrics, ``samples`` included).

Training data is only ever touched inside the training process; what comes back is the
new weights and a few scalar metrics.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fednode import safejson
from fednode.errors import FednodeError


@dataclass(frozen=True)
class DPConfig:
    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise FednodeError("--dp epsilon must be a positive number")
        if not 0 < self.delta < 1:
            raise FednodeError("--dp-delta must be in (0, 1)")
        if not self.max_grad_norm > 0:
            raise FednodeError("--max-grad-norm must be positive")


@dataclass
class TrainResult:
    weights: Path  # a safetensors file with the trained state
    metrics: dict[str, float]
    samples: int
    epochs: int
    duration_s: float
    dp: dict[str, float] | None = None
    framework: str = "pytorch"
    extra: dict[str, Any] = field(default_factory=dict)

    def training_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "samples": self.samples,
            "epochs": self.epochs,
            "duration_s": round(self.duration_s, 3),
            "framework": self.framework,
        }
        if self.dp:
            info["dp"] = self.dp
        return info


MAX_METRICS_FILE = 1 << 20  # bytes of a script's metrics JSON read at most
MAX_ERROR = 300  # characters of the script's own error message in the one line we print


def script_error(exc: BaseException, script: Path, what: str = "training script failed") -> FednodeError:
    """One line for an exception the user's code raised: its type, its message's first line, and
    where: the innermost frame in the script itself (else the innermost frame), as ``file:line``."""
    frames = traceback.extract_tb(exc.__traceback__)
    try:
        target = script.resolve()
        own = [f for f in frames if Path(f.filename).resolve() == target]
    except OSError:
        own = []
    found = own or list(frames)
    frame = found[-1] if found else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame is not None else ""
    if isinstance(exc, SyntaxError) and exc.lineno:  # raised by the compiler: no frame in the script
        where = f" ({Path(exc.filename or script).name}:{exc.lineno})"
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    if isinstance(exc, SystemExit):
        message = f"the script called sys.exit({exc.code!r}) instead of returning"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > MAX_ERROR:
        text = text[:MAX_ERROR] + "..."
    return FednodeError(f"{what}: {type(exc).__name__}{': ' + text if text else ''}{where}")


def _raised_in(exc: BaseException, script: Path) -> bool:
    """Whether the script's own code is on the traceback (its OSError is its error, not ours)."""
    name = script.name
    return any(Path(f.filename).name == name for f in traceback.extract_tb(exc.__traceback__))


def _defines_model_and_data(path: Path) -> bool:
    """Whether a .py file defines ``model`` and ``data`` at top level (functions, classes,
    assignments or imports), read without running it: a plain script runs once, as an executable."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return {"model", "data"} <= names


def load_script(path: Path) -> ModuleType | None:
    """Import a .py training script; None when it is not a PyTorch-path module (it is not run then)."""
    if path.suffix != ".py":
        return None
    try:
        if not _defines_model_and_data(path):
            return None
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes in the source
        raise script_error(exc, path, f"training script {path.name} failed to import") from None
    spec = importlib.util.spec_from_file_location(f"fednode_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise FednodeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code (sys.exit too): report, don't crash
        raise script_error(exc, path, f"training script {path.name} failed to import") from None
    if callable(getattr(module, "model", None)) and callable(getattr(module, "data", None)):
        return module
    return None


def _progress(total_epochs: int, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
    )


def _evaluate(module: ModuleType, model, heldout, loss_fn) -> dict[str, float]:
    import torch

    if callable(getattr(module, "evaluate", None)):
        return {k: float(v) for k, v in module.evaluate(model, heldout).items()}
    loader = torch.utils.data.DataLoader(heldout, batch_size=256)
    total, correct, loss_sum = 0, 0, 0.0
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss_sum += float(loss_fn(out, y)) * len(y)
            if out.ndim == 2 and y.ndim == 1:
                correct += int((out.argmax(1) == y).sum())
            total += len(y)
    if total == 0:
        return {}
    metrics = {"loss": loss_sum / total}
    if correct or out.ndim == 2:
        metrics["accuracy"] = correct / total
    return metrics


def _names(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(model: Any, weights: Path) -> None:
    """Load ``weights`` into ``model`` strictly; a mismatch is one line naming the first missing,
    unexpected and differently shaped tensors."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    if not callable(getattr(model, "state_dict", None)) or not callable(getattr(model, "load_state_dict", None)):
        raise FednodeError(f"the script's model() returned a {type(model).__name__}, not a torch.nn.Module")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} model {list(own[k].shape)} vs repository {list(state[k].shape)}"
              for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = ([f"missing (in the model, not the repository): {_names(missing)}"] if missing else []) \
        + ([f"unexpected (in the repository, not the model): {_names(unexpected)}"] if unexpected else []) \
        + ([f"size mismatch: {_names(shapes, 2)}"] if shapes else [])  # fmt: skip
    if problems:
        raise FednodeError("the script's model does not match the repository's tensors: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def train_torch(
    module: ModuleType,
    head: Path,
    out: Path,
    epochs: int,
    seed: int = 0,
    dp: DPConfig | None = None,
    quiet: bool = False,
    script: Path | None = None,
) -> TrainResult:
    """Train ``module``'s model; whatever the user's code raises is one line (``script_error``)."""
    try:
        return _train_torch(module, head, out, epochs, seed, dp, quiet)
    except (Exception, SystemExit) as exc:  # sys.exit(0) in data() is no success either
        path = script or Path(module.__file__ or "script")
        if isinstance(exc, FednodeError | MemoryError) or (isinstance(exc, OSError) and not _raised_in(exc, path)):
            raise  # ours (a mismatch, a full disk) say what they are already
        raise script_error(exc, path) from None


def _train_torch(
    module: ModuleType, head: Path, out: Path, epochs: int, seed: int, dp: DPConfig | None, quiet: bool,
) -> TrainResult:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    start = time.perf_counter()
    model = module.model()
    load_weights(model, head)
    train_ds, heldout = module.data()
    batch_size = int(getattr(module, "batch_size", 32))
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=generator)
    opt = module.optimizer(model.parameters()) if callable(getattr(module, "optimizer", None)) else (
        torch.optim.SGD(model.parameters(), lr=float(getattr(module, "lr", 0.05)))
    )
    loss_fn = getattr(module, "loss", None) or torch.nn.functional.cross_entropy
    engine = None
    trained = model
    if dp is not None:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine()
            trained, opt, loader = engine.make_private_with_epsilon(
                module=model,
                optimizer=opt,
                data_loader=loader,
                target_epsilon=dp.epsilon,
                target_delta=dp.delta,
                epochs=epochs,
                max_grad_norm=dp.max_grad_norm,
            )
    last = float("nan")
    with _progress(epochs, quiet) as progress, warnings.catch_warnings():
        # Opacus' per-sample hooks warn on every first-layer backward; harmless here
        warnings.filterwarnings("ignore", message="Full backward hook")
        task = progress.add_task("train", total=epochs, loss=float("nan"))
        for _ in range(epochs):
            trained.train()
            running, count = 0.0, 0
            for x, y in loader:
                if len(y) == 0:  # Poisson sampling under DP can draw an empty batch
                    continue
                opt.zero_grad()
                loss = loss_fn(trained(x), y)
                loss.backward()
                opt.step()
                running += float(loss.detach()) * len(y)
                count += len(y)
            last = running / max(count, 1)
            progress.update(task, advance=1, loss=last)
    state = model.state_dict()  # Opacus wraps the same module: its parameters are trained in place
    metrics = _evaluate(module, model, heldout, loss_fn)
    metrics["train_loss"] = last
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    dp_info = None
    if engine is not None and dp is not None:
        dp_info = {
            "epsilon": float(engine.get_epsilon(dp.delta)),
            "target_epsilon": dp.epsilon,
            "delta": dp.delta,
            "max_grad_norm": dp.max_grad_norm,
        }
    return TrainResult(out, metrics, len(train_ds), epochs, time.perf_counter() - start, dp_info)


def train_exec(
    script: Path, head: Path, out: Path, epochs: int, seed: int = 0, timeout_s: float | None = None
) -> TrainResult:
    """Run an executable training script (any framework) on the head."""
    start = time.perf_counter()
    metrics_path = out.with_suffix(".metrics.json")
    cmd = [sys.executable, str(script)] if script.suffix == ".py" else [str(script.resolve())]
    if script.suffix != ".py" and not os.access(script, os.X_OK):
        raise FednodeError(f"{script} is not executable (chmod +x) and not a Python script")
    env = {**os.environ, "FEDNODE_EPOCHS": str(epochs), "FEDNODE_SEED": str(seed),
           "FEDNODE_METRICS": str(metrics_path)}
    try:
        proc = subprocess.run([*cmd, str(head), str(out)], env=env, timeout=timeout_s,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        raise FednodeError(f"{script} did not finish within {timeout_s} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        tail = lines[-1].strip()[:MAX_ERROR] if lines else "(no output on stderr)"
        raise FednodeError(f"training script {script.name} failed with exit code {proc.returncode}: {tail}"
                          f"{_where(lines, script)}")
    if not out.exists():
        raise FednodeError(f"{script} wrote no weights to its output path")
    metrics: dict[str, float] = {}
    samples = 0
    if metrics_path.exists():
        try:
            raw = safejson.loads(metrics_path.read_bytes()[:MAX_METRICS_FILE + 1])
            samples = int(raw.pop("samples", 0))
            metrics = {str(k): float(v) for k, v in raw.items()}
        except (ValueError, TypeError, AttributeError, OverflowError):  # OverflowError: int(1e999)
            raise FednodeError(f"{script} wrote invalid metrics JSON") from None
    return TrainResult(out, metrics, samples, epochs, time.perf_counter() - start, framework="executable")


_FRAME = re.compile(r'^\s*File "(.*)", line (\d+)')


def _where(stderr_lines: list[str], script: Path) -> str:
    """`` (script.py:N)`` from a Python traceback on stderr: its innermost frame in the script."""
    found = ""
    for line in stderr_lines:
        match = _FRAME.match(line)
        if match and Path(match.group(1)).name == script.name:
            found = f" ({script.name}:{match.group(2)})"
    return found


def run_training(
    script: Path, head: Path, epochs: int, seed: int = 0, dp: DPConfig | None = None, quiet: bool = False,
    workdir: Path | None = None,
) -> TrainResult:
    if not script.exists():
        raise FednodeError(f"no such training script: {script}")
    if epochs < 1:
        raise FednodeError("--epochs must be at least 1")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fednode-train-"))
    out = workdir / "trained.safetensors"
    module = load_script(script)
    if module is not None:
        return train_torch(module, head, out, epochs, seed, dp, quiet, script)
    if dp is not None:
        raise FednodeError("--dp needs the PyTorch path (a module defining model() and data())")
    return train_exec(script, head, out, epochs, seed)


def evaluate_file(script: Path, weights: Path) -> dict[str, float]:
    """Metrics of ``weights`` on the held-out split of a PyTorch-path script (the reviewer's data)."""
    module = load_script(script)
    if module is None:
        raise FednodeError(f"{script} must define model() and data() to evaluate")
    try:
        return _evaluate_file(module, weights)
    except (Exception, SystemExit) as exc:
        if isinstance(exc, FednodeError | MemoryError) or (isinstance(exc, OSError) and not _raised_in(exc, script)):
            raise
        raise script_error(exc, script, "evaluation script failed") from None


def _evaluate_file(module: ModuleType, weights: Path) -> dict[str, float]:
    import torch

    model = module.model()
    load_weights(model, weights)
    _, heldout = module.data()
    loss_fn = getattr(module, "loss", None) or torch.nn.functional.cross_entropy
    return _evaluate(module, model, heldout, loss_fn)
