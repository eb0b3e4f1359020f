/* float32 GEMV for decode (AVX2 + FMA), the kernel behind moorelab.model.transformer.FastLinear.

   w: float32 [N, K]; y = x @ w.T + bias. Software prefetch runs ML_PF_TILES_F32 tiles ahead. */

#include "common.h"

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

/* y[n] for n in [n0, n1) of one x row (decode, M = 1), n0 a multiple of 4: the tiles, and the
   numbers, of ml_f32_linear on the whole layer; one thread, no OpenMP (the fused decode calls
   it from inside its own parallel region, each thread on its rows) */
void ml_f32_rows(const float *x, int64_t K, const float *w, const float *bias, float *y, int64_t n0, int64_t n1) {
    const int64_t pf = ML_PF_TILES_F32;
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t nr = n1 - n < 4 ? n1 - n : 4;
        ml_prefetch_rows(w, 4 * K, n, n0, n1, pf);
        float o[4];
        if (nr == 4) {
            f32_dot4(x, K, w + n * K, K, o);
        } else {
            for (int64_t r = 0; r < nr; r++) o[r] = f32_dot1(x, K, w + (n + r) * K);
        }
        for (int64_t r = 0; r < nr; r++) y[n + r] = o[r] + (bias ? bias[n + r] : 0.0f);
    }
}
