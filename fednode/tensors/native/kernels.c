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
 * den/2 + den * max_k,j |q_kj| stays below 2**50, every product w_k q_k, every partial
 * sum and den are integers below 2**51: exact in double, whatever the order or fusing
 * of the operations. The block is then accumulated and divided in double arithmetic only
 * (vector units without int64 multiplies or conversions); a block over that bound is
 * redone with the int64 path. Same bytes. */
#define EXACT_DOUBLE 2251799813685248.0  /* 2**51 */
#define LIMIT_62 4611686018427387904.0   /* 2**62: encode_delta's refusal */
#define MAGIC 6755399441055744.0         /* 1.5 * 2**52: (d + MAGIC) - MAGIC = rint(d) for |d| < 2**51 */
#define TILE 16                          /* elements a tile keeps in registers across all inputs */
#define SUB 1024                         /* the bound is checked every SUB elements: a block that needs the
                                            int64 path wastes at most this much double work */

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

/* The double path over one tile of TILE elements: every input read once, in order, while the
 * tile's accumulators stay in registers (the loops over i are fixed-length: the compiler turns
 * them into vector operations on any target). */
static inline void fedavg_f32_tile(int64_t n_inputs, const float *const *inputs, const float *b, const double *w,
                                   double dden, double scale, double step, int64_t at, float *o,
                                   double *mx, double *nan) {
    /* every value here is an exact integer below 2**51 or a product by a power of two, so letting the
     * compiler fuse a multiply and an add (one rounding instead of two) cannot change a result */
    #pragma clang fp contract(fast)
    double bd[TILE], a[TILE];
    for (int i = 0; i < TILE; i++) { bd[i] = (double)b[i]; a[i] = 0.0; }
    for (int64_t k = 0; k < n_inputs; k++) {
        const float *x = inputs[k] + at;
        const double wk = w[k];
        for (int i = 0; i < TILE; i++) {
            double y = (double)x[i] - bd[i];  /* exact as in encode_delta; * scale (a power of two) too */
            double ay = __builtin_fabs(y);
            mx[i] = ay > mx[i] ? ay : mx[i];  /* NaN never wins here: the accumulator carries it instead */
            a[i] = a[i] + wk * ((y * scale + MAGIC) - MAGIC);
        }
    }
    for (int i = 0; i < TILE; i++) {
        nan[i] = a[i] != a[i] ? 1.0 : nan[i];
        /* round_half_even(a / den) is rint of the correctly rounded quotient for |a| < 2**52: a quotient
         * that is not a half-integer h lies at least 1 / (2 den) from h, more than half an ulp there, so
         * rounding cannot carry it onto h; + 0.0 turns -0 into +0, as the int64 path's 0 */
        double q = dden == 1.0 ? a[i] + 0.0 : __builtin_rint(a[i] / dden) + 0.0;
        o[i] = (float)(bd[i] + q * step);
    }
}

/* One element of the double path (a block's tail). */
static inline void fedavg_f32_one(int64_t n_inputs, const float *const *inputs, const float *b, const double *w,
                                  double dden, double scale, double step, int64_t at, float *o,
                                  double *mx, int *refused) {
    const double bd = (double)*b;
    double a = 0.0;
    for (int64_t k = 0; k < n_inputs; k++) {
        double y = (double)inputs[k][at] - bd;
        *refused |= y != y;
        *mx = __builtin_fabs(y) > *mx ? __builtin_fabs(y) : *mx;
        a = a + w[k] * __builtin_rint(y * scale);
    }
    *refused |= a != a;
    *o = (float)(bd + (dden == 1.0 ? a + 0.0 : __builtin_rint(a / dden) + 0.0) * step);
}

/* 0: the double path's result stands; 1: the int64 path must decide; -1: refused. */
static inline int double_path_verdict(const double *mx, const double *nan, double tail_mx, int refused,
                                      double scale, double dden, double half_den) {
    double my = tail_mx;
    for (int i = 0; i < TILE; i++) { my = mx[i] > my ? mx[i] : my; refused |= nan[i] != 0.0; }
    double m = my * scale;  /* max |d| over the inputs (+Inf for an infinite one) */
    if (refused || !(m < LIMIT_62)) return -1;
    /* den * rint(m) bounds every |partial sum| (sum_k w_k = den); rounding in this estimate is far
     * inside the margin between 2**50 and 2**51 */
    return half_den + dden * __builtin_rint(m) < EXACT_DOUBLE * 0.5 ? 0 : 1;
}

int64_t fednode_fedavg_f32(int64_t n_inputs, const float *const *inputs, const float *base,
                           const int64_t *weights, int64_t den, double scale, int64_t lo, int64_t hi,
                           float *out, uint8_t *bad) {
    int64_t acc[BLOCK];
    double w[n_inputs > 0 ? n_inputs : 1];
    int64_t flagged = 0;
    const double dden = (double)den, step = 1.0 / scale, half_den = (double)(den / 2);
    for (int64_t k = 0; k < n_inputs; k++) w[k] = (double)weights[k];
    for (int64_t start = lo; start < hi; start += BLOCK) {
        size_t n = (size_t)(hi - start < BLOCK ? hi - start : BLOCK);
        const float *b = base + start;
        float *o = out + start;
        double mx[TILE] = {0}, nan[TILE] = {0}, tail_mx = 0.0;
        int refused = 0, verdict = 0;
        size_t j = 0;
        while (j < n && verdict == 0) {
            size_t stop = n - j < SUB ? n : j + SUB;
            for (; j + TILE <= stop; j += TILE)
                fedavg_f32_tile(n_inputs, inputs, b + j, w, dden, scale, step, start + (int64_t)j, o + j, mx, nan);
            for (; j < stop; j++)
                fedavg_f32_one(n_inputs, inputs, b + j, w, dden, scale, step, start + (int64_t)j, o + j,
                               &tail_mx, &refused);
            verdict = double_path_verdict(mx, nan, tail_mx, refused, scale, dden, half_den);
        }
        if (verdict < 0) return -1;
        if (verdict == 0) continue;
        int64_t r = fedavg_f32_block_int(n_inputs, inputs, b, weights, den, scale, start, n, o, acc);
        if (r < 0) return -1;
        if (r > 0) {
            bad[(start - lo) / BLOCK] = 1;
            flagged++;
        }
    }
    return flagged;
}

/* absmax_f32: the largest |x[j]| into *out; returns 1 when every value is finite, else 0 (the caller
 * then takes numpy's path, which skips the non-finite ones). One pass, for merge grid rule 2. */
int64_t fednode_absmax_f32(const float *x, int64_t n, double *out) {
    float mx[TILE] = {0}, bad[TILE] = {0};
    int64_t j = 0;
    for (; j + TILE <= n; j += TILE)
        for (int i = 0; i < TILE; i++) {
            float a = __builtin_fabsf(x[j + i]);
            mx[i] = a > mx[i] ? a : mx[i];
            bad[i] = a - a != 0.0f ? 1.0f : bad[i];  /* NaN for a NaN or an infinity */
        }
    float m = 0.0f;
    int finite = 1;
    for (int i = 0; i < TILE; i++) { m = mx[i] > m ? mx[i] : m; finite &= bad[i] == 0.0f; }
    for (; j < n; j++) {
        float a = __builtin_fabsf(x[j]);
        m = a > m ? a : m;
        finite &= a - a == 0.0f;
    }
    *out = (double)m;
    return finite;
}

int64_t fednode_kernels_version(void) { return 4; }
