"""programs/zkverify/zkverify.c: the update-proof check with Solana's alt_bn128 syscalls, in LiteSVM.

The stored proof (tests/core/zk_update_proof_vector.json, made by circom2 + snarkjs, verified by
fednode.zk.update_proof) is checked on chain: accepted within the 200k CU an instruction gets by
default, and each tampering fails with its own error code. No Node.js needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from solders.account import Account
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata

from fednode.zk import pedersen as ped
from programs import build as federity_build
from programs.sbpf_linker import link

SOURCE = Path(__file__).resolve().parents[2] / "programs" / "zkverify" / "zkverify.c"
VECTOR = json.loads((Path(__file__).resolve().parents[1] / "core" / "zk_update_proof_vector.json").read_text())
E_BOUND, E_POINT, E_LINK, E_GROTH16 = 2, 3, 4, 5
CU_TARGET = 200_000


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[LiteSVM, object, object, Keypair]:
    obj = tmp_path_factory.mktemp("zkverify") / "zkverify.o"
    federity_build.compile_c(SOURCE, obj)
    svm = LiteSVM()
    program = Keypair().pubkey()
    svm.add_program(program, link([(obj.name, obj.read_bytes())], 3))
    vk_account = Keypair().pubkey()
    vk = bytes.fromhex(VECTOR["vk"])
    svm.set_account(vk_account, Account(10**9, vk, program, False, 0))
    payer = Keypair()
    svm.airdrop(payer.pubkey(), 10**10)
    return svm, program, vk_account, payer


def send(chain: tuple, proof: bytes, commitment: bytes, commit_hash: bytes, bound2: int) -> tuple[int, int]:
    """(error code or 0, compute units consumed)."""
    svm, program, vk_account, payer = chain
    data = proof + commitment + commit_hash + bound2.to_bytes(32, "big")
    ix = Instruction(program, data, [AccountMeta(vk_account, False, False)])
    svm.expire_blockhash()
    tx = Transaction([payer], Message([ix], payer.pubkey()), svm.latest_blockhash())
    result = svm.send_transaction(tx)
    if isinstance(result, FailedTransactionMetadata):
        text = str(result.err())
        code = int(text.split("Custom(")[1].split(")")[0]) if "Custom(" in text else -1
        return code, result.meta().compute_units_consumed()
    return 0, result.compute_units_consumed()


def test_stored_proof_verifies_on_chain_within_the_budget(chain: tuple) -> None:
    proof, c = bytes.fromhex(VECTOR["proof"]), bytes.fromhex(VECTOR["commitment"])
    code, cu = send(chain, proof, c, bytes.fromhex(VECTOR["commit_hash"]), VECTOR["bound2"])
    assert code == 0
    assert cu <= CU_TARGET, cu
    print(f"update proof verified on chain: {cu} CU")


def test_tampered_inputs_fail_on_chain_each_with_its_code(chain: tuple) -> None:
    proof, c = bytes.fromhex(VECTOR["proof"]), bytes.fromhex(VECTOR["commitment"])
    h, b2 = bytes.fromhex(VECTOR["commit_hash"]), VECTOR["bound2"]
    other_c = ped.commit([v + (i == 0) for i, v in enumerate(VECTOR["values"])], VECTOR["blinding"])
    assert send(chain, proof, other_c, h, b2)[0] == E_LINK  # a proof for another vector
    assert send(chain, proof, c, bytes([h[0] ^ 1]) + h[1:], b2)[0] == E_GROTH16  # another commit hash
    assert send(chain, proof, c, h, b2 - 1)[0] == E_GROTH16  # a tampered public input
    assert send(chain, proof, c, h, 1 << 200)[0] == E_BOUND  # a bound the circuit cannot compare
    off_curve = c[:63] + bytes([c[63] ^ 1])
    assert send(chain, proof, off_curve, h, b2)[0] == E_POINT  # a commitment not on the curve


def test_a_proof_point_outside_g2s_subgroup_is_refused_by_the_syscall(chain: tuple) -> None:
    from py_ecc import optimized_bn128 as bn
    from py_ecc.fields import optimized_bn128_FQ2 as FQ2

    from fednode.zk import pairing as pr

    p = bn.field_modulus
    x = FQ2([2, 1])
    rhs = x ** 3 + bn.b2
    a1 = rhs ** ((p - 3) // 4)  # square root in Fp2 (p = 3 mod 4): a point on the twist, not in G2
    alpha = a1 * a1 * rhs
    y = (FQ2([0, 1]) if alpha == FQ2([p - 1, 0]) else (FQ2.one() + alpha) ** ((p - 1) // 2)) * a1 * rhs
    q = ((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1])))
    proof = bytes.fromhex(VECTOR["proof"])
    bad = proof[:64] + pr.encode_g2(q) + proof[192:]
    code, _ = send(chain, bad, bytes.fromhex(VECTOR["commitment"]), bytes.fromhex(VECTOR["commit_hash"]),
                   VECTOR["bound2"])
    assert code == E_POINT  # the pairing syscall checks G2 membership, as our decoder does
