"""C source of moorelab's weight-only / dynamic quantized matmul kernels (AVX2 + FMA + F16C).

Kept as a Python string so the source ships with the package (no package-data entry needed);
:mod:`moorelab.improve.kernels.build` compiles it once with the system gcc into a shared
library cached under ``moorelab.paths.cache_dir()/kernels/<hash>/``.

Layouts (all row-major, C-contiguous):

* ``x``: float32 ``[M, K]``; ``y``: float32 ``[M, N]``; ``bias``: float32 ``[N]`` or NULL.
* int8 weight-only: ``w`` int8 ``[N, K]`` in -127..127, ``scale`` float32 ``[N]``;
  ``W[n, k] = scale[n] * w[n, k]``.
* int4 weight-only: ``wp`` uint8 ``[N, K/2]``; byte ``wp[n, j]`` holds ``q[n, 2j]`` in its
  LOW nibble and ``q[n, 2j+1]`` in its HIGH nibble; ``q`` is unsigned 0..15.
  ``scales``/``mins`` are IEEE float16 (as uint16) ``[N, K/G]``;
  ``W[n, k] = scales[n, k/G] * q[n, k] + mins[n, k/G]`` (asymmetric, GGML Q4_1 style).
  ``G`` is a multiple of 32.
* float32 (decode GEMV): ``w`` float32 ``[N, K]``; ``y = x @ w.T + bias``.
* dynamic int8: same weight layout as int8 weight-only; each row of ``x`` is quantized
  symmetrically, ``sx[m] = max|x[m]| / 127`` (1 if the row is all zero),
  ``xq = round_half_even(x / sx)``; ``y = sx[m] * scale[n] * sum_k xq[m,k] w[n,k]`` with exact
  int32 accumulation (AVX2 ``vpmaddubsw`` on |x| and sign-transferred w; |values| <= 127 so
  the int16 pair sums cannot saturate).
* int4 x int16 / int8 activations ("a16" / "a8"): x is rounded per 32-block
  (``bs = max|x_block| / 32767`` or ``/ 127``, round half to even) and the nibbles are
  multiplied in integers (``vpmaddwd`` / ``vpmaddubsw`` + ``vpmaddwd``, exact int32 block
  sums), each block sum scaled by ``bs`` in float; the min term uses the float x.
* fused decode: ``ml_decode_layers`` runs every LLaMA-family decoder layer (RMSNorm, q/k/v,
  half-split RoPE, KV-cache write, softmax attention with GQA, o, SwiGLU FFN, residuals) for
  one token of one sequence, each linear dispatched by an ``ml_lin`` descriptor to the
  kernels above; structures ``ml_lin`` / ``ml_layer`` are mirrored by ctypes in
  :mod:`moorelab.improve.kernels` (``ml_fused_abi`` returns their sizes to check).

Work is split over output rows (tiles of 4 rows) with OpenMP, ``nthreads`` threads.
"""

C_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>

#define ML_ABI_VERSION 8
#define ML_PF_TILES 4  /* software prefetch distance, in 4-row tiles */
#define ML_PF_TILES4 8 /* same for int4 (half the bytes per tile) */
#define ML_PF_TILES_F32 2 /* same for float32 (4x the bytes per tile) */

/* prefetch [p, p + bytes) into L1 (weights stream from DRAM at decode; the hardware prefetcher
   alone leaves single-core bandwidth well below what a sequential read reaches) */
static inline void ml_prefetch(const void *p, int64_t bytes) {
    const char *c = (const char *)p;
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

int ml_abi_version(void) { return ML_ABI_VERSION; }

static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

static inline int32_t hsum256i(__m256i v) {
    __m128i lo = _mm256_castsi256_si128(v);
    __m128i hi = _mm256_extracti128_si256(v, 1);
    lo = _mm_add_epi32(lo, hi);
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0x4E));
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0xB1));
    return _mm_cvtsi128_si32(lo);
}

