/* Fixed-base scalar multiplication in BN254 G1 / G2 for fednode.zk.devsetup, on top of MCL.
 *
 * MCL's own mclBnG*_mul costs ~65 us (G1) here, and a set-up multiplies millions of scalars by one
 * generator. With a table of d 2^(w j) G (z = 1) a product is ceil(254 / w) mixed additions, and a
 * batch of results is normalised with one field inversion (Montgomery's trick). The curve arithmetic
 * stays MCL's: the caller passes the addresses of mclBnG*_add, mclBnFp(2)_mul / _inv (no symbol of
 * MCL is linked here), so this file only decides which points to add.
 *
 * Points are MCL's Jacobian layout: x, y, z of F bytes each (F = 32 in G1, 64 in G2), Montgomery form.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*op3)(void *z, const void *x, const void *y);
typedef void (*op2)(void *y, const void *x);

typedef struct {
    op3 add;   /* mclBnG*_add */
    op3 fmul;  /* mclBnFp_mul / mclBnFp2_mul */
    op2 finv;  /* mclBnFp_inv / mclBnFp2_inv */
} ops_t;

int64_t fednode_fixedbase_version(void) { return 1; }

static int is_zero(const uint8_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Jacobian points (z != 0 unless flagged in zero[]) to affine rows x || y; zero rows for infinity.
 * out may alias nothing; pre is scratch of n field elements. */
static int normalize(const ops_t *o, int64_t f, const uint8_t *pts, int64_t n, const uint8_t *zero,
                     uint8_t *out, uint8_t *pre) {
    int64_t p = 3 * f, last = -1;
    uint8_t acc[64], inv[64], t[64], z2[64], z3[64];
    for (int64_t i = 0; i < n; i++) {
        if (zero[i]) continue;
        const uint8_t *z = pts + i * p + 2 * f;
        if (last < 0) memcpy(acc, z, f);
        else o->fmul(acc, acc, z);
        memcpy(pre + i * f, acc, f);
        last = i;
    }
    if (last >= 0) {
        o->finv(inv, acc);
        if (is_zero(inv, f)) return -1;
    }
    for (int64_t i = n - 1; i >= 0; i--) {
        uint8_t *row = out + i * 2 * f;
        if (zero[i]) { memset(row, 0, 2 * f); continue; }
        const uint8_t *pt = pts + i * p;
        /* inv holds 1 / (z_first .. z_i); the previous non-zero prefix gives 1 / z_i */
        int64_t j = i - 1;
        while (j >= 0 && zero[j]) j--;
        if (j >= 0) {
            o->fmul(t, inv, pre + j * f);   /* 1 / z_i */
            o->fmul(inv, inv, pt + 2 * f);  /* 1 / (z_first .. z_j) */
        } else {
            memcpy(t, inv, f);
        }
        o->fmul(z2, t, t);
        o->fmul(z3, z2, t);
        o->fmul(row, pt, z2);
        o->fmul(row + f, pt + f, z3);
    }
    return 0;
}

/* table[j][d - 1] = d 2^(w j) base for j < nwin, 1 <= d < 2^w, as MCL points with z = one.
 * work: nwin (2^w - 1) Jacobian points of scratch; pre: as many field elements. */
int64_t fednode_fixedbase_table(const uint64_t *fns, int64_t f, const uint8_t *base, int64_t w, int64_t nwin,
                                const uint8_t *one, uint8_t *table, uint8_t *work, uint8_t *pre, uint8_t *zero) {
    ops_t o = {(op3)fns[0], (op3)fns[1], (op2)fns[2]};
    int64_t p = 3 * f, per = ((int64_t)1 << w) - 1, n = nwin * per;
    uint8_t cur[192];
    memcpy(cur, base, p);
    for (int64_t j = 0; j < nwin; j++) {
        uint8_t *row = work + j * per * p;
        memcpy(row, cur, p);
        for (int64_t d = 1; d < per; d++) o.add(row + d * p, row + (d - 1) * p, cur);
        o.add(cur, row + (per - 1) * p, cur);  /* 2^w cur */
    }
    memset(zero, 0, n);
    uint8_t *affine = malloc(n * 2 * f);
    if (!affine) return -2;
    int64_t rc = normalize(&o, f, work, n, zero, affine, pre);
    for (int64_t i = 0; i < n; i++) {
        memcpy(table + i * p, affine + i * 2 * f, 2 * f);
        memcpy(table + i * p + 2 * f, one, f);
    }
    free(affine);
    return rc;
}

/* out[i] = scalars[i] G (affine rows, zeros for 0) for 4-word little-endian scalars below 2^(w nwin).
 * work: n Jacobian points of scratch; pre: n field elements; zero: n bytes. */
int64_t fednode_fixedbase_mul(const uint64_t *fns, int64_t f, const uint8_t *table, int64_t w, int64_t nwin,
                              const uint64_t *scalars, int64_t n, uint8_t *out, uint8_t *work, uint8_t *pre,
                              uint8_t *zero) {
    ops_t o = {(op3)fns[0], (op3)fns[1], (op2)fns[2]};
    int64_t p = 3 * f, per = ((int64_t)1 << w) - 1;
    uint64_t mask = (uint64_t)per;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t *s = scalars + 4 * i;
        uint8_t *acc = work + i * p;
        int first = 1;
        for (int64_t j = 0; j < nwin; j++) {
            int64_t bit = j * w, k = bit >> 6, sh = bit & 63;
            uint64_t d = s[k] >> sh;
            if (sh + w > 64 && k + 1 < 4) d |= s[k + 1] << (64 - sh);
            d &= mask;
            if (!d) continue;
            const uint8_t *t = table + (j * per + (int64_t)d - 1) * p;
            if (first) { memcpy(acc, t, p); first = 0; }
            else o.add(acc, acc, t);
        }
        /* a sum can meet infinity only for a multiple of the group order: never below r */
        zero[i] = (uint8_t)(first || is_zero(acc + 2 * f, f));
    }
    return normalize(&o, f, work, n, zero, out, pre);
}

