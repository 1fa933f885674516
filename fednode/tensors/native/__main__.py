"""``python -m fednode.tensors.native``: build (or find) the compiled kernels now and say where they are.

``make`` runs it after installing, so the first merge does not pay the ~4 s build; a failure
only means the numpy path is used, so it prints the reason and still exits 0.
"""

from __future__ import annotations

import logging

from fednode.tensors import native

logging.basicConfig(level=logging.WARNING, format="%(message)s")
lib = native.kernels()
print(f"native kernels: {native.library_path() if lib is not None else 'unavailable, numpy path in use'}")
