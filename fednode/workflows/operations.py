"""History operations built on ``History``: checkout, diff, revert, verify, fsck, gc."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fednode.errors import Corrupt, FednodeError, NotFound
from fednode.history import CommitResult, History, RepoInfo, repo_id_text
from fednode.lazy import lazy_import
from fednode.storage.store import Txn
from fednode.tensors import fixedpoint
from fednode.tensors.modelio import ArraySource, ModelSource, TensorInfo, to_torch_state_dict, write_safetensors
from protocol.dag import links
from protocol.multiformats import CID, DAG_CBOR, RAW, FormatError
from protocol.objects import DTYPES, FLOAT_DTYPES, Commit
from protocol.unixfs import add_bytes

if TYPE_CHECKING:
    import numpy as np
else:  # loaded at first use: commands that read no tensor start without it (fednode.lazy)
    np = lazy_import("numpy")


class NothingToCommit(FednodeError):
    """A commit whose model equals the branch head: nothing is stored."""


CHECKOUT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
CHECKOUT_FILE = "model.safetensors"


def checkout_path(out: str | Path) -> Path:
    """Where ``checkout --out`` writes: ``DIR/`` (a trailing slash) or an existing directory means
    DIR/model.safetensors; a file name must end in .safetensors, .pt, .pth or .bin (never guessed).
    Refuses a path that cannot become a new file before any work is done."""
    text = str(out)
    path = Path(text)
    if text.endswith(("/", "\\")) or path.is_dir():
        if path.exists() and not path.is_dir():
            raise FednodeError(f"cannot write into {text}: it is not a directory")
        path = path / CHECKOUT_FILE
    elif path.suffix.lower() not in CHECKOUT_SUFFIXES:
        raise FednodeError(f"cannot write {path}: unknown model file type {path.suffix or '(no extension)'!r}; "
                           "use .safetensors, .pt, .pth or .bin, or DIR/ for DIR/model.safetensors")
    if path.is_dir():
        raise FednodeError(f"cannot write {path}: it is a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FednodeError(f"cannot write {path}: {parent} is not a directory")
            break
    return path


def checkout(history: History, cid: CID, out: Path) -> int:
    """Write a commit's state to ``out`` (.safetensors, or .pt/.pth/.bin for a state_dict).

    Written to a temporary file and renamed, so a crash never leaves half a model.
    Tensors are rebuilt one at a time (peak memory ~ the largest tensor).
    """
    with history.store.read() as txn:
        manifest = history.load_manifest(history.load_commit(cid, txn).weights, txn)
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.suffix.lower() in (".pt", ".pth", ".bin"):
            import torch

            arrays = {
                name: (e.dtype, e.shape, history.tensor_array(cid, name)) for name, e in manifest.tensors.items()
            }
            torch.save(to_torch_state_dict(arrays), tmp)
        else:

            def chunks(name: str):
                yield memoryview(history.tensor_array(cid, name)).cast("B")

            infos = [(TensorInfo(n, e.dtype, e.shape), chunks(n)) for n, e in manifest.tensors.items()]
            with open(tmp, "wb") as fh:
                write_safetensors(fh, infos, {"fednode.commit": str(cid)})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out.stat().st_size


def check_commit_source(history: History, head: CID, source: ModelSource) -> None:
    """Before committing ``source`` on a branch at ``head``: a float dtype that differs from the
    parent's is refused with the --cast that converts it, and a model identical to the head (every
    tensor's bytes the same) is "nothing to commit" (NothingToCommit). Stops at the first
    changed tensor."""
    with history.store.read() as txn:
        manifest = history.load_manifest(history.load_commit(head, txn).weights, txn)
    for name, info in source.tensors.items():
        old = manifest.tensors.get(name)
        if old is not None and old.dtype != info.dtype and old.shape == info.shape \
                and old.dtype in FLOAT_DTYPES and info.dtype in FLOAT_DTYPES:
            raise FednodeError(f"tensor {name!r} is {info.dtype} but the parent has {old.dtype}: "
                               f"pass --cast {old.dtype} to convert it")
    if set(manifest.tensors) != set(source.tensors):
        return  # History.commit names the missing and unexpected tensors
    # smallest first: an update that changes anything usually changes a bias or a norm, so a real
    # commit costs little here, even a fine-tune of a small head on a frozen backbone
    for name, info in sorted(source.tensors.items(), key=lambda kv: kv[1].nbytes):
        old = manifest.tensors[name]
        if (old.dtype, old.shape) != (info.dtype, info.shape):
            return
        if add_bytes(memoryview(source.array(name)).cast("B")) != old.state:
            return
    raise NothingToCommit(f"nothing to commit: the model is identical to {head}")


@dataclass
class TensorDiff:
    name: str
    status: str  # changed | same | added | removed
    l2: float = 0.0
    relative: float = 0.0
    changed_fraction: float = 0.0
    numel: int = 0

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _as_f64(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype in FLOAT_DTYPES:
        return fixedpoint.to_f64(arr, dtype)
    return arr.astype(np.float64)


def diff(history: History, a: CID, b: CID) -> list[TensorDiff]:
    with history.store.read() as txn:
        ma = history.load_manifest(history.load_commit(a, txn).weights, txn)
        mb = history.load_manifest(history.load_commit(b, txn).weights, txn)
    return _diff(
        {n: (e.dtype, e.shape) for n, e in ma.tensors.items()},
        {n: (e.dtype, e.shape) for n, e in mb.tensors.items()},
        lambda name: ma.tensors[name].state == mb.tensors[name].state,
        lambda name: history.tensor_array(a, name),
        lambda name: history.tensor_array(b, name),
    )


def diff_file(history: History, a: CID, source: ModelSource) -> list[TensorDiff]:
    """Commit ``a`` against a model on disk (``diff REV --file PATH``): what changed from ``a`` to the file."""
    with history.store.read() as txn:
        ma = history.load_manifest(history.load_commit(a, txn).weights, txn)
    return _diff(
        {n: (e.dtype, e.shape) for n, e in ma.tensors.items()},
        {n: (t.dtype, t.shape) for n, t in source.tensors.items()},
        lambda name: False,
        lambda name: history.tensor_array(a, name),
        source.array,
    )


def _diff(ta: dict[str, tuple[str, tuple[int, ...]]], tb: dict[str, tuple[str, tuple[int, ...]]],
          same_state: Callable[[str], bool], array_a: Callable[[str], np.ndarray],
          array_b: Callable[[str], np.ndarray]) -> list[TensorDiff]:
    out = []
    for name in sorted(set(ta) | set(tb)):
        if name not in tb:
            out.append(TensorDiff(name, "removed", numel=math.prod(ta[name][1])))
            continue
        if name not in ta:
            out.append(TensorDiff(name, "added", numel=math.prod(tb[name][1])))
            continue
        (da, shape), (db, shape_b) = ta[name], tb[name]
        numel = math.prod(shape_b)
        if (da, shape) != (db, shape_b):
            out.append(TensorDiff(name, "changed", float("nan"), float("nan"), 1.0, numel))
            continue
        if same_state(name):
            out.append(TensorDiff(name, "same", numel=numel))
            continue
        xa = _as_f64(array_a(name), da)
        xb = _as_f64(array_b(name), db)
        changed = xa != xb
        if not changed.any():
            out.append(TensorDiff(name, "same", numel=numel))
            continue
        l2 = float(np.linalg.norm(xb - xa))
        base = float(np.linalg.norm(xa))
        rel = l2 / base if base else float("inf")
        out.append(TensorDiff(name, "changed", l2, rel, float(changed.mean()), numel))
    return out


def revert(history: History, repo: RepoInfo, target: CID, branch: str | None = None) -> CommitResult:
    """A new commit on ``branch`` whose state equals ``target``'s; history is never rewritten."""
    state = history.state(target)
    source = ArraySource({n: (e.dtype, arr.reshape(e.shape)) for n, (e, arr) in state.items()})
    return history.commit(
        repo,
        source,
        message=f"revert to {target}",
        branch=branch,
        kind="revert",
        info={"revert": {"target": target}},
        exact=True,
    )


