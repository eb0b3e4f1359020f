/* dynamic int8 x int8 GEMV (AVX2): weights as int8 weight-only (int8.c), activations rounded per row.

   Each row of x is quantized symmetrically, sx[m] = max|x[m]| / 127 (1 if the row is all zero),
   xq = round_half_even(x / sx); y = sx[m] * scale[n] * sum_k xq[m,k] w[n,k] + bias[n] with exact
   int32 accumulation (AVX2 vpmaddubsw on |x| and sign-transferred w; |values| <= 127 so the
   int16 pair sums cannot saturate). */

#include "common.h"
#include <float.h>

/* quantize one row symmetric per token; returns the scale (NaN, with q = 0, for a row holding a
   NaN or an infinity: its outputs become NaN, as with float activations) */
static float a8_quant_row(const float *x, int64_t K, int8_t *q) {
    float amax = 0.0f;
    int bad = 0;
    for (int64_t k = 0; k < K; k++) {
        const float a = fabsf(x[k]);
        bad |= !(a <= FLT_MAX);
        if (a > amax) amax = a;
    }
    if (bad) {
        memset(q, 0, (size_t)K);
        return NAN;
    }
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

/* the rounded row of ml_a8w8_linear: xq[K] int8, returns its scale sx */
float ml_a8_prep(const float *x, int64_t K, int8_t *xq) {
    return a8_quant_row(x, K, xq);
}

/* y[n] for n in [n0, n1) of one row rounded by ml_a8_prep (xq, sx), n0 a multiple of 4:
   ml_a8w8_linear's tiles and numbers, one thread, no OpenMP */
void ml_a8w8_rows(const int8_t *xq, float sx, int64_t K, const int8_t *w, const float *scale, const float *bias,
                  float *y, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t nr = n1 - n < 4 ? n1 - n : 4;
        if (n + 4 * ML_PF_TILES < n1) ml_prefetch(w + (n + 4 * ML_PF_TILES) * K, 4 * K);
        int32_t o[4];
        if (nr == 4) a8_dot4(xq, w + n * K, K, K, o);
        else for (int64_t r = 0; r < nr; r++) o[r] = a8_dot1(xq, w + (n + r) * K, K);
        for (int64_t r = 0; r < nr; r++) y[n + r] = (float)o[r] * (sx * scale[n + r]) + (bias ? bias[n + r] : 0.0f);
    }
}

/* ---- int8 weights x int8 activations rounded per 32-block ("b32": GGML Q8_0's activation
   granularity; the weights keep one float32 scale per output row) ----
   For each block b of x (32 values; the last block of a row may be shorter):
   bs[b] = max|x_b| / 127 (1 if that is 0, or underflows), xq = round_half_even(x / bs[b]);
   y[n] = scale[n] * sum_b bs[b] * S_b[n] + bias[n], S_b[n] = sum_{k in b} xq[k] w[n,k] exact in
   int32 (vpmaddubsw on |xq| and sign-transferred w, then vpmaddwd), the bs[b] scaling and the sum
   over blocks in float (one FMA per block and row, 8 lanes). An outlier coarsens only its own
   block of 32 activations, not the whole token (int8-dynamic's per-row scale). */

/* a block holding a NaN or an infinity gets bs = NaN and xq = 0, so every output it reaches is
   NaN (as with float activations) instead of finite garbage */
static void a8b_quant_row_scalar(const float *x, int64_t K, int8_t *q, float *bs) {
    for (int64_t b0 = 0; b0 < K; b0 += 32) {
        const int64_t e = b0 + 32 < K ? b0 + 32 : K;
        float amax = 0.0f;
        int bad = 0;
        for (int64_t k = b0; k < e; k++) {
            const float a = fabsf(x[k]);
            bad |= !(a <= FLT_MAX); /* NaN or an infinity */
            if (a > amax) amax = a;
        }
        float s = amax / 127.0f;
        if (bad) {
            bs[b0 / 32] = NAN;
            for (int64_t k = b0; k < e; k++) q[k] = 0;
            continue;
        }
        if (!(s > 0.0f)) s = 1.0f;
        bs[b0 / 32] = s;
        for (int64_t k = b0; k < e; k++) {
            float v = nearbyintf(x[k] / s);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            q[k] = (int8_t)v;
        }
    }
}

