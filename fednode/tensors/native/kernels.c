/* Exact integer kernels for fednode's merges (see fednode/tensors/native/__init__.py).
 *
 * weighted_mean: out[j] = round_half_even(sum_k w[k] * x_k[j] / den) over [lo, hi),
 * fused in one pass over the inputs, block by block. Inputs are native signed
 * integers of 1, 2, 4 or 8 bytes (deltas are stored narrowed), weights are
 * positive int64. A block is only computed when no int64 sum can overflow:
 * sum_k w[k] * max|x_k| + den / 2 <= INT64_MAX over that block (the same bound
 * as the numpy path in fednode/strategies/exact.py). Other blocks are flagged in
 * `bad` (one byte per block) and left for the caller's exact Python-int path.
 * Integer arithmetic only (the float division below is an estimate corrected
 * exactly), so every machine writes the same bytes.
 */
#include <stdint.h>
#include <stddef.h>

#define BLOCK 4096  /* elements: the int64 accumulator (32 KiB) stays in L1/L2 */

typedef unsigned __int128 u128;

static uint64_t max_abs(const void *p, int width, size_t n) {
    uint64_t m = 0;
    size_t j;
    switch (width) {
    case 1: { const int8_t *x = p; for (j = 0; j < n; j++) { int64_t v = x[j]; uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; m = a > m ? a : m; } break; }
    case 2: { const int16_t *x = p; for (j = 0; j < n; j++) { int64_t v = x[j]; uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; m = a > m ? a : m; } break; }
    case 4: { const int32_t *x = p; for (j = 0; j < n; j++) { int64_t v = x[j]; uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; m = a > m ? a : m; } break; }
    default: { const int64_t *x = p; for (j = 0; j < n; j++) { int64_t v = x[j]; uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; m = a > m ? a : m; } break; }
    }
    return m;
}

/* acc[j] (+)= w * x[j]; `first` stores instead of adding. Wrapping is impossible
 * here: the caller checked the block's bound first. Unsigned math keeps C happy. */
#define ACCUMULATE(T)                                                            \
    do {                                                                         \
        const T *x = (const T *)p;                                               \
        if (first && w == 1) for (j = 0; j < n; j++) acc[j] = x[j];             \
        else if (first) for (j = 0; j < n; j++) acc[j] = (int64_t)((uint64_t)w * (uint64_t)(int64_t)x[j]); \
        else if (w == 1) for (j = 0; j < n; j++) acc[j] = (int64_t)((uint64_t)acc[j] + (uint64_t)(int64_t)x[j]); \
        else for (j = 0; j < n; j++) acc[j] = (int64_t)((uint64_t)acc[j] + (uint64_t)w * (uint64_t)(int64_t)x[j]); \
    } while (0)

static void accumulate(int64_t *acc, const void *p, int width, int64_t w, size_t n, int first) {
    size_t j;
    switch (width) {
    case 1: ACCUMULATE(int8_t); break;
    case 2: ACCUMULATE(int16_t); break;
    case 4: ACCUMULATE(int32_t); break;
    default: ACCUMULATE(int64_t); break;
    }
}

/* round_half_even(a / den) for den > 0, |a| + den / 2 <= INT64_MAX; exact for every input. */
static inline int64_t round_div_slow(int64_t a, int64_t den) {
    int64_t q = a / den, r = a % den;  /* C truncates toward zero: make it a floor */
    if (r < 0) { q -= 1; r += den; }
    if (r > den - r || (r == den - r && (q & 1))) q += 1;
    return q;
}

/* The same for |a| < 2**52, branch-free so that it vectorises: with inv = 1/den
 * rounded, a * inv is within 1/2 of a / den (relative error <= 2**-52 on a value
 * below 2**51), so floor() of it is the floor quotient or one off; one exact
 * correction step each way fixes it, then ties go to even. */
static inline int64_t round_div_fast(int64_t a, int64_t den, double inv) {
    int64_t q = (int64_t)__builtin_floor((double)a * inv);
    int64_t r = a - q * den;
    int64_t lt = -(int64_t)(r < 0);
    q += lt; r += den & lt;
    int64_t ge = -(int64_t)(r >= den);
    q -= ge; r -= den & ge;
    int64_t half = den - r;  /* > 0 */
    q += (int64_t)(r > half) | ((int64_t)(r == half) & (q & 1));
    return q;
}

