/* BN254 scalar-field (Fr) kernels for fednode's Groth16 prover (fednode/zk/groth16.py).
 *
 * Elements are 4 little-endian u64 limbs. "mont" means Montgomery form x * 2^256 mod r, the form
 * snarkjs's zkey coefficients, FFTs and mcl's Fr scalars use. Every function works on a range
 * [lo, hi) or a whole array and touches nothing else, so Python runs two calls on two threads
 * (ctypes releases the GIL). Outputs are always fully reduced (< r).
 */
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef struct { uint64_t v[4]; } fr;

static const uint64_t R_[4] = {0x43e1f593f0000001ULL, 0x2833e84879b97091ULL,
                               0xb85045b68181585dULL, 0x30644e72e131a029ULL};
static const uint64_t INV = 0xc2e1f593efffffffULL; /* -r^-1 mod 2^64 */
static const uint64_t R2[4] = {0x1bb8e645ae216da7ULL, 0x53fe3ab1e35c59e3ULL,
                               0x8c49833d53bb8085ULL, 0x0216d0b17f4e44a5ULL}; /* 2^512 mod r */

int fednode_groth16_version(void) { return 2; }

static inline int geq_r(const uint64_t *a) {
    for (int i = 3; i >= 0; i--) {
        if (a[i] != R_[i]) return a[i] > R_[i];
    }
    return 1;
}

static inline void sub_r(uint64_t *a) {
    u128 borrow = 0;
    for (int i = 0; i < 4; i++) {
        u128 d = (u128)a[i] - R_[i] - borrow;
        a[i] = (uint64_t)d;
        borrow = (d >> 64) & 1;
    }
}

/* CIOS Montgomery multiplication: out = a * b / 2^256 mod r (inputs < r; out may alias). r's top
 * limb is below 2^63 - 1, so the running sum never needs a fifth word ("no-carry" CIOS: ~20% faster
 * than the textbook loop here, equal on a million random pairs). */
static inline void mont_mul(uint64_t *out, const uint64_t *a, const uint64_t *b) {
    uint64_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t bi = b[i];
        u128 c = (u128)a[0] * bi + t0;
        uint64_t u0 = (uint64_t)c;
        uint64_t m = u0 * INV;
        u128 d = (u128)m * R_[0] + u0;
        c = (u128)a[1] * bi + t1 + (uint64_t)(c >> 64);
        d = (u128)m * R_[1] + (uint64_t)c + (uint64_t)(d >> 64);
        t0 = (uint64_t)d;
        c = (u128)a[2] * bi + t2 + (uint64_t)(c >> 64);
        d = (u128)m * R_[2] + (uint64_t)c + (uint64_t)(d >> 64);
        t1 = (uint64_t)d;
        c = (u128)a[3] * bi + t3 + (uint64_t)(c >> 64);
        d = (u128)m * R_[3] + (uint64_t)c + (uint64_t)(d >> 64);
        t2 = (uint64_t)d;
        t3 = (uint64_t)(c >> 64) + (uint64_t)(d >> 64);
    }
    uint64_t res[4] = {t0, t1, t2, t3};
    if (geq_r(res)) sub_r(res);
    memcpy(out, res, 32);
}

static inline void add_mod(uint64_t *out, const uint64_t *a, const uint64_t *b) {
    uint64_t res[4];
    u128 c = 0;
    for (int i = 0; i < 4; i++) {
        c = (u128)a[i] + b[i] + (uint64_t)(c >> 64);
        res[i] = (uint64_t)c;
    }
    if ((c >> 64) || geq_r(res)) sub_r(res);  /* a + b < 2r < 2^256: no carry out in practice */
    memcpy(out, res, 32);
}

static inline void sub_mod(uint64_t *out, const uint64_t *a, const uint64_t *b) {
    uint64_t res[4];
    u128 borrow = 0;
    for (int i = 0; i < 4; i++) {
        u128 d = (u128)a[i] - b[i] - borrow;
        res[i] = (uint64_t)d;
        borrow = (d >> 64) & 1;
    }
    if (borrow) {  /* went below zero: add r back */
        u128 c = 0;
        for (int i = 0; i < 4; i++) {
            c = (u128)res[i] + R_[i] + (uint64_t)(c >> 64);
            res[i] = (uint64_t)c;
        }
    }
    memcpy(out, res, 32);
}

/* out[i] = a[i] * b[i] / 2^256 (b_stride 0: one b for all). */
void fednode_fr_mul(uint64_t *out, const uint64_t *a, const uint64_t *b, int64_t b_stride, int64_t n) {
    for (int64_t i = 0; i < n; i++) mont_mul(out + 4 * i, a + 4 * i, b + 4 * i * b_stride);
}

/* Normal form -> Montgomery; returns the index of the first value >= r, or -1. */
int64_t fednode_fr_to_mont(uint64_t *out, const uint64_t *in, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (geq_r(in + 4 * i)) return i;
        mont_mul(out + 4 * i, in + 4 * i, R2);
    }
    return -1;
}

void fednode_fr_from_mont(uint64_t *out, const uint64_t *in, int64_t n) {
    static const uint64_t one[4] = {1, 0, 0, 0};
    for (int64_t i = 0; i < n; i++) mont_mul(out + 4 * i, in + 4 * i, one);
}

/* One matrix of the zkey's section 4 applied to the witness: out[c] += coef * w[s] for every record
 * (matrix, c, s, coef) with matrix == which. Records are 44 packed bytes; coef is the coefficient
 * times 2^512 mod r, so with w in normal form the product is the Montgomery form of coef * w.
 * `out` (domain values, mont) must be zeroed by the caller. Returns -1, or the index of a record
 * that points outside the domain / witness or holds a coefficient >= r. */