/* a8b_quant_row_scalar in AVX2 for the full blocks (the same numbers bit for bit: vroundps
   rounds in the current mode, as nearbyintf does; tests compare the two through
   ml_a8b_prep_ref); a short last block goes to the scalar code */
static void a8b_quant_row(const float *x, int64_t K, int8_t *q, float *bs) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 fmax = _mm256_set1_ps(FLT_MAX), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int64_t b0 = 0;
    for (; b0 + 32 <= K; b0 += 32) {
        __m256 v[4], mx = _mm256_setzero_ps(), badv = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(x + b0 + 8 * i);
            const __m256 a = _mm256_and_ps(v[i], absmask);
            mx = _mm256_max_ps(a, mx);
            badv = _mm256_or_ps(badv, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
        }
        if (_mm256_movemask_ps(badv)) {
            bs[b0 / 32] = NAN;
            memset(q + b0, 0, 32);
            continue;
        }
        float s = hmax256(mx) / 127.0f;
        if (!(s > 0.0f)) s = 1.0f;
        bs[b0 / 32] = s;
        const __m256 sv = _mm256_set1_ps(s);
        __m256i r[4];
        for (int i = 0; i < 4; i++) {
            const __m256 t = _mm256_round_ps(_mm256_div_ps(v[i], sv), _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC);
            r[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t, lo), hi));
        }
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        _mm256_storeu_si256((__m256i *)(q + b0), _mm256_permutevar8x32_epi32(p, order));
    }
    if (b0 < K) a8b_quant_row_scalar(x + b0, K - b0, q + b0, bs + b0 / 32);
}

/* the scalar reference of a8b_quant_row (tests: the two agree bit for bit) */
void ml_a8b_prep_ref(const float *x, int64_t K, int8_t *xq, float *bs) {
    a8b_quant_row_scalar(x, K, xq, bs);
}

/* nr (1..4) rows of w (stride ldw) against one rounded x row; pfd: bytes from these rows to the
   rows whose lines the loop prefetches as it goes (common.h's spread prefetch), 0 for none */
static inline void a8b_dotn(const int8_t *xq, const float *bs, const int8_t *w, int64_t ldw, int64_t K, int64_t nr,
                            float *out, int64_t pfd) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps(), f2 = _mm256_setzero_ps(), f3 = _mm256_setzero_ps();
    const int8_t *w0 = w, *w1 = w + (nr > 1 ? ldw : 0), *w2 = w + (nr > 2 ? 2 * ldw : 0), *w3 = w + (nr > 3 ? 3 * ldw : 0);
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        if (pfd && (k & 63) == 0) ml_prefetch4(w0, w1, w2, w3, k + pfd, 1); /* 2 blocks: 64 bytes a row */
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + k));
        const __m256i ax = _mm256_abs_epi8(xv);
        const __m256 bsv = _mm256_broadcast_ss(bs + k / 32);
#define A8B_ROW(W, F)                                                                                     \
        F = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(                       \
                ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)((W) + k)), xv)), ones)), bsv, F)
        A8B_ROW(w0, f0);
        A8B_ROW(w1, f1);
        A8B_ROW(w2, f2);
        A8B_ROW(w3, f3);
#undef A8B_ROW
    }
    float s[4] = {hsum256(f0), hsum256(f1), hsum256(f2), hsum256(f3)};
    if (k < K) { /* the short last block */
        const int8_t *wr[4] = {w0, w1, w2, w3};
        for (int r = 0; r < 4; r++) {
            int32_t t = 0;
            for (int64_t j = k; j < K; j++) t += (int32_t)xq[j] * (int32_t)wr[r][j];
            s[r] += bs[k / 32] * (float)t;
        }
    }
    for (int64_t r = 0; r < nr; r++) out[r] = s[r];
}