/* 8 int8 -> 8 float */
static inline __m256 cvt8_i8(__m128i v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}
static inline __m256 cvt8_u8(__m128i v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

/* ------------------------------------------------------------------ int8 weight-only */

/* dot products of one x row with R weight rows (R = 1..4) */
static inline void w8_dot4(const float *x, int64_t K, const int8_t *w, int64_t ldw, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    const int8_t *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw, *w3 = w + 3 * ldw;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        __m128i v0 = _mm_loadu_si128((const __m128i *)(w0 + k));
        __m128i v1 = _mm_loadu_si128((const __m128i *)(w1 + k));
        __m128i v2 = _mm_loadu_si128((const __m128i *)(w2 + k));
        __m128i v3 = _mm_loadu_si128((const __m128i *)(w3 + k));
        a0 = _mm256_fmadd_ps(cvt8_i8(v0), x0, a0);
        a1 = _mm256_fmadd_ps(cvt8_i8(v1), x0, a1);
        a2 = _mm256_fmadd_ps(cvt8_i8(v2), x0, a2);
        a3 = _mm256_fmadd_ps(cvt8_i8(v3), x0, a3);
        b0 = _mm256_fmadd_ps(cvt8_i8(_mm_srli_si128(v0, 8)), x1, b0);
        b1 = _mm256_fmadd_ps(cvt8_i8(_mm_srli_si128(v1, 8)), x1, b1);
        b2 = _mm256_fmadd_ps(cvt8_i8(_mm_srli_si128(v2, 8)), x1, b2);
        b3 = _mm256_fmadd_ps(cvt8_i8(_mm_srli_si128(v3, 8)), x1, b3);
    }
    float s0 = hsum256(_mm256_add_ps(a0, b0)), s1 = hsum256(_mm256_add_ps(a1, b1));
    float s2 = hsum256(_mm256_add_ps(a2, b2)), s3 = hsum256(_mm256_add_ps(a3, b3));
    for (; k < K; k++) {
        float xv = x[k];
        s0 += xv * w0[k]; s1 += xv * w1[k]; s2 += xv * w2[k]; s3 += xv * w3[k];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

static inline float w8_dot1(const float *x, int64_t K, const int8_t *w) {
    __m256 a0 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m128i v0 = _mm_loadu_si128((const __m128i *)(w + k));
        a0 = _mm256_fmadd_ps(cvt8_i8(v0), _mm256_loadu_ps(x + k), a0);
        b0 = _mm256_fmadd_ps(cvt8_i8(_mm_srli_si128(v0, 8)), _mm256_loadu_ps(x + k + 8), b0);
    }
    float s = hsum256(_mm256_add_ps(a0, b0));
    for (; k < K; k++) s += x[k] * w[k];
    return s;
}

void ml_w8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
                  const float *bias, float *y, int64_t N, int nthreads) {
    int64_t ntiles = (N + 3) / 4;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t n0 = t * 4;
        int64_t nr = N - n0 < 4 ? N - n0 : 4;
        if (t + ML_PF_TILES < ntiles) ml_prefetch(w + (n0 + 4 * ML_PF_TILES) * K, 4 * K);
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float *ym = y + m * N;
            float o[4];
            if (nr == 4) {
                w8_dot4(xm, K, w + n0 * K, K, o);
            } else {
                for (int64_t r = 0; r < nr; r++) o[r] = w8_dot1(xm, K, w + (n0 + r) * K);
            }
            for (int64_t r = 0; r < nr; r++)
                ym[n0 + r] = o[r] * scale[n0 + r] + (bias ? bias[n0 + r] : 0.0f);
        }
    }
}

void ml_w8_dequant(const int8_t *w, const float *scale, float *out, int64_t N, int64_t K, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wr = w + n * K;
        float *o = out + n * K;
        __m256 s = _mm256_set1_ps(scale[n]);
        int64_t k = 0;
        for (; k + 8 <= K; k += 8)
            _mm256_storeu_ps(o + k, _mm256_mul_ps(cvt8_i8(_mm_loadl_epi64((const __m128i *)(wr + k))), s));
        for (; k < K; k++) o[k] = wr[k] * scale[n];
    }
}

/* ------------------------------------------------------------------ float32 GEMV (decode) */