/* ---- Fr vectors for the set-up's field work: (n, 4) u64 arrays in MCL's Montgomery form; fr[] holds
 * the addresses of mclBnFr_mul, _add, _sub, _inv. MCL's mul of a raw x by a raw y is x y / 2^256, so
 * multiplying by the raw constant 1 leaves Montgomery form and by 2^512 mod r enters it. */

typedef struct { op3 mul, add, sub; op2 inv; } fr_t;

static fr_t fr_ops(const uint64_t *fr) { fr_t o = {(op3)fr[0], (op3)fr[1], (op3)fr[2], (op2)fr[3]}; return o; }

/* out[i] = x[i] k (k one element) */
void fednode_fr_scale(const uint64_t *fr, const uint64_t *x, const uint64_t *k, int64_t n, uint64_t *out) {
    fr_t o = fr_ops(fr);
    for (int64_t i = 0; i < n; i++) o.mul(out + 4 * i, x + 4 * i, k);
}

/* out[i] = start step^i */
void fednode_fr_geometric(const uint64_t *fr, const uint64_t *start, const uint64_t *step, int64_t n, uint64_t *out) {
    fr_t o = fr_ops(fr);
    if (n <= 0) return;
    memcpy(out, start, 32);
    for (int64_t i = 1; i < n; i++) o.mul(out + 4 * i, out + 4 * (i - 1), step);
}

/* out[i] = top roots[i] / (tau - roots[i]): the Lagrange basis at tau. pre: n elements of scratch.
 * Returns -1 when tau is a root (a zero denominator). */
