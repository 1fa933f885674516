"""A FedAvg merge checkable from commitments alone, with its rounding (issue 15 item 2).

The merge (``fednode.strategies.fedavg``, ``fednode.strategies.exact``): inputs ``q_k`` (integer
deltas on one tensor's merge grid) with non-negative integer weights ``w_k``, ``W = sum_k w_k > 0``,

    S = sum_k w_k q_k            (exact integers)
    d = round(S / W)             to nearest, ties to even (``exact.round_div``, Python's ``round``)
    r = S - W d                  so |r_i| <= W / 2, with equality only at a tie

The repository's kernel divides the weights by their gcd first; that changes neither ``d`` nor
the relation below (``r`` is then ``gcd`` times the reduced remainder: the relation is stated, and
checked, with the weights as given, the ones the program's merge instruction carries).

The relation that holds exactly, coordinate by coordinate, is ``sum_k w_k q_k = W d + r``; by the
homomorphism of ``fednode.zk.pedersen`` it lifts to the commitments:

    sum_k w_k C(q_k; b_k) = W C(d; b_d) + C(r; b_r)     when  sum_k w_k b_k = W b_d + b_r (mod R)

``check_linear_merge`` checks exactly that, from the 64-byte commitments and the weights, with one
multi-scalar multiplication over K + 2 points (no vector, no weight of the model).

Blindings: the merger knows the inputs' blindings ``b_k`` (they are opened to it with the inputs,
or are 0 for unblinded commitments). ``split_blinding`` picks ``b_d`` uniformly at random (so
``C(d)`` hides ``d`` again) when any ``b_k`` is non-zero, 0 when all are 0 (nothing to hide from
someone who could open the inputs), and sets ``b_r = sum_k w_k b_k - W b_d (mod R)``, the only
value that makes the relation hold. A merger may pass its own ``b_d``.

On chain: the program (``programs/federity/federity.c`` ``merge``) checks
``C_merge == sum_k w_k C_k``, i.e. it expects the commitment to ``S``; ``sum_commitment`` computes
it (``C(S) = W C(d) + C(r)``, so a verifier holding ``C(d)`` and ``C(r)`` rebuilds it too).

What this does NOT prove:

* that ``|r_i| <= W / 2``: without a range proof a merger can commit to any ``d'`` and the
  compensating ``r' = S - W d'``, and the relation still holds. Binding the rounding needs a
  range proof on ``r`` (issue 15 item 3's work); until then the check proves the merge is *some*
  integer decomposition of the weighted sum, not the rounded one.
* anything about the inputs: that each ``q_k`` is in range or bounded in norm (item 3), or that
  ``C(q_k)`` is the commitment the input's author signed and anchored (the caller compares it with
  the anchored commitment of each input commit);
* that the weights are the right ones (e.g. true example counts): they are public inputs.

Median, trimmed mean and Krum are not linear in the inputs, so no such relation exists for them.
Without the weights a verifier can check that the merge result is committed, signed by the
merger and anchored; that every input it names is anchored (with its commitment); for Krum and
Multi-Krum, that the selected inputs' weighted commitments sum to the result's (a Multi-Krum
average is a FedAvg over the selected inputs, so this module applies to it, though not that
the selection was the right one). Full recomputation from the inputs remains available to anyone
who holds them (``fednode verify``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from fednode.zk import generators as gens
from fednode.zk import pedersen
from fednode.zk.curve import R, ZkError, decode

U64_MAX = (1 << 64) - 1


def check_weights(weights: Sequence[int]) -> tuple[int, ...]:
    """Weights as the program takes them: u64 integers with a positive sum."""
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer)) or not 0 <= w <= U64_MAX:
            raise ZkError(f"weight {i} is {w!r}, not an integer in 0..2^64-1")
        out.append(int(w))
    if not out or sum(out) == 0:
        raise ZkError("merge weights sum to zero")
    return tuple(out)


def _round_half_even(num: np.ndarray, den: int) -> np.ndarray:
    """``num / den`` to nearest, ties to even (``den > 0``), for int64 or Python-int object arrays."""
    q, r = num // den, num % den  # floor division (np.divmod has no object loop)
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up


def fedavg_delta(inputs: Sequence[np.ndarray], weights: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, r)`` for integer inputs ``q_k`` of one shape: ``d = round(S / W)`` (ties to even), ``r = S - W d``.

    int64 when ``sum_k w_k max|q_k| + W <= 2^62`` (no overflow), exact Python integers otherwise
    (an object array: commit to it all the same)."""
    ws = check_weights(weights)
    if len(inputs) != len(ws):
        raise ZkError(f"{len(ws)} weights for {len(inputs)} inputs")
    arrays = [np.asarray(q) for q in inputs]
    if any(a.dtype.kind not in "iu" or a.shape != arrays[0].shape for a in arrays):
        raise ZkError("merge inputs are integer arrays of one shape")
    total = sum(ws)
    pairs = zip(ws, arrays, strict=True)
    bound = total + sum(w * max(abs(int(a.min())), abs(int(a.max()))) for w, a in pairs if a.size)
    wide = bound > 1 << 62
    dtype = object if wide else np.int64
    s = np.zeros(arrays[0].shape, dtype=dtype)
    for w, a in zip(ws, arrays, strict=True):
        if w:
            s += a.astype(dtype) * w
    d = _round_half_even(s, total)
    return d, s - d * total


