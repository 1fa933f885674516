"""Modules imported on first use, for a fast command line.

``import numpy`` takes about 0.14 s on this kind of machine, half of the 0.3 s a command that
never touches a tensor (``--version``, ``log``, ``show``, ``status``) may take to start. The
modules such commands load (in history, workflows, storage and tensors) bind
``np = lazy_import("numpy")`` (``import numpy as np`` for type checkers): numpy is imported at
the first attribute access (``np.frombuffer``...), and not at all by commands that only read
commits. Unlike ``importlib.util.LazyLoader`` (whose first access
is not thread-safe in Python 3.11), the real module is imported normally, under a lock, and
nothing unusual is ever put in ``sys.modules``.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for a module until first use; then each attribute read is cached on the proxy."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None
        self._lock = threading.Lock()

    def _load(self) -> ModuleType:
        with self._lock:
            if self._module is None:
                self._module = importlib.import_module(self._name)
            return self._module

    def __getattr__(self, attr: str) -> Any:  # only called for names not cached yet
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # copy, pickle and friends probe dunders: no import for them
        value = getattr(self._module or self._load(), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._module else ''}>"


def lazy_import(name: str) -> Any:
    """A stand-in for module ``name`` that imports it at the first attribute access."""
    return LazyModule(name)
