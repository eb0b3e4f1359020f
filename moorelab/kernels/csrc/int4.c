/* int4 weight-only GEMV (AVX2 + FMA + F16C), with float, int16 ("a16") or int8 ("a8") activations,
   and the a8 GEMM for prefill (ml_w4a8_gemm, groups of 32).

   wp: uint8 [N, K/2]; byte wp[n, j] holds q[n, 2j] in its LOW nibble and q[n, 2j+1] in its HIGH
   nibble; q is unsigned 0..15. scales / mins: IEEE float16 (as uint16) [N, K/G];
   W[n, k] = scales[n, k/G] * q[n, k] + mins[n, k/G] (asymmetric, GGML Q4_1 style). G is a
   multiple of 32. y = x @ W.T + bias.

   a16 / a8: x is rounded per 32-block (bs = max|x_block| / 32767 or / 127, round half to even)
   and the nibbles are multiplied in integers (vpmaddwd / vpmaddubsw + vpmaddwd, exact int32
   block sums), each block sum scaled by bs in float; the min term uses the rounded x too
   (sum of each group's bs * q: the layer computes W times the rounded x, as GGML's Q8_1 block
   sum s does). With the float x there instead, the rounding error is weighted by scale * q
   (0..15 steps) rather than by the weight itself (about -8..7 steps): on SmolLM2 int4 g32 a8
   that cost +1.3% perplexity (43.14 against 42.60 under llama-perplexity's rule, -c 512, where
   llama.cpp gives 42.57 for the same Q4_1 weights: benchmarks/bench_vs_llamacpp.py). */

#include "common.h"
#include <float.h>

/* x row -> per 32-block [x0,x2,..,x30, x1,x3,..,x31] (matches low nibble = even index) */
static void w4_prep_x(const float *x, int64_t K, int64_t G, float *xs, float *xsum) {
    for (int64_t b = 0; b < K; b += 32) {
        for (int j = 0; j < 16; j++) {
            xs[b + j] = x[b + 2 * j];
            xs[b + 16 + j] = x[b + 2 * j + 1];
        }
    }
    for (int64_t g = 0; g < K / G; g++) {
        float s = 0.0f;
        for (int64_t k = g * G; k < (g + 1) * G; k++) s += x[k];
        xsum[g] = s;
    }
}

/* sum_g min[g] * xsum[g] for one row (float16 mins) */
static inline float w4_min_term(const uint16_t *mn, const float *xsum, int64_t ngr) {
    __m256 acc = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ngr; g += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + g))), _mm256_loadu_ps(xsum + g), acc);
    float s = hsum256(acc);
    for (; g < ngr; g++) s += _cvtsh_ss(mn[g]) * xsum[g];
    return s;
}

#define W4_ROW(P, A)                                                           \
    do {                                                                       \
        __m128i by = _mm_loadu_si128((const __m128i *)(P));                    \
        __m128i lo = _mm_and_si128(by, m4);                                    \
        __m128i hi = _mm_and_si128(_mm_srli_epi16(by, 4), m4);                 \
        A = _mm256_fmadd_ps(cvt8_u8(lo), x0, A);                               \
        A = _mm256_fmadd_ps(cvt8_u8(_mm_unpackhi_epi64(lo, lo)), x1, A);       \
        A = _mm256_fmadd_ps(cvt8_u8(hi), x2, A);                               \
        A = _mm256_fmadd_ps(cvt8_u8(_mm_unpackhi_epi64(hi, hi)), x3, A);       \
    } while (0)

/* four weight rows against one prepared x row; one accumulator per row and group keeps all
   live values in the 16 ymm registers (no spills) */
static inline void w4_dot4(const float *xs, const float *xsum, int64_t K, int64_t G,
                           const uint8_t *wp, const uint16_t *sc, const uint16_t *mn, int64_t ngr,
                           float *out) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const int64_t ldw = K / 2;
    const uint8_t *p0 = wp, *p1 = wp + ldw, *p2 = wp + 2 * ldw, *p3 = wp + 3 * ldw;
    /* float16 -> float32 scales of the 4 rows, 8 at a time (the 4 rows' scales are contiguous) */
    float sf[4 * 256];
    const float *sfp = sf;
    if (ngr <= 256) {
        int64_t i = 0;
        for (; i + 8 <= 4 * ngr; i += 8)
            _mm256_storeu_ps(sf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + i))));
        for (; i < 4 * ngr; i++) sf[i] = _cvtsh_ss(sc[i]);
    }
    __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
    for (int64_t g = 0; g < ngr; g++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t b = g * G; b < (g + 1) * G; b += 32) {
            const float *xb = xs + b;
            __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
            __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
            W4_ROW(p0 + b / 2, a0);
            W4_ROW(p1 + b / 2, a1);
            W4_ROW(p2 + b / 2, a2);
            W4_ROW(p3 + b / 2, a3);
        }
        if (ngr <= 256) {
            t0 = _mm256_fmadd_ps(a0, _mm256_broadcast_ss(sfp + g), t0);
            t1 = _mm256_fmadd_ps(a1, _mm256_broadcast_ss(sfp + ngr + g), t1);
            t2 = _mm256_fmadd_ps(a2, _mm256_broadcast_ss(sfp + 2 * ngr + g), t2);
            t3 = _mm256_fmadd_ps(a3, _mm256_broadcast_ss(sfp + 3 * ngr + g), t3);
        } else {
            t0 = _mm256_fmadd_ps(a0, _mm256_set1_ps(_cvtsh_ss(sc[g])), t0);
            t1 = _mm256_fmadd_ps(a1, _mm256_set1_ps(_cvtsh_ss(sc[ngr + g])), t1);
            t2 = _mm256_fmadd_ps(a2, _mm256_set1_ps(_cvtsh_ss(sc[2 * ngr + g])), t2);
            t3 = _mm256_fmadd_ps(a3, _mm256_set1_ps(_cvtsh_ss(sc[3 * ngr + g])), t3);
        }
    }
    out[0] = hsum256(t0) + w4_min_term(mn, xsum, ngr);
    out[1] = hsum256(t1) + w4_min_term(mn + ngr, xsum, ngr);
    out[2] = hsum256(t2) + w4_min_term(mn + 2 * ngr, xsum, ngr);
    out[3] = hsum256(t3) + w4_min_term(mn + 3 * ngr, xsum, ngr);
}