int64_t fednode_fr_lagrange(const uint64_t *fr, const uint64_t *tau, const uint64_t *top, const uint64_t *roots,
                            int64_t n, uint64_t *out, uint64_t *pre) {
    fr_t o = fr_ops(fr);
    uint64_t acc[4], inv[4], d[4], t[4];
    for (int64_t i = 0; i < n; i++) {
        o.sub(d, tau, roots + 4 * i);
        if (i == 0) memcpy(acc, d, 32);
        else o.mul(acc, acc, d);
        memcpy(pre + 4 * i, acc, 32);
    }
    if (n <= 0) return 0;
    o.inv(inv, acc);
    if (!(inv[0] | inv[1] | inv[2] | inv[3])) return -1;
    for (int64_t i = n - 1; i >= 0; i--) {
        o.sub(d, tau, roots + 4 * i);
        if (i > 0) { o.mul(t, inv, pre + 4 * (i - 1)); o.mul(inv, inv, d); }
        else memcpy(t, inv, 32);
        o.mul(t, t, roots + 4 * i);
        o.mul(out + 4 * i, t, top);
    }
    return 0;
}

/* cols[m][wire[t]] += coefs[t] lag[cons[t]] for every term t (m = matrix[t] in 0..2); cols zeroed by the caller */
void fednode_fr_columns(const uint64_t *fr, int64_t nterms, const int8_t *matrix, const int64_t *cons,
                        const int64_t *wire, const uint64_t *coefs, const uint64_t *lag,
                        uint64_t *col_a, uint64_t *col_b, uint64_t *col_c) {
    fr_t o = fr_ops(fr);
    uint64_t *cols[3] = {col_a, col_b, col_c};
    uint64_t t[4];
    for (int64_t i = 0; i < nterms; i++) {
        uint64_t *dst = cols[matrix[i]] + 4 * wire[i];
        o.mul(t, coefs + 4 * i, lag + 4 * cons[i]);
        o.add(dst, dst, t);
    }
}

/* out[i] = (beta a[i] + alpha b[i] + c[i]) scale */
void fednode_fr_combine(const uint64_t *fr, const uint64_t *a, const uint64_t *b, const uint64_t *c, int64_t n,
                        const uint64_t *alpha, const uint64_t *beta, const uint64_t *scale, uint64_t *out) {
    fr_t o = fr_ops(fr);
    uint64_t t[4], u[4];
    for (int64_t i = 0; i < n; i++) {
        o.mul(t, a + 4 * i, beta);
        o.mul(u, b + 4 * i, alpha);
        o.add(t, t, u);
        o.add(t, t, c + 4 * i);
        o.mul(out + 4 * i, t, scale);
    }
}

/* The linear combinations of an r1cs constraint section: heads[j] (byte offset of LC j's first term)
 * and counts[j] for j < nlc. Returns the offset after the last LC, or -1 when it runs past size. */
int64_t fednode_r1cs_scan(const uint8_t *data, int64_t start, int64_t size, int64_t nlc, int64_t *heads,
                          int64_t *counts) {
    int64_t pos = start, end = start + size;
    for (int64_t j = 0; j < nlc; j++) {
        if (pos + 4 > end) return -1;
        uint32_t k;
        memcpy(&k, data + pos, 4);
        heads[j] = pos + 4;
        counts[j] = k;
        pos += 4 + 36 * (int64_t)k;
        if (pos > end) return -1;
    }
    return pos;
}

/* The terms of those linear combinations, flattened: wire id, coefficient (4 words), matrix (LC j is
 * matrix j % 3 of constraint j / 3) and constraint, in file order. */
void fednode_r1cs_terms(const uint8_t *data, const int64_t *heads, const int64_t *counts, int64_t nlc,
                        int64_t *wire, uint64_t *coefs, int8_t *matrix, int64_t *cons) {
    int64_t t = 0;
    for (int64_t j = 0; j < nlc; j++) {
        const uint8_t *p = data + heads[j];
        for (int64_t i = 0; i < counts[j]; i++, t++, p += 36) {
            uint32_t w;
            memcpy(&w, p, 4);
            wire[t] = w;
            memcpy(coefs + 4 * t, p + 4, 32);
            matrix[t] = (int8_t)(j % 3);
            cons[t] = j / 3;
        }
    }
}
