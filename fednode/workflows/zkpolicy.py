"""Repositories that require update proofs (issue 15 item 4; docs/zk.md "Repositories that require proofs").

The policy (``fednode.zk.policy``) is fixed in the genesis settings: a verifying key, one grid
``2**-G`` for every float tensor and a bound ``B^2`` on the squared L2 norm of an update's committed
vector (grid units). Here: choosing ``G`` and ``B^2`` at ``repo create`` (``make_policy``), preparing
and proving an update at commit time (``prepare_update``: every refusal comes before anything is
stored; the proof is added to the unsigned commit by ``Prepared.finish``), rounding trained weights
onto the grid (``round_onto_grid``), and the checks that need no weights (``first_failure``, ``describe``).

The grid: the finest ``G`` at which an update of norm ``B`` still fits the key's signed ``k``-bit
coordinates (``B 2^G <= 2^(k-1) - 1``, so the range never refuses what the norm admits), but no finer
than rule 2's finest grid over the genesis tensors (where every float change is representable
already). ``B^2 = floor((B 2^G)^2)``: an integer vector ``q`` meets ``sum q_i^2 <= B^2`` exactly when
the float change ``q 2^-G`` has L2 norm at most ``B`` (weight units).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fednode.errors import FednodeError
from fednode.history import History, RepoInfo
from fednode.lazy import lazy_import
from fednode.tensors.modelio import ArraySource, ModelSource
from fednode.workflows.commitments import (
    VERSION,
    ZkSettings,
    _blinding_for,
    commit_deltas,
    round_base,
    round_base_entries,
)
from fednode.zk import policy as zpol
from fednode.zk.curve import ZkError
from protocol.multiformats import CID
from protocol.objects import FLOAT_DTYPES, Commit

if TYPE_CHECKING:
    import numpy as np

    from fednode.workflows import zkprove
else:
    np = lazy_import("numpy")

KEYS_ENV = "FEDNODE_ZK_KEYS"
GRID_LIMIT = 1000

_policies: dict[bytes, zpol.ZkPolicy | None] = {}


def repo_policy(repo: RepoInfo) -> zpol.ZkPolicy | None:
    """The repository's policy (None without one), decoded once per process: its genesis never changes."""
    if repo.repo_id not in _policies:
        _policies[repo.repo_id] = zpol.policy_of(repo.settings)
    return _policies[repo.repo_id]


def key_text(key_id: bytes) -> str:
    return key_id.hex()[:16]


# ---- repo create -----------------------------------------------------------------------------------


def policy_grid(source: ModelSource, k: int, bound: float) -> int:
    """``G`` (module docstring): the key's limit for ``bound``, capped by rule 2's finest genesis grid."""
    from fednode.tensors import fixedpoint

    limit = (1 << (k - 1)) - 1
    g = math.floor(math.log2(limit / bound))
    while g > -GRID_LIMIT and bound * 2.0**g > limit:  # log2 may be off by one either way
        g -= 1
    while g < GRID_LIMIT and bound * 2.0 ** (g + 1) <= limit:
        g += 1
    finest = [fixedpoint.choose_grid(source.array(name).reshape(-1), [], info.dtype, 0)
              for name, info in source.tensors.items() if info.dtype in FLOAT_DTYPES]
    return max(-GRID_LIMIT, min([g, *finest], default=g))


def load_keys(path: Path) -> zkprove.Keys:
    from fednode.workflows import zkprove

    try:
        return zkprove.load_keys(path)
    except ZkError as exc:
        raise FednodeError(f"{path}: not usable update-proof keys ({exc})") from None
    except OSError as exc:
        raise FednodeError(f"no update-proof keys in {path} ({exc.strerror or exc}; fednode zk setup makes them)") \
            from None


