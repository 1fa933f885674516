"""The Groth16 prover's field kernels (``groth16.c``), built on first use with the bundled ``zig cc``
through ``fednode.nativebuild`` (the merge kernels' build and private cache, same rules:
``FEDNODE_NATIVE_CACHE``, a directory private to the user). Unlike the merge kernels there is no numpy fallback: proving
without them would take minutes, so a failure to build is an error for the caller to report.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from fednode import nativebuild as native

SOURCE = Path(__file__).with_name("groth16.c")
FLAGS = ["-O3", "-shared", "-fPIC", "-march=native"]
VERSION = 2  # fednode_groth16_version() in groth16.c

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """The loaded kernels (built once per source, compiler and CPU); OSError when that fails."""
    global _lib
    with _lock:
        if _lib is None:
            lib = native.load_library(SOURCE, FLAGS)
            if lib.fednode_groth16_version() != VERSION:
                raise OSError(f"{native.library_path(SOURCE, FLAGS)} is not groth16.c version {VERSION}")
            p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
            for name, args, res in (
                ("fednode_fr_mul", [p, p, p, i64, i64], None),
                ("fednode_fr_to_mont", [p, p, i64], i64),
                ("fednode_fr_from_mont", [p, p, i64], None),
                ("fednode_qap_eval", [p, i64, i32, p, i64, p, i64], i64),
                ("fednode_fr_mul_sub", [p, p, p, p, i64, i64], None),
                ("fednode_fr_scale_powers", [p, i64, p, p], None),
                ("fednode_fr_ntt", [p, i64, p], None),
                ("fednode_fr_powers", [p, p, p, i64], None),
                ("fednode_fr_classify", [p, i64, p, p, p], i64),
            ):
                fn = getattr(lib, name)
                fn.argtypes = args
                fn.restype = res
            _lib = lib
        return _lib
