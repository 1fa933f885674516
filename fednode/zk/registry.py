"""A named-backend registry: "mcl" (native) when it loads, else "reference" (py_ecc)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from fednode.zk.curve import ZkError

T = TypeVar("T")


class Backends(Generic[T]):
    """Backends built once on first use; ``kind`` names them in errors ("MSM", "pairing")."""

    def __init__(self, kind: str, factories: dict[str, Callable[[], T]]) -> None:
        self.kind, self.factories = kind, factories
        self.built: dict[str, T] = {}

    def get(self, name: str | None = None) -> T:
        if name is None:  # the native backend raises ZkError when its library does not load
            try:
                return self.get("mcl")
            except ZkError:
                return self.get("reference")
        if name not in self.built:
            factory = self.factories.get(name)
            if factory is None:
                raise ZkError(f"unknown {self.kind} backend {name!r}; valid: {', '.join(self.factories)}")
            self.built[name] = factory()
        return self.built[name]