static inline float w4_dot1(const float *xs, const float *xsum, int64_t K, int64_t G,
                            const uint8_t *wp, const uint16_t *sc, const uint16_t *mn, int64_t ngr) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    (void)K;
    __m256 t0 = _mm256_setzero_ps();
    for (int64_t g = 0; g < ngr; g++) {
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t b = g * G; b < (g + 1) * G; b += 32) {
            const float *xb = xs + b;
            __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
            __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
            W4_ROW(wp + b / 2, a0);
        }
        t0 = _mm256_fmadd_ps(a0, _mm256_set1_ps(_cvtsh_ss(sc[g])), t0);
    }
    return hsum256(t0) + w4_min_term(mn, xsum, ngr);
}

/* returns 0 on success, -1 on allocation failure */
int ml_w4_linear(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                 const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads) {
    int64_t ngr = K / G;
    float *xs = (float *)malloc(sizeof(float) * (size_t)(M * K + M * ngr));
    if (!xs) return -1;
    float *xsum = xs + M * K;
    for (int64_t m = 0; m < M; m++) w4_prep_x(x + m * K, K, G, xs + m * K, xsum + m * ngr);
    int64_t ntiles = (N + 3) / 4;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t n0 = t * 4;
        int64_t nr = N - n0 < 4 ? N - n0 : 4;
        if (t + ML_PF_TILES4 < ntiles) {
            int64_t pn = n0 + 4 * ML_PF_TILES4;
            ml_prefetch(wp + pn * (K / 2), 4 * (K / 2));
            ml_prefetch(scales + pn * ngr, 4 * ngr * 2);
            ml_prefetch(mins + pn * ngr, 4 * ngr * 2);
        }
        for (int64_t m = 0; m < M; m++) {
            float o[4];
            if (nr == 4) {
                w4_dot4(xs + m * K, xsum + m * ngr, K, G, wp + n0 * (K / 2), scales + n0 * ngr,
                        mins + n0 * ngr, ngr, o);
            } else {
                for (int64_t r = 0; r < nr; r++)
                    o[r] = w4_dot1(xs + m * K, xsum + m * ngr, K, G, wp + (n0 + r) * (K / 2),
                                   scales + (n0 + r) * ngr, mins + (n0 + r) * ngr, ngr);
            }
            float *ym = y + m * N;
            for (int64_t r = 0; r < nr; r++) ym[n0 + r] = o[r] + (bias ? bias[n0 + r] : 0.0f);
        }
    }
    free(xs);
    return 0;
}

/* ---- int4 weights x int16 activations ("a16"): x rounded per 32-block to int16 ----
   xq[k] = round_half_even(x[k] / bs), bs = max|x[block]| / 32767 (1 if zero); the weight
   nibbles are widened to int16 and multiplied with vpmaddwd (exact int32 sums, |q| <= 15),
   then each 32-block's sum is scaled by bs in float. The min term uses the rounded x. */

/* x row -> per 32-block [x0,x2,..,x30, x1,x3,..,x31] rounded to `bits` (16 or 8) bits:
   xq = round_half_even(x / bs), bs = max|x_block| / (2^(bits-1) - 1) (1 if that is 0: a zero
   block, or a maximum so small the division underflows); int16 or int8 stores; xsum[g] = sum
   of group g of the rounded x, its blocks' bs * (exact integer sum of xq) (for the min term;
   the float sum instead when that is not finite, so a NaN or infinity in x stays in y). Shared
   by the a16 and a8 kernels. */
static void w4_blockq_prep_x_scalar(int bits, const float *x, int64_t K, int64_t G, void *xq, float *bs,
                                    float *xsum) {
    const float qmax = bits == 16 ? 32767.0f : 127.0f;
    int16_t *x16 = (int16_t *)xq;
    int8_t *x8 = (int8_t *)xq;
    for (int64_t b = 0; b < K; b += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) { float a = fabsf(x[b + j]); if (a > amax) amax = a; }
        float s = amax / qmax;
        if (!(s > 0.0f)) s = 1.0f;
        bs[b / 32] = s;
        int32_t qs = 0;
        for (int j = 0; j < 32; j++) {
            int64_t src = b + (j < 16 ? 2 * j : 2 * (j - 16) + 1);
            float v = nearbyintf(x[src] / s);
            v = v > qmax ? qmax : (v < -qmax ? -qmax : v);
            if (v != v) v = 0.0f; /* NaN: its group's xsum below carries it */
            if (bits == 16) x16[b + j] = (int16_t)v; else x8[b + j] = (int8_t)v;
            qs += (int32_t)v;
        }
        if (b % G == 0) xsum[b / G] = 0.0f;
        xsum[b / G] += s * (float)qs;
    }
    for (int64_t g = 0; g < K / G; g++) {
        float f = 0.0f;
        for (int64_t k = g * G; k < (g + 1) * G; k++) f += x[k];
        if (!isfinite(f)) xsum[g] = f;
    }
}

/* w4_blockq_prep_x_scalar in AVX2, the same numbers bit for bit (tests compare the two through
   ml_w4q_prep_ref): per 32-block the maximum ignores NaN as the scalar `a > amax` does, x / bs is
   rounded by vroundps in the current rounding mode (as nearbyintf: half to even by default), a NaN quotient
   becomes 0 before the clamp, and the even/odd reorder is done on the floats (vpermps) before
   they are packed. The float sum of a group (the min term's fallback) is taken, in the scalar's
   order, only when it could be non-finite: a value in the group that is NaN or infinite, or a
   maximum above FLT_MAX / (2 G) (below that, |sum| <= G * max stays finite). */