@dataclass
class VerifyReport:
    commits: int
    problems: list[str]
    checked: list[CID] = field(default_factory=list)  # the commits verify checked


def verify(
    history: History,
    repo: RepoInfo,
    head: CID,
    check_tensors: bool = True,
    verified: Callable[[CID], bool] | None = None,
    rehash: bool = True,
) -> VerifyReport:
    """Hashes, signatures and repository membership of the whole ancestry of ``head``.

    ``verified``: commits already fully verified in ``repo``. They are neither checked nor walked
    (their ancestry was verified with them), so each new head costs O(new commits); their data is
    still read where a new commit's checks need it (a delta base, a merge's inputs).
    ``rehash=False``: tensor DAGs and sizes are checked but their blocks are not re-hashed; only
    for stores whose blocks were hash-checked on arrival (see ``History.check_commit``).
    """
    problems: list[str] = []
    checked: list[CID] = []
    with history.store.read(buffers=not rehash) as txn:  # rehash=False: leaf sizes are read in place
        seen: set[CID] = set()
        stack = [head]
        while stack:
            cid = stack.pop()
            if cid in seen or (verified is not None and verified(cid)):
                continue
            seen.add(cid)
            checked.append(cid)
            found = history.check_commit(cid, txn, check_tensors, rehash)
            problems += found
            try:
                commit = history.load_commit(cid, txn)
            except (Corrupt, NotFound):
                continue
            if commit.kind == "init":
                if commit.commit_hash() != repo.repo_id:
                    problems.append(f"commit {cid}: a foreign genesis commit")
            elif commit.repo != repo.repo_id:
                problems.append(f"commit {cid}: belongs to another repository")
            for parent, recorded in zip(commit.parents, commit.parent_hashes, strict=True):
                try:
                    if history.load_commit(parent, txn).commit_hash() != recorded:
                        problems.append(f"commit {cid}: parent {parent} does not have the recorded commit hash")
                except (Corrupt, NotFound):
                    pass  # reported when the parent itself is checked
            if commit.kind == "revert":
                target = commit.info.get("revert", {}).get("target")
                if not isinstance(target, CID):
                    problems.append(f"commit {cid}: revert without a target")
            stack.extend(commit.parents)
    if check_tensors and not problems:
        problems += _check_states(history, head, verified)
    if check_tensors and not problems:
        problems += _check_reverts(history, head, repo, verified)
    return VerifyReport(len(checked), problems, checked)