def make_policy(keys_dir: Path, bound: float, source: ModelSource) -> tuple[dict[str, Any], zpol.ZkPolicy]:
    """The genesis settings' ``"zk"`` entry for keys in ``keys_dir`` and an L2 bound ``bound`` (weight units)."""
    from fednode.zk.generators import DEFAULT_SEED

    if not (math.isfinite(bound) and bound > 0):
        raise FednodeError("--norm-bound must be a positive number (the L2 bound of an update, in weight units)")
    keys = load_keys(keys_dir)
    vk = keys.vk
    if vk.seed != DEFAULT_SEED:
        raise FednodeError(f"the keys in {keys_dir} were made for another generator seed than commits use")
    size = sum(int(info.numel) for info in source.tensors.values())
    if size > vk.n:
        raise FednodeError(f"the model has {size} parameters; the keys in {keys_dir} prove at most {vk.n}")
    grid = policy_grid(source, vk.k, bound)
    bound2 = math.floor((Fraction(bound) * Fraction(2) ** grid) ** 2)
    if bound2 >= 1 << vk.sb:
        raise FednodeError(f"--norm-bound {bound:g} is {bound2} squared grid steps: over these keys' 2^{vk.sb}")
    if bound2 < 1:
        raise FednodeError(f"--norm-bound {bound:g} is below one step of the finest grid 2**-{grid}")
    rvk = _remainder_vk(keys_dir, vk)
    entry = zpol.settings_entry(vk.encode(), bound2, grid, rvk)
    policy = zpol.policy_of({"zk": entry})
    assert policy is not None
    return entry, policy


def _remainder_vk(keys_dir: Path, vk: Any) -> bytes | None:
    """The remainder key beside the update keys (``KEYDIR/remainder``), None without one: FedAvg merges
    of a repository whose policy names it must prove their rounding."""
    from fednode.workflows import zkprove

    try:
        rkeys = zkprove.remainder_keys(keys_dir)
    except (ZkError, OSError) as exc:
        raise FednodeError(f"{keys_dir / zkprove.REMAINDER_DIR}: not usable remainder-proof keys ({exc})") from None
    if rkeys is None:
        return None
    if rkeys.vk.seed != vk.seed or rkeys.vk.n < vk.n:
        raise FednodeError(f"the remainder keys in {rkeys.path} do not match the update keys (seed or size)")
    return rkeys.vk.encode()


# ---- commit time -----------------------------------------------------------------------------------


def keys_path(settings: ZkSettings) -> Path | None:
    """Where the proving keys are: ``--zk-keys``, else $FEDNODE_ZK_KEYS, else ``[zk] keys``."""
    env = os.environ.get(KEYS_ENV)
    return settings.keys_override or (Path(env) if env else None) or settings.keys


def keys_for(settings: ZkSettings, policy: zpol.ZkPolicy) -> zkprove.Keys:
    """The proving keys: ``--zk-keys``, else $FEDNODE_ZK_KEYS, else ``[zk] keys``; of the policy's key."""
    path = keys_path(settings)
    if path is None:
        raise FednodeError("the repository requires update proofs and no proving keys are set: pass --zk-keys DIR, "
                           f"set ${KEYS_ENV} or [zk] keys in config.toml (nothing was stored)")
    keys = load_keys(path)
    if keys.vk.key_id() != policy.key_id:
        raise FednodeError(f"the keys in {path} (key {key_text(keys.vk.key_id())}) are not the repository's "
                           f"(key {key_text(policy.key_id)}); nothing was stored")
    return keys


def on_grid(base: np.ndarray, new: np.ndarray, dtype: str, bits: int) -> np.ndarray | None:
    """The exact integer change ``new - base`` on ``2**-bits``, None when it is not one (what is stored
    must be exactly what is proven)."""
    from fednode.tensors import fixedpoint

    q = fixedpoint.encode_delta(base, new, dtype, bits)
    if q is None:
        return None
    rebuilt = fixedpoint.apply_delta(base, q, dtype, bits)
    return q if np.array_equal(fixedpoint.to_f64(rebuilt, dtype), fixedpoint.to_f64(new, dtype)) else None


def round_onto_grid(history: History, repo: RepoInfo, head: CID, source: ModelSource) -> ModelSource:
    """``source`` with every float tensor's change from the round base rounded onto the policy's grid
    (``train`` under a policy: the stored bytes are then exactly what is committed and proven)."""
    from fednode.tensors import fixedpoint

    policy = repo_policy(repo)
    if policy is None:
        return source
    base = round_base(history, head)
    arrays = {}
    for name, info in source.tensors.items():
        arr = source.array(name).reshape(-1)
        if info.dtype in FLOAT_DTYPES:
            try:
                base_arr = history.tensor_array(base, name)
            except FednodeError:
                base_arr = None  # a new tensor: the commit refuses it with its own reason
            if base_arr is not None and base_arr.shape == arr.shape:
                q = fixedpoint.encode_delta(base_arr, arr, info.dtype, policy.grid_bits)
                if q is not None:
                    arr = fixedpoint.apply_delta(base_arr, q, info.dtype, policy.grid_bits)
        arrays[name] = (info.dtype, arr.reshape(tuple(info.shape)))
    return ArraySource(arrays)