static void w4_blockq_prep_x(int bits, const float *x, int64_t K, int64_t G, void *xq, float *bs, float *xsum) {
    const float qmax = bits == 16 ? 32767.0f : 127.0f;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 fmax = _mm256_set1_ps(FLT_MAX), hi = _mm256_set1_ps(qmax), lo = _mm256_set1_ps(-qmax);
    const __m256i eo = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const float big = FLT_MAX / (float)(2 * G);
    int16_t *x16 = (int16_t *)xq;
    int8_t *x8 = (int8_t *)xq;
    int risky = 0;
    for (int64_t b = 0; b < K; b += 32) {
        __m256 v[4], mx = _mm256_setzero_ps(), badv = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(x + b + 8 * i);
            const __m256 a = _mm256_and_ps(v[i], absmask);
            mx = _mm256_max_ps(a, mx); /* a NaN in a gives mx back: ignored, as by the scalar */
            badv = _mm256_or_ps(badv, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
        }
        const float amax = hmax256(mx);
        risky |= _mm256_movemask_ps(badv) != 0 || amax > big;
        float s = amax / qmax;
        if (!(s > 0.0f)) s = 1.0f;
        bs[b / 32] = s;
        const __m256 sv = _mm256_set1_ps(s);
        /* [x0,x2,..,x14 | x16,..,x30] evens and odds, as floats */
        const __m256 p0 = _mm256_permutevar8x32_ps(v[0], eo), p1 = _mm256_permutevar8x32_ps(v[1], eo);
        const __m256 p2 = _mm256_permutevar8x32_ps(v[2], eo), p3 = _mm256_permutevar8x32_ps(v[3], eo);
        __m256 r[4] = {_mm256_permute2f128_ps(p0, p1, 0x20), _mm256_permute2f128_ps(p2, p3, 0x20),
                       _mm256_permute2f128_ps(p0, p1, 0x31), _mm256_permute2f128_ps(p2, p3, 0x31)};
        __m256i q[4], qs = _mm256_setzero_si256();
        for (int i = 0; i < 4; i++) {
            __m256 t = _mm256_round_ps(_mm256_div_ps(r[i], sv), _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC);
            t = _mm256_and_ps(t, _mm256_cmp_ps(t, t, _CMP_ORD_Q)); /* NaN -> 0 */
            t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
            q[i] = _mm256_cvtps_epi32(t);
            qs = _mm256_add_epi32(qs, q[i]);
        }
        const __m256i e16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
        const __m256i o16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8);
        if (bits == 16) {
            _mm256_storeu_si256((__m256i *)(x16 + b), e16);
            _mm256_storeu_si256((__m256i *)(x16 + b + 16), o16);
        } else {
            _mm256_storeu_si256((__m256i *)(x8 + b), _mm256_permute4x64_epi64(_mm256_packs_epi16(e16, o16), 0xD8));
        }
        if (b % G == 0) xsum[b / G] = 0.0f;
        xsum[b / G] += s * (float)hsum256i(qs);
    }
    if (risky)
        for (int64_t g = 0; g < K / G; g++) {
            float f = 0.0f;
            for (int64_t k = g * G; k < (g + 1) * G; k++) f += x[k];
            if (!isfinite(f)) xsum[g] = f;
        }
}

/* blocks 2p, 2p + 1 of w4_blockq_prep_x's 8-bit layout ([evens | odds] a block) into the pair
   layout: the middle two 16-byte quarters of each whole 64 bytes swapped; a last odd block stays */
static void w4a8_pair_layout(int8_t *xq, int64_t K) {
    for (int64_t o = 0; o + 64 <= K; o += 64) {
        const __m128i b1 = _mm_loadu_si128((const __m128i *)(xq + o + 16));
        const __m128i b2 = _mm_loadu_si128((const __m128i *)(xq + o + 32));
        _mm_storeu_si128((__m128i *)(xq + o + 16), b2);
        _mm_storeu_si128((__m128i *)(xq + o + 32), b1);
    }
}

/* the scalar reference of w4_blockq_prep_x (tests: the two agree bit for bit) */
void ml_w4q_prep_ref(int bits, const float *x, int64_t K, int64_t G, void *xq, float *bs, float *xsum) {
    w4_blockq_prep_x_scalar(bits, x, K, G, xq, bs, xsum);
    if (bits == 8 && G == 32) w4a8_pair_layout((int8_t *)xq, K);
}

#define W4A16_ROW(P, A)                                                                  \
    do {                                                                                 \
        __m128i by = _mm_loadu_si128((const __m128i *)(P));                              \
        __m256i lo = _mm256_cvtepu8_epi16(_mm_and_si128(by, m4));                        \
        __m256i hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(by, 4), m4));     \
        __m256i d = _mm256_add_epi32(_mm256_madd_epi16(lo, xe), _mm256_madd_epi16(hi, xo)); \
        A = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), bsv, A);                              \
    } while (0)

static inline void w4a16_dotn(const int16_t *xs, const float *bs, const float *xsum, int64_t K, int64_t G,
                              const uint8_t *wp, const uint16_t *sc, const uint16_t *mn, int64_t ngr,
                              int64_t nr, float *out) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const int64_t ldw = K / 2;
    const uint8_t *p0 = wp, *p1 = wp + (nr > 1 ? ldw : 0), *p2 = wp + (nr > 2 ? 2 * ldw : 0), *p3 = wp + (nr > 3 ? 3 * ldw : 0);
    __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
    for (int64_t g = 0; g < ngr; g++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t b = g * G; b < (g + 1) * G; b += 32) {
            __m256i xe = _mm256_loadu_si256((const __m256i *)(xs + b));
            __m256i xo = _mm256_loadu_si256((const __m256i *)(xs + b + 16));
            __m256 bsv = _mm256_broadcast_ss(bs + b / 32);
            W4A16_ROW(p0 + b / 2, a0);
            W4A16_ROW(p1 + b / 2, a1);
            W4A16_ROW(p2 + b / 2, a2);
            W4A16_ROW(p3 + b / 2, a3);
        }
        t0 = _mm256_fmadd_ps(a0, _mm256_set1_ps(_cvtsh_ss(sc[g])), t0);
        if (nr > 1) t1 = _mm256_fmadd_ps(a1, _mm256_set1_ps(_cvtsh_ss(sc[ngr + g])), t1);
        if (nr > 2) t2 = _mm256_fmadd_ps(a2, _mm256_set1_ps(_cvtsh_ss(sc[2 * ngr + g])), t2);
        if (nr > 3) t3 = _mm256_fmadd_ps(a3, _mm256_set1_ps(_cvtsh_ss(sc[3 * ngr + g])), t3);
    }
    out[0] = hsum256(t0) + w4_min_term(mn, xsum, ngr);
    if (nr > 1) out[1] = hsum256(t1) + w4_min_term(mn + ngr, xsum, ngr);
    if (nr > 2) out[2] = hsum256(t2) + w4_min_term(mn + 2 * ngr, xsum, ngr);
    if (nr > 3) out[3] = hsum256(t3) + w4_min_term(mn + 3 * ngr, xsum, ngr);
}

/* ---- int4 weights x int8 activations ("a8", GGML Q4_1 x Q8 style) ----
   xq[k] = round_half_even(x[k] / bs), bs = max|x[block]| / 127 (1 if zero), per 32-block; the
   32 nibbles of a block (0..15, unsigned) meet the 32 int8 activations in one vpmaddubsw (pair
   sums <= 2*15*127, no saturation) and one vpmaddwd: exact int32 block sums, then scaled by bs
   in float. The min term uses the rounded x too (xsum: each group's bs * exact sum of xq). */

