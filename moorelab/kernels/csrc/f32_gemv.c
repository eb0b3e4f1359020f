/* float32 GEMV for decode (AVX2 + FMA), the kernel behind moorelab.model.transformer.FastLinear.

   w: float32 [N, K]; y = x @ w.T + bias. One x row (decode) reads the weight rows one after
   another (f32_dot1; the hardware prefetcher follows the stream, no software prefetch); a batch
   of rows runs 4-row tiles against 2 or 3 x rows at a time, with software prefetch: in the fused
   decode's rows (ml_f32_rows_batch) one tile ahead as it reads (the spread prefetch of common.h,
   into L2: a float32 tile is 9-25 KB), in ml_f32_linear whole tiles ML_PF_TILES_F32 ahead into
   L1. */

#include "common.h"

/* one x row's dot product with one float32 weight row (two accumulators, then one 8-float step,
   then the scalar tail): the decode kernel. The decode reads its row range one row after another,
   one linear stream, which the hardware prefetcher follows at the core's full read rate (see
   ml_f32_rows_batch); no software prefetch. */
static inline float f32_dot1(const float *x, int64_t K, const float *w) {
    __m256 a0 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), b0);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
    float s0 = hsum256(_mm256_add_ps(a0, b0));
    for (; k < K; k++) {
        float xv = x[k];
        s0 += xv * w[k];
    }
    return s0;
}

/* dot products of 3 x rows (leading dimension ldx) with 4 float32 weight rows: out[m * 4 + r].
   Each weight vector is loaded once for the 3 rows (12 accumulators, 8 floats a step), so a
   small batch reads the weights at the rate of one row: batched decode (M >= 3; FastLinear sends
   up to 32 rows). pfd: bytes from this tile to the tile the loop prefetches into L2 as it goes
   (the spread prefetch of common.h), 0 for none. */
static inline void f32_dot4x3(const float *x, int64_t ldx, int64_t K, const float *w, int64_t ldw, float *out,
                              int64_t pfd) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c02 = _mm256_setzero_ps(), c03 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c12 = _mm256_setzero_ps(), c13 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c22 = _mm256_setzero_ps(), c23 = _mm256_setzero_ps();
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx;
    const float *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw, *w3 = w + 3 * ldw;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if (pfd && !(k & 15)) ml_prefetch4(w0, w1, w2, w3, 4 * k + pfd, 1); /* a 64-byte line a row per 16 */
        __m256 a0 = _mm256_loadu_ps(x0 + k), a1 = _mm256_loadu_ps(x1 + k), a2 = _mm256_loadu_ps(x2 + k), v;
        v = _mm256_loadu_ps(w0 + k);
        c00 = _mm256_fmadd_ps(v, a0, c00); c10 = _mm256_fmadd_ps(v, a1, c10); c20 = _mm256_fmadd_ps(v, a2, c20);
        v = _mm256_loadu_ps(w1 + k);
        c01 = _mm256_fmadd_ps(v, a0, c01); c11 = _mm256_fmadd_ps(v, a1, c11); c21 = _mm256_fmadd_ps(v, a2, c21);
        v = _mm256_loadu_ps(w2 + k);
        c02 = _mm256_fmadd_ps(v, a0, c02); c12 = _mm256_fmadd_ps(v, a1, c12); c22 = _mm256_fmadd_ps(v, a2, c22);
        v = _mm256_loadu_ps(w3 + k);
        c03 = _mm256_fmadd_ps(v, a0, c03); c13 = _mm256_fmadd_ps(v, a1, c13); c23 = _mm256_fmadd_ps(v, a2, c23);
    }
    float s[12] = {hsum256(c00), hsum256(c01), hsum256(c02), hsum256(c03),
                   hsum256(c10), hsum256(c11), hsum256(c12), hsum256(c13),
                   hsum256(c20), hsum256(c21), hsum256(c22), hsum256(c23)};
    for (; k < K; k++) {
        const float a0 = x0[k], a1 = x1[k], a2 = x2[k];
        const float v0 = w0[k], v1 = w1[k], v2 = w2[k], v3 = w3[k];
        s[0] += a0 * v0; s[1] += a0 * v1; s[2] += a0 * v2; s[3] += a0 * v3;
        s[4] += a1 * v0; s[5] += a1 * v1; s[6] += a1 * v2; s[7] += a1 * v3;
        s[8] += a2 * v0; s[9] += a2 * v1; s[10] += a2 * v2; s[11] += a2 * v3;
    }
    for (int i = 0; i < 12; i++) out[i] = s[i];
}

