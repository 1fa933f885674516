"""Helia (js-libp2p, npm ``helia``) fetches a delta-stored tensor state from a running daemon.

A second, independent bitswap client beside Kubo (test_bitswap_states.py): Helia 7 with a minimal
js-libp2p (TCP, Noise, yamux, identify; no routing, no HTTP gateways) dials the daemon and
``unixfs.cat``s the state CID ``fednode show`` prints for an xor-stored tensor; the bytes equal
``fednode checkout``'s. The packages are pinned in package.json / package-lock.json and installed
by `make test` (``npm ci``) into the repository's node_modules ($FEDNODE_HELIA_DIR points
elsewhere); without them the test fails. ``"overrides": {"undici": "7.16.0"}``: undici 8, under
@libp2p/http, needs Node 22 and this machine has Node 20.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProc, daemons, make_home
from helia_node import HELIA_DIR, PREAMBLE, check_installed
from helpers import run_fednode, write_model
from test_bitswap_states import _checkout, _show

HELIA_FETCH = PREAMBLE + """
const { writeFile } = await import('node:fs/promises')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')

const [addr, cid, dest, timeoutMs] = process.argv.slice(1)
const helia = createHelia([])
await helia.start()
const signal = AbortSignal.timeout(Number(timeoutMs))
try {
  await helia.libp2p.dial(multiaddr(addr), { signal })
  const chunks = []
  for await (const chunk of unixfs(helia).cat(CID.parse(cid), { signal })) chunks.push(chunk)
  await writeFile(dest, Buffer.concat(chunks))
  console.log(JSON.stringify({ ok: true }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err) }))
} finally {
  await helia.stop()
  process.exit(0)
}
"""


@pytest.fixture(autouse=True)
def helia_installed() -> None:
    check_installed()


def helia_fetch(addr: str, cid: str, dest: Path, timeout: float) -> dict[str, object]:
    done = subprocess.run(["node", "--input-type=module", "-e", HELIA_FETCH, addr, cid, str(dest),
                           str(int(timeout * 1000))], cwd=HELIA_DIR, capture_output=True, text=True,
                          timeout=timeout + 30)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1])


def test_helia_fetches_a_delta_stored_state(tmp_path: Path) -> None:
    home = make_home(tmp_path, "owner")
    w0 = np.random.default_rng(11).standard_normal(300_000).astype(np.float32)
    run_fednode(home, "repo", "create", "demo", "--public", "--from",
                write_model(tmp_path / "m0.safetensors", {"w": ("F32", w0)}))
    w1 = w0.copy()
    w1[::50] += 0.25
    run_fednode(home, "commit", "--from", write_model(tmp_path / "m1.safetensors", {"w": ("F32", w1)}), "-m", "xor")
    entry = _show(home, "main")["w"]
    assert entry["encoding"] == "xor"
    expected = _checkout(home, "main", tmp_path / "out.safetensors")
    with daemons(DaemonProc(home).start()) as (d,):
        addr = d.addr if "/p2p/" in d.addr else f"{d.addr}/p2p/{d.peer_id}"
        dest = tmp_path / "helia.bin"
        got = helia_fetch(addr, entry["state"], dest, timeout=30)
        assert got == {"ok": True}, got
        assert dest.read_bytes() == expected == w1.tobytes()