def split_blinding(input_blindings: Sequence[int], weights: Sequence[int], b_d: int | None = None) -> tuple[int, int]:
    """``(b_d, b_r)`` with ``sum_k w_k b_k = W b_d + b_r (mod R)``; ``b_d`` random unless all ``b_k`` are 0
    (then 0) or given."""
    ws = check_weights(weights)
    if len(input_blindings) != len(ws):
        raise ZkError(f"{len(ws)} weights for {len(input_blindings)} blindings")
    b_s = sum(w * int(b) for w, b in zip(ws, input_blindings, strict=True)) % R
    if b_d is None:
        b_d = secrets.randbelow(R) if any(int(b) % R for b in input_blindings) else 0
    return b_d % R, (b_s - sum(ws) * b_d) % R


def merge_commitments(d: np.ndarray, r: np.ndarray, b_d: int = 0, b_r: int = 0, *,
                      seed: bytes = gens.DEFAULT_SEED, backend_name: str | None = None) -> tuple[bytes, bytes]:
    """``(C(d; b_d), C(r; b_r))``: what a merge carries so that its check needs no vector."""
    return (pedersen.commit(d, b_d, seed=seed, backend_name=backend_name),
            pedersen.commit(r, b_r, seed=seed, backend_name=backend_name))


def sum_commitment(input_commitments: Sequence[bytes], weights: Sequence[int], *,
                   backend_name: str | None = None) -> bytes:
    """``sum_k w_k C_k``: the commitment to ``S`` that the program's merge instruction checks."""
    ws = check_weights(weights)
    if len(input_commitments) != len(ws):
        raise ZkError(f"{len(ws)} weights for {len(input_commitments)} commitments")
    return pedersen.combine(list(input_commitments), list(ws), backend_name=backend_name)


def check_linear_merge(input_commitments: Sequence[bytes], weights: Sequence[int], c_d: bytes, c_r: bytes, *,
                       backend_name: str | None = None) -> bool:
    """Whether ``sum_k w_k C_k == W C_d + C_r``. ``ZkError`` (one line) for a malformed point or weight.

    One MSM over K + 2 points with scalars ``(w_1 .. w_K, -W, -1)``: the sum is infinity exactly when
    the relation holds."""
    ws = check_weights(weights)
    if len(input_commitments) != len(ws):
        raise ZkError(f"{len(ws)} weights for {len(input_commitments)} commitments")
    points = [decode(c, f"input commitment {k}") for k, c in enumerate(input_commitments)]
    points += [decode(c_d, "merge commitment C(d)"), decode(c_r, "remainder commitment C(r)")]
    be = pedersen.backend(backend_name)
    return be.msm(be.points(points), [*ws, -sum(ws), -1]) is None