/* dot products of one x row with 4 float32 weight rows (row-major, leading dimension ldw) */
static inline void f32_dot4(const float *x, int64_t K, const float *w, int64_t ldw, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    const float *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw, *w3 = w + 3 * ldw;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), x0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), x0, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), x0, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), x0, a3);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k + 8), x1, b0);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k + 8), x1, b1);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k + 8), x1, b2);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k + 8), x1, b3);
    }
    for (; k + 8 <= K; k += 8) {
        __m256 x0 = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), x0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), x0, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), x0, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), x0, a3);
    }
    float s0 = hsum256(_mm256_add_ps(a0, b0)), s1 = hsum256(_mm256_add_ps(a1, b1));
    float s2 = hsum256(_mm256_add_ps(a2, b2)), s3 = hsum256(_mm256_add_ps(a3, b3));
    for (; k < K; k++) {
        float xv = x[k];
        s0 += xv * w0[k]; s1 += xv * w1[k]; s2 += xv * w2[k]; s3 += xv * w3[k];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

static inline float f32_dot1(const float *x, int64_t K, const float *w) {
    __m256 a0 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), b0);
    }
    float s = hsum256(_mm256_add_ps(a0, b0));
    for (; k < K; k++) s += x[k] * w[k];
    return s;
}

/* y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]; x [M, K], w [N, K], y [M, N], all row-major */
void ml_f32_linear(const float *x, int64_t M, int64_t K, const float *w, const float *bias,
                   float *y, int64_t N, int nthreads) {
    int64_t ntiles = (N + 3) / 4;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t n0 = t * 4;
        int64_t nr = N - n0 < 4 ? N - n0 : 4;
        if (t + ML_PF_TILES_F32 < ntiles) ml_prefetch(w + (n0 + 4 * ML_PF_TILES_F32) * K, 4 * K * 4);
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float *ym = y + m * N;
            float o[4];
            if (nr == 4) {
                f32_dot4(xm, K, w + n0 * K, K, o);
            } else {
                for (int64_t r = 0; r < nr; r++) o[r] = f32_dot1(xm, K, w + (n0 + r) * K);
            }
            for (int64_t r = 0; r < nr; r++) ym[n0 + r] = o[r] + (bias ? bias[n0 + r] : 0.0f);
        }
    }
}

/* ------------------------------------------------------------------ int4 weight-only */

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
   then each 32-block's sum is scaled by bs in float. The min term uses the float x. */

/* x row -> per 32-block [x0,x2,..,x30, x1,x3,..,x31] rounded to `bits` (16 or 8) bits:
   xq = round_half_even(x / bs), bs = max|x_block| / (2^(bits-1) - 1) (1 if that is 0: a zero
   block, or a maximum so small the division underflows); int16 or int8 stores; xsum[g] = float
   sum of group g of x (for the min term). Shared by the a16 and a8 kernels. */
static void w4_blockq_prep_x(int bits, const float *x, int64_t K, int64_t G, void *xq, float *bs, float *xsum) {
    const float qmax = bits == 16 ? 32767.0f : 127.0f;
    int16_t *x16 = (int16_t *)xq;
    int8_t *x8 = (int8_t *)xq;
    for (int64_t b = 0; b < K; b += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) { float a = fabsf(x[b + j]); if (a > amax) amax = a; }
        float s = amax / qmax;
        if (!(s > 0.0f)) s = 1.0f;
        bs[b / 32] = s;
        for (int j = 0; j < 32; j++) {
            int64_t src = b + (j < 16 ? 2 * j : 2 * (j - 16) + 1);
            float v = nearbyintf(x[src] / s);
            v = v > qmax ? qmax : (v < -qmax ? -qmax : v);
            if (bits == 16) x16[b + j] = (int16_t)v; else x8[b + j] = (int8_t)v;
        }
    }
    for (int64_t g = 0; g < K / G; g++) {
        float s = 0.0f;
        for (int64_t k = g * G; k < (g + 1) * G; k++) s += x[k];
        xsum[g] = s;
    }
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
   in float. The min term uses the float x (exact block sums of x, not of xq). */

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
    for (int64_t m = 0; m < M; m++)
        w4_blockq_prep_x(bits, x + m * K, K, G, buf + esz * (size_t)(m * K), bs + m * nb, xsum + m * ngr);
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
            if (bits == 16)
                w4a16_dotn((const int16_t *)xm, bs + m * nb, xsum + m * ngr, K, G, wp + n0 * (K / 2),
                           scales + n0 * ngr, mins + n0 * ngr, ngr, nr, o);
            else
                w4a8_dotn((const int8_t *)xm, bs + m * nb, xsum + m * ngr, K, G, wp + n0 * (K / 2),
                          scales + n0 * ngr, mins + n0 * ngr, ngr, nr, o);
            float *ym = y + m * N;
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

