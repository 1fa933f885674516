/* federity_sdk.h: the minimal Solana program SDK fednode's on-chain program is written against.
 *
 * Freestanding C for the SBPF target (compiled by clang/zig with -target bpf, linked by
 * programs/sbpf_linker.py). Header-only: include it from exactly one translation unit, because
 * it also defines memcpy/memset/memcmp for the code clang generates.
 *
 * Struct layouts that cross the syscall boundary (SolAccountInfo, SolInstruction, ...) are the
 * runtime's C ABI and must not change.
 */
#ifndef FEDERITY_SDK_H
#define FEDERITY_SDK_H

typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long int64_t;
typedef int int32_t;
typedef uint64_t size_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

#define SOL_PUBKEY_SIZE 32
#define SOL_MAX_PERMITTED_DATA_INCREASE (10 * 1024)
#define SOL_NON_DUP_MARKER 0xff

typedef struct {
  uint8_t x[SOL_PUBKEY_SIZE];
} SolPubkey;

/* ---- syscalls (resolved by name hash; see SOLANA_SYSCALLS in the linker) ---------------- */

typedef struct {
  const uint8_t *addr;
  uint64_t len;
} SolBytes; /* also a PDA seed */

typedef struct {
  const SolBytes *addr;
  uint64_t len;
} SolSignerSeeds;

typedef struct {
  SolPubkey *pubkey;
  bool is_writable;
  bool is_signer;
} SolAccountMeta;

typedef struct {
  SolPubkey *program_id;
  SolAccountMeta *accounts;
  uint64_t account_len;
  uint8_t *data;
  uint64_t data_len;
} SolInstruction;

/* One account as the runtime serialised it; pointers alias the input buffer, so writes to
 * *lamports and data[] are the program's writes. data_len is a copy: see sol_refresh_len(). */
typedef struct {
  SolPubkey *key;
  uint64_t *lamports;
  uint64_t data_len;
  uint8_t *data;
  SolPubkey *owner;
  uint64_t rent_epoch;
  bool is_signer;
  bool is_writable;
  bool executable;
} SolAccountInfo;

extern void sol_log_(const char *message, uint64_t len);
extern void sol_log_64_(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e);
extern void sol_log_pubkey(const SolPubkey *key);
extern uint64_t sol_sha256(const SolBytes *slices, uint64_t count, uint8_t *out32);
extern uint64_t sol_create_program_address(const SolBytes *seeds, uint64_t count,
                                           const SolPubkey *program_id, SolPubkey *out);
extern uint64_t sol_try_find_program_address(const SolBytes *seeds, uint64_t count,
                                             const SolPubkey *program_id, SolPubkey *out,
                                             uint8_t *bump);
extern uint64_t sol_invoke_signed_c(const SolInstruction *ix, const SolAccountInfo *infos,
                                    uint64_t infos_len, const SolSignerSeeds *signers,
                                    uint64_t signers_len);
extern void sol_set_return_data(const uint8_t *data, uint64_t len);
extern uint64_t sol_alt_bn128_group_op(uint64_t op, const uint8_t *input, uint64_t input_len,
                                       uint8_t *result);
extern uint64_t sol_get_clock_sysvar(void *out);
extern uint64_t sol_get_rent_sysvar(void *out);
extern void sol_memcpy_(void *dst, const void *src, uint64_t n);
extern void sol_memset_(void *dst, uint8_t c, uint64_t n);
extern void sol_memcmp_(const void *a, const void *b, uint64_t n, int32_t *result);

#define sol_log(literal) sol_log_((literal), sizeof(literal) - 1)
#define SOL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- memory helpers: clang emits calls to these for struct copies ----------------------- */

/* The syscalls cost ~10 CU whatever the size, far less than a byte loop past a few bytes. */
void *memcpy(void *dst, const void *src, size_t n) {
  if (n) sol_memcpy_(dst, src, n);
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  if (n) sol_memset_(dst, (uint8_t)c, n);
  return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
  int32_t r = 0;
  if (n) sol_memcmp_(a, b, n, &r);
  return r;
}

static inline bool sol_bytes_eq(const void *a, const void *b, uint64_t n) {
  return memcmp(a, b, n) == 0;
}

