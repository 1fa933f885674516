"""Two processes on one store: a map grown by one is adopted by the other."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import ROOT

from fednode.storage.store import Store
from protocol.multiformats import CID, RAW

GROW = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from fednode.storage.store import Store
    from protocol.multiformats import CID, RAW
    store = Store(Path(sys.argv[1]), sync=False)
    with store.write() as txn:  # 96 MiB: past the other process's 32 MiB map
        for _ in range(96):
            block = os.urandom(1 << 20)
            txn.put_block(CID.hash(RAW, block), block)
        print(CID.hash(RAW, block))
    store.close()
    """
)


def test_a_map_grown_by_another_process_is_adopted(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", sync=False, map_size=32 << 20)
    try:
        with store.write() as txn:
            txn.put_block(CID.hash(RAW, b"first"), b"first")
        out = subprocess.run([sys.executable, "-c", GROW, str(tmp_path / "store")], cwd=ROOT, check=True,
                             capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})
        grown = CID.parse(out.stdout.strip())
        with store.write(grow=False) as txn:  # must not fail with MapResizedError
            txn.put_block(CID.hash(RAW, b"second"), b"second")
        assert len(store.get_block(grown)) == 1 << 20
        assert store.stat()["map_size"] > 32 << 20  # adopted the size the other process set
    finally:
        store.close()