#define W4A8_ROW(P, A)                                                                   \
    do {                                                                                 \
        __m128i by = _mm_loadu_si128((const __m128i *)(P));                              \
        __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(by, 4), by), m4);   \
        __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), ones);                \
        A = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), bsv, A);                              \
    } while (0)

static inline void w4a8_dotn(const int8_t *xs, const float *bs, const float *xsum, int64_t K, int64_t G,
                             const uint8_t *wp, const uint16_t *sc, const uint16_t *mn, int64_t ngr,
                             int64_t nr, float *out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t ldw = K / 2;
    const uint8_t *p0 = wp, *p1 = wp + (nr > 1 ? ldw : 0), *p2 = wp + (nr > 2 ? 2 * ldw : 0), *p3 = wp + (nr > 3 ? 3 * ldw : 0);
    __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
    for (int64_t g = 0; g < ngr; g++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t b = g * G; b < (g + 1) * G; b += 32) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xs + b));
            __m256 bsv = _mm256_broadcast_ss(bs + b / 32);
            W4A8_ROW(p0 + b / 2, a0);
            W4A8_ROW(p1 + b / 2, a1);
            W4A8_ROW(p2 + b / 2, a2);
            W4A8_ROW(p3 + b / 2, a3);
        }
        t0 = _mm256_fmadd_ps(a0, _mm256_set1_ps(_cvtsh_ss(sc[g])), t0);
        if (nr > 1) t1 = _mm256_fmadd_ps(a1, _mm256_set1_ps(_cvtsh_ss(sc[ngr + g])), t1);
        if (nr > 2) t2 = _mm256_fmadd_ps(a2, _mm256_set1_ps(_cvtsh_ss(sc[2 * ngr + g])), t2);
        if (nr > 3) t3 = _mm256_fmadd_ps(a3, _mm256_set1_ps(_cvtsh_ss(sc[3 * ngr + g])), t3);
    }
    out[0] = hsum256(t0) + w4_min_term(mn, xsum, ngr);
    if (nr > 1) out[1] = hsum256(t1) + w4_min_term(mn + ngr, xsum, ngr);
    if (nr > 2) out[2] = hsum256(t2) + w4_min_term(mn + 2 * ngr, xsum, ngr);
    if (nr > 3) out[3] = hsum256(t3) + w4_min_term(mn + 3 * ngr, xsum, ngr);
}

/* n (1..8) floats / float16 values as 8 floats, the lanes from n on 0. Masked loads, no reads
   past p[n - 1] (a float16 count that is odd gets its last value by vpinsrw), and no vector read
   of freshly stored scalars (a store-forwarding stall each). */
static inline __m256i w4_lane_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline __m256 w4_load8_f32(const float *p, int64_t n) {
    if (n == 8) return _mm256_loadu_ps(p);
    return _mm256_maskload_ps(p, w4_lane_mask(n));
}
static inline __m256 w4_load8_f16(const uint16_t *p, int64_t n) {
    if (n == 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    const __m128i pairs = _mm_cmpgt_epi32(_mm_set1_epi32((int)(n / 2)), _mm_setr_epi32(0, 1, 2, 3));
    __m128i v = _mm_maskload_epi32((const int *)p, pairs); /* whole float16 pairs */
    switch (n) { /* the last of an odd count */
    case 1: v = _mm_insert_epi16(v, p[0], 0); break;
    case 3: v = _mm_insert_epi16(v, p[2], 2); break;
    case 5: v = _mm_insert_epi16(v, p[4], 4); break;
    case 7: v = _mm_insert_epi16(v, p[6], 6); break;
    default: break;
    }
    return _mm256_cvtph_ps(v);
}

/* a8 with groups of 32 (one float16 scale per block, GGML Q4_1's layout). The rounded x comes in
   the pair layout (w4a8_pair_layout): blocks 2p and 2p + 1 as 64 bytes [2p evens | 2p+1 evens |
   2p odds | 2p+1 odds], so one 32-byte load of a weight row holds both blocks' nibbles: its low
   nibbles (vpand) meet the evens and its high nibbles (vpsrlw, vpand) the odds in two vpmaddubsw
   (pair sums <= 2*15*127 each, their int16 sum <= 7620: no saturation), added (vpaddw) and summed
   by one vpmaddwd: exact int32 sums, lanes 0-3 block 2p and 4-7 block 2p + 1. One vcvtdq2ps and
   one FMA with d = scale * bs of the two blocks (8 blocks' d at a time: vcvtph2ps, vmulps; a
   vpermps puts a block's d in its 4 lanes): 10 vector ALU operations and 3 loads (the weights,
   the x evens and odds) per row and 2 blocks, against 12 and 4 for one block at a time (per block
   the loads vbroadcasti128 and a d broadcast, then vpsrlvd, vpand, vpmaddubsw, vpmaddwd,
   vcvtdq2ps and an FMA; the x block loaded once for the tile's 4 rows). A last odd block (K / 32 odd) goes alone in that older
   form (its x is [evens | odds]). The int32 sums are exact either way; the float rounding moved (a
   lane now carries a block's evens and odds together, one conversion instead of two), so the
   numbers changed in the last bits, in the decode and the prefill GEMM alike. The min term starts the same 8-lane accumulator (one FMA of 8
   groups' float16 mins with their rounded-x sums per 8 groups), in the order ml_w4a8_gemm repeats.
   On one Zen 4 core (2026-12-02, benchmarks/bench_gemv_roofline.py, CPU share 1.00) the decode
   rows went from 20.9-21.9 GB/s in the cache and 15.3-15.8 streamed to 25.1-25.5 and 18.6-19.4.
   (Reading a row range one weight row after another, as the float32 decode does, measured
   worse here: 18.9-21.3 and 13.4-15.4; the int4 rows are held by their instructions, which the
   4-row tile shares.) */

/* exact int32 sums of blocks b, b + 1 (b even) of one weight row (lo / hi: its 32 packed bytes'
   low / high nibbles) against x in the pair layout (xp: the pair's 64 bytes): lanes 0-3 block b,
   lanes 4-7 block b + 1 */
static inline __m256i w4a8_pair_sums(__m256i lo, __m256i hi, const int8_t *xp) {
    const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xp)),
                                       _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xp + 32))));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

