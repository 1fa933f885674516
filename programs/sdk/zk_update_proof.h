/* zk_update_proof.h: the update-proof check (fednode/zk/update_proof.py verify(), docs/zk.md "Update
 * proofs") with Solana's alt_bn128 syscalls. Shared by programs/federity (prove_commit) and the
 * standalone prototype programs/zkverify. Header-only: include it after federity_sdk.h.
 *
 * The verifying key is VerifyingKey.encode(): magic[24] || n u32 || k u8 || sb u8 || seed_len u16
 * (big-endian) || seed || alpha_1 || beta_2 || gamma_2 || delta_2 || IC_0..IC_3 || [a]_2 ||
 * [k1 a]_2 || [k2 a]_2 (G1 64 bytes x||y, G2 128 bytes EIP-197). The proof is A || B || C_g || D || L.
 * Checks:
 *   vk_x = IC_0 + h_hi IC_1 + h_lo IC_2 + B^2 IC_3 + D
 *   e(L,[a]) e(-D,[k1 a]) e(-C,[k2 a]) = 1                       (else ZK_LINK)
 *   e(A,B) e(-alpha,beta) e(-vk_x,gamma) e(-C_g,delta) = 1         (else ZK_GROTH16) */
#ifndef ZK_UPDATE_PROOF_H
#define ZK_UPDATE_PROOF_H

#define ZK_OK 0
#define ZK_DATA 1    /* the key is malformed (zk_vk_check) */
#define ZK_BOUND 2   /* B^2 not below 2^sb */
#define ZK_POINT 3   /* a point the syscalls refuse (off the curve, outside G2's subgroup) */
#define ZK_LINK 4    /* the link proof fails: D and C do not open to the same vector */
#define ZK_GROTH16 5 /* the Groth16 proof fails: another hash, bound, or a false statement */

#define ZK_VK_MAGIC_LEN 24
#define ZK_VK_POINTS (64 + 3 * 128 + 4 * 64 + 3 * 128)
#define ZK_VK_FIXED (ZK_VK_MAGIC_LEN + 8 + ZK_VK_POINTS) /* 1120 bytes plus the seed */
#define ZK_PROOF_LEN 384
#define ZK_MAX_BOUND_BITS 250 /* update_proof.MAX_BOUND_BITS */

static const uint8_t ZK_FIELD_P[32] = {
    0x30, 0x64, 0x4e, 0x72, 0xe1, 0x31, 0xa0, 0x29, 0xb8, 0x50, 0x45, 0xb6, 0x81, 0x81, 0x58, 0x5d,
    0x97, 0x81, 0x6a, 0x91, 0x68, 0x71, 0xca, 0x8d, 0x3c, 0x20, 0x8c, 0x16, 0xd8, 0x7c, 0xfd, 0x47};
static const uint8_t ZK_VK_MAGIC[ZK_VK_MAGIC_LEN] = "fednode-zk-update-vk-v1"; /* and its NUL */

/* ZK_OK when `vk` has the key's shape: magic, length = 1120 + seed_len, 1 <= k <= 64,
 * 1 <= sb <= 250, n >= 1 (VerifyingKey.decode's checks; its points are checked by the syscalls
 * when used). */
static uint64_t zk_vk_check(const uint8_t *vk, uint64_t len) {
  if (len < ZK_VK_FIXED || !sol_bytes_eq(vk, ZK_VK_MAGIC, ZK_VK_MAGIC_LEN)) return ZK_DATA;
  const uint8_t *h = vk + ZK_VK_MAGIC_LEN;
  uint64_t n = (uint64_t)h[0] << 24 | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 8 | h[3];
  uint64_t k = h[4], sb = h[5], seed_len = (uint64_t)h[6] << 8 | h[7];
  if (len != ZK_VK_FIXED + seed_len || n < 1 || k < 1 || k > 64 || sb < 1 || sb > ZK_MAX_BOUND_BITS)
    return ZK_DATA;
  return ZK_OK;
}

/* B^2 (32 bytes, big-endian) < 2^sb, sb from a key that passed zk_vk_check */
static bool zk_bound_ok(const uint8_t *vk, const uint8_t bound2[32]) {
  uint64_t sb = vk[ZK_VK_MAGIC_LEN + 5];
  for (uint64_t bit = sb; bit < 256; bit++)
    if (bound2[31 - bit / 8] >> (bit % 8) & 1) return false;
  return true;
}