static inline bool sol_pubkey_eq(const SolPubkey *a, const SolPubkey *b) {
  return memcmp(a, b, SOL_PUBKEY_SIZE) == 0;
}

static inline bool sol_is_zero(const uint8_t *p, uint64_t n) {
  for (uint64_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

/* Unaligned little-endian loads/stores: instruction data has no alignment guarantees. */
static inline uint16_t sol_read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline uint64_t sol_read_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static inline void sol_write_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- entrypoint input ----------------------------------------------------------------- */

typedef struct {
  SolAccountInfo *ka;      /* caller-provided array */
  uint64_t ka_num;         /* accounts in the transaction instruction (may exceed capacity) */
  const uint8_t *data;     /* instruction data */
  uint64_t data_len;
  const SolPubkey *program_id;
} SolParameters;

/* Parses the runtime's aligned serialisation (loader v2/v3). Fills at most ka_cap entries of
 * params->ka; duplicates are resolved to copies of the first occurrence. */
static bool sol_deserialize(const uint8_t *input, SolParameters *params, uint64_t ka_cap) {
  params->ka_num = *(const uint64_t *)input;
  input += sizeof(uint64_t);
  for (uint64_t i = 0; i < params->ka_num; i++) {
    uint8_t dup = input[0];
    input += 1;
    if (dup == SOL_NON_DUP_MARKER) {
      SolAccountInfo a;
      a.is_signer = input[0] != 0;
      a.is_writable = input[1] != 0;
      a.executable = input[2] != 0;
      input += 3 + 4; /* flags, original data length */
      a.key = (SolPubkey *)input;
      input += SOL_PUBKEY_SIZE;
      a.owner = (SolPubkey *)input;
      input += SOL_PUBKEY_SIZE;
      a.lamports = (uint64_t *)input;
      input += sizeof(uint64_t);
      a.data_len = *(const uint64_t *)input;
      input += sizeof(uint64_t);
      a.data = (uint8_t *)input;
      input += a.data_len + SOL_MAX_PERMITTED_DATA_INCREASE;
      input = (const uint8_t *)(((uint64_t)input + 7) & ~(uint64_t)7);
      a.rent_epoch = *(const uint64_t *)input;
      input += sizeof(uint64_t);
      if (i < ka_cap) params->ka[i] = a;
    } else {
      input += 7;
      if (i < ka_cap && dup < ka_cap) params->ka[i] = params->ka[dup];
    }
  }
  params->data_len = *(const uint64_t *)input;
  input += sizeof(uint64_t);
  params->data = input;
  input += params->data_len;
  params->program_id = (const SolPubkey *)input;
  return true;
}

/* A CPI (e.g. System create_account) can resize an account; the runtime then rewrites the
 * length stored just before the data in the input buffer. Re-read it from there. */
static inline void sol_refresh_len(SolAccountInfo *a) {
  a->data_len = *(const uint64_t *)(a->data - sizeof(uint64_t));
}

/* ---- hashing, PDAs, sysvars ----------------------------------------------------------- */

static inline void sol_sha256_2(const uint8_t *a, uint64_t a_len, const uint8_t *b,
                                uint64_t b_len, uint8_t *out32) {
  SolBytes s[2] = {{a, a_len}, {b, b_len}};
  sol_sha256(s, 2, out32);
}

typedef struct {
  uint64_t slot;
  int64_t epoch_start_timestamp;
  uint64_t epoch;
  uint64_t leader_schedule_epoch;
  int64_t unix_timestamp;
} SolClock;

static inline uint64_t sol_current_slot(void) {
  SolClock c;
  sol_get_clock_sysvar(&c);
  return c.slot;
}

/* Rent-exempt minimum = (128 + len) * lamports_per_byte * threshold, without floating point:
 * the f64 threshold (1.0 or 2.0 in practice) is decoded as mantissa * 2^exp. Returns 0 when the
 * threshold is not a small dyadic rational, which callers treat as an error. */
static uint64_t sol_rent_exempt_minimum(uint64_t data_len) {
  struct {
    uint64_t lamports_per_byte;
    uint64_t threshold_bits;
    uint8_t burn_percent;
  } rent;
  sol_get_rent_sysvar(&rent);
  uint64_t bits = rent.threshold_bits;
  int64_t exp = (int64_t)((bits >> 52) & 0x7ff);
  uint64_t mant = bits & ((1ul << 52) - 1);
  if (exp == 0 || exp == 0x7ff || (bits >> 63)) return 0;
  mant |= 1ul << 52;
  exp -= 1075;
  while (!(mant & 1) && exp < 0) {
    mant >>= 1;
    exp++;
  }
  if (mant > (1ul << 16) || exp > 8 || exp < -16) return 0;
  uint64_t base = (128 + data_len) * rent.lamports_per_byte * mant;
  return exp >= 0 ? base << exp : base >> (-exp);
}

/* ---- alt_bn128 (BN254) group operations, big-endian x||y points -------------------------- */

#define ALT_BN128_G1_ADD 0
#define ALT_BN128_G1_MUL 2
#define ALT_BN128_PAIRING 3

/* out = a + b; returns false if a or b is not a valid G1 point. */
static inline bool bn254_g1_add(const uint8_t a[64], const uint8_t b[64], uint8_t out[64]) {
  uint8_t in[128];
  memcpy(in, a, 64);
  memcpy(in + 64, b, 64);
  return sol_alt_bn128_group_op(ALT_BN128_G1_ADD, in, 128, out) == 0;
}

/* out = k * p for a u64 scalar k. */
static inline bool bn254_g1_mul_u64(const uint8_t p[64], uint64_t k, uint8_t out[64]) {
  uint8_t in[96];
  memcpy(in, p, 64);
  memset(in + 64, 0, 24);
  for (int i = 0; i < 8; i++) in[95 - i] = (uint8_t)(k >> (8 * i));
  return sol_alt_bn128_group_op(ALT_BN128_G1_MUL, in, 96, out) == 0;
}

/* ---- cross-program invocation helpers ---------------------------------------------------- */

static const SolPubkey SOL_SYSTEM_PROGRAM_ID = {{0}};

static inline uint64_t sol_system_invoke(uint8_t *data, uint64_t data_len,
                                         SolAccountInfo *infos, uint64_t n,
                                         const SolSignerSeeds *signer) {
  SolAccountMeta metas[2];
  for (uint64_t i = 0; i < n; i++) {
    metas[i].pubkey = infos[i].key;
    metas[i].is_writable = true;
    metas[i].is_signer = i == 0 || signer != NULL;
  }
  SolInstruction ix = {(SolPubkey *)&SOL_SYSTEM_PROGRAM_ID, metas, n, data, data_len};
  return sol_invoke_signed_c(&ix, infos, n, signer, signer ? 1 : 0);
}

/* Creates `target` (a PDA signed for by `seeds`) with `space` bytes owned by `owner`, paid by
 * `payer`. Works even if someone pre-funded the address (create_account would refuse it):
 * then transfer the shortfall, allocate and assign instead. infos = {payer, target}. */
static uint64_t sol_create_pda_account(SolAccountInfo infos[2], uint64_t space,
                                       const SolPubkey *owner, const SolSignerSeeds *seeds) {
  uint64_t need = sol_rent_exempt_minimum(space);
  if (need == 0) return 1;
  uint8_t data[52];
  uint64_t have = *infos[1].lamports;
  if (have == 0) {
    memset(data, 0, 4); /* CreateAccount */
    sol_write_u64(data + 4, need);
    sol_write_u64(data + 12, space);
    memcpy(data + 20, owner, 32);
    return sol_system_invoke(data, 52, infos, 2, seeds);
  }
  if (have < need) {
    memset(data, 0, 4);
    data[0] = 2; /* Transfer: payer signs, target is not a signer */
    sol_write_u64(data + 4, need - have);
    uint64_t rc = sol_system_invoke(data, 12, infos, 2, NULL);
    if (rc) return rc;
  }
  memset(data, 0, 4);
  data[0] = 8; /* Allocate */
  sol_write_u64(data + 4, space);
  uint64_t rc = sol_system_invoke(data, 12, infos + 1, 1, seeds);
  if (rc) return rc;
  memset(data, 0, 4);
  data[0] = 1; /* Assign */
  memcpy(data + 4, owner, 32);
  return sol_system_invoke(data, 36, infos + 1, 1, seeds);
}

#endif /* FEDERITY_SDK_H */