@dataclass
class Prepared:
    """An update ready to commit under a policy: its ``info["zk"]`` (without the proof) and what proves it."""

    zk: dict[str, Any]
    keys: zkprove.Keys
    values: list[int]
    blinding: int
    policy: zpol.ZkPolicy

    def finish(self, unsigned: Commit) -> Commit:
        """The unsigned commit with its proof, bound to its hash without the proof (``policy.proof_hash``)."""
        from fednode.workflows import zkprove

        proof = zkprove.prove(self.keys, self.values, self.blinding, zpol.proof_hash(unsigned), self.policy.bound2)
        zk = {**unsigned.info["zk"], "proof": proof}
        return replace(unsigned, info={**unsigned.info, "zk": zk})


def _weight_units(q: int, dtype: str, grid: int) -> float:
    return q * 2.0**-grid if dtype in FLOAT_DTYPES else float(q)


def prepare_update(history: History, repo: RepoInfo, head: CID, source: ModelSource, settings: ZkSettings,
                   policy: zpol.ZkPolicy) -> Prepared:
    """Check an update against the policy and commit to it; refuse (one line) whatever cannot be proven."""
    if not settings.enabled:
        raise FednodeError(f"{repo.name} requires update proofs, which need commitments: [zk] commitments = false "
                           "in config.toml (nothing was stored)")
    keys = keys_for(settings, policy)
    base, entries = round_base_entries(history, head)
    names = sorted(source.tensors)
    if set(names) != set(entries):
        raise FednodeError("the tensor names differ from the round base's: an update proof needs the same tensors")
    size = sum(int(source.tensors[n].numel) for n in names)
    if size > keys.vk.n:
        raise FednodeError(f"{size} parameters: the repository's proving keys take at most {keys.vk.n}")
    lo, hi = -(1 << (keys.vk.k - 1)), (1 << (keys.vk.k - 1)) - 1
    g = policy.grid_bits
    deltas, grid = [], {}
    for name in names:
        info, entry = source.tensors[name], entries[name]
        if (info.dtype, tuple(info.shape)) != (entry.dtype, tuple(entry.shape)):
            raise FednodeError(f"tensor {name!r} changed dtype or shape since the round base")
        base_arr, arr = history.tensor_array(base, name), source.array(name).reshape(-1)
        if info.dtype in FLOAT_DTYPES:
            grid[name] = g
            q = on_grid(base_arr, arr, info.dtype, g)
            if q is None:
                raise FednodeError(f"tensor {name!r}: its change is not on the repository's grid 2**-{g} (round the "
                                   "weights onto it; 'fednode train' does); nothing was stored")
        else:
            q = arr.astype(np.int64) - base_arr.astype(np.int64)
        if q.size and (int(q.min()) < lo or int(q.max()) > hi):
            worst = int(q[np.argmax(np.abs(q))])
            raise FednodeError(f"tensor {name!r} changes by {_weight_units(worst, info.dtype, g):g}, over the "
                               f"repository's per-coordinate bound {policy.coordinate_bound():g}; nothing was stored")
        deltas.append(q)
    values = [int(v) for q in deltas for v in q.tolist()]
    norm2 = sum(v * v for v in values)
    if norm2 > policy.bound2:
        raise FednodeError(f"the update's L2 norm {math.sqrt(norm2) * 2.0**-g:.6g} exceeds the repository's bound "
                           f"{policy.norm_bound():.6g}; nothing was stored")
    blinding = _blinding_for(history, repo)
    zk: dict[str, Any] = {"v": VERSION, "base": base, "grid": grid,
                          "commitment": commit_deltas(history, deltas, blinding)}
    if blinding:
        zk["blinding"] = blinding.to_bytes(32, "big")
    return Prepared(zk, keys, values, blinding, policy)