/* low / high nibbles of 32 packed bytes (two blocks of one weight row) */
static inline void w4_nibbles(const uint8_t *p, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), v = _mm256_loadu_si256((const __m256i *)p);
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
}

/* exact int32 sums of one lone block (16 packed bytes at p) against its x ([evens | odds], 32
   bytes at xb): lanes 0-3 the evens, 4-7 the odds */
static inline __m256i w4a8_block_sums(const uint8_t *p, const int8_t *xb) {
    const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                                         _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0)),
                                       _mm256_set1_epi8(0x0F));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)xb)), _mm256_set1_epi16(1));
}

/* vpermps indices: lanes 0-3 from d[j], 4-7 from d[j + 1] (a pair; a lone block takes all 8 from d[j]) */
static inline __m256i w4_pair_idx(int64_t j) {
    return _mm256_setr_epi32((int)j, (int)j, (int)j, (int)j, (int)j + 1, (int)j + 1, (int)j + 1, (int)j + 1);
}

/* one 8-lane accumulator summed as hsum4x256 sums each of its four (so the GEMM's tiles, which
   reduce four at a time, give the same bits): (a0 + a1) + (a2 + a3), a_i = lane i + lane i + 4 */
static inline float w4_hsum_row(__m256 f) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
    a = _mm_hadd_ps(a, a);
    return _mm_cvtss_f32(_mm_hadd_ps(a, a));
}

/* one weight row (packed bytes w, K / 32 float16 scales sc and mins mn) against x rounded per
   32-block in the pair layout (xs, bs, xsum) */
static inline float w4a8_dot1_g32(const int8_t *xs, const float *bs, const float *xsum, int64_t K,
                                  const uint8_t *w, const uint16_t *sc, const uint16_t *mn) {
    const int64_t nb = K / 32;
    __m256 f = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 8) { /* the min term first */
        const int64_t n = nb - b0 < 8 ? nb - b0 : 8;
        f = _mm256_fmadd_ps(w4_load8_f16(mn + b0, n), w4_load8_f32(xsum + b0, n), f);
    }
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        const int64_t n = nb - b0 < 8 ? nb - b0 : 8;
        const __m256 dv = _mm256_mul_ps(w4_load8_f16(sc + b0, n), w4_load8_f32(bs + b0, n));
        int64_t j = 0;
        for (; j + 2 <= n; j += 2) {
            const int64_t b = b0 + j;
            __m256i lo, hi;
            w4_nibbles(w + 16 * b, &lo, &hi);
            f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_pair_sums(lo, hi, xs + 32 * b)),
                                _mm256_permutevar8x32_ps(dv, w4_pair_idx(j)), f);
        }
        if (j < n) /* the last block of an odd count */
            f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_block_sums(w + 16 * (b0 + j), xs + 32 * (b0 + j))),
                                _mm256_permutevar8x32_ps(dv, _mm256_set1_epi32((int)j)), f);
    }
    return w4_hsum_row(f);
}

/* four weight rows (stride K / 2 bytes; scales and mins stride K / 32) at once, each row's numbers
   those of w4a8_dot1_g32 bit for bit (the same operations per row; the x loads and d products
   shared). pfd: bytes from these rows to the rows whose lines the loop prefetches as it goes (the
   spread prefetch of common.h, into L1), 0 for none. */
static inline __m128 w4a8_dot4_g32(const int8_t *xs, const float *bs, const float *xsum, int64_t K,
                                   const uint8_t *w, const uint16_t *sc, const uint16_t *mn, int64_t pfd) {
    const int64_t nb = K / 32, ldw = K / 2;
    const uint8_t *p0 = w, *p1 = w + ldw, *p2 = w + 2 * ldw, *p3 = w + 3 * ldw;
    __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps(), f2 = _mm256_setzero_ps(), f3 = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 8) { /* the min term first */
        const int64_t n = nb - b0 < 8 ? nb - b0 : 8;
        const __m256 xsv = w4_load8_f32(xsum + b0, n);
        f0 = _mm256_fmadd_ps(w4_load8_f16(mn + b0, n), xsv, f0);
        f1 = _mm256_fmadd_ps(w4_load8_f16(mn + nb + b0, n), xsv, f1);
        f2 = _mm256_fmadd_ps(w4_load8_f16(mn + 2 * nb + b0, n), xsv, f2);
        f3 = _mm256_fmadd_ps(w4_load8_f16(mn + 3 * nb + b0, n), xsv, f3);
    }
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        const int64_t n = nb - b0 < 8 ? nb - b0 : 8;
        const __m256 bsv = w4_load8_f32(bs + b0, n);
        const __m256 d0 = _mm256_mul_ps(w4_load8_f16(sc + b0, n), bsv), d1 = _mm256_mul_ps(w4_load8_f16(sc + nb + b0, n), bsv);
        const __m256 d2 = _mm256_mul_ps(w4_load8_f16(sc + 2 * nb + b0, n), bsv);
        const __m256 d3 = _mm256_mul_ps(w4_load8_f16(sc + 3 * nb + b0, n), bsv);
        int64_t j = 0;
        for (; j + 2 <= n; j += 2) {
            const int64_t b = b0 + j;
            const __m256i idx = w4_pair_idx(j);
            if (pfd && (b & 3) == 0) ml_prefetch4(p0, p1, p2, p3, 16 * b + pfd, 0); /* 4 blocks: 64 bytes a row */
            __m256i lo, hi;
#define W4A8P_ROW(P, D, F)                                                                                 \
            w4_nibbles((P) + 16 * b, &lo, &hi);                                                            \
            F = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_pair_sums(lo, hi, xs + 32 * b)),                   \
                                _mm256_permutevar8x32_ps(D, idx), F)
            W4A8P_ROW(p0, d0, f0);
            W4A8P_ROW(p1, d1, f1);
            W4A8P_ROW(p2, d2, f2);
            W4A8P_ROW(p3, d3, f3);
#undef W4A8P_ROW
        }
        if (j < n) { /* the last block of an odd count */
            const int64_t b = b0 + j;
            const __m256i idx = _mm256_set1_epi32((int)j);
            if (pfd && (b & 3) == 0) ml_prefetch4(p0, p1, p2, p3, 16 * b + pfd, 0);
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_block_sums(p0 + 16 * b, xs + 32 * b)), _mm256_permutevar8x32_ps(d0, idx), f0);
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_block_sums(p1 + 16 * b, xs + 32 * b)), _mm256_permutevar8x32_ps(d1, idx), f1);
            f2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_block_sums(p2 + 16 * b, xs + 32 * b)), _mm256_permutevar8x32_ps(d2, idx), f2);
            f3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_block_sums(p3 + 16 * b, xs + 32 * b)), _mm256_permutevar8x32_ps(d3, idx), f3);
        }
    }
    return hsum4x256(f0, f1, f2, f3);
}