def _check_states(history: History, head: CID, verified: Callable[[CID], bool] | None = None) -> list[str]:
    """Every tensor's reconstruction hashes to the state CID its manifest records."""
    problems: list[str] = []
    with history.store.read() as txn:
        for cid, commit in history.walk([head], verified):
            manifest = history.load_manifest(commit.weights, txn)
            parent = None
            if commit.parents:
                try:  # a parent already verified is not re-checked, but must still be readable
                    parent = history.load_manifest(history.load_commit(commit.parents[0], txn).weights, txn)
                except (Corrupt, NotFound) as exc:
                    problems.append(f"commit {cid}: parent {commit.parents[0]}: {exc}")
                    continue
            for name, entry in manifest.tensors.items():
                if entry.encoding == "raw":
                    continue  # state == cid, and its blocks were hash-checked
                if entry.encoding == "same":
                    before = parent.tensors.get(name) if parent else None
                    if before is None or before.state != entry.state:
                        problems.append(f"commit {cid} tensor {name!r}: marked unchanged, state differs from parent")
                    continue
                try:
                    arr = history.tensor_array(cid, name, txn)
                except (Corrupt, NotFound) as exc:
                    problems.append(f"commit {cid} tensor {name!r}: {exc}")
                    continue
                if add_bytes(memoryview(arr).cast("B")) != entry.state:
                    problems.append(f"commit {cid} tensor {name!r}: reconstruction does not match its state CID")
    return problems


def _check_reverts(
    history: History, head: CID, repo: RepoInfo | None = None, verified: Callable[[CID], bool] | None = None
) -> list[str]:
    """Each revert equals its target; each merge equals its recomputation from its record."""
    from fednode.workflows.merging import check_merge

    problems = []
    for cid, commit in history.walk([head], verified):
        if commit.kind == "merge" and repo is not None:
            problems += check_merge(history, repo, cid)
            continue
        if commit.kind != "revert":
            continue
        target = commit.info["revert"]["target"]
        try:
            a, b = history.state(cid), history.state(target)
        except (Corrupt, NotFound) as exc:
            problems.append(f"revert {cid}: {exc}")
            continue
        if set(a) != set(b) or any(not np.array_equal(a[n][1], b[n][1]) for n in a):
            problems.append(f"revert {cid}: state differs from its target {target}")
    return problems


@dataclass
class Marked:
    """What a mark from every root found: blocks reached (CID bytes), real problems, and the
    damaged blocks (missing or not matching their hash) reachable from refs, each with the
    (repository id, ref target) that reaches it, so a repair knows what to fetch again."""

    reachable: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    damaged: dict[CID, tuple[bytes, CID]] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


