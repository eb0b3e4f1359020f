/* int8-weight GEMM for prefill (AVX2; AVX512-VNNI where the CPU has it): integer products, int32
   accumulation, no dequantization.

   w: int8 [N, K] in -127..127, scale: float32 [N] (the int8 weight-only / dynamic layout of
   int8.c). Each row of x [M, K] is rounded symmetrically to `act_bits` bits, one scale per row:
       sx[m] = max|x[m]| / qmax  (qmax = 32767 for act_bits 16, 127 for 8; 1 if that is 0;
               NaN, with xq = 0, for a row holding a NaN or an infinity: its outputs are NaN),
       xq = round_half_even(x / sx)  clamped to +-qmax, stored as int16,
   then y[m, n] = (float)(sum_k xq[m,k] w[n,k]) * (sx[m] * scale[n]) + bias[n], the sum exact in
   integers (vpmaddwd: int16 x int16 -> int32 pair sums; each int32 lane takes at most K/8
   products <= 32767*127 per chunk of ML_G8_KC = 2048 inputs, < 2^31; chunks add in int64).
   With act_bits = 8 the result equals ml_a8w8_linear's bit for bit (same rounding, same exact
   sum, same final float expression); with 16 it is the int8 weight-only product up to the int16
   rounding of x (relative step 1/32767 of the row's maximum).

   The technique is llama.cpp's / llamafile's "tinyBLAS" for quantized types on AVX2 (quantize the
   activations once per row, then a register-blocked integer dot-product GEMM; ggml-quants.c
   mul_sum_i8_pairs / llamafile sgemm.cpp tinyBLAS_Q0_AVX): here a 2x4 tile of (x row, w row)
   pairs keeps 8 int32 accumulators in registers and reads each x and w vector once per 16
   inputs; on a CPU with AVX512-VNNI a 4x4 tile of zmm accumulators (16 of the 32 registers)
   runs vpdpwssd on 32 inputs at a time instead of vpmaddwd + vpaddd (chosen at run time,
   ml_w8_gemm_isa). Blocking: ML_G8_MB rows of xq (int16, L2-resident) against 4-row panels of w (L1);
   threads split the N tiles. */

#include "common.h"
#include <float.h>

#define ML_G8_KC 2048 /* inputs per int32 chunk (overflow bound above) */
#define ML_G8_MB 48   /* x rows per block (a multiple of ML_G8_MR and ML_G8_MR_VNNI) */
#define ML_G8_MR 2    /* tile: x rows ... */
#define ML_G8_NR 4    /* ... by w rows (8 int32 accumulators, no register spills in 16 ymm registers) */
#define ML_G8_MR_VNNI 4 /* the AVX512-VNNI tile: 4 x 4 (16 zmm accumulators of AVX-512's 32 registers) */
#define ML_G8_NR_VNNI 4
#define ML_G8_MRMAX 4
#define ML_G8_NRMAX 4

/* round rows m0..m1 of x to int16 (see the file comment); xq rows have stride ldq */
static void g8_quant_rows(const float *x, int64_t m0, int64_t m1, int64_t K, int64_t ldq, float qmax,
                          int16_t *xq, float *sx) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t m = m0; m < m1; m++) {
        const float *xr = x + m * K;
        int16_t *q = xq + m * ldq;
        __m256 mx = _mm256_setzero_ps(), badv = _mm256_setzero_ps();
        const __m256 fmax = _mm256_set1_ps(FLT_MAX);
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
            const __m256 a = _mm256_and_ps(_mm256_loadu_ps(xr + k), absmask);
            mx = _mm256_max_ps(mx, a);
            badv = _mm256_or_ps(badv, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ)); /* NaN or an infinity */
        }
        float amax = hmax256(mx);
        int bad = _mm256_movemask_ps(badv) != 0;
        for (; k < K; k++) {
            const float a = fabsf(xr[k]);
            bad |= !(a <= FLT_MAX);
            if (a > amax) amax = a;
        }
        if (bad) { /* the row's outputs become NaN (sx NaN), as with float activations */
            sx[m] = NAN;
            memset(q, 0, sizeof(int16_t) * (size_t)ldq);
            continue;
        }
        float s = amax / qmax;
        if (!(s > 0.0f)) s = 1.0f; /* zero row, or amax / qmax underflows to 0 */
        sx[m] = s;
        const __m256 sv = _mm256_set1_ps(s), hi = _mm256_set1_ps(qmax), lo = _mm256_set1_ps(-qmax);
        for (k = 0; k + 16 <= K; k += 16) {
            __m256 a = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xr + k), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256 b = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xr + k + 8), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            a = _mm256_min_ps(_mm256_max_ps(a, lo), hi);
            b = _mm256_min_ps(_mm256_max_ps(b, lo), hi);
            __m256i p = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
            _mm256_storeu_si256((__m256i *)(q + k), _mm256_permute4x64_epi64(p, 0xD8));
        }
        for (; k < K; k++) {
            float v = nearbyintf(xr[k] / s);
            v = v > qmax ? qmax : (v < -qmax ? -qmax : v);
            q[k] = (int16_t)v;
        }
        for (; k < ldq; k++) q[k] = 0;
    }
}