/* the rounded row of ml_a8bw8_linear: xq[K] int8, bs[ceil(K / 32)] */
void ml_a8b_prep(const float *x, int64_t K, int8_t *xq, float *bs) {
    a8b_quant_row(x, K, xq, bs);
}

/* y[n] for n in [n0, n1) of one row rounded by ml_a8b_prep, n0 a multiple of 4: ml_a8bw8_linear's
   tiles and numbers, one thread, no OpenMP */
void ml_a8bw8_rows(const int8_t *xq, const float *bs, int64_t K, const int8_t *w, const float *scale,
                   const float *bias, float *y, int64_t n0, int64_t n1) {
    /* spread prefetch (common.h) pf whole tiles ahead, ~ML_PF_BYTES8 (one tile when a tile is
       larger); the range's first pf tiles requested at once, at most ML_PF_BYTES8 of them (a
       short last tile is not prefetched) */
    const int64_t pf = K > 0 && ML_PF_BYTES8 / (4 * K) > 1 ? ML_PF_BYTES8 / (4 * K) : 1;
    if (n0 < n1) {
        const int64_t first = (n0 + 4 * pf < n1 ? 4 * pf : n1 - n0) * K;
        ml_prefetch(w + n0 * K, first < ML_PF_BYTES8 ? first : ML_PF_BYTES8);
    }
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t nr = n1 - n < 4 ? n1 - n : 4;
        float o[4];
        a8b_dotn(xq, bs, w + n * K, K, K, nr, o, n + 4 * pf + 4 <= n1 ? 4 * pf * K : 0);
        for (int64_t r = 0; r < nr; r++) y[n + r] = o[r] * scale[n + r] + (bias ? bias[n + r] : 0.0f);
    }
}

/* x [M, K] float32, w int8 [N, K], scale float32 [N]; y [M, N]. Returns 0, or -1 when the work
   buffer cannot be allocated. */
int ml_a8bw8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
                    const float *bias, float *y, int64_t N, int nthreads) {
    const int64_t nb = (K + 31) / 32;
    const size_t qbytes = ((size_t)(M * K) + 63) / 64 * 64;
    int8_t *xq = (int8_t *)malloc(qbytes + sizeof(float) * (size_t)(M * nb) + 64);
    if (!xq) return -1;
    float *bs = (float *)(xq + qbytes);
    for (int64_t m = 0; m < M; m++) a8b_quant_row(x + m * K, K, xq + m * K, bs + m * nb);
    const int64_t ntiles = (N + 3) / 4;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        const int64_t n0 = t * 4, nr = N - n0 < 4 ? N - n0 : 4;
        if (t + ML_PF_TILES < ntiles) ml_prefetch(w + (n0 + 4 * ML_PF_TILES) * K, 4 * K);
        for (int64_t m = 0; m < M; m++) {
            float o[4];
            a8b_dotn(xq + m * K, bs + m * nb, w + n0 * K, K, K, nr, o, 0);
            float *ym = y + m * N;
            for (int64_t r = 0; r < nr; r++) ym[n0 + r] = o[r] * scale[n0 + r] + (bias ? bias[n0 + r] : 0.0f);
        }
    }
    free(xq);
    return 0;
}

/* x [M, K] -> out [M, K]: each row rounded as ml_a8b_prep rounds it, written back as float32
   (xq * bs, exact), for the prefill of the per-block variant (the int8 GEMM then multiplies
   these values). Rows split over nthreads. */
void ml_a8b_round(const float *x, int64_t M, int64_t K, float *out, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M > 1)
    {
        int8_t q[32];
        float bs;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            const float *xr = x + m * K;
            float *o = out + m * K;
            for (int64_t b0 = 0; b0 < K; b0 += 32) {
                const int64_t n = b0 + 32 < K ? 32 : K - b0;
                a8b_quant_row(xr + b0, n, q, &bs);
                for (int64_t j = 0; j < n; j++) o[b0 + j] = (float)q[j] * bs;
            }
        }
    }
}
