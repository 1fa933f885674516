"""Building fednode's C sources with the bundled ``zig cc`` and loading them (a utility: the merge
kernels in ``fednode.tensors.native`` and the zero-knowledge kernels in ``fednode.zk`` use it).

A library is built once per source, flags, compiler and CPU into ``$FEDNODE_NATIVE_CACHE`` (default
``$XDG_CACHE_HOME/fednode/native``, i.e. ``~/.cache/fednode/native``), a directory that must be
private to the user: a library there is loaded into the process.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import stat
import subprocess
import sys
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    if env := os.environ.get("FEDNODE_NATIVE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fednode" / "native"


def _cpu_id() -> str:
    """What ``-march=native`` depends on: a library built on one CPU is never loaded on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _zig_version() -> str:
    try:
        from importlib.metadata import version

        return version("ziglang")
    except Exception:
        return "none"


def library_path(source: Path, flags: list[str]) -> Path:
    """Where the library of ``source`` (built with ``flags``) lives in the cache: named by everything
    that changes its code (every C source of fednode shares this cache)."""
    key = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(flags).encode(), platform.machine().encode(),
                 _cpu_id().encode(), _zig_version().encode()):
        key.update(hashlib.sha256(part).digest())
    return cache_dir() / f"{source.stem}-{key.hexdigest()[:24]}.so"


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) and refuse it when anyone else could swap what we load from it:
    the directory and every parent must be owned by us or root and not writable by group or
    others, unless sticky (like /tmp: others cannot rename what is ours there)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    me = os.getuid()
    for i, p in enumerate([path, *path.resolve().parents]):
        st = p.stat()
        shared = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if st.st_uid not in (me, 0) or (shared and (i == 0 or not st.st_mode & stat.S_ISVTX)):
            raise OSError(f"{p} is writable by others or not owned by this user; not loading code from it")


def build(target: Path, source: Path, flags: list[str]) -> None:
    """Compile ``source`` to ``target`` atomically (a concurrent builder writes the same file)."""
    _private_dir(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [sys.executable, "-m", "ziglang", "cc", *flags, "-o", tmp, str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise OSError(f"zig cc failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_library(source: Path, flags: list[str]) -> ctypes.CDLL:
    """``source`` compiled (once, into the private cache) and loaded; OSError when that fails."""
    path = library_path(source, flags)
    _private_dir(path.parent)
    if not path.exists():
        build(path, source, flags)
    return ctypes.CDLL(str(path))  # CDLL releases the GIL during calls: threads run kernels in parallel