REFLOG_ROOT_SECONDS = 90 * 86400  # gc keeps what a branch pointed at in the last 90 days (git's default)


def mark(txn: Txn, rehash: bool = True, fetch_expiry: float | None = None,
         now: float | None = None) -> Marked:
    """Mark every block reachable from a ref, then from the reflogs of existing branches (their
    moves of the last REFLOG_ROOT_SECONDS), then from the daemon's unfinished fetches.

    A ref only ever points at a complete, verified closure (a branch moves after its fetch and
    ``verify``), so a block missing below a ref is a real problem. An unfinished fetch's root is
    walked through what is present only: its missing blocks are the fetch's remaining work, not
    damage, and are summed in ``unfinished``. A present block that fails its hash is a problem
    wherever it is (the fetcher checks each block before storing it). ``rehash=False`` checks
    structure only (raw leaves are not even read). Fetches first recorded more than
    ``fetch_expiry`` seconds ago are not roots: their data is garbage (the daemon drops them).
    """
    out = Marked()
    all_refs = list(txn.all_refs())
    refs = [(rid, CID.from_bytes(v)) for rid, name, v in all_refs if name != "HEAD"]
    for repo_id, root in refs:
        _walk(txn, root, out, rehash, (repo_id, root), fetch=False)
    now = time.time() if now is None else now
    # A branch's reflog keeps its recent old heads (a reset can be undone) like git's gc.reflogExpire;
    # walked as a fetch is: an entry whose commit is gone already is no damage.
    for repo_id, name, _ in all_refs:
        if name.startswith("heads/"):
            for entry in txn.reflog(repo_id, name[len("heads/"):]):
                if entry["time_ms"] < (now - REFLOG_ROOT_SECONDS) * 1000:
                    break  # newest first
                for text in (entry["old"], entry["new"]):
                    try:
                        root = CID.parse(text) if text else None
                    except FormatError:
                        root = None
                    if root is not None and bytes(root) not in out.reachable:
                        _walk(txn, root, out, rehash, (repo_id, root), fetch=True)
    from fednode.storage.netstate import fetch_records  # the daemon's records: loaded only for gc/fsck (fast start)

    names = {rid: name for name, rid in txn.list_repos().items()}
    for rec in fetch_records(txn):
        age = None if rec.since is None else now - rec.since
        if fetch_expiry is not None and age is not None and age > fetch_expiry:
            out.expired.append(f"fetch of {rec.root} expired ({_age(age)} old): its blocks are garbage for gc")
            continue
        present, missing = _walk(txn, rec.root, out, rehash, (rec.repo, rec.root), fetch=True)
        if missing:
            repo = names.get(rec.repo, repo_id_text(rec.repo))
            out.unfinished.append(f"fetch of {rec.root} in {repo} unfinished: {present} blocks stored, {missing} "
                                  f"missing so far" + ("" if age is None else f", recorded {_age(age)} ago"))
    return out


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{max(seconds, 0):.0f} s"


def _walk(txn: Txn, root: CID, out: Marked, rehash: bool, origin: tuple[bytes, CID], fetch: bool) -> tuple[int, int]:
    """Mark what ``root`` (of repository ``origin[0]``) reaches; ``fetch``: an unfinished fetch's root,
    whose missing blocks are expected. Returns (blocks newly marked and present, newly found missing)."""
    present = missing = 0
    stack = [root]
    while stack:
        cid = stack.pop()
        key = bytes(cid)
        if key in out.reachable:
            continue
        out.reachable.add(key)
        if cid.codec == RAW and not rehash:
            present += 1  # a leaf has no links: presence is all gc needs (checked by the first mark)
            continue
        try:
            block = txn.get_block(cid)
        except NotFound as exc:
            missing += 1
            if not fetch:
                out.problems.append(str(exc))
                out.damaged[cid] = origin
            continue
        present += 1
        if rehash and not cid.verify(block):
            out.problems.append(f"block {cid} does not match its hash")
            out.damaged[cid] = origin
            continue
        try:
            stack.extend(links(cid, block))
        except FormatError as exc:
            out.problems.append(f"block {cid}: {exc}")
    return present, missing


def reachable_blocks(history: History, fetch_expiry: float | None = None) -> tuple[set[bytes], list[str]]:
    """Every block reachable from every ref of every repository and every unfinished fetch (as CID
    bytes), and the problems found on the way (see ``mark``)."""
    with history.store.read() as txn:
        marked = mark(txn, fetch_expiry=fetch_expiry)
    return marked.reachable, marked.problems