/* Returns the number of blocks flagged in bad[(start - lo) / BLOCK]. */
int64_t fednode_weighted_mean(int64_t n_inputs, const void *const *inputs, const int32_t *widths,
                              const int64_t *weights, int64_t den, int64_t lo, int64_t hi,
                              int64_t *out, uint8_t *bad) {
    int64_t acc[BLOCK];
    int64_t flagged = 0;
    u128 static_bound = (u128)(den / 2);
    int any_wide = 0;
    const double inv = 1.0 / (double)den;
    for (int64_t k = 0; k < n_inputs; k++) {
        if (widths[k] == 8) any_wide = 1;
        else static_bound += (u128)weights[k] * ((u128)1 << (8 * widths[k] - 1));
    }
    for (int64_t start = lo; start < hi; start += BLOCK) {
        size_t n = (size_t)(hi - start < BLOCK ? hi - start : BLOCK);
        u128 bound = static_bound;
        if (any_wide || bound >= ((u128)1 << 52)) {  /* measure the block unless the widths settle it (fast division) */
            bound = (u128)(den / 2);
            for (int64_t k = 0; k < n_inputs; k++) {
                const char *p = (const char *)inputs[k] + (size_t)start * (size_t)widths[k];
                bound += (u128)weights[k] * max_abs(p, widths[k], n);
            }
        }
        if (bound > (u128)INT64_MAX) {
            bad[(start - lo) / BLOCK] = 1;
            flagged++;
            continue;
        }
        for (int64_t k = 0; k < n_inputs; k++) {
            const char *p = (const char *)inputs[k] + (size_t)start * (size_t)widths[k];
            accumulate(acc, p, widths[k], weights[k], n, k == 0);
        }
        int64_t *o = out + start;
        if (den == 1) for (size_t j = 0; j < n; j++) o[j] = acc[j];
        else if (bound < ((u128)1 << 52)) for (size_t j = 0; j < n; j++) o[j] = round_div_fast(acc[j], den, inv);
        else for (size_t j = 0; j < n; j++) o[j] = round_div_slow(acc[j], den);
    }
    return flagged;
}


/* fedavg_f32: the whole FedAvg of float32 states in one pass, byte-identical to
 * fixedpoint.encode_delta -> weighted_mean -> fixedpoint.apply_delta:
 *   q_k = rint((f64(x_k) - f64(base)) * scale)       (ties to even, like np.rint)
 *   m   = round_half_even(sum_k w_k q_k / den)
 *   out = f32(f64(base) + f64(m) * step)             (step = 1 / scale)
 * Returns -1 (and stops) when some q_k is not finite or |.| >= 2**62, where
 * encode_delta refuses: the caller then takes the generic path, which says why.
 * Blocks whose int64 sum could overflow are flagged in `bad` and left unwritten.
 *
 * Fast path: every q_k is an integer-valued double, so while the block's bound
 * den/2 + sum_k w_k max|q_k| stays below 2**51, every product w_k q_k, every partial
 * sum and den are integers below 2**53: exact in double. The block is then accumulated
 * and divided in double arithmetic only (vector units without int64 multiplies or
 * conversions); a block over that bound is redone with the int64 path. Same bytes. */
#define EXACT_DOUBLE 2251799813685248.0  /* 2**51 */

static inline uint64_t f64_bits(double x) { uint64_t u; __builtin_memcpy(&u, &x, 8); return u; }
static inline double bits_f64(uint64_t u) { double x; __builtin_memcpy(&x, &u, 8); return x; }

/* round_half_even(a / den) for integer-valued doubles, |a| + den/2 < 2**51 (so q * den,
 * r and every step below are exact integers in double). */
static inline double round_div_f64(double a, double den, double inv) {
    double q = __builtin_floor(a * inv);
    double r = a - q * den;
    double lt = r < 0.0 ? 1.0 : 0.0;
    q -= lt; r += den * lt;
    double ge = r >= den ? 1.0 : 0.0;
    q += ge; r -= den * ge;
    double half = den - r;  /* > 0 */
    double odd = q - 2.0 * __builtin_floor(q * 0.5);
    q += (r > half || (r == half && odd == 1.0)) ? 1.0 : 0.0;
    return q;
}

static int64_t fedavg_f32_block_int(int64_t n_inputs, const float *const *inputs, const float *b,
                                    const int64_t *weights, int64_t den, double scale, int64_t start,
                                    size_t n, float *o, int64_t *acc) {
    const double inv = 1.0 / (double)den, step = 1.0 / scale, limit = 4611686018427387904.0; /* 2**62 */
    u128 bound = (u128)(den / 2);
    for (int64_t k = 0; k < n_inputs; k++) {
        const float *x = inputs[k] + start;
        const uint64_t w = (uint64_t)weights[k];
        uint64_t m = 0;
        int refused = 0;
        for (size_t j = 0; j < n; j++) {
            double d = ((double)x[j] - (double)b[j]) * scale;
            int ok = __builtin_fabs(d) < limit;  /* false for NaN and +-Inf too */
            refused |= !ok;
            int64_t q = (int64_t)__builtin_rint(ok ? d : 0.0);
            uint64_t a = q < 0 ? (uint64_t)0 - (uint64_t)q : (uint64_t)q;
            m = a > m ? a : m;
            /* unsigned math wraps harmlessly when the bound below fails */
            acc[j] = (int64_t)((k ? (uint64_t)acc[j] : 0) + w * (uint64_t)q);
        }
        if (refused) return -1;
        bound += (u128)w * m;
    }
    if (bound > (u128)INT64_MAX) return 1;
    if (den == 1) for (size_t j = 0; j < n; j++) o[j] = (float)((double)b[j] + (double)acc[j] * step);
    else if (bound < ((u128)1 << 52))
        for (size_t j = 0; j < n; j++) o[j] = (float)((double)b[j] + (double)round_div_fast(acc[j], den, inv) * step);
    else for (size_t j = 0; j < n; j++) o[j] = (float)((double)b[j] + (double)round_div_slow(acc[j], den) * step);
    return 0;
}

