/* Update-proof verifier on Solana (a standalone prototype; docs/zk.md "Update proofs"): measures what
 * the federity program would pay to check an update proof with the alt_bn128 syscalls.
 *
 * Accounts: [0] the verifying key (its data is fednode.zk.update_proof.VerifyingKey.encode()).
 * Data: proof (384) || commitment C (64) || commit hash h (32) || B^2 (32, big-endian): 512 bytes.
 * Checks, as fednode/zk/update_proof.py verify():
 *   vk_x = IC_0 + h_hi IC_1 + h_lo IC_2 + B^2 IC_3 + D
 *   e(L,[a]) e(-D,[k1 a]) e(-C,[k2 a]) = 1                       (else E_LINK)
 *   e(A,B) e(-alpha,beta) e(-vk_x,gamma) e(-C_g,delta) = 1         (else E_GROTH16) */

#pragma clang diagnostic ignored "-Wunused-function" /* the SDK's helpers this program does not use */
#include "../sdk/federity_sdk.h"

#define E_DATA 1        /* instruction data or key account malformed */
#define E_BOUND 2       /* B^2 not below 2^sb */
#define E_POINT 3       /* a point the syscalls refuse (off the curve, G2 subgroup) */
#define E_LINK 4        /* the link proof fails */
#define E_GROTH16 5     /* the Groth16 proof fails */

#define VK_MAGIC_LEN 24
#define VK_POINTS (64 + 3 * 128 + 4 * 64 + 3 * 128)
#define DATA_LEN (384 + 64 + 32 + 32)

static const uint8_t FIELD_P[32] = {
    0x30, 0x64, 0x4e, 0x72, 0xe1, 0x31, 0xa0, 0x29, 0xb8, 0x50, 0x45, 0xb6, 0x81, 0x81, 0x58, 0x5d,
    0x97, 0x81, 0x6a, 0x91, 0x68, 0x71, 0xca, 0x8d, 0x3c, 0x20, 0x8c, 0x16, 0xd8, 0x7c, 0xfd, 0x47};
static const uint8_t VK_MAGIC[VK_MAGIC_LEN] = "fednode-zk-update-vk-v1";  /* and its NUL */

/* -P for a big-endian x || y (infinity stays infinity) */
static void g1_neg(const uint8_t in[64], uint8_t out[64]) {
  memcpy(out, in, 64);
  bool zero = true;
  for (int i = 32; i < 64; i++) zero = zero && in[i] == 0;
  if (zero) return;
  int borrow = 0;
  for (int i = 31; i >= 0; i--) {
    int d = (int)FIELD_P[i] - (int)in[32 + i] - borrow;
    borrow = d < 0;
    out[32 + i] = (uint8_t)(d + (borrow ? 256 : 0));
  }
}

/* out = k p for a 32-byte big-endian scalar */
static bool g1_mul(const uint8_t p[64], const uint8_t k[32], uint8_t out[64]) {
  uint8_t in[96];
  memcpy(in, p, 64);
  memcpy(in + 64, k, 32);
  return sol_alt_bn128_group_op(ALT_BN128_G1_MUL, in, 96, out) == 0;
}

/* 0 if the product of the pairings is one, `fail` if it is not, E_POINT if a point is refused */
static uint64_t pairing_check(const uint8_t *pairs, uint64_t n, uint64_t fail) {
  uint8_t out[32];
  if (sol_alt_bn128_group_op(ALT_BN128_PAIRING, pairs, 192 * n, out) != 0) return E_POINT;
  for (int i = 0; i < 31; i++)
    if (out[i]) return fail;
  return out[31] == 1 ? 0 : fail;
}

static void put_pair(uint8_t *dst, const uint8_t g1[64], const uint8_t *g2) {
  memcpy(dst, g1, 64);
  memcpy(dst + 64, g2, 128);
}

uint64_t entrypoint(const uint8_t *input) {
  SolAccountInfo accounts[1];
  SolParameters p = {.ka = accounts};
  sol_deserialize(input, &p, 1);
  if (p.ka_num < 1 || p.data_len != DATA_LEN) return E_DATA;
  const uint8_t *vk = accounts[0].data;
  uint64_t vk_len = accounts[0].data_len;
  if (vk_len < VK_MAGIC_LEN + 8 || !sol_bytes_eq(vk, VK_MAGIC, VK_MAGIC_LEN)) return E_DATA;
  uint8_t sb = vk[VK_MAGIC_LEN + 5];
  uint64_t seed_len = ((uint64_t)vk[VK_MAGIC_LEN + 6] << 8) | vk[VK_MAGIC_LEN + 7];
  if (vk_len != VK_MAGIC_LEN + 8 + seed_len + VK_POINTS) return E_DATA;
  const uint8_t *alpha = vk + VK_MAGIC_LEN + 8 + seed_len, *beta = alpha + 64, *gamma = beta + 128,
                *delta = gamma + 128, *ic = delta + 128, *a2 = ic + 256, *k1a2 = a2 + 128, *k2a2 = k1a2 + 128;
  const uint8_t *A = p.data, *B = A + 64, *Cg = B + 128, *D = Cg + 64, *L = D + 64, *C = L + 64,
                *h = C + 64, *bound2 = h + 32;

  /* B^2 < 2^sb: every bit at or above sb is zero */
  for (int bit = sb; bit < 256; bit++)
    if (bound2[31 - bit / 8] >> (bit % 8) & 1) return E_BOUND;

  /* vk_x = IC_0 + h_hi IC_1 + h_lo IC_2 + B^2 IC_3 + D */
  uint8_t k[32], t[64], vkx[64];
  memset(k, 0, 16);
  memcpy(k + 16, h, 16);
  if (!g1_mul(ic + 64, k, t) || !bn254_g1_add(ic, t, vkx)) return E_POINT;
  memcpy(k + 16, h + 16, 16);
  if (!g1_mul(ic + 128, k, t) || !bn254_g1_add(vkx, t, vkx)) return E_POINT;
  if (!g1_mul(ic + 192, bound2, t) || !bn254_g1_add(vkx, t, vkx)) return E_POINT;
  if (!bn254_g1_add(vkx, D, vkx)) return E_POINT;

  /* the link, then Groth16: two products (3 + 4 pairs). One 7-pair product with a random rho on the
   * link costs ~12k CU less when the proof is valid (the pairs are cheaper than 3 more scalar
   * multiplications), but a failure would then need a second product to say which part failed,
   * and that no longer fits 200k CU. */
  uint8_t pairs[4 * 192], neg[64];
  put_pair(pairs, L, a2);
  g1_neg(D, neg);
  put_pair(pairs + 192, neg, k1a2);
  g1_neg(C, neg);
  put_pair(pairs + 2 * 192, neg, k2a2);
  uint64_t err = pairing_check(pairs, 3, E_LINK);
  if (err) return err;
  put_pair(pairs, A, B);
  g1_neg(alpha, neg);
  put_pair(pairs + 192, neg, beta);
  g1_neg(vkx, neg);
  put_pair(pairs + 2 * 192, neg, gamma);
  g1_neg(Cg, neg);
  put_pair(pairs + 3 * 192, neg, delta);
  return pairing_check(pairs, 4, E_GROTH16);
}
