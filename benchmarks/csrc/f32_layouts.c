/* The float32 decode's weight stream on synthetic SmolLM2-135M-shaped stages, five ways
   (benchmarks/bench_f32_layouts.py runs it; compiled with moorelab/kernels/csrc/f32_gemv.c and
   read_bw.c, whose ml_f32_rows and ml_read_sum are the real kernels).

   Stages: 30 layers of q/k/v (960 x 576), o (576 x 576), gate/up (3072 x 576), down (576 x 1536),
   then the output layer (49,152 x 576): 537.9 MB of float32, on transparent huge pages where the
   host allows, each stage split between the threads by contiguous row ranges as the fused decode
   splits it (four stages and barriers per layer; the fused decode has five, attention being one
   more). Arms (lay_step's mode):
     0  ml_read_sum over the whole buffer, one stream per thread (the benchmarks' limit);
     1  a linear sum of each thread's rows stage by stage, an OpenMP barrier after each stage;
     2  the same without the barriers (only the streams' restarts left);
     3  ml_f32_rows on each thread's rows (4-row tiles), a barrier after each stage: the decode's
        float32 row stream, [N, K] row-major;
     4  the same numbers from 32-row panels ([N / 32][K][32]: row n's k-th weight at
        ((n / 32) * K + k) * 32 + n % 32), one broadcast of x[k] for 32 weights. A prototype:
        moorelab's float32 weights stay [N, K] (torch's prefill matmul reads them). */

#define _GNU_SOURCE
#include "common.h"
#include <sys/mman.h>
#include <time.h>

void ml_f32_rows(const float *x, int64_t K, const float *w, const float *bias, float *y, int64_t n0, int64_t n1);
double ml_read_sum(const float *x, int64_t n, int nthreads);

#define LAY_LAYERS 30
#define LAY_STAGES (4 * LAY_LAYERS + 1)
static const int64_t SH[5][2] = {{960, 576}, {576, 576}, {3072, 576}, {576, 1536}, {49152, 576}};
static int64_t stN[LAY_STAGES], stK[LAY_STAGES], stOff[LAY_STAGES];
static float *rowbuf, *panbuf, *xv, *y3, *y4;
static int64_t total; /* floats */
static volatile float sink;

static void *huge_alloc(size_t bytes) {
    const size_t a = 2u << 20;
    bytes = (bytes + a - 1) / a * a;
    char *p = mmap(NULL, bytes + a, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    p = (char *)(((uintptr_t)p + a - 1) / a * a);
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

/* the panel kernel: rows n0 .. n0 + 31 of one stage from a [K][32] panel */
static inline void panel32(const float *x, int64_t K, const float *p, float *y) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < K; k++, p += 32) {
        const __m256 xk = _mm256_broadcast_ss(x + k);
        a0 = _mm256_fmadd_ps(_mm256_load_ps(p), xk, a0);
        a1 = _mm256_fmadd_ps(_mm256_load_ps(p + 8), xk, a1);
        a2 = _mm256_fmadd_ps(_mm256_load_ps(p + 16), xk, a2);
        a3 = _mm256_fmadd_ps(_mm256_load_ps(p + 24), xk, a3);
    }
    _mm256_storeu_ps(y, a0); _mm256_storeu_ps(y + 8, a1); _mm256_storeu_ps(y + 16, a2); _mm256_storeu_ps(y + 24, a3);
}

static inline float linsum(const float *x, int64_t a, int64_t b) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = a;
    for (; i + 32 <= b; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i)); s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + i + 16)); s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + i + 24));
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < b; i++) s += x[i];
    return s;
}

/* allocates and fills both layouts (the same weights); returns the bytes of one layout, or -1 */
int64_t lay_setup(void) {
    int s = 0;
    total = 0;
    for (int l = 0; l < LAY_LAYERS; l++)
        for (int j = 0; j < 4; j++, s++) { stN[s] = SH[j][0]; stK[s] = SH[j][1]; stOff[s] = total; total += SH[j][0] * SH[j][1]; }
    stN[s] = SH[4][0]; stK[s] = SH[4][1]; stOff[s] = total; total += SH[4][0] * SH[4][1];
    rowbuf = huge_alloc(total * 4); panbuf = huge_alloc(total * 4);
    xv = aligned_alloc(64, 2048 * 4); y3 = aligned_alloc(64, 49152 * 4); y4 = aligned_alloc(64, 49152 * 4);
    if (!rowbuf || !panbuf || !xv || !y3 || !y4) return -1;
    for (int64_t i = 0; i < 2048; i++) xv[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    for (s = 0; s < LAY_STAGES; s++) {
        const int64_t N = stN[s], K = stK[s];
        float *w = rowbuf + stOff[s], *p = panbuf + stOff[s];
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                const float v = (float)((uint32_t)((stOff[s] + n * K + k) * 2654435761u) % 2001) / 1000.0f - 1.0f;
                w[n * K + k] = v;
                p[((n / 32) * K + k) * 32 + n % 32] = v;
            }
    }
    return total * 4;
}

/* the first byte of the row layout (which 0) or of the panel layout (1), after lay_setup */
uintptr_t lay_ptr(int which) { return (uintptr_t)(which ? panbuf : rowbuf); }

/* max |y_panel - y_rows| / max |y_rows| on the output layer (the two layouts' same numbers) */
double lay_check(void) {
    const int s = LAY_STAGES - 1;
    const int64_t N = stN[s], K = stK[s];
    ml_f32_rows(xv, K, rowbuf + stOff[s], NULL, y3, 0, N);
    for (int64_t n = 0; n < N; n += 32) panel32(xv, K, panbuf + stOff[s] + n * K, y4 + n);
    double d = 0, m = 0;
    for (int64_t n = 0; n < N; n++) {
        const double e = fabs((double)y4[n] - y3[n]);
        if (e > d) d = e;
        if (fabs(y3[n]) > m) m = fabs(y3[n]);
    }
    return m > 0 ? d / m : d;
}

/* one pass of arm `mode` on nthreads threads; returns its seconds (CLOCK_MONOTONIC) */
double lay_step(int mode, int nthreads) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (mode == 0) {
        sink = (float)ml_read_sum(rowbuf, total, nthreads);
    } else {
        #pragma omp parallel num_threads(nthreads)
        {
            const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
            float acc = 0.0f;
            for (int s = 0; s < LAY_STAGES; s++) {
                const int64_t N = stN[s], K = stK[s];
                const int64_t blk = mode == 4 ? 32 : 4, nb = N / blk;
                const int64_t a = blk * (nb * tid / nt), b = tid == nt - 1 ? N : blk * (nb * (tid + 1) / nt);
                if (mode == 1 || mode == 2) {
                    acc += linsum(rowbuf + stOff[s], a * K, b * K);
                    if (mode == 2) continue;
                } else if (mode == 3) {
                    ml_f32_rows(xv, K, rowbuf + stOff[s], NULL, y3, a, b);
                } else {
                    for (int64_t n = a; n < b; n += 32) panel32(xv, K, panbuf + stOff[s] + n * K, y4 + n);
                }
                #pragma omp barrier
            }
            if (acc == 1234.5f) sink = acc;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
}