static inline int64_t hsum_i32_to_i64(__m256i v) {
    __m256i a = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                 _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
    __m128i b = _mm_add_epi64(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    return _mm_cvtsi128_si64(b) + _mm_extract_epi64(b, 1);
}

/* out[i][j] = sum_k xq[i, k] * w[j, k] over k < K16 (a multiple of 16), for an MR x NR tile
   (MR x NR at most the AVX2 tile, compile-time constants after inlining); xq rows of stride
   ldq, w rows of ldw; the int16 pair products through vpmaddwd + vpaddd (neither saturates: the
   bound in the file comment keeps every lane < 2^31). A VNNI form of this tile (one vpdpwssd on
   ymm vectors, 4 x 4) ran SmolLM2's int8 b32 prefill of 512 tokens against it, interleaved in
   one process (8 rounds, 2 threads, AMD EPYC, 2026-12-01): x1.10 and x1.12 with 4 x 4, x1.01
   with 2 x 4, x0.85 with 6 x 4 and x0.83 with 4 x 6; it now runs on zmm vectors
   (g8_tile_vnni512 below). */
static inline __attribute__((always_inline)) void g8_tile(
        const int16_t *xq, int64_t ldq, const int8_t *w, int64_t ldw, int64_t K16, const int MR, const int NR,
        int64_t out[ML_G8_MRMAX][ML_G8_NRMAX]) {
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[i][j] = 0;
    for (int64_t k0 = 0; k0 < K16; k0 += ML_G8_KC) {
        const int64_t k1 = k0 + ML_G8_KC < K16 ? k0 + ML_G8_KC : K16;
        __m256i acc[ML_G8_MRMAX][ML_G8_NRMAX];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_si256();
        for (int64_t k = k0; k < k1; k += 16) {
            __m256i wv[ML_G8_NRMAX];
            for (int j = 0; j < NR; j++)
                wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + j * ldw + k)));
            for (int i = 0; i < MR; i++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i * ldq + k));
                for (int j = 0; j < NR; j++) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(xv, wv[j]));
            }
        }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) out[i][j] += hsum_i32_to_i64(acc[i][j]);
    }
}

/* The AVX512-VNNI tile: g8_tile's, 4 x 4, with zmm accumulators (16 of AVX-512's 32
   registers), 32 inputs per step: one vpdpwssd per (x row, w row) pair and 32 inputs, half the
   instructions of the 4 x 4 ymm form it replaced; one 16-input ymm step when K16 is not a
   multiple of 32 (K mod 32 >= 16; only in the last chunk, since chunks are multiples of 32). A
   zmm lane takes two products per 32 inputs and its two halves are added in int32, so a folded
   lane holds at most ML_G8_KC / 8 products, the ML_G8_KC bound of the file comment; the sums
   are the AVX2 tile's exactly (tests run both tiles bit for bit, K mod 32 >= 16 among them).
   Measured only on AMD Zen 4, which runs zmm as two 256-bit halves; Intel parts with VNNI take
   this tile too, untested there (their AVX-512 clock drop included). Against the ymm form,
   interleaved in one process (2 threads, AMD EPYC Zen 4, 2026-12-02; scripts outside the
   repository): the GEMM alone, 30 alternating calls (CPU share not recorded), x1.50 at
   [512, 576] x [576, 1536], x1.75 at [512, 1536] x [1536, 576], x1.53 at 576 x 576; SmolLM2 int8
   b32 prefill of 512 tokens, 10 rounds at CPU share 0.99-1.00, x1.095 (median of the paired
   ratios), logits equal. */