/* ------------------------------------------------------------------ dynamic int8 x int8 */

/* quantize one row symmetric per token; returns the scale */
static float a8_quant_row(const float *x, int64_t K, int8_t *q) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) { float a = fabsf(x[k]); if (a > amax) amax = a; }
    float s = amax / 127.0f;
    if (!(s > 0.0f)) s = 1.0f; /* zero, or amax / 127 underflows to 0 */
    for (int64_t k = 0; k < K; k++) {
        float v = nearbyintf(x[k] / s);
        if (v > 127.0f) v = 127.0f;
        if (v < -127.0f) v = -127.0f;
        q[k] = (int8_t)v;
    }
    return s;
}

static inline int32_t a8_dot1(const int8_t *xq, const int8_t *w, int64_t K) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + k));
        __m256i ax = _mm256_abs_epi8(xv);
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k));
        __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    int32_t s = hsum256i(acc);
    for (; k < K; k++) s += (int32_t)xq[k] * (int32_t)w[k];
    return s;
}

static inline void a8_dot4(const int8_t *xq, const int8_t *w, int64_t ldw, int64_t K, int32_t *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = _mm256_setzero_si256(), c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    const int8_t *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw, *w3 = w + 3 * ldw;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + k));
        __m256i ax = _mm256_abs_epi8(xv);
        __m256i p0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w0 + k)), xv));
        __m256i p1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w1 + k)), xv));
        __m256i p2 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w2 + k)), xv));
        __m256i p3 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w3 + k)), xv));
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(p0, ones));
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(p1, ones));
        c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(p2, ones));
        c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(p3, ones));
    }
    int32_t s0 = hsum256i(c0), s1 = hsum256i(c1), s2 = hsum256i(c2), s3 = hsum256i(c3);
    for (; k < K; k++) {
        int32_t xv = xq[k];
        s0 += xv * w0[k]; s1 += xv * w1[k]; s2 += xv * w2[k]; s3 += xv * w3[k];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

/* returns 0 on success, -1 on allocation failure; sx_out (may be NULL) receives the per-row scales */
int ml_a8w8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
                   const float *bias, float *y, int64_t N, int nthreads, float *sx_out) {
    int8_t *xq = (int8_t *)malloc((size_t)(M * K) + sizeof(float) * (size_t)M + 64);
    if (!xq) return -1;
    float *sx = (float *)(xq + ((M * K + 63) / 64) * 64);
    for (int64_t m = 0; m < M; m++) sx[m] = a8_quant_row(x + m * K, K, xq + m * K);
    if (sx_out) memcpy(sx_out, sx, sizeof(float) * (size_t)M);
    int64_t ntiles = (N + 3) / 4;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t n0 = t * 4;
        int64_t nr = N - n0 < 4 ? N - n0 : 4;
        if (t + ML_PF_TILES < ntiles) ml_prefetch(w + (n0 + 4 * ML_PF_TILES) * K, 4 * K);
        for (int64_t m = 0; m < M; m++) {
            int32_t o[4];
            if (nr == 4) a8_dot4(xq + m * K, w + n0 * K, K, K, o);
            else for (int64_t r = 0; r < nr; r++) o[r] = a8_dot1(xq + m * K, w + (n0 + r) * K, K);
            float *ym = y + m * N;
            for (int64_t r = 0; r < nr; r++)
                ym[n0 + r] = (float)o[r] * (sx[m] * scale[n0 + r]) + (bias ? bias[n0 + r] : 0.0f);
        }
    }
    free(xq);
    return 0;
}
/* ------------------------------------------------------------------ fused decode (LLaMA family)
   One call runs every decoder layer for ONE token of ONE sequence (batch 1, decode), the same
   math as moorelab.model.transformer's Python path, on the same KV cache buffers:
       h = RMSNorm(x); q,k,v = Wq h, Wk h, Wv h; RoPE(q, k) (half-split); cache[pos] = k, v
       a = softmax(q·Kᵀ/√d)·V per head (query head j uses kv head j / (H/Hkv)); x += Wo a
       h = RMSNorm(x); x += Wdown (silu(Wgate h) ⊙ Wup h)
   Each linear is described by an ml_lin (kind = which GEMV kernel above runs it), so float32,
   int8, int4 (float / int16 / int8 activations) and dynamic int8 layers mix freely. */