def damaged_blocks(history: History, fetch_expiry: float | None = None) -> dict[CID, tuple[bytes, CID]]:
    """Blocks missing below a ref or failing their hash, each with the (repository id, root) reaching it."""
    with history.store.read() as txn:
        return mark(txn, fetch_expiry=fetch_expiry).damaged


@dataclass
class FsckReport(VerifyReport):
    unfinished: list[str] = field(default_factory=list)  # notes on unfinished fetches: not problems
    expired: list[str] = field(default_factory=list)  # fetches past [network] fetch_expiry_seconds
    damaged: dict[CID, tuple[bytes, CID]] = field(default_factory=dict)  # see Marked


def fsck(history: History, fetch_expiry: float | None = None) -> FsckReport:
    """Every reachable block present and hash-verified, every commit signature valid; unfinished
    fetches are reported apart (``unfinished``), as they are no damage."""
    with history.store.read() as txn:
        marked = mark(txn, fetch_expiry=fetch_expiry)
    problems = marked.problems
    commits = 0
    for repo in history.repos():
        heads = list(history.branches(repo).values()) + list(history.tags(repo).values())
        seen: set[CID] = set()
        for head in heads:
            report = verify(history, repo, head, check_tensors=False)
            problems += [p for p in report.problems if p not in problems]
            seen |= {c for c, _ in history.walk([head])} if not report.problems else set()
        commits += len(seen)
    return FsckReport(commits, sorted(set(problems)), unfinished=marked.unfinished, expired=marked.expired,
                      damaged=marked.damaged)


def gc(history: History, fetch_expiry: float | None = None) -> tuple[int, int]:
    """Delete unreachable blocks; returns (blocks, bytes) removed. Refuses on a broken store.

    Unfinished fetches (not expired) keep what they stored. The mark that decides is redone inside
    the sweep's write transaction (structure only, no hashing: the first mark checked the hashes),
    so a commit or a fetch that stores blocks while gc runs never loses them.
    """
    _, problems = reachable_blocks(history, fetch_expiry)
    if problems:
        raise FednodeError(f"fsck found problems; not collecting: {problems[0]}")
    removed = freed = 0
    with history.store.write() as txn:
        marked = mark(txn, rehash=False, fetch_expiry=fetch_expiry)
        if marked.problems:
            raise FednodeError(f"the store changed while collecting; not collecting: {marked.problems[0]}")
        garbage = [cid for cid in txn.iter_block_cids() if bytes(cid) not in marked.reachable]
        for cid in garbage:
            if cid.codec == DAG_CBOR and txn.commit_repo(cid) is not None:
                try:  # a collected commit leaves the revision indexes too
                    txn.unindex_commit(cid, Commit.decode(txn.get_block(cid)).commit_hash())
                except FormatError:
                    pass
            freed += txn.delete_block(cid)
            removed += 1
    return removed, freed


def dtype_itemsize(dtype: str) -> int:
    return DTYPES[dtype][1]


def train(
    history: History,
    repo: RepoInfo,
    script: Path,
    branch: str | None = None,
    epochs: int = 1,
    seed: int = 0,
    dp=None,
    quiet: bool = False,
    message: str | None = None,
    encoding_options: dict | None = None,
) -> tuple[CommitResult, object]:
    """Train locally from the branch head and commit the result as an update on that branch."""
    import shutil
    import tempfile

    from fednode.tensors.modelio import SafetensorsFile
    from fednode.workflows.training import run_training

    branch = branch or history.current_branch(repo)
    head = history.branch_head(repo, branch)
    work = Path(tempfile.mkdtemp(prefix="fednode-train-"))
    try:
        head_file = work / "head.safetensors"
        checkout(history, head, head_file)
        result = run_training(script, head_file, epochs, seed, dp, quiet, work)
        try:
            source = SafetensorsFile(result.weights)
        except FednodeError as exc:  # an executable wrote something else to OUT
            raise FednodeError(f"training script {script.name} wrote unreadable weights: {exc}") from None
        try:
            info = {"training": result.training_info()}
            metrics = {k: float(v) for k, v in result.metrics.items()}
            text = message or f"train {script.name}: {epochs} epoch(s) on {result.samples} samples"
            commit = history.commit(repo, source, text, branch=branch, metrics=metrics, info=info,
                                    expected_head=head, **(encoding_options or {}))
        finally:
            source.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return commit, result
