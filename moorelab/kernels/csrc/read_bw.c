/* A linear read of memory on several threads: the second read-bandwidth reference of the
   decode benchmarks, beside torch.sum.

   The decode ceiling (benchmarks/bench_vs_llamacpp.py) is bytes per token over the read rate of
   the moment. torch.sum over 512 MiB was that reference until 2026-12-02, when the float32
   decode, reading its weight rows one after another, went past it: 94.9 tok/s x 538 MB = 51 GB/s
   where torch.sum's best passes read 27-44 GB/s across the same run (Zen 4 host; the decode at
   127% of that "limit"). A reference that
   a kernel of ours outreads is not a ceiling, so the benchmark takes the faster of the two. This
   one splits the buffer in contiguous parts, one per thread, and sums each with four AVX2
   accumulators (the one stream per thread that the hardware prefetcher follows best). */

#include "common.h"

/* sum of x[0 .. n) (float32), read once, on nthreads threads; the sum is returned so that the
   reads cannot be left out, its value is of no use */
double ml_read_sum(const float *x, int64_t n, int nthreads) {
    double total = 0.0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+ : total)
    {
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t a = n / 32 * tid / nt * 32, b = tid == nt - 1 ? n : n / 32 * (tid + 1) / nt * 32;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        int64_t i = a;
        for (; i + 32 <= b; i += 32) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
            s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + i + 16));
            s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + i + 24));
        }
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        for (; i < b; i++) s += x[i];
        total += s;
    }
    return total;
}
