"""Repositories: ``fednode repo create|list|use|publish|unpublish``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from cli.context import CASTS, emit_json, get_node, get_repo, json_option, out, repo_option, use_zk_keys, zk_keys_option
from fednode.errors import FednodeError
from fednode.history import RepoInfo, repo_id_text
from fednode.tensors.modelio import open_model

if TYPE_CHECKING:
    from fednode.chain.anchoring import Anchorer
    from fednode.node import Node
    from protocol.multiformats import CID


@click.group()
def repo() -> None:
    """Create, list and select repositories."""


@repo.command("create")
@click.argument("name")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="Initial weights: .safetensors, .pt/.pth/.bin, or a sharded checkpoint directory.")
@click.option("--key", "model_key", default=None, help="Entry of a PyTorch checkpoint that holds the state_dict.")
@click.option("--cast", "cast", type=CASTS, default=None, help="Convert float tensors to this dtype.")
@click.option("-m", "--message", default="initial weights")
@click.option("--scale-bits", type=int, default=None, help="Grid 2**-N of the lossy --encoding fixed|topk.")
@click.option("--snapshot-interval", type=int, default=None, help="Store a full snapshot every N deltas.")
@click.option("--private/--public", "private", default=True,
              help="Private (the default): only the owner and its members read the repository. "
                   "Public: anyone may; a private one can be published later, never the reverse.")
@click.option("--require-proof", "keys_dir", default=None, type=click.Path(path_type=Path), metavar="KEYDIR",
              help="Every update must carry a proof (keys of 'fednode zk setup' in KEYDIR) that its change is "
                   "within --norm-bound; fixed for good in the genesis. Needs --norm-bound. With remainder keys in "
                   "KEYDIR/remainder, every FedAvg merge must also prove its rounding.")
@click.option("--norm-bound", "norm_bound", type=float, default=None, metavar="B",
              help="With --require-proof: the largest L2 norm of an update's change, in weight units.")
@json_option
@click.pass_context
def repo_create(
    ctx: click.Context, name: str, source: Path, model_key: str | None, cast: str | None, message: str,
    scale_bits: int | None, snapshot_interval: int | None, private: bool, keys_dir: Path | None,
    norm_bound: float | None, as_json: bool,
) -> None:
    """Create repository NAME from a model file (its genesis commit)."""
    if (keys_dir is None) != (norm_bound is None):
        raise FednodeError("--require-proof KEYDIR and --norm-bound B go together (nothing was created)")
    node = get_node(ctx)
    visibility = "private" if private else "public"
    model = open_model(source, model_key, cast)
    policy = None
    try:
        zk_entry = None
        if keys_dir is not None and norm_bound is not None:
            from fednode.workflows import zkpolicy  # numpy and the zk stack: only when asked

            zk_entry, policy = zkpolicy.make_policy(keys_dir, norm_bound, model)
        info, result = node.create_repo(name, model, message, scale_bits, snapshot_interval, visibility, zk_entry)
    finally:
        model.close()
    proof = None if policy is None else {
        "key": policy.key_id.hex(), "norm_bound": norm_bound, "grid_bits": policy.grid_bits,
        "bound2": policy.bound2, "coordinate_bound": policy.coordinate_bound(),
        "remainder_key": policy.remainder_key_id.hex() if policy.remainder_key_id else None}
    if as_json:
        emit_json({"name": name, "id": repo_id_text(info.repo_id), "genesis": str(result.cid),
                   "visibility": visibility, "require_proof": proof})
        return
    readers = "only the owner and its members can read it" if private else "anyone can read it"
    out.print(f"created {visibility} repository {name} ({len(model.tensors)} tensors, {result.total_bytes} bytes; "
              f"{readers})", markup=False)
    out.print(f"id      {repo_id_text(info.repo_id)}")
    out.print(f"genesis {result.cid}")
    if policy is not None:
        out.print(f"updates must be proven: key {policy.key_id.hex()[:16]}, L2 norm at most {norm_bound:g}, "
                  f"each value within {policy.coordinate_bound():g} (grid 2**-{policy.grid_bits})", markup=False)
        if policy.remainder_vk is not None and policy.remainder_key_id is not None:
            out.print(f"FedAvg merges must prove their rounding: remainder key {policy.remainder_key_id.hex()[:16]}, "
                      f"total weight below 2^{policy.remainder_vk.sb}", markup=False)


@repo.command("list")
@json_option
@click.pass_context
def repo_list(ctx: click.Context, as_json: bool) -> None:
    """List repositories in this node's store."""
    node = get_node(ctx)
    rows: list[dict[str, Any]] = []
    for info in node.history.repos():
        branches = node.history.branches(info)
        rows.append({"name": info.name, "id": repo_id_text(info.repo_id), "branches": len(branches),
                     "visibility": node.history.visibility(info.repo_id), "settings": info.settings})
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "id", "visibility", "branches")
    for row in rows:
        table.add_row(row["name"], row["id"], row["visibility"], str(row["branches"]))
    out.print(table)


