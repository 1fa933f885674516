"""Combining updates: ``fednode merge`` and, before it, ``fednode review``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from cli.context import (
    STRATEGIES,
    WEIGHTINGS,
    commit_json,
    emit_json,
    get_node,
    get_repo,
    json_option,
    out,
    parse_params,
    repo_option,
    resolve,
    short,
    use_zk_keys,
    zk_keys_option,
)


@click.command()
@click.argument("branches", nargs=-1, required=True)
@click.option("--strategy", type=STRATEGIES, default="fedavg", show_default=True,
              help="Aggregation strategy. Defaults: trimmed-mean trims max(floor(trim_fraction*n), min_trim) per "
                   "side, trim_fraction=0.1, min_trim=1 (needs 3+ inputs); median min_inputs=3; krum/multi-krum "
                   "byzantine=1 (needs 5+ inputs), byzantine=None (most tolerated) needs min_byzantine=1, "
                   "multi-krum m=n-byzantine.")
@click.option("--param", "params", multiple=True,
              help="Strategy parameter NAME=VALUE (e.g. byzantine=1, trim=2, min_trim=0, min_inputs=1).")
@click.option("--weights", "weighting", type=WEIGHTINGS, default="samples",
              show_default=True, help="samples: each input weighs the training samples it declares since the "
              "merge base (train, or commit --samples N), each sample counted once across rounds.")
@click.option("--into", default=None, help="Branch that receives the merge (default: the current branch).")
@click.option("-m", "--message", default=None)
@repo_option
@zk_keys_option
@json_option
@click.pass_context
def merge(ctx: click.Context, branches: tuple[str, ...], strategy: str, params: tuple[str, ...], weighting: str,
          into: str | None, message: str | None, repo_name: str | None, zk_keys: Path | None, as_json: bool) -> None:
    """Merge BRANCH... (N-way, exact): merged = base + aggregate(deltas from the merge base).

    In a repository whose policy names a remainder key, a FedAvg merge is proven here (|r_i| <= W/2: the
    rounding) with the remainder keys beside the proving keys (--zk-keys DIR: DIR/remainder)."""
    from fednode.workflows import merging

    node = get_node(ctx)
    use_zk_keys(node, zk_keys)
    info = get_repo(node, repo_name)
    outcome = merging.merge(node.history, info, list(branches), into, strategy, parse_params(params), weighting,
                            message)
    target = into or node.history.current_branch(info)
    if outcome.result is None:
        if as_json:
            emit_json({"fast_forward": str(outcome.fast_forward)})
        else:
            out.print(f"fast-forward {target} to {short(outcome.fast_forward)}")
        return
    result = outcome.result
    if as_json:
        emit_json(commit_json(result.cid, result.commit))
        return
    out.print(f"[{target} {short(result.cid)}] {result.commit.message}", markup=False)
    out.print(f"base {short(outcome.base)}; inputs " + ", ".join(
        f"{short(c)} (w={w})" for c, w in zip(outcome.inputs, outcome.weights, strict=True)))


@click.command()
@click.argument("rev")
@click.option("--into", default=None, help="Branch the update would be merged into (default: current).")
@click.option("--eval", "eval_script", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="PyTorch module whose data()[1] is the reviewer's held-out data.")
@repo_option
@json_option
@click.pass_context
def review(ctx: click.Context, rev: str, into: str | None, eval_script: Path | None, repo_name: str | None,
           as_json: bool) -> None:
    """What merging REV would do: delta norms, changed fraction, metrics before/after, anomaly flags.

    \b
    Flags NaN/Inf, and an update L2 norm over 10x any of: the median of past update norms (3+ of
    them), the median of the other open updates (branches, remotes, proposals not yet merged),
    or the base model's own norm (float tensors)."""
    from fednode.workflows.review import review as run_review

    node = get_node(ctx)
    info, cid = resolve(node, rev, repo_name)
    target = node.history.branch_head(info, into or node.history.current_branch(info))
    result = run_review(node.history, info, cid, target, eval_script)
    if as_json:
        emit_json(result.to_json())
        return
    out.print(f"review {short(cid)} into {into or node.history.current_branch(info)} "
              f"(base {short(result.base)})", markup=False)
    table = Table("tensor", "status", "L2 change", "relative", "changed")
    for t in result.tensors:
        table.add_row(t["name"], t["status"], f"{t['l2']:.4g}", f"{t['relative']:.3g}",
                      f"{t['changed_fraction']:.1%}")
    out.print(table)
    median = f"{result.history_median_l2:.4g}" if result.history_median_l2 is not None else "n/a"
    peers = f"{result.peer_median_l2:.4g} of {result.peers}" if result.peer_median_l2 is not None else "n/a"
    out.print(f"update L2 norm {result.update_l2:.4g} (history median {median}, other open updates' "
              f"median {peers}, base norm {result.base_l2:.4g})", markup=False)
    for key in sorted(set(result.before) | set(result.after)):
        b, a = result.before.get(key, float("nan")), result.after.get(key, float("nan"))
        out.print(f"{key:12} before {b:.4f}  after {a:.4f}  ({a - b:+.4f})")
    for flag in result.flags:
        out.print(f"[bold red]FLAG[/] {flag}")
    if not result.flags:
        out.print("no anomalies found")


COMMANDS = [merge, review]