/* the a16 / a8 drivers: round x per 32-block (w4_blockq_prep_x), then 4-row tiles over OpenMP.
   Returns 0 on success, -1 on allocation failure. */
static int w4_blockq_linear(int bits, const float *x, int64_t M, int64_t K, const uint8_t *wp,
                            const uint16_t *scales, const uint16_t *mins, int64_t G, const float *bias,
                            float *y, int64_t N, int nthreads) {
    int64_t ngr = K / G, nb = K / 32;
    size_t esz = bits == 16 ? sizeof(int16_t) : sizeof(int8_t);
    size_t xbytes = ((esz * (size_t)(M * K) + 31) / 32) * 32;
    char *buf = (char *)malloc(xbytes + sizeof(float) * (size_t)(M * nb + M * ngr) + 64);
    if (!buf) return -1;
    float *bs = (float *)(buf + xbytes);
    float *xsum = bs + M * nb;
    for (int64_t m = 0; m < M; m++) {
        w4_blockq_prep_x(bits, x + m * K, K, G, buf + esz * (size_t)(m * K), bs + m * nb, xsum + m * ngr);
        if (bits == 8 && G == 32) w4a8_pair_layout((int8_t *)buf + m * K, K);
    }
    int64_t ntiles = (N + 3) / 4;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t n0 = t * 4;
        int64_t nr = N - n0 < 4 ? N - n0 : 4;
        if (t + ML_PF_TILES4 < ntiles) {
            int64_t pn = n0 + 4 * ML_PF_TILES4;
            ml_prefetch(wp + pn * (K / 2), 4 * (K / 2));
            ml_prefetch(scales + pn * ngr, 4 * ngr * 2);
            ml_prefetch(mins + pn * ngr, 4 * ngr * 2);
        }
        for (int64_t m = 0; m < M; m++) {
            float o[4];
            const char *xm = buf + esz * (size_t)(m * K);
            float *ym = y + m * N;
            if (bits == 8 && G == 32) {
                if (nr == 4) {
                    ml_store_tile4(ym + n0, w4a8_dot4_g32((const int8_t *)xm, bs + m * nb, xsum + m * ngr, K,
                                                          wp + n0 * (K / 2), scales + n0 * ngr, mins + n0 * ngr, 0),
                                   bias ? bias + n0 : NULL, 4);
                    continue;
                }
                for (int64_t r = 0; r < nr; r++) {
                    const int64_t n = n0 + r;
                    ym[n] = w4a8_dot1_g32((const int8_t *)xm, bs + m * nb, xsum + m * ngr, K, wp + n * (K / 2),
                                          scales + n * ngr, mins + n * ngr) + (bias ? bias[n] : 0.0f);
                }
                continue;
            }
            if (bits == 16)
                w4a16_dotn((const int16_t *)xm, bs + m * nb, xsum + m * ngr, K, G, wp + n0 * (K / 2),
                           scales + n0 * ngr, mins + n0 * ngr, ngr, nr, o);
            else
                w4a8_dotn((const int8_t *)xm, bs + m * nb, xsum + m * ngr, K, G, wp + n0 * (K / 2),
                          scales + n0 * ngr, mins + n0 * ngr, ngr, nr, o);
            for (int64_t r = 0; r < nr; r++) ym[n0 + r] = o[r] + (bias ? bias[n0 + r] : 0.0f);
        }
    }
    free(buf);
    return 0;
}

int ml_w4a16_linear(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                    const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads) {
    return w4_blockq_linear(16, x, M, K, wp, scales, mins, G, bias, y, N, nthreads);
}

int ml_w4a8_linear(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                   const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads) {
    return w4_blockq_linear(8, x, M, K, wp, scales, mins, G, bias, y, N, nthreads);
}

/* ---- row ranges for the fused decode: one x row (M = 1), one thread, no OpenMP, rows
   [n0, n1) with n0 a multiple of 4 (the tiles, and the numbers, of the whole-layer kernels);
   x is prepared once per thread and input by the _prep functions (ml_w4_prep: float, as
   ml_w4_linear; ml_w4q_prep: rounded to 16 or 8 bits per 32-block, as ml_w4a16 / ml_w4a8) */
/* prefetch the packed weights, scales and mins of the 4-row tile starting at row pn */
static inline void w4_prefetch_tile(const uint8_t *wp, const uint16_t *scales, const uint16_t *mins, int64_t K,
                                    int64_t ngr, int64_t pn) {
    ml_prefetch(wp + pn * (K / 2), 4 * (K / 2));
    ml_prefetch(scales + pn * ngr, 4 * ngr * 2);
    ml_prefetch(mins + pn * ngr, 4 * ngr * 2);
}

void ml_w4_prep(const float *x, int64_t K, int64_t G, float *xs, float *xsum) {
    w4_prep_x(x, K, G, xs, xsum);
}

void ml_w4_rows(const float *xs, const float *xsum, int64_t K, int64_t G, const uint8_t *wp, const uint16_t *scales,
                const uint16_t *mins, const float *bias, float *y, int64_t n0, int64_t n1) {
    const int64_t ngr = K / G;
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t nr = n1 - n < 4 ? n1 - n : 4;
        if (n + 4 * ML_PF_TILES4 < n1) w4_prefetch_tile(wp, scales, mins, K, ngr, n + 4 * ML_PF_TILES4);
        float o[4];
        if (nr == 4) {
            w4_dot4(xs, xsum, K, G, wp + n * (K / 2), scales + n * ngr, mins + n * ngr, ngr, o);
        } else {
            for (int64_t r = 0; r < nr; r++)
                o[r] = w4_dot1(xs, xsum, K, G, wp + (n + r) * (K / 2), scales + (n + r) * ngr, mins + (n + r) * ngr, ngr);
        }
        for (int64_t r = 0; r < nr; r++) y[n + r] = o[r] + (bias ? bias[n + r] : 0.0f);
    }
}

/* xq: int16 [K] (bits 16) or int8 [K] (bits 8; in the pair layout when G = 32, as the g32 kernels
   read it); bs [K / 32]; xsum [K / G] */