@repo.command("use")
@click.argument("name")
@click.pass_context
def repo_use(ctx: click.Context, name: str) -> None:
    """Make NAME the current repository for commands without --repo."""
    info = get_node(ctx).use_repo(name)
    out.print(f"current repository: {info.name}")


NO_WAY_BACK = "a public repository cannot become private again: anyone may already hold its weights"


def _confirm_publish(info: RepoInfo, yes: bool) -> None:
    """Publishing is irreversible: ask on a terminal; elsewhere only --yes says yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise FednodeError(f"making {info.name} public cannot be undone; confirm with --yes (nothing was changed)")
    if not click.confirm(f"Make {info.name} public? Anyone will be able to read its whole history, "
                         "and it can never become private again", default=False, err=True):
        raise FednodeError(f"{info.name} stays private (nothing was changed)")


def _anchor(node: Node, info: RepoInfo, commit: CID, branch: str) -> tuple[bool, str]:
    """Anchor the decision like 'fednode anchor BRANCH'; (anchored, a truthful line)."""
    from fednode.chain import session

    retry = f"the repository is public here; 'fednode anchor {branch} -r {info.name}' retries"

    async def go(a: Anchorer, n: Node) -> tuple[bool, str]:
        await a.enqueue(info, commit, branch)
        result = await a.flush()
        if any(item.get("cid") == str(commit) for item in result.sent):
            return True, f"anchored on chain ({len(result.sent)} item(s) sent)"
        why = "chain unreachable" if result.unavailable else result.error or (
            "queued for another chain" if result.held else "not sent")
        if result.remaining:
            why += f"; {result.remaining} item(s) stay queued"
        return False, f"not anchored yet ({why}); {retry}"

    try:
        return session.run(node, go)
    except FednodeError as exc:
        return False, f"not anchored ({exc}); {retry}"


@repo.command("publish")
@repo_option
@click.option("-b", "--branch", default=None, help="Branch that records the decision (default: the current one).")
@click.option("--no-chain", is_flag=True, help="Do not anchor the decision on chain now ('fednode anchor' later).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal).")
@zk_keys_option
@json_option
@click.pass_context
def repo_publish(ctx: click.Context, repo_name: str | None, branch: str | None, no_chain: bool, yes: bool,
                 zk_keys: Path | None, as_json: bool) -> None:
    """Owner: make a private repository public, for good (a signed commit that changes no tensor; proven
    like any update in a repository that requires update proofs)."""
    node = get_node(ctx)
    use_zk_keys(node, zk_keys)
    info = get_repo(node, repo_name)
    node.history.check_publish(info)  # refusals come before the question
    branch = branch or node.history.current_branch(info)
    node.history.branch_head(info, branch)  # an unknown branch is refused before the question too
    _confirm_publish(info, yes)
    result = node.history.publish(info, branch)
    anchored, line = (None, "not anchored (--no-chain); 'fednode anchor' anchors it") if no_chain \
        else _anchor(node, info, result.cid, branch)
    if as_json:
        emit_json({"repo": info.name, "visibility": "public", "commit": str(result.cid), "branch": branch,
                   "anchored": anchored, "anchor": line})
        return
    out.print(f"{info.name} is now public: commit {str(result.cid)[:16]} on {branch}", markup=False)
    out.print(line, markup=False)
    out.print(f"peers learn it when they fetch this commit: 'fednode push {info.name}' announces it", markup=False)


@repo.command("unpublish")
@repo_option
@click.pass_context
def repo_unpublish(ctx: click.Context, repo_name: str | None) -> None:
    """There is no way back: a public repository stays public (this only explains why)."""
    node = get_node(ctx)
    info = get_repo(node, repo_name)
    if node.history.visibility(info.repo_id) == "public":
        raise FednodeError(f"{info.name}: {NO_WAY_BACK}")
    out.print(f"{info.name} is private already", markup=False)


COMMANDS = [repo]