typedef struct {
    int32_t kind;      /* 1 f32, 2 int8 weight-only, 3 int4, 4 int4 x int16-act, 5 int4 x int8-act, 6 dynamic int8 */
    int32_t nthreads;
    int64_t N, K, G;
    const void *w, *s, *mn;
    const float *bias;
} ml_lin;

typedef struct {
    ml_lin q, k, v, o, gate, up, down;
    const float *attn_norm, *ffn_norm;
    float *kc, *vc;    /* [Hkv, cap, hd] each */
    int64_t cap;
    int32_t H, Hkv, hd, rope;
    float eps;
    int32_t pad_;
} ml_layer;

int ml_fused_abi(void) { return (int)(sizeof(ml_lin) * 1000 + sizeof(ml_layer)); }

static int ml_lin_apply(const ml_lin *l, const float *x, float *y) {
    switch (l->kind) {
    case 1: ml_f32_linear(x, 1, l->K, (const float *)l->w, l->bias, y, l->N, l->nthreads); return 0;
    case 2: ml_w8_linear(x, 1, l->K, (const int8_t *)l->w, (const float *)l->s, l->bias, y, l->N, l->nthreads); return 0;
    case 3: return ml_w4_linear(x, 1, l->K, (const uint8_t *)l->w, (const uint16_t *)l->s, (const uint16_t *)l->mn,
                                l->G, l->bias, y, l->N, l->nthreads);
    case 4: return ml_w4a16_linear(x, 1, l->K, (const uint8_t *)l->w, (const uint16_t *)l->s, (const uint16_t *)l->mn,
                                   l->G, l->bias, y, l->N, l->nthreads);
    case 5: return ml_w4a8_linear(x, 1, l->K, (const uint8_t *)l->w, (const uint16_t *)l->s, (const uint16_t *)l->mn,
                                  l->G, l->bias, y, l->N, l->nthreads);
    case 6: return ml_a8w8_linear(x, 1, l->K, (const int8_t *)l->w, (const float *)l->s, l->bias, y, l->N,
                                  l->nthreads, NULL);
    default: return -2;
    }
}

/* one linear layer through the fused-decode dispatcher (tests check each kind against the
   module's own kernel call): y[N] = layer(x[K]); returns ml_lin_apply's code */
int ml_lin_forward(const ml_lin *l, const float *x, float *y) { return ml_lin_apply(l, x, y); }

/* e^x for 8 floats: Cephes expf (range reduction by ln 2 in two parts, degree-5 polynomial),
   relative error ~1e-7 over [-87.3, 88.7]; inputs are clamped to that range. */
static inline __m256 ml_exp256(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447504019f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* y = x / sqrt(mean(x^2) + eps) * w */
static void ml_rmsnorm(const float *x, const float *w, float eps, float *y, int64_t D) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= D; i += 8) { __m256 v = _mm256_loadu_ps(x + i); acc = _mm256_fmadd_ps(v, v, acc); }
    float ss = hsum256(acc);
    for (; i < D; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)D + eps);
    for (i = 0; i < D; i++) y[i] = (x[i] * r) * w[i];
}

