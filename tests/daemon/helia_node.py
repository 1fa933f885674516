"""A Helia 7 node (npm ``helia`` with a minimal js-libp2p: TCP, Noise, yamux, identify, bitswap; no
routing, no HTTP gateways) for the tests that check fednode against it.

The packages are pinned in package.json / package-lock.json and installed by `make test` (``npm ci``)
into the repository's node_modules ($FEDNODE_HELIA_DIR points elsewhere). Scripts run with
``node --input-type=module -e`` in ``HELIA_DIR`` so that imports resolve from its node_modules.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from helpers import ROOT

HELIA_DIR = Path(os.environ.get("FEDNODE_HELIA_DIR", ROOT))

# Node 20 lacks Promise.withResolvers, which Helia's dependencies call: polyfilled first, then the
# modules are imported dynamically (a static import would run before the polyfill). A script
# appends its own imports and body; `createHelia(addresses)` builds the node.
PREAMBLE = """
Promise.withResolvers ??= () => {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { withBitswap } = await import('@helia/bitswap')
const { withLibp2pLight } = await import('@helia/libp2p')
const { unixfs } = await import('@helia/unixfs')
const { identify } = await import('@libp2p/identify')
const { tcp } = await import('@libp2p/tcp')
const { createHeliaLight } = await import('helia')
const createHelia = (listen) => withBitswap(withLibp2pLight(createHeliaLight(), {
  addresses: { listen }, transports: [tcp()], connectionEncrypters: [noise()],
  streamMuxers: [yamux()], services: { identify: identify() }
}))
"""


def check_installed() -> None:
    """Helia is part of the set-up: missing, the test fails (it is never skipped)."""
    assert shutil.which("node"), "node is not on PATH: the interop tests need Node.js (see README)"
    assert (HELIA_DIR / "node_modules" / "helia").is_dir(), f"Helia is not in {HELIA_DIR}: run make test (npm ci)"