#define G8Z_ATTR __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni")))
static inline __attribute__((always_inline)) G8Z_ATTR void g8_tile_vnni512(
        const int16_t *xq, int64_t ldq, const int8_t *w, int64_t ldw, int64_t K16, const int MR, const int NR,
        int64_t out[ML_G8_MRMAX][ML_G8_NRMAX]) {
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[i][j] = 0;
    for (int64_t k0 = 0; k0 < K16; k0 += ML_G8_KC) {
        const int64_t k1 = k0 + ML_G8_KC < K16 ? k0 + ML_G8_KC : K16;
        __m512i acc[ML_G8_MRMAX][ML_G8_NRMAX];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_si512();
        int64_t k = k0;
        for (; k + 32 <= k1; k += 32) {
            __m512i wv[ML_G8_NRMAX];
            for (int j = 0; j < NR; j++)
                wv[j] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + j * ldw + k)));
            for (int i = 0; i < MR; i++) {
                const __m512i xv = _mm512_loadu_si512((const void *)(xq + i * ldq + k));
                for (int j = 0; j < NR; j++) acc[i][j] = _mm512_dpwssd_epi32(acc[i][j], xv, wv[j]);
            }
        }
        if (k < k1) { /* one 16-input step (k1 - k == 16) */
            __m256i wv[ML_G8_NRMAX];
            for (int j = 0; j < NR; j++)
                wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + j * ldw + k)));
            for (int i = 0; i < MR; i++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i * ldq + k));
                for (int j = 0; j < NR; j++)
                    acc[i][j] = _mm512_add_epi32(acc[i][j], _mm512_zextsi256_si512(
                        _mm256_dpwssd_epi32(_mm256_setzero_si256(), xv, wv[j])));
            }
        }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) {
                const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(acc[i][j]),
                                                   _mm512_extracti64x4_epi64(acc[i][j], 1));
                out[i][j] += hsum_i32_to_i64(h);
            }
    }
}

/* g8_block##SUFFIX: y rows m0..m0+mr-1, columns n0..n0+nr-1 (mr <= MRV, nr <= NRV) through
   g8_tile##SUFFIX; a tile short of rows runs mr x NRV, one short of columns pair by pair */
#define G8_BLOCK(SUFFIX, ATTR, MRV, NRV)                                                                  \
static ATTR void g8_block##SUFFIX(const int16_t *xq, int64_t ldq, const float *sx, int64_t m0, int mr,    \
                                  const int8_t *w, const float *scale, const float *bias, int64_t n0, int nr, \
                                  int64_t K, float *y, int64_t N) {                                        \
    const int64_t K16 = K & ~(int64_t)15;                                                                  \
    const int16_t *xb = xq + m0 * ldq;                                                                     \
    const int8_t *wb = w + n0 * K;                                                                         \
    int64_t o[ML_G8_MRMAX][ML_G8_NRMAX];                                                                   \
    if (mr == (MRV) && nr == (NRV)) {                                                                      \
        g8_tile##SUFFIX(xb, ldq, wb, K, K16, (MRV), (NRV), o);                                             \
    } else if (nr == (NRV) && mr == 1) {                                                                   \
        g8_tile##SUFFIX(xb, ldq, wb, K, K16, 1, (NRV), o);                                                 \
    } else if (nr == (NRV) && mr == 2) {                                                                   \
        g8_tile##SUFFIX(xb, ldq, wb, K, K16, 2, (NRV), o);                                                 \
    } else if (nr == (NRV) && mr == 3) {                                                                   \
        g8_tile##SUFFIX(xb, ldq, wb, K, K16, 3, (NRV), o);                                                 \
    } else {                                                                                               \
        for (int i = 0; i < mr; i++)                                                                       \
            for (int j = 0; j < nr; j++) {                                                                 \
                int64_t t[ML_G8_MRMAX][ML_G8_NRMAX];                                                       \
                g8_tile##SUFFIX(xb + i * ldq, ldq, wb + j * K, K, K16, 1, 1, t);                           \
                o[i][j] = t[0][0];                                                                         \
            }                                                                                              \
    }                                                                                                      \
    for (int i = 0; i < mr; i++) {                                                                         \
        float *ym = y + (m0 + i) * N;                                                                      \
        for (int j = 0; j < nr; j++) {                                                                     \
            int64_t s = o[i][j];                                                                           \
            for (int64_t k = K16; k < K; k++) s += (int64_t)xb[i * ldq + k] * (int64_t)wb[j * K + k];      \
            ym[n0 + j] = (float)s * (sx[m0 + i] * scale[n0 + j]) + (bias ? bias[n0 + j] : 0.0f);           \
        }                                                                                                  \
    }                                                                                                      \
}