void ml_w4q_prep(int bits, const float *x, int64_t K, int64_t G, void *xq, float *bs, float *xsum) {
    w4_blockq_prep_x(bits, x, K, G, xq, bs, xsum);
    if (bits == 8 && G == 32) w4a8_pair_layout((int8_t *)xq, K);
}

void ml_w4q_rows(int bits, const void *xq, const float *bs, const float *xsum, int64_t K, int64_t G,
                 const uint8_t *wp, const uint16_t *scales, const uint16_t *mins, const float *bias, float *y,
                 int64_t n0, int64_t n1) {
    const int64_t ngr = K / G;
    if (bits == 8 && G == 32) {
        /* 4-row tiles (w4a8_dot4_g32), a short last tile row by row (w4a8_dot1_g32, the same numbers
           per row); spread prefetch (common.h) pf whole tiles ahead, ~ML_PF_BYTES4; the range's first
           tiles and every tile's scales and mins (4 x K / 16 bytes) requested per tile */
        const int64_t pf = ML_PF_BYTES4 / (2 * K) > 1 ? ML_PF_BYTES4 / (2 * K) : 1;
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            const int64_t ahead = n + 4 * pf;
            if (n == n0) {
                for (int64_t t = n; t <= ahead && t < n1; t += 4) w4_prefetch_tile(wp, scales, mins, K, ngr, t);
            } else if (ahead < n1) {
                ml_prefetch(scales + ahead * ngr, 4 * ngr * 2);
                ml_prefetch(mins + ahead * ngr, 4 * ngr * 2);
            }
            ml_store_tile4(y + n, w4a8_dot4_g32((const int8_t *)xq, bs, xsum, K, wp + n * (K / 2), scales + n * ngr,
                                                mins + n * ngr, ahead + 4 <= n1 ? pf * 2 * K : 0),
                           bias ? bias + n : NULL, 4);
        }
        for (; n < n1; n++)
            y[n] = w4a8_dot1_g32((const int8_t *)xq, bs, xsum, K, wp + n * (K / 2), scales + n * ngr, mins + n * ngr)
                   + (bias ? bias[n] : 0.0f);
        return;
    }
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t nr = n1 - n < 4 ? n1 - n : 4;
        if (n + 4 * ML_PF_TILES4 < n1) w4_prefetch_tile(wp, scales, mins, K, ngr, n + 4 * ML_PF_TILES4);
        float o[4];
        if (bits == 16)
            w4a16_dotn((const int16_t *)xq, bs, xsum, K, G, wp + n * (K / 2), scales + n * ngr, mins + n * ngr, ngr,
                       nr, o);
        else
            w4a8_dotn((const int8_t *)xq, bs, xsum, K, G, wp + n * (K / 2), scales + n * ngr, mins + n * ngr, ngr,
                      nr, o);
        for (int64_t r = 0; r < nr; r++) y[n + r] = o[r] + (bias ? bias[n + r] : 0.0f);
    }
}

/* ---- int4 g32 x int8 activations, GEMM for prefill (many x rows): integer products, no
   dequantization ----
   The numbers of w4a8_dot1_g32 (the decode GEMV, via ml_w4a8_linear) bit for bit, for every
   (row, output): each row of x is rounded per 32-block by w4_blockq_prep_x, and each output sums
   its blocks' exact int32 nibble x int8 sums (vpmaddubsw, vpmaddwd) scaled by
   d = scale * bs and its min term in the same order. What changes is the blocking: an
   W4G_MR x W4G_NR tile of (x row, weight row) pairs keeps its 9 float accumulators in registers,
   so each weight block is unpacked once for W4G_MR rows and each x block loaded once for W4G_NR
   weight rows (the GEMV re-unpacks every weight block for every row), and the float32
   dequantized copy of the weights that the previous prefill wrote and read (N x K x 4 bytes a
   layer) is gone. As llamafile's tinyBLAS_Q0_AVX (llama.cpp's quantized prefill on AVX2) blocks
   its Q4 x Q8 products; here the min term of Q4_1 comes from per-group sums of the rounded x. */

#define W4G_MR 3  /* x rows per tile */
#define W4G_NR 3  /* weight rows per tile. 9 accumulators and 3 rows' unpacked block pairs are more than the
                     16 ymm registers: gcc 12 keeps 6 accumulators on the stack in the pair loop; a 2 x 3 tile
                     (all in registers) measured 0.92-0.96 of this one (SmolLM2 shapes, M = 512, 2 threads,
                     2026-12-02) */
#define W4G_MB 48 /* x rows per block (a multiple of W4G_MR; 48 x K int8 stays in L2) */

/* One tile. Per-block arrays (bs, xsum of x; sc, mn of w) have nbp = nb rounded up to 8 entries
   a row, zero beyond nb (as w4_load8_* reads the GEMV's last partial 8 blocks), so every 8-block
   step is whole vectors. */
static inline __attribute__((always_inline)) void w4a8g_tile(const int8_t *xq, const float *bs, const float *xsum,
                                                             int64_t K, int64_t nbp, const uint8_t *wp,
                                                             const uint16_t *sc, const uint16_t *mn, const int MR,
                                                             const int NR, float out[W4G_MR][W4G_NR]) {
    const int64_t ldw = K / 2, nb = K / 32;
    __m256 f[W4G_MR][W4G_NR];
    float d[W4G_MR][W4G_NR][8] __attribute__((aligned(32)));
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) f[i][j] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 8) /* the min term first, as w4a8_dot1_g32 */
        for (int j = 0; j < NR; j++) {
            const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + j * nbp + b0)));
            for (int i = 0; i < MR; i++) f[i][j] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xsum + i * nbp + b0), f[i][j]);
        }
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        const int64_t n = nb - b0 < 8 ? nb - b0 : 8;
        for (int j = 0; j < NR; j++) {
            const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + j * nbp + b0)));
            for (int i = 0; i < MR; i++) _mm256_store_ps(d[i][j], _mm256_mul_ps(sw, _mm256_loadu_ps(bs + i * nbp + b0)));
        }
        int64_t t = 0;
        for (; t + 2 <= n; t += 2) { /* blocks b, b + 1 of each row (w4a8_dot1_g32's pair step) */
            const int64_t b = b0 + t;
            const __m256i idx = w4_pair_idx(t);
            __m256i lo[W4G_NR], hi[W4G_NR];
            for (int j = 0; j < NR; j++) w4_nibbles(wp + j * ldw + 16 * b, &lo[j], &hi[j]);
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++)
                    f[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_pair_sums(lo[j], hi[j], xq + i * K + 32 * b)),
                                              _mm256_permutevar8x32_ps(_mm256_load_ps(d[i][j]), idx), f[i][j]);
        }
        if (t < n) /* the last block of an odd count, alone */
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++)
                    f[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w4a8_block_sums(wp + j * ldw + 16 * (b0 + t),
                                                                                 xq + i * K + 32 * (b0 + t))),
                                              _mm256_broadcast_ss(&d[i][j][t]), f[i][j]);
    }
    /* the GEMV's reduction (hsum4x256), so that even NaN payloads come out the same */
    const __m256 z = _mm256_setzero_ps();
    for (int i = 0; i < MR; i++)
        for (int j0 = 0; j0 < NR; j0 += 4) {
            float o4[4];
            _mm_storeu_ps(o4, hsum4x256(f[i][j0], j0 + 1 < NR ? f[i][j0 + 1] : z, j0 + 2 < NR ? f[i][j0 + 2] : z,
                                        j0 + 3 < NR ? f[i][j0 + 3] : z));
            for (int j = j0; j < NR && j < j0 + 4; j++) out[i][j] = o4[j - j0];
        }
}