/* half-split rotary embedding of one head vector v[hd] at the position whose tables are cos, sin */
static void ml_rope(float *v, const float *cos, const float *sin, int64_t hd) {
    int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

static inline float ml_dot(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum256(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* one query head against positions 0..T-1 of one kv head: out[hd] = softmax(q·Kᵀ·scale)·V.
   Scores take 4 keys at a time (4 independent FMA chains); the weighted sum of V keeps up to 64
   output floats in 8 registers per pass over the keys. */
static void ml_attend(const float *q, const float *kc, const float *vc, int64_t T, int64_t hd, float scale,
                      float *sc, float *out) {
    float mx = -INFINITY;
    const int64_t hd8 = hd & ~(int64_t)7;
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *k0 = kc + t * hd, *k1 = k0 + hd, *k2 = k1 + hd, *k3 = k2 + hd;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t i = 0; i < hd8; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(k0 + i), qv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(k1 + i), qv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(k2 + i), qv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(k3 + i), qv, a3);
        }
        float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
        for (int64_t i = hd8; i < hd; i++) { s0 += q[i] * k0[i]; s1 += q[i] * k1[i]; s2 += q[i] * k2[i]; s3 += q[i] * k3[i]; }
        sc[t] = s0 * scale; sc[t + 1] = s1 * scale; sc[t + 2] = s2 * scale; sc[t + 3] = s3 * scale;
    }
    for (; t < T; t++) sc[t] = ml_dot(q, kc + t * hd, hd) * scale;
    for (t = 0; t < T; t++) if (sc[t] > mx) mx = sc[t];
    __m256 mxv = _mm256_set1_ps(mx), sumv = _mm256_setzero_ps();
    t = 0;
    for (; t + 8 <= T; t += 8) {
        __m256 e = ml_exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + t), mxv));
        _mm256_storeu_ps(sc + t, e);
        sumv = _mm256_add_ps(sumv, e);
    }
    float sum = hsum256(sumv);
    for (; t < T; t++) { sc[t] = expf(sc[t] - mx); sum += sc[t]; }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    int64_t c0 = 0;
    for (; c0 + 64 <= hd8; c0 += 64) {
        __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps(), o2 = _mm256_setzero_ps(), o3 = _mm256_setzero_ps();
        __m256 o4 = _mm256_setzero_ps(), o5 = _mm256_setzero_ps(), o6 = _mm256_setzero_ps(), o7 = _mm256_setzero_ps();
        for (t = 0; t < T; t++) {
            const float *vr = vc + t * hd + c0;
            __m256 p = _mm256_broadcast_ss(sc + t);
            o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr), o0);
            o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8), o1);
            o2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 16), o2);
            o3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 24), o3);
            o4 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 32), o4);
            o5 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 40), o5);
            o6 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 48), o6);
            o7 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 56), o7);
        }
        _mm256_storeu_ps(out + c0, _mm256_mul_ps(o0, inv));
        _mm256_storeu_ps(out + c0 + 8, _mm256_mul_ps(o1, inv));
        _mm256_storeu_ps(out + c0 + 16, _mm256_mul_ps(o2, inv));
        _mm256_storeu_ps(out + c0 + 24, _mm256_mul_ps(o3, inv));
        _mm256_storeu_ps(out + c0 + 32, _mm256_mul_ps(o4, inv));
        _mm256_storeu_ps(out + c0 + 40, _mm256_mul_ps(o5, inv));
        _mm256_storeu_ps(out + c0 + 48, _mm256_mul_ps(o6, inv));
        _mm256_storeu_ps(out + c0 + 56, _mm256_mul_ps(o7, inv));
    }
    for (; c0 < hd8; c0 += 8) {
        __m256 o0 = _mm256_setzero_ps();
        for (t = 0; t < T; t++) o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + t), _mm256_loadu_ps(vc + t * hd + c0), o0);
        _mm256_storeu_ps(out + c0, _mm256_mul_ps(o0, inv));
    }
    float invs = 1.0f / sum;
    for (int64_t i = hd8; i < hd; i++) {
        float o = 0.0f;
        for (t = 0; t < T; t++) o += sc[t] * vc[t * hd + i];
        out[i] = o * invs;
    }
}

