/* int8 weight-only GEMV (AVX2 + FMA).

   w: int8 [N, K] in -127..127, scale: float32 [N]; W[n, k] = scale[n] * w[n, k];
   y = x @ W.T + bias. ml_w8_dequant writes W as float32 [N, K]. */

#include "common.h"

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

/* y[n] for n in [n0, n1) of one x row (M = 1), n0 a multiple of 4: ml_w8_linear's tiles and
   numbers, one thread, no OpenMP (called from inside the fused decode's parallel region) */
void ml_w8_rows(const float *x, int64_t K, const int8_t *w, const float *scale, const float *bias, float *y,
                int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t nr = n1 - n < 4 ? n1 - n : 4;
        if (n + 4 * ML_PF_TILES < n1) ml_prefetch(w + (n + 4 * ML_PF_TILES) * K, 4 * K);
        float o[4];
        if (nr == 4) {
            w8_dot4(x, K, w + n * K, K, o);
        } else {
            for (int64_t r = 0; r < nr; r++) o[r] = w8_dot1(x, K, w + (n + r) * K);
        }
        for (int64_t r = 0; r < nr; r++) y[n + r] = o[r] * scale[n + r] + (bias ? bias[n + r] : 0.0f);
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
