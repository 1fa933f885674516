"""The update-proof verifier on a stored proof (tests/core/zk_update_proof_vector.json, made once by
circom2 + snarkjs): runs without Node.js, so the verifier is tested wherever the tests run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fednode.zk import pedersen as ped
from fednode.zk import update_proof as up
from fednode.zk.curve import ZkError

VECTOR = json.loads((Path(__file__).with_name("zk_update_proof_vector.json")).read_text())
VK = up.VerifyingKey.decode(bytes.fromhex(VECTOR["vk"]))
PROOF = bytes.fromhex(VECTOR["proof"])
C = bytes.fromhex(VECTOR["commitment"])
H = bytes.fromhex(VECTOR["commit_hash"])
B2 = VECTOR["bound2"]
LINK = "update proof: the link proof fails (D and the commitment do not open to the same vector)"
GROTH = "update proof: the Groth16 proof fails for this commit hash, norm bound and committed vector"


@pytest.mark.parametrize("backend", ["mcl", "reference"])
def test_stored_proof_verifies(backend: str) -> None:
    assert ped.commit(VECTOR["values"], VECTOR["blinding"]) == C  # the vector is the one committed
    assert (VK.n, VK.k, len(PROOF)) == (8, 16, 384)
    up.verify(VK, PROOF, C, H, B2, backend_name=backend)


@pytest.mark.parametrize(("backend", "case", "reason"), [
    ("mcl", "another vector", LINK), ("mcl", "another commit hash", GROTH), ("mcl", "another bound", GROTH),
    ("mcl", "a proof byte", None), ("reference", "another vector", LINK), ("reference", "another bound", GROTH)])
def test_stored_proof_tampered(backend: str, case: str, reason: str | None) -> None:
    commitment, commit_hash, bound2, proof = C, H, B2, PROOF
    if case == "another vector":
        commitment = ped.commit([v + (i == 3) for i, v in enumerate(VECTOR["values"])], VECTOR["blinding"])
    elif case == "another commit hash":
        commit_hash = bytes([H[0] ^ 0x80]) + H[1:]
    elif case == "another bound":
        bound2 = B2 + 1
    else:  # A's x coordinate changed: off the curve (or, rarely, another point: then the equation fails)
        proof = bytes([PROOF[0]]) + bytes([PROOF[1] ^ 1]) + PROOF[2:]
    with pytest.raises(ZkError) as err:
        up.verify(VK, proof, commitment, commit_hash, bound2, backend_name=backend)
    if reason is not None:
        assert str(err.value) == reason
