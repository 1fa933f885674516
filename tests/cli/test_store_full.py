"""A full disk is an error, not a crash: the real CLI on a small tmpfs this test mounts.

The store maps its data file with writemap; before the fix a write into a hole of a full
filesystem was a SIGBUS (exit -7, no message). Now: exit 1, one line, nothing stored, the disk
given back, the store still readable."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import no_commitments
from helpers import assert_one_line_error, home_state, run_fednode, write_model

from fednode.storage.diskspace import free_bytes


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount; None on success, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    return None if proc.returncode == 0 else f"mount -t tmpfs failed: {proc.stderr.strip()}"


@contextmanager
def small_fs(tmp_path: Path, size: str = "8m") -> Iterator[Path]:
    """A fresh filesystem of ``size`` (tmpfs), unmounted at the end whatever happens."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    why = _mount_tmpfs(mnt, size)
    if why is not None:
        pytest.skip(f"cannot create a small filesystem here: {why}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(mnt: Path, leave: int) -> None:
    """Fill the filesystem until only ``leave`` bytes are free."""
    with open(mnt / "filler", "wb") as fh:
        fh.write(b"\1" * max(0, free_bytes(mnt) - leave))


def model(path: Path, nbytes: int, seed: int) -> Path:
    arr = np.random.default_rng(seed).standard_normal(nbytes // 4).astype(np.float32)
    return write_model(path, {"w": ("F32", arr)})


@pytest.mark.parametrize("batch", [64 << 20, 1 << 20], ids=["one-batch", "writer-thread"])
def test_repo_create_and_commit_bigger_than_the_disk(tmp_path: Path, batch: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDNODE_BATCH_BYTES", str(batch))  # 1 MiB: the block-writer thread hits the full disk
    with small_fs(tmp_path) as mnt:
        home = mnt / "home"
        run_fednode(home, "init")
        no_commitments(home)  # a full disk is the subject: its 750k-parameter commits would derive generators
        run_fednode(home, "repo", "create", "ok", "--from", model(tmp_path / "a.safetensors", 3 << 20, 1))  # fits
        big = model(tmp_path / "big.safetensors", 16 << 20, 2)  # twice the filesystem
        update = model(tmp_path / "b.safetensors", 3 << 20, 3)  # a 3 MB change of "ok"
        for leave, args in ((None, ("repo", "create", "m", "--from", big)),
                            (1 << 20, ("commit", "ok", "--from", update, "-m", "too big"))):
            if leave is not None:
                fill(mnt, leave)
            before, free = home_state(home), free_bytes(mnt)
            proc = run_fednode(home, *args, check=False)
            assert proc.returncode == 1, (args, proc.returncode, proc.stderr)  # not -7 (SIGBUS)
            assert_one_line_error(proc.stderr, "not enough disk space", "nothing was stored")
            assert home_state(home) == before  # no block, ref or repository of the failed write
            assert free_bytes(mnt) >= free - (1 << 20)  # what the aborted write allocated went back
        (mnt / "filler").unlink()
        listed = run_fednode(home, "repo", "list", "--json")
        assert '"ok"' in listed.stdout and '"m"' not in listed.stdout
        assert "1 commits ok" in run_fednode(home, "fsck").stdout
        run_fednode(home, "commit", "ok", "--from", update, "-m", "fits now")  # with room again it works


def test_init_on_a_full_disk_leaves_no_home(tmp_path: Path) -> None:
    with small_fs(tmp_path) as mnt:
        for leave in (0, 300 << 10):  # nothing left (the keypair fails), or too little for the store
            fill(mnt, leave)
            home = mnt / f"home{leave}"
            proc = run_fednode(home, "init", check=False)
            assert proc.returncode == 1, proc.stderr
            assert_one_line_error(proc.stderr, "space")
            assert not home.exists()  # a later init starts clean
            (mnt / "filler").unlink()
        run_fednode(mnt / "home", "init")  # with room it works
        shutil.rmtree(mnt / "home")