/* -P for a big-endian x || y (infinity stays infinity) */
static void zk_g1_neg(const uint8_t in[64], uint8_t out[64]) {
  memcpy(out, in, 64);
  if (sol_is_zero(in + 32, 32)) return;
  int borrow = 0;
  for (int i = 31; i >= 0; i--) {
    int d = (int)ZK_FIELD_P[i] - (int)in[32 + i] - borrow;
    borrow = d < 0;
    out[32 + i] = (uint8_t)(d + (borrow ? 256 : 0));
  }
}

/* acc += k p for a 32-byte big-endian scalar */
static bool zk_g1_mul_add(uint8_t acc[64], const uint8_t p[64], const uint8_t k[32]) {
  uint8_t in[96], t[64];
  memcpy(in, p, 64);
  memcpy(in + 64, k, 32);
  return sol_alt_bn128_group_op(ALT_BN128_G1_MUL, in, 96, t) == 0 && bn254_g1_add(acc, t, acc);
}

/* ZK_OK if the product of the n pairings is one, `fail` if it is not, ZK_POINT if a point is refused */
static uint64_t zk_pairing_check(const uint8_t *pairs, uint64_t n, uint64_t fail) {
  uint8_t out[32];
  if (sol_alt_bn128_group_op(ALT_BN128_PAIRING, pairs, 192 * n, out) != 0) return ZK_POINT;
  for (int i = 0; i < 31; i++)
    if (out[i]) return fail;
  return out[31] == 1 ? ZK_OK : fail;
}

/* pair = (-g1 if negate else g1, g2) */
static void zk_pair(uint8_t *dst, const uint8_t g1[64], bool negate, const uint8_t *g2) {
  if (negate) zk_g1_neg(g1, dst);
  else memcpy(dst, g1, 64);
  memcpy(dst + 64, g2, 128);
}

typedef struct {
  const uint8_t *vk; /* a key that passed zk_vk_check */
  const uint8_t *proof;      /* ZK_PROOF_LEN bytes */
  const uint8_t *commitment; /* C, 64 bytes */
  const uint8_t *hash;       /* h, 32 bytes: the proof hash */
  const uint8_t *bound2;     /* B^2, 32 bytes big-endian */
} ZkStatement;

/* The link, then Groth16: two products (3 + 4 pairs), ~157k CU. One 7-pair product with a random
 * rho on the link costs ~12k CU less when the proof is valid, but a failure would then need a
 * second product to say which part failed, and that no longer fits 200k CU. */
static uint64_t zk_verify(const ZkStatement *s) {
  if (!zk_bound_ok(s->vk, s->bound2)) return ZK_BOUND;
  uint64_t seed_len = (uint64_t)s->vk[ZK_VK_MAGIC_LEN + 6] << 8 | s->vk[ZK_VK_MAGIC_LEN + 7];
  const uint8_t *alpha = s->vk + ZK_VK_MAGIC_LEN + 8 + seed_len, *beta = alpha + 64, *gamma = beta + 128,
                *delta = gamma + 128, *ic = delta + 128, *a2 = ic + 256, *k1a2 = a2 + 128, *k2a2 = k1a2 + 128;
  const uint8_t *A = s->proof, *B = A + 64, *Cg = B + 128, *D = Cg + 64, *L = D + 64;

  /* vk_x = IC_0 + h_hi IC_1 + h_lo IC_2 + B^2 IC_3 + D */
  uint8_t k[32], vkx[64];
  memcpy(vkx, ic, 64);
  memset(k, 0, 16);
  memcpy(k + 16, s->hash, 16);
  if (!zk_g1_mul_add(vkx, ic + 64, k)) return ZK_POINT;
  memcpy(k + 16, s->hash + 16, 16);
  if (!zk_g1_mul_add(vkx, ic + 128, k) || !zk_g1_mul_add(vkx, ic + 192, s->bound2)) return ZK_POINT;
  if (!bn254_g1_add(vkx, D, vkx)) return ZK_POINT;

  uint8_t pairs[4 * 192];
  zk_pair(pairs, L, false, a2);
  zk_pair(pairs + 192, D, true, k1a2);
  zk_pair(pairs + 2 * 192, s->commitment, true, k2a2);
  uint64_t err = zk_pairing_check(pairs, 3, ZK_LINK);
  if (err) return err;
  zk_pair(pairs, A, false, B);
  zk_pair(pairs + 192, alpha, true, beta);
  zk_pair(pairs + 2 * 192, vkx, true, gamma);
  zk_pair(pairs + 3 * 192, Cg, true, delta);
  return zk_pairing_check(pairs, 4, ZK_GROTH16);
}

#endif /* ZK_UPDATE_PROOF_H */