/* dot products of 2 x rows with 4 float32 weight rows: out[m * 4 + r]; each weight vector loaded
   once for both rows (a batch of 2, or the last 2 rows of a batch after its groups of 3, read
   the tile once instead of twice). pfd: as f32_dot4x3's. */
static inline void f32_dot4x2(const float *x, int64_t ldx, int64_t K, const float *w, int64_t ldw, float *out,
                              int64_t pfd) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c02 = _mm256_setzero_ps(), c03 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c12 = _mm256_setzero_ps(), c13 = _mm256_setzero_ps();
    const float *x0 = x, *x1 = x + ldx;
    const float *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw, *w3 = w + 3 * ldw;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if (pfd && !(k & 15)) ml_prefetch4(w0, w1, w2, w3, 4 * k + pfd, 1);
        __m256 a0 = _mm256_loadu_ps(x0 + k), a1 = _mm256_loadu_ps(x1 + k), v;
        v = _mm256_loadu_ps(w0 + k);
        c00 = _mm256_fmadd_ps(v, a0, c00); c10 = _mm256_fmadd_ps(v, a1, c10);
        v = _mm256_loadu_ps(w1 + k);
        c01 = _mm256_fmadd_ps(v, a0, c01); c11 = _mm256_fmadd_ps(v, a1, c11);
        v = _mm256_loadu_ps(w2 + k);
        c02 = _mm256_fmadd_ps(v, a0, c02); c12 = _mm256_fmadd_ps(v, a1, c12);
        v = _mm256_loadu_ps(w3 + k);
        c03 = _mm256_fmadd_ps(v, a0, c03); c13 = _mm256_fmadd_ps(v, a1, c13);
    }
    float s[8] = {hsum256(c00), hsum256(c01), hsum256(c02), hsum256(c03),
                  hsum256(c10), hsum256(c11), hsum256(c12), hsum256(c13)};
    for (; k < K; k++) {
        const float a0 = x0[k], a1 = x1[k];
        const float v0 = w0[k], v1 = w1[k], v2 = w2[k], v3 = w3[k];
        s[0] += a0 * v0; s[1] += a0 * v1; s[2] += a0 * v2; s[3] += a0 * v3;
        s[4] += a1 * v0; s[5] += a1 * v1; s[6] += a1 * v2; s[7] += a1 * v3;
    }
    for (int i = 0; i < 8; i++) out[i] = s[i];
}

/* rows n0..n0+nr-1 (nr <= 4) of y[m, :] for M x rows (x row m at x + m * ldx, y row m at
   y + m * ldy): full tiles take the x rows three at a time (f32_dot4x3, the tile stays in L1
   between them) and the last two (or four) two at a time (f32_dot4x2); partial tiles one x row
   at a time (f32_dot1, the decode kernel; the decode itself, M = 1, does not come here).
   pfd: the spread prefetch distance in bytes, issued by the first group of rows (0 for none). */
static inline void f32_tile_rows(const float *x, int64_t ldx, int64_t M, int64_t K, const float *w, int64_t n0,
                                 int64_t nr, const float *bias, float *y, int64_t ldy, int64_t pfd) {
    int64_t m = 0;
    if (nr == 4 && M > 1) {
        /* the first group of rows requests the tile pfd bytes ahead as it reads this one */
        for (; m + 3 <= M && (M - m) != 4; m += 3) {
            float o[12];
            f32_dot4x3(x + m * ldx, ldx, K, w + n0 * K, K, o, m == 0 ? pfd : 0);
            for (int i = 0; i < 3; i++)
                for (int r = 0; r < 4; r++) y[(m + i) * ldy + n0 + r] = o[i * 4 + r] + (bias ? bias[n0 + r] : 0.0f);
        }
        for (; m + 2 <= M; m += 2) { /* 2 rows left, or 4 (two pairs rather than 3 + 1) */
            float o[8];
            f32_dot4x2(x + m * ldx, ldx, K, w + n0 * K, K, o, m == 0 ? pfd : 0);
            for (int i = 0; i < 2; i++)
                for (int r = 0; r < 4; r++) y[(m + i) * ldy + n0 + r] = o[i * 4 + r] + (bias ? bias[n0 + r] : 0.0f);
        }
    }
    for (; m < M; m++) {
        const float *xm = x + m * ldx;
        float *ym = y + m * ldy;
        for (int64_t r = 0; r < nr; r++) ym[n0 + r] = f32_dot1(xm, K, w + (n0 + r) * K) + (bias ? bias[n0 + r] : 0.0f);
    }
}

