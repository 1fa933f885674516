/* Update-proof verifier on Solana (a standalone prototype; docs/zk.md "Update proofs"): measures the
 * check alone. The federity program makes the same check in prove_commit; both use
 * programs/sdk/zk_update_proof.h.
 *
 * Accounts: [0] the verifying key (its data is fednode.zk.update_proof.VerifyingKey.encode()).
 * Data: proof (384) || commitment C (64) || commit hash h (32) || B^2 (32, big-endian): 512 bytes.
 * Errors: the ZK_* codes (1 data, 2 bound, 3 point, 4 link, 5 Groth16). */

#pragma clang diagnostic ignored "-Wunused-function" /* the SDK's helpers this program does not use */
#include "../sdk/federity_sdk.h"
#include "../sdk/zk_update_proof.h"

#define DATA_LEN (ZK_PROOF_LEN + 64 + 32 + 32)

uint64_t entrypoint(const uint8_t *input) {
  SolAccountInfo accounts[1];
  SolParameters p = {.ka = accounts};
  sol_deserialize(input, &p, 1);
  if (p.ka_num < 1 || p.data_len != DATA_LEN) return ZK_DATA;
  if (zk_vk_check(accounts[0].data, accounts[0].data_len)) return ZK_DATA;
  const uint8_t *proof = p.data, *c = proof + ZK_PROOF_LEN;
  ZkStatement s = {accounts[0].data, proof, c, c + 64, c + 96};
  return zk_verify(&s);
}