G8_BLOCK(, , ML_G8_MR, ML_G8_NR)
G8_BLOCK(_vnni512, G8Z_ATTR, ML_G8_MR_VNNI, ML_G8_NR_VNNI)
_Static_assert(ML_G8_MR <= ML_G8_MRMAX && ML_G8_NR <= ML_G8_NRMAX && ML_G8_MR_VNNI <= ML_G8_MRMAX &&
               ML_G8_NR_VNNI <= ML_G8_NRMAX && ML_G8_MRMAX <= 4, "a tile larger than its arrays");
_Static_assert(ML_G8_KC % 32 == 0, "the VNNI tile's 32-input steps must not cross a chunk");
_Static_assert(ML_G8_MB % ML_G8_MR == 0 && ML_G8_MB % ML_G8_MR_VNNI == 0, "ML_G8_MB not a multiple of a tile");

typedef void (*g8_block_fn)(const int16_t *, int64_t, const float *, int64_t, int, const int8_t *, const float *,
                            const float *, int64_t, int, int64_t, float *, int64_t);

/* which tile ml_w8_gemm runs: -1 not chosen yet, 0 AVX2, 1 AVX512-VNNI (ml_w8_gemm_isa) */
static int g8_isa = -1;

/* libgcc's checks include the OS's support for the AVX-512 register state (XCR0) */
static int g8_cpu_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
}

/* The int8 GEMM's tile: want -1 asks which one runs (choosing the best the CPU has on first
   use), 0 forces AVX2, 1 AVX512-VNNI where the CPU has it (else AVX2). Returns the one now in
   force. Each ml_w8_gemm call reads it once (relaxed atomics), so a switch from another thread
   takes effect at the next call. */
int ml_w8_gemm_isa(int want) {
    if (want == 0) __atomic_store_n(&g8_isa, 0, __ATOMIC_RELAXED);
    else if (want == 1) __atomic_store_n(&g8_isa, g8_cpu_has_vnni(), __ATOMIC_RELAXED);
    else if (__atomic_load_n(&g8_isa, __ATOMIC_RELAXED) < 0)
        __atomic_store_n(&g8_isa, g8_cpu_has_vnni(), __ATOMIC_RELAXED);
    return __atomic_load_n(&g8_isa, __ATOMIC_RELAXED);
}

/* y[M, N] = x[M, K] (rounded per row to act_bits = 8 or 16) @ (scale * w)[N, K]^T + bias.
   Returns 0, -1 (allocation failed) or -2 (act_bits not 8 or 16). M = 0 writes nothing. */
int ml_w8_gemm(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale, const float *bias,
               float *y, int64_t N, int nthreads, int act_bits) {
    if (act_bits != 8 && act_bits != 16) return -2;
    if (M <= 0 || N <= 0) return 0;
    const float qmax = act_bits == 16 ? 32767.0f : 127.0f;
    const int64_t ldq = (K + 15) & ~(int64_t)15;
    int16_t *xq = (int16_t *)malloc(sizeof(int16_t) * (size_t)(M * ldq) + sizeof(float) * (size_t)M + 64);
    if (!xq) return -1;
    float *sx = (float *)(xq + ((M * ldq + 31) & ~(int64_t)31));
    const int vnni = ml_w8_gemm_isa(-1);
    const g8_block_fn block = vnni ? g8_block_vnni512 : g8_block;
    const int MRT = vnni ? ML_G8_MR_VNNI : ML_G8_MR, NRT = vnni ? ML_G8_NR_VNNI : ML_G8_NR;
    const int64_t ntiles = (N + NRT - 1) / NRT;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        /* quantize this thread's share of the rows, then wait for the others' */
        g8_quant_rows(x, M * tid / nt, M * (tid + 1) / nt, K, ldq, qmax, xq, sx);
        #pragma omp barrier
        const int64_t t0 = ntiles * tid / nt, t1 = ntiles * (tid + 1) / nt;
        for (int64_t mb = 0; mb < M; mb += ML_G8_MB) {
            const int64_t me = mb + ML_G8_MB < M ? mb + ML_G8_MB : M;
            for (int64_t t = t0; t < t1; t++) {
                const int64_t n0 = NRT * t;
                const int nr = N - n0 < NRT ? (int)(N - n0) : NRT;
                for (int64_t m = mb; m < me; m += MRT) {
                    const int mr = me - m < MRT ? (int)(me - m) : MRT;
                    block(xq, ldq, sx, m, mr, w, scale, bias, n0, nr, K, y, N);
                }
            }
        }
    }
    free(xq);
    return 0;
}
