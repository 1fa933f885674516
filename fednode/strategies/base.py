"""The ``Strategy`` base class and ``Plan``: the two-phase interface every strategy shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fednode.strategies.exact import StrategyError, check_deltas, check_weights


@dataclass(frozen=True)
class Plan:
    """What a strategy decided before touching tensor values, for one merge.

    ``weights``: the effective weight of each input (same order as the inputs);
    0 means the input takes no part (e.g. rejected by Krum).
    ``record``: small JSON/DAG-CBOR-safe facts to store in the merge commit next
    to ``Strategy.describe()`` (e.g. Krum's selected indices, the resolved trim count).
    """

    weights: tuple[int, ...]
    record: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """A named, deterministic aggregation rule over exact int64 update deltas.

    Caller protocol (one merge over many tensors, streamed one tensor at a time)::

        s = strategies.create("multi-krum", byzantine=1, m=3)
        scan = None
        if s.needs_scan:                      # only Krum-style strategies
            for name in tensor_names:         # pass 1
                scan = s.add_scans(scan, s.scan(load_deltas(name)))
        plan = s.plan(weights, scan)          # validates weights, selects
        for name in tensor_names:             # pass 2
            merged[name] = s.apply(load_deltas(name), plan)
        record = {"strategy": s.describe(), **plan.record}

    ``aggregate(deltas, weights)`` runs the three steps on a single tensor (the
    whole model when it has one tensor).
    """

    name: ClassVar[str]
    paper: ClassVar[str]  # the rule's source, cited in full in the module docstring
    needs_scan: ClassVar[bool] = False
    accepts_narrow: ClassVar[bool] = False  # combine() handles int8/16/32 deltas without widening them

    def describe(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}``: enough to rebuild the strategy with ``from_description``."""
        return {"name": self.name, **self.params()}

    def params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def upgrade_record(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters recorded by an older version, completed with the values that version used
        for parameters added since (a default may change; what a merge recorded may not)."""
        return params

    def scan(self, deltas: Sequence[np.ndarray]) -> Any:
        """Per-tensor statistic of pass 1; statistics of all tensors are combined with ``add_scans``."""
        check_deltas(deltas)
        return None

    @staticmethod
    def add_scans(total: Any, part: Any) -> Any:
        """Combine two per-tensor statistics (``total`` may be None, the empty sum)."""
        if total is None:
            return part
        if part is None:
            return total
        if np.shape(total) != np.shape(part):
            raise StrategyError(f"cannot add scans of shapes {np.shape(total)} and {np.shape(part)}")
        return total + part

    def plan(self, weights: Sequence[int], scan: Any = None) -> Plan:
        """Validate ``weights`` and decide effective weights (coordinate-wise strategies keep them)."""
        return Plan(check_weights(weights, len(weights)))

    def apply(self, deltas: Sequence[np.ndarray], plan: Plan) -> np.ndarray:
        """Merge one tensor's deltas (one per input, in the order the plan was made for)."""
        check_deltas(deltas)
        if len(deltas) != len(plan.weights):
            raise StrategyError(f"plan is for {len(plan.weights)} inputs, got {len(deltas)} deltas")
        if not self.accepts_narrow:
            deltas = [d if d.dtype == np.int64 else d.astype(np.int64) for d in deltas]
        return self.combine(list(deltas), plan.weights)

    def merge_states(
        self, base: np.ndarray, states: Sequence[np.ndarray], plan: Plan, dtype: str, scale_bits: int
    ) -> np.ndarray | None:
        """Optional fused path from float states: the merged state, byte-identical to
        ``apply_delta(base, apply([encode_delta(base, s) for s in states], plan))``, or None
        when the strategy has no such path for these inputs (the caller then does the steps)."""
        return None

    @abstractmethod
    def combine(self, deltas: list[np.ndarray], weights: tuple[int, ...]) -> np.ndarray:
        """The coordinate-wise rule on validated deltas with validated weights (some may be 0)."""

    def aggregate(self, deltas: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
        """One tensor, whole pipeline: ``apply(deltas, plan(weights, scan(deltas)))``."""
        check_deltas(deltas)
        check_weights(weights, len(deltas))
        return self.apply(deltas, self.plan(weights, self.scan(deltas)))

    def aggregate_model(
        self, tensors: Mapping[str, Sequence[np.ndarray]], weights: Sequence[int]
    ) -> tuple[dict[str, np.ndarray], Plan]:
        """In-memory convenience: the caller protocol over ``{name: [delta per input]}``."""
        scan = None
        if self.needs_scan:
            for deltas in tensors.values():
                scan = self.add_scans(scan, self.scan(deltas))
        plan = self.plan(weights, scan)
        return {name: self.apply(deltas, plan) for name, deltas in tensors.items()}, plan

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Strategy) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.describe().items())))


def positive(deltas: list[np.ndarray], weights: tuple[int, ...]) -> tuple[list[np.ndarray], list[int]]:
    """The inputs that take part (weight > 0), in input order."""
    kept = [(d, w) for d, w in zip(deltas, weights, strict=True) if w > 0]
    return [d for d, _ in kept], [w for _, w in kept]