#define SUB 1024  /* the double path works on sub-blocks: accumulator and base stay in L1 */

/* The double path over [start, start + n), n <= SUB; returns 0 when done, 1 when its bound says
 * the int64 path must decide, -1 when some delta is refused (NaN, Inf or |d| >= 2**62). */
static int fedavg_f32_sub_double(int64_t n_inputs, const float *const *inputs, const float *b, const double *w,
                                 double half_den, double dden, double inv, double scale, double step,
                                 int64_t start, size_t n, size_t ahead, float *o) {
    double accd[SUB], bd[SUB];
    const uint64_t limit_bits = f64_bits(4611686018427387904.0);  /* 2**62 */
    double bound = half_den;  /* an estimate: decides the path, exactness follows from it */
    for (size_t j = 0; j < n; j++) bd[j] = (double)b[j];
    for (size_t j = 0; j < ahead; j += 16) {  /* the next sub-block's base and output pages too */
        __builtin_prefetch(b + n + j, 0, 0);
        __builtin_prefetch(o + n + j, 1, 0);
    }
    for (int64_t k = 0; k < n_inputs; k++) {
        const float *x = inputs[k] + start;
        const double wk = w[k];
        /* fetch this input's next sub-block meanwhile: the hardware prefetcher stops at each 4 KiB page */
        for (size_t j = 0; j < ahead; j += 16) __builtin_prefetch(x + n + j, 0, 0);
        /* max |d| as bits: non-negative doubles (and +Inf, then NaN) order like their bits, so one
         * integer max (a reduction the vectoriser knows) gives both the refusal (NaN, Inf or
         * |d| >= 2**62, as encode_delta) and max |q| = rint(max |d|) */
        uint64_t mbits = 0;
        if (k == 0) {
            for (size_t j = 0; j < n; j++) {
                double d = ((double)x[j] - bd[j]) * scale;
                uint64_t a = f64_bits(__builtin_fabs(d));
                mbits = a > mbits ? a : mbits;
                accd[j] = wk * __builtin_rint(d);
            }
        } else {
            for (size_t j = 0; j < n; j++) {
                double d = ((double)x[j] - bd[j]) * scale;
                uint64_t a = f64_bits(__builtin_fabs(d));
                mbits = a > mbits ? a : mbits;
                accd[j] = accd[j] + wk * __builtin_rint(d);
            }
        }
        if (mbits >= limit_bits) return -1;
        bound += wk * __builtin_rint(bits_f64(mbits));  /* rounded, but a margin covers it below */
    }
    if (!(bound < EXACT_DOUBLE * 0.5)) return 1;  /* the true bound is < 2**51 even after rounding */
    if (dden == 1.0) for (size_t j = 0; j < n; j++) o[j] = (float)(bd[j] + (accd[j] + 0.0) * step);  /* -0 -> +0 */
    else for (size_t j = 0; j < n; j++) o[j] = (float)(bd[j] + round_div_f64(accd[j], dden, inv) * step);
    return 0;
}

int64_t fednode_fedavg_f32(int64_t n_inputs, const float *const *inputs, const float *base,
                           const int64_t *weights, int64_t den, double scale, int64_t lo, int64_t hi,
                           float *out, uint8_t *bad) {
    int64_t acc[BLOCK];
    double w[n_inputs > 0 ? n_inputs : 1];
    int64_t flagged = 0;
    const double dden = (double)den, inv = 1.0 / dden, step = 1.0 / scale, half_den = (double)(den / 2);
    for (int64_t k = 0; k < n_inputs; k++) w[k] = (double)weights[k];
    for (int64_t start = lo; start < hi; start += BLOCK) {
        size_t n = (size_t)(hi - start < BLOCK ? hi - start : BLOCK);
        const float *b = base + start;
        float *o = out + start;
        int need_int = 0;
        for (size_t sub = 0; sub < n && !need_int; sub += SUB) {
            size_t m = n - sub < SUB ? n - sub : SUB;
            int64_t left = hi - (start + (int64_t)(sub + m));  /* elements after this sub-block */
            size_t ahead = left < SUB ? (size_t)left : SUB;
            int r = fedavg_f32_sub_double(n_inputs, inputs, b + sub, w, half_den, dden, inv, scale, step,
                                          start + (int64_t)sub, m, ahead, o + sub);
            if (r < 0) return -1;
            need_int = r;
        }
        if (!need_int) continue;
        int64_t r = fedavg_f32_block_int(n_inputs, inputs, b, weights, den, scale, start, n, o, acc);
        if (r < 0) return -1;
        if (r > 0) {
            bad[(start - lo) / BLOCK] = 1;
            flagged++;
        }
    }
    return flagged;
}

int64_t fednode_kernels_version(void) { return 3; }