/* y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]; x [M, K], w [N, K], y [M, N], all row-major.
   OpenMP over 4-row weight tiles (f32_tile_rows); one x row (decode): each thread's contiguous
   range of tiles through ml_f32_rows, as the fused decode splits a layer. */
void ml_f32_linear(const float *x, int64_t M, int64_t K, const float *w, const float *bias,
                   float *y, int64_t N, int nthreads) {
    int64_t ntiles = (N + 3) / 4;
    if (M == 1) {
        #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
            const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
            const int64_t a = 4 * (ntiles * tid / nt), b = 4 * (ntiles * (tid + 1) / nt);
            if (a < b) ml_f32_rows(x, K, w, bias, y, a, b < N ? b : N);
        }
        return;
    }
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t n0 = t * 4;
        int64_t nr = N - n0 < 4 ? N - n0 : 4;
        if (t + ML_PF_TILES_F32 < ntiles) ml_prefetch(w + (n0 + 4 * ML_PF_TILES_F32) * K, 4 * K * 4);
        f32_tile_rows(x, K, M, K, w, n0, nr, bias, y, N, 0);
    }
}

/* rows [n0, n1) (n0 a multiple of 4) of y for M x rows (x row m at x + m * ldx, y row m at
   y + m * ldy): batched decode's share of one thread, no OpenMP; each weight tile read once
   for all M rows */
void ml_f32_rows_batch(const float *x, int64_t ldx, int64_t M, int64_t K, const float *w, const float *bias,
                       float *y, int64_t ldy, int64_t n0, int64_t n1) {
    if (M == 1) {
        /* decode: one row after another (f32_dot1), no software prefetch: one linear stream per
           thread, which the hardware prefetcher follows. It replaced 4 rows at a time (x loaded
           once for 4 rows) with the spread prefetch one tile ahead and a burst of the range's first
           two tiles, which read 4 short streams at once: on one Zen 4 core (AMD EPYC, 2026-12-02,
           C loops over 30 SmolLM2-shaped layers, 425 MB) the row stream read 25.1-26.9 GB/s
           against 21.3-22.8, a linear sum 24.1-27.0 (in the cache the 4-row tile is faster, but
           one row is still far above memory); the fused SmolLM2-shaped decode step
           (benchmarks/bench_fused_ab.py --weights f32) took x1.26-1.33 less time on one thread,
           x1.04-1.13 on two (x1.09-1.10 at depth 4,096), CPU share 0.99-1.00. */
        for (int64_t n = n0; n < n1; n++) y[n] = f32_dot1(x, K, w + n * K) + (bias ? bias[n] : 0.0f);
        return;
    }
    /* a batch: the same spread prefetch, one tile ahead, from the first group of rows. With the
       burst of whole tiles ML_PF_TILES_F32 ahead it replaces (and 2 rows as 1 + 1), batches of 2-8
       read the weights at 14-20 GB/s against 29 for one row; with it and f32_dot4x2 the fused
       SmolLM2 step at B = 2, 3, 4, 8 took x1.50, x1.51, x1.54, x1.51 less time (B = 1 x1.00; the
       two libraries interleaved in one process, 6 rounds of 20 steps, 2026-12-01) */
    for (int64_t n = n0; n < n1; n += 4) {
        if (n == n0) ml_prefetch(w + n * K, 4 * K * (n1 - n < 8 ? n1 - n : 8));
        f32_tile_rows(x, ldx, M, K, w, n, n1 - n < 4 ? n1 - n : 4, bias, y, ldy, n + 4 < n1 ? 4 * K * 4 : 0);
    }
}

/* y[n] for n in [n0, n1) of one x row (decode, M = 1): the numbers of ml_f32_linear on the
   whole layer (which runs this on each thread's rows); one thread, no OpenMP (the fused decode
   calls it from inside its own parallel region, each thread on its rows) */
void ml_f32_rows(const float *x, int64_t K, const float *w, const float *bias, float *y, int64_t n0, int64_t n1) {
    ml_f32_rows_batch(x, K, 1, K, w, bias, y, 0, n0, n1);
}