int64_t fednode_qap_eval(const uint8_t *recs, int64_t nrec, int32_t which, const uint64_t *w, int64_t nvars,
                         uint64_t *out, int64_t domain) {
    for (int64_t i = 0; i < nrec; i++) {
        const uint8_t *p = recs + 44 * i;
        uint32_t m, c, s;
        uint64_t coef[4], t[4];
        memcpy(&m, p, 4);
        if ((int32_t)m != which) continue;
        memcpy(&c, p + 4, 4);
        memcpy(&s, p + 8, 4);
        memcpy(coef, p + 12, 32);
        if ((int64_t)c >= domain || (int64_t)s >= nvars || geq_r(coef)) return i;
        mont_mul(t, coef, w + 4 * (int64_t)s);
        add_mod(out + 4 * (int64_t)c, out + 4 * (int64_t)c, t);
    }
    return -1;
}

/* out[i] = a[i] * b[i] - c[i] over [lo, hi) (c NULL: just the product). */
void fednode_fr_mul_sub(uint64_t *out, const uint64_t *a, const uint64_t *b, const uint64_t *c, int64_t lo,
                        int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
        uint64_t t[4];
        mont_mul(t, a + 4 * i, b + 4 * i);
        if (c) sub_mod(t, t, c + 4 * i);
        memcpy(out + 4 * i, t, 32);
    }
}

/* a[i] *= scale * g^i for i in [0, n): the coset shift (with the inverse FFT's 1/n folded in). */
void fednode_fr_scale_powers(uint64_t *a, int64_t n, const uint64_t *g, const uint64_t *scale) {
    uint64_t f[4];
    memcpy(f, scale, 32);
    for (int64_t i = 0; i < n; i++) {
        mont_mul(a + 4 * i, a + 4 * i, f);
        mont_mul(f, f, g);
    }
}

/* In-place radix-2 NTT of size n = 2^logn: a[i] <- sum_j a[j] root^(ij) (natural order in and out).
 * `tw` holds each level's twiddles contiguously (mont): tw[h + k] = root^(k n / 2h) for k < h, h = 1, 2,
 * 4 .. n/2 (n entries, tw[0] unused), so every level reads its twiddles in order (one strided table
 * made the 2^21 transforms cache-bound). The inverse is the same transform with root^-1, followed by
 * the 1/n scaling (the caller folds it into the coset shift). */
void fednode_fr_ntt(uint64_t *a, int64_t logn, const uint64_t *tw) {
    int64_t n = (int64_t)1 << logn;
    for (int64_t i = 1, j = 0; i < n; i++) {  /* bit-reversal permutation */
        int64_t bit = n >> 1;
        for (; j & bit; bit >>= 1) j ^= bit;
        j ^= bit;
        if (i < j) {
            uint64_t t[4];
            memcpy(t, a + 4 * i, 32);
            memcpy(a + 4 * i, a + 4 * j, 32);
            memcpy(a + 4 * j, t, 32);
        }
    }
    for (int64_t len = 2; len <= n; len <<= 1) {
        int64_t half = len >> 1;
        const uint64_t *lt = tw + 4 * half;
        for (int64_t start = 0; start < n; start += len) {
            for (int64_t k = 0; k < half; k++) {
                uint64_t *x = a + 4 * (start + k), *y = a + 4 * (start + k + half);
                uint64_t t[4];
                if (k == 0) memcpy(t, y, 32);
                else mont_mul(t, y, lt + 4 * k);
                sub_mod(y, x, t);
                add_mod(x, x, t);
            }
        }
    }
}

/* out[i] = g^i for i in [0, n) (mont). */
void fednode_fr_powers(uint64_t *out, const uint64_t *g, const uint64_t *one, int64_t n) {
    if (n <= 0) return;
    memcpy(out, one, 32);
    for (int64_t i = 1; i < n; i++) mont_mul(out + 4 * i, out + 4 * (i - 1), g);
}

/* Bit lengths of min(v, r - v) for normal-form values (0 for zero) and whether the value is the
 * negative one (v > r / 2): the MSMs group scalars by size and negate the point for "negative" ones.
 * Writes the small magnitude to mag in normal form. Returns the index of a value >= r, or -1. */
int64_t fednode_fr_classify(const uint64_t *w, int64_t n, uint64_t *mag, uint8_t *bits, uint8_t *neg) {
    static const uint64_t HALF[4] = {0xa1f0fac9f8000000ULL, 0x9419f4243cdcb848ULL,
                                     0xdc2822db40c0ac2eULL, 0x183227397098d014ULL}; /* (r - 1) / 2 */
    for (int64_t i = 0; i < n; i++) {
        const uint64_t *v = w + 4 * i;
        uint64_t m[4];
        if (geq_r(v)) return i;
        int big = 0;
        for (int k = 3; k >= 0; k--) {
            if (v[k] != HALF[k]) { big = v[k] > HALF[k]; break; }
        }
        if (big) {
            u128 borrow = 0;
            for (int k = 0; k < 4; k++) {
                u128 d = (u128)R_[k] - v[k] - borrow;
                m[k] = (uint64_t)d;
                borrow = (d >> 64) & 1;
            }
        } else {
            memcpy(m, v, 32);
        }
        int b = 0;
        for (int k = 3; k >= 0; k--) {
            if (m[k]) { b = 64 * k + 64 - __builtin_clzll(m[k]); break; }
        }
        memcpy(mag + 4 * i, m, 32);
        bits[i] = (uint8_t)(b > 255 ? 255 : b);
        neg[i] = (uint8_t)big;
    }
    return -1;
}
