"""``fednode zk setup``: real Groth16 keys in the node home (n = 2, update and remainder keys from
fednode's development set-up: seconds), refusals first."""

from __future__ import annotations

import json
from pathlib import Path

from fednode.workflows import zkprove as zp


def test_zk_setup_makes_loadable_keys_once(cli, home: Path) -> None:
    zp.find_tools()  # circom2 and snarkjs are pinned in package.json: their absence fails, never skips
    bad = cli("zk", "setup", "-n", "0", ok=False)
    assert bad.exit_code == 1 and "update-proof circuits take 1 <= n" in bad.stderr
    assert not (home / "zk" / "update-n0-k16").exists()
    made = json.loads(cli("zk", "setup", "-n", "2", "--json").stdout)
    keys = zp.load_keys(Path(made["path"]))
    assert (keys.vk.n, keys.vk.k) == (2, 16) and keys.vk.key_id().hex() == made["vk_id"]
    assert "devsetup" in made["ptau"] and "development only" in made["ptau"]
    # and the remainder keys (K = 33 by default) beside them, from the same set-up
    rkeys = zp.remainder_keys(Path(made["path"]))
    assert rkeys is not None and (rkeys.vk.n, rkeys.vk.k, rkeys.vk.sb) == (2, 33, 32)
    assert made["circuit"] == "update_bound" and made["remainder"]["circuit"] == "remainder_bound"
    assert made["remainder"]["vk_id"] == rkeys.vk.key_id().hex() and made["remainder"]["ptau_power"] is None
    again = cli("zk", "setup", "-n", "2", ok=False)
    assert again.exit_code == 1 and "--force replaces them" in again.stderr
    assert zp.load_keys(Path(made["path"])).vk == keys.vk  # untouched