/* rows m0..m0+mr-1, outputs n0..n0+nr-1 (mr <= W4G_MR, nr <= W4G_NR); partial tiles pair by pair */
static void w4a8g_block(const int8_t *xq, const float *bs, const float *xsum, int64_t nbp, int64_t m0, int mr,
                        const uint8_t *wp, const uint16_t *sc, const uint16_t *mn, const float *bias,
                        int64_t n0, int nr, int64_t K, float *y, int64_t N) {
    const int8_t *xb = xq + m0 * K;
    const float *bb = bs + m0 * nbp, *xs = xsum + m0 * nbp;
    const uint8_t *wb = wp + n0 * (K / 2);
    const uint16_t *sb = sc + n0 * nbp, *mb = mn + n0 * nbp;
    float o[W4G_MR][W4G_NR];
    if (mr == W4G_MR && nr == W4G_NR) {
        w4a8g_tile(xb, bb, xs, K, nbp, wb, sb, mb, W4G_MR, W4G_NR, o);
    } else {
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++) {
                float t[W4G_MR][W4G_NR];
                w4a8g_tile(xb + i * K, bb + i * nbp, xs + i * nbp, K, nbp, wb + j * (K / 2), sb + j * nbp, mb + j * nbp,
                           1, 1, t);
                o[i][j] = t[0][0];
            }
    }
    for (int i = 0; i < mr; i++) {
        float *ym = y + (m0 + i) * N;
        for (int j = 0; j < nr; j++) ym[n0 + j] = o[i][j] + (bias ? bias[n0 + j] : 0.0f);
    }
}

/* y[M, N] = (x rounded per 32-block to int8) @ W[N, K]^T + bias for int4 weights in groups of 32
   (G must be 32, K a positive multiple of it, M and N not negative: -2 otherwise); bit for bit
   ml_w4a8_linear's output. Returns 0, -1 (allocation failed) or -2. M = 0 writes nothing. */
int ml_w4a8_gemm(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                 const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads) {
    if (G != 32 || K <= 0 || K % 32 != 0 || M < 0 || N < 0) return -2;
    if (M == 0 || N == 0) return 0;
    const int64_t nb = K / 32, nbp = (nb + 7) / 8 * 8;
    const size_t xbytes = ((size_t)(M * K) + 63) / 64 * 64;
    const size_t fbytes = sizeof(float) * (size_t)(2 * M * nbp), hbytes = sizeof(uint16_t) * (size_t)(2 * N * nbp);
    char *buf = (char *)malloc(xbytes + fbytes + hbytes + 64);
    if (!buf) return -1;
    int8_t *xq = (int8_t *)buf;
    float *bs = (float *)(buf + xbytes), *xsum = bs + M * nbp;
    uint16_t *sc = (uint16_t *)(buf + xbytes + fbytes), *mn = sc + N * nbp;
    const int64_t ntiles = (N + W4G_NR - 1) / W4G_NR;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        for (int64_t m = M * tid / nt; m < M * (tid + 1) / nt; m++) {
            w4_blockq_prep_x(8, x + m * K, K, 32, xq + m * K, bs + m * nbp, xsum + m * nbp);
            w4a8_pair_layout(xq + m * K, K);
            for (int64_t j = nb; j < nbp; j++) bs[m * nbp + j] = xsum[m * nbp + j] = 0.0f;
        }
        for (int64_t n = N * tid / nt; n < N * (tid + 1) / nt; n++) {
            memcpy(sc + n * nbp, scales + n * nb, sizeof(uint16_t) * (size_t)nb);
            memcpy(mn + n * nbp, mins + n * nb, sizeof(uint16_t) * (size_t)nb);
            for (int64_t j = nb; j < nbp; j++) sc[n * nbp + j] = mn[n * nbp + j] = 0;
        }
        #pragma omp barrier
        const int64_t t0 = ntiles * tid / nt, t1 = ntiles * (tid + 1) / nt;
        for (int64_t mb = 0; mb < M; mb += W4G_MB) {
            const int64_t me = mb + W4G_MB < M ? mb + W4G_MB : M;
            for (int64_t t = t0; t < t1; t++) {
                const int64_t n0 = W4G_NR * t;
                const int nr = N - n0 < W4G_NR ? (int)(N - n0) : W4G_NR;
                for (int64_t m = mb; m < me; m += W4G_MR) {
                    const int mr = me - m < W4G_MR ? (int)(me - m) : W4G_MR;
                    w4a8g_block(xq, bs, xsum, nbp, m, mr, wp, sc, mn, bias, n0, nr, K, y, N);
                }
            }
        }
    }
    free(buf);
    return 0;
}

void ml_w4_dequant(const uint8_t *wp, const uint16_t *scales, const uint16_t *mins, int64_t G,
                   float *out, int64_t N, int64_t K, int nthreads) {
    int64_t ngr = K / G;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *p = wp + n * (K / 2);
        float *o = out + n * K;
        for (int64_t g = 0; g < ngr; g++) {
            float s = _cvtsh_ss(scales[n * ngr + g]), mnv = _cvtsh_ss(mins[n * ngr + g]);
            for (int64_t k = g * G; k < (g + 1) * G; k += 2) {
                uint8_t b = p[k / 2];
                o[k] = (float)(b & 0x0F) * s + mnv;
                o[k + 1] = (float)(b >> 4) * s + mnv;
            }
        }
    }
}