/* x[D] (in/out): the hidden state of the token at position pos; cos/sin: [hd] tables of pos.
   Returns 0, -1 (allocation failed), -2 (unknown linear kind), -3 (pos >= cache capacity). */
int ml_decode_layers(const ml_layer *L, int32_t n_layers, int64_t D, float *x, int64_t pos,
                     const float *cos, const float *sin, int32_t attn_threads) {
    int64_t mq = 0, mkv = 0, mf = 0;
    for (int32_t i = 0; i < n_layers; i++) {
        if (pos >= L[i].cap) return -3;
        int64_t hq = (int64_t)L[i].H * L[i].hd, hk = (int64_t)L[i].Hkv * L[i].hd;
        if (hq > mq) mq = hq;
        if (hk > mkv) mkv = hk;
        if (L[i].gate.N > mf) mf = L[i].gate.N;
    }
    int64_t T = pos + 1;
    int64_t nsc = (T + 7) & ~(int64_t)7;
    size_t nfl = (size_t)(2 * D + 2 * mq + 2 * mkv + 2 * mf + nsc * (attn_threads > 1 ? attn_threads : 1) + 64);
    float *buf = (float *)malloc(sizeof(float) * nfl);
    if (!buf) return -1;
    float *h = buf, *o = h + D, *q = o + D, *att = q + mq, *k = att + mq, *v = k + mkv, *g = v + mkv, *u = g + mf;
    float *scores = u + mf;
    int rc = 0;
    for (int32_t li = 0; li < n_layers && rc == 0; li++) {
        const ml_layer *ly = &L[li];
        const int64_t H = ly->H, Hkv = ly->Hkv, hd = ly->hd, rep = H / Hkv;
        ml_rmsnorm(x, ly->attn_norm, ly->eps, h, D);
        if ((rc = ml_lin_apply(&ly->q, h, q)) || (rc = ml_lin_apply(&ly->k, h, k)) || (rc = ml_lin_apply(&ly->v, h, v)))
            break;
        if (ly->rope) {
            for (int64_t j = 0; j < H; j++) ml_rope(q + j * hd, cos, sin, hd);
            for (int64_t j = 0; j < Hkv; j++) ml_rope(k + j * hd, cos, sin, hd);
        }
        for (int64_t j = 0; j < Hkv; j++) {
            memcpy(ly->kc + (j * ly->cap + pos) * hd, k + j * hd, sizeof(float) * (size_t)hd);
            memcpy(ly->vc + (j * ly->cap + pos) * hd, v + j * hd, sizeof(float) * (size_t)hd);
        }
        const float scale = 1.0f / sqrtf((float)hd);
        int nt = (attn_threads > 1 && T * H >= 2048) ? attn_threads : 1;
        #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t j = 0; j < H; j++) {
            int tid = nt > 1 ? omp_get_thread_num() : 0;
            const int64_t kvh = j / rep;
            ml_attend(q + j * hd, ly->kc + kvh * ly->cap * hd, ly->vc + kvh * ly->cap * hd, T, hd, scale,
                      scores + tid * nsc, att + j * hd);
        }
        if ((rc = ml_lin_apply(&ly->o, att, o))) break;
        for (int64_t i = 0; i < D; i++) x[i] += o[i];
        ml_rmsnorm(x, ly->ffn_norm, ly->eps, h, D);
        if ((rc = ml_lin_apply(&ly->gate, h, g)) || (rc = ml_lin_apply(&ly->up, h, u))) break;
        const int64_t F = ly->gate.N;
        int64_t i = 0;
        for (; i + 8 <= F; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 sg = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), ml_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
            _mm256_storeu_ps(g + i, _mm256_mul_ps(sg, _mm256_loadu_ps(u + i)));
        }
        for (; i < F; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        if ((rc = ml_lin_apply(&ly->down, g, o))) break;
        for (int64_t i2 = 0; i2 < D; i2++) x[i2] += o[i2];
    }
    free(buf);
    return rc;
}
"""