# ---- merges: the remainder proof --------------------------------------------------------------------


@dataclass
class MergeProver:
    """The merger's remainder keys (the proving keys' ``remainder/``), for a policy that names ``rvk``."""

    keys: zkprove.Keys
    policy: zpol.ZkPolicy

    def check(self, remainder: list[int], total: int) -> None:
        """Refuse (one line, before anything is stored) a remainder the circuit cannot take."""
        from fednode.workflows import zkprove

        try:
            zkprove.check_remainder(self.keys.vk, remainder, total)
        except FednodeError as exc:
            raise FednodeError(f"the merge cannot be proven: {exc}; nothing was merged") from None

    def finisher(self, remainder: list[int], blinding: int, total: int) -> Callable[[Commit], Commit]:
        """``History.commit``'s ``finish``: the unsigned merge with its remainder proof, bound to its
        hash without the proof (``policy.proof_hash``), ``X = W = total``."""
        from fednode.workflows import zkprove

        def finish(unsigned: Commit) -> Commit:
            proof = zkprove.prove_remainder(self.keys, remainder, blinding, zpol.proof_hash(unsigned), total)
            zk = {**unsigned.info["zk"], "proof": proof}
            return replace(unsigned, info={**unsigned.info, "zk": zk})

        return finish


def merge_prover(settings: ZkSettings | None, repo: RepoInfo) -> MergeProver | None:
    """The remainder prover a FedAvg merge in ``repo`` needs (None when its policy names no ``rvk`` or
    this history makes no commitments); refuses, in one line, missing keys or keys of another key id."""
    from fednode.workflows import zkprove

    policy = repo_policy(repo)
    if policy is None or policy.remainder_vk is None or settings is None or not settings.enabled:
        return None
    path = keys_path(settings)
    if path is None:
        raise FednodeError("the repository requires remainder proofs on FedAvg merges and no proving keys are set: "
                           f"pass --zk-keys DIR, set ${KEYS_ENV} or [zk] keys in config.toml (nothing was merged)")
    try:
        keys = zkprove.remainder_keys(path)
    except (ZkError, OSError) as exc:
        raise FednodeError(f"{path / zkprove.REMAINDER_DIR}: not usable remainder-proof keys ({exc}); "
                           "nothing was merged") from None
    if keys is None:
        raise FednodeError(f"no remainder-proof keys in {path / zkprove.REMAINDER_DIR} (fednode zk setup makes them "
                           "beside the update keys); nothing was merged")
    if keys.vk.key_id() != policy.remainder_key_id:
        raise FednodeError(f"the remainder keys in {keys.path} (key {key_text(keys.vk.key_id())}) are not the "
                           f"repository's (key {key_text(policy.remainder_key_id or b'')}); nothing was merged")
    return MergeProver(keys, policy)


# ---- checks without weights ------------------------------------------------------------------------


def first_failure(history: History, repo: RepoInfo, commits: dict[CID, Commit]) -> tuple[CID, str] | None:
    """The first of ``commits`` (in CID order) that fails the repository's policy (an update's proof, a
    FedAvg merge's remainder proof), and why."""
    policy = repo_policy(repo)
    if policy is None:
        return None
    for cid in sorted(commits, key=str):
        why = zpol.check(policy, commits[cid])
        if why is not None:
            return cid, why
    return None


def describe(repo: RepoInfo, commit: Commit) -> str | None:
    """``show``'s line: "valid (key <id>)" or why the proof fails; for a merge under a policy with a
    remainder key, "remainder proof: valid (key <id>)" or why; None where no proof is required."""
    try:
        policy = repo_policy(repo)
    except ZkError as exc:
        return f"the repository's proof policy is malformed ({exc})"
    if policy is None:
        return None
    if zpol.needs_remainder_proof(policy, commit):
        why = zpol.check_merge(policy, commit)
        if why is None:
            return f"remainder proof: valid (key {key_text(policy.remainder_key_id or b'')})"
        return why if why.startswith("remainder proof") else f"remainder proof: {why}"
    if not zpol.needs_proof(policy, commit):
        return None
    why = zpol.check_update(policy, commit)
    return f"valid (key {key_text(policy.key_id)})" if why is None else why
