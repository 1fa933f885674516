"""Recording updates: ``fednode commit`` (a model file) and ``fednode train`` (train, then commit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cli.context import (
    CASTS,
    ENCODINGS,
    commit_json,
    emit_json,
    get_node,
    get_repo,
    json_option,
    out,
    parse_metrics,
    positive_int,
    short,
    use_zk_keys,
    zk_keys_option,
)
from fednode.history import CommitResult
from fednode.tensors import encodings
from fednode.tensors.modelio import open_model
from fednode.workflows import committing

ENCODING_HELP = ("How updates are stored. xor (default) is lossless: every tensor bit for bit, a byte-grouped XOR "
                 "against the parent, zstd-compressed. LOSSY, only when chosen, with the max absolute and relative "
                 "error of each float tensor printed: fixed (rounds to the repository grid 2**-scale_bits), fp16, "
                 "int8, topk (keeps only the largest changes).")

encoding_option = click.option("--encoding", type=ENCODINGS, default=encodings.DEFAULT, show_default=True,
                               help=ENCODING_HELP)
topk_option = click.option("--topk-fraction", type=float, default=0.01, show_default=True,
                           help="Share of values kept by topk.")
no_compress_option = click.option("--no-compress", is_flag=True, help="Do not zstd-compress update payloads.")


def _json_float(x: float) -> float | str:
    return x if x != float("inf") else "inf"


def storage_json(result: CommitResult) -> dict[str, Any]:
    """What a commit stored and, for a lossy encoding, how far each float tensor moved."""
    return {"new_bytes": result.new_bytes, "encoding": result.encoding, "lossless": result.lossless,
            "max_quantization_error": result.max_quantization_error,
            "errors": {n: {"max_abs": e.max_abs, "max_rel": _json_float(e.max_rel)}
                       for n, e in sorted(result.errors.items())}}


def print_storage(result: CommitResult) -> None:
    if result.encoding not in encodings.LOSSY:
        out.print(f"{result.new_bytes} new bytes stored; lossless ({result.encoding}): every tensor bit for bit")
        return
    worst = max((e.max_rel for e in result.errors.values()), default=0.0)
    out.print(f"{result.new_bytes} new bytes stored; LOSSY encoding {result.encoding}: max abs error "
              f"{result.max_quantization_error:.3g}, max relative error {worst:.3g}")
    if result.errors:
        table = Table("tensor", "max abs error", "max rel error")
        for name, e in sorted(result.errors.items()):
            table.add_row(name, f"{e.max_abs:.3g}", f"{e.max_rel:.3g}")
        out.print(table)


@click.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="The model: .safetensors, .pt/.pth/.bin, or a sharded checkpoint directory.")
@click.option("--key", "model_key", default=None, help="Entry of a PyTorch checkpoint that holds the state_dict.")
@click.option("--cast", "cast", type=CASTS, default=None,
              help="Convert float tensors to this dtype (a dtype change is refused without it).")
@click.option("-m", "--message", required=True)
@click.option("-b", "--branch", default=None, help="Branch to commit on (default: the current branch).")
@click.option("--metric", "metrics", multiple=True, help="NAME=VALUE, repeatable.")
@click.option("--samples", "samples_text", default=None, metavar="N",
              help="Training samples behind this update (weights a `merge --weights samples`).")
@encoding_option
@topk_option
@no_compress_option
@zk_keys_option
@json_option
@click.pass_context
def commit(
    ctx: click.Context, repo_name: str | None, source: Path, model_key: str | None, cast: str | None, message: str,
    branch: str | None, metrics: tuple[str, ...], samples_text: str | None, encoding: str, topk_fraction: float,
    no_compress: bool, zk_keys: Path | None, as_json: bool,
) -> None:
    """Commit a model file as an update on a branch ("nothing to commit" when it equals the head).

    In a repository that requires update proofs, the change must lie on the repository's grid
    (else it is refused: 'fednode train' rounds onto it) and within its bounds; the proof is made here."""
    node = get_node(ctx)
    use_zk_keys(node, zk_keys)
    info = get_repo(node, repo_name)
    parsed = parse_metrics(metrics)
    declared = positive_int(samples_text, "--samples") if samples_text is not None else None
    model = open_model(source, model_key, cast)
    try:
        committing.check_commit_source(node.history, node.history.branch_head(
            info, branch or node.history.current_branch(info)), model)
        result = node.history.commit(info, model, message, branch=branch, metrics=parsed, encoding=encoding,
                                     topk_fraction=topk_fraction, compress=not no_compress,
                                     info={"samples": declared} if declared is not None else None)
    finally:
        model.close()
    if as_json:
        emit_json({**commit_json(result.cid, result.commit), **storage_json(result)})
        return
    out.print(f"[{branch or node.history.current_branch(info)} {short(result.cid)}] {message}", markup=False)
    print_storage(result)


@click.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.option("--script", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A PyTorch module with model() and data(), or any executable (HEAD.safetensors OUT.safetensors).")
@click.option("-b", "--branch", default=None, help="Branch to train on (default: the current branch).")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dp", "dp_epsilon", type=float, default=None, help="Train with DP-SGD to this epsilon (Opacus).")
@click.option("--dp-delta", type=float, default=1e-5, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="DP-SGD clipping bound.")
@click.option("-m", "--message", default=None)
@encoding_option
@topk_option
@no_compress_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@zk_keys_option
@json_option
@click.pass_context
def train(ctx: click.Context, repo_name: str | None, script: Path, branch: str | None, epochs: int, seed: int,
          dp_epsilon: float | None, dp_delta: float, max_grad_norm: float, message: str | None, encoding: str,
          topk_fraction: float, no_compress: bool, quiet: bool, zk_keys: Path | None, as_json: bool) -> None:
    """Train locally from the branch head; commit the result as an update on that branch.

    In a repository that requires update proofs, the trained weights are rounded onto its grid before
    they are committed (the stored bytes are then exactly what is committed to and proven), and the
    update must be within its bounds."""
    from fednode.workflows.training import DPConfig

    node = get_node(ctx)
    use_zk_keys(node, zk_keys)
    info = get_repo(node, repo_name)
    dp = DPConfig(dp_epsilon, dp_delta, max_grad_norm) if dp_epsilon is not None else None
    commit_result, trained = committing.train(node.history, info, script, branch, epochs, seed, dp,
                                              quiet or as_json, message,
                                              dict(encoding=encoding, topk_fraction=topk_fraction,
                                                   compress=not no_compress))
    if as_json:
        emit_json({**commit_json(commit_result.cid, commit_result.commit), **storage_json(commit_result)})
        return
    metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(trained.metrics.items()))
    out.print(f"[{branch or node.history.current_branch(info)} {short(commit_result.cid)}] "
              f"{commit_result.commit.message}", markup=False)
    out.print(f"{trained.samples} samples, {epochs} epoch(s), {trained.duration_s:.1f} s; {metrics}")
    print_storage(commit_result)
    if trained.dp:
        out.print(f"DP-SGD: epsilon spent {trained.dp['epsilon']:.3f} (delta {trained.dp['delta']:g})")


COMMANDS = [commit, train]
