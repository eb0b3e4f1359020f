/* moorelab's compiled CPU kernels: what every kernel file shares (AVX2 + FMA + F16C).

   The .c files of this directory are compiled together by moorelab/kernels/build.py (one gcc
   call, flags in build.CFLAGS) into one shared library, which moorelab/kernels/binding.py loads
   through ctypes; every pointer is a torch tensor's data_ptr(). One file per kernel family:

       f32_gemv.c      float32 GEMV for decode (ml_f32_linear)
       int8.c          int8 weight-only (ml_w8_linear, ml_w8_dequant)
       int4.c          int4 weight-only, float / int16 ("a16") / int8 ("a8") activations
                       (ml_w4_linear, ml_w4a16_linear, ml_w4a8_linear, ml_w4_dequant), the a8
                       GEMM for prefill (ml_w4a8_gemm) and the scalar reference of its activation
                       rounding (ml_w4q_prep_ref)
       int8_dynamic.c  dynamic int8 x int8, activations rounded per row (ml_a8w8_linear) or
                       per 32-block (ml_a8bw8_linear; scalar rounding reference ml_a8b_prep_ref)
       int8_gemm.c     int8-weight GEMM for prefill, int16 / int8 activations per row (ml_w8_gemm;
                       an AVX512-VNNI tile chosen at run time where the CPU has it, ml_w8_gemm_isa)
       attn_prefill.c  causal self-attention of a whole prompt, every head in one call
                       (ml_attn_causal; grouped-query heads share one read of K and V)
       fused_decode.c  every LLaMA-family decoder layer and the output layer for one token of
                       one or B sequences in one call and one parallel region (ml_decode_layers,
                       ml_decode_batch, ml_lin_forward; the greedy pick ml_argmax_rows;
                       structures in fused_decode.h), through the kernels' ml_*_rows
       read_bw.c       a linear read on several threads (ml_read_sum): the benchmarks' second
                       read-bandwidth reference, beside torch.sum
       abi.c           ml_abi_version, ml_fused_abi: checked by the binding when it loads

   Layouts (all row-major, C-contiguous), common to every kernel; each file states its weights':
   x: float32 [M, K]; y: float32 [M, N]; bias: float32 [N] or NULL.

   Work is split over output rows (tiles of 4 rows) with OpenMP, nthreads threads; the ml_*_rows
   functions compute a range of rows on the calling thread (no OpenMP), for a caller that already
   runs a parallel region (the fused decode). */

#ifndef ML_COMMON_H
#define ML_COMMON_H

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>

/* bump when a signature or structure below changes (the binding refuses another version) */
#define ML_ABI_VERSION 20
#define ML_PF_TILES 4  /* software prefetch distance, in 4-row tiles */
#define ML_PF_TILES4 8 /* same for int4 (half the bytes per tile) */
#define ML_PF_TILES_F32 2 /* same for float32 (4x the bytes per tile) */
#define ML_PF_BYTES4 3072 /* int4 a8 g32 decode rows: spread prefetch distance, in bytes (whole tiles) */
#define ML_PF_BYTES8 8192 /* int8 b32 decode rows: the same, hint T1 (into L2) */

/* Spread prefetch (the decode rows of int4 a8 g32 and int8 b32, the float32 rows of a batch; the
   float32 decode rows of one x row used it until 2026-12-02 and now read one row after another,
   see ml_f32_rows_batch): instead of one burst per tile
   (a whole 4-row tile requested at once, ML_PF_TILES4 / ML_PF_TILES_F32 tiles ahead), the tile's
   dot product requests, as it walks its 4 rows, the same columns of the tile pf tiles ahead, one
   line per row per 64 bytes read, so the requests keep pace with the reads. With the bursts, up
   to ~31 KB (int4, 8 tiles of 3.8 KB at K = 1536) and 49 KB (float32, 2 tiles of 24.6 KB) were
   requested ahead against a 32 KB L1. One thread, 100 matrices streamed (a C loop outside the
   repository): the int4 down shape (K = 1536, N = 576) at 4.5-6.1 GB/s with the burst against
   8.6-9.9 with the spread; K = 576, N = 1536 8.7-11.1 against 8.8-12.8. In the fused decode of
   SmolLM2-135M (2 threads, B = 1; the two libraries interleaved on the same plan, medians of the
   rounds' ratios, three A/B runs of 10-12 rounds of 64 tokens): int4 a8 g32 x1.22, x1.32 and
   x1.36; float32 x1.05 (hint T0), x1.09 and x1.10 (T1, then kept; the float32 decode has since
   dropped it, above); the int8 b32 rows with the same
   spread measured x0.99-1.03 in five A/B runs (distances of 1, 2 and 4 tiles, T0 and T1) on an
   AVX2-only host (2026-12-01 01:40 UTC). On an AMD EPYC with AVX-512 (unused here) and
   1 MB of L2 per core (2026-12-01; benchmarks/bench_fused_ab.py --weights int8-b32: 30
   SmolLM2-shaped layers of random int8 weights, each matrix its own allocation, not the packed
   model; 60 interleaved steps, CPU share 0.99-1.00), the burst read a step in 7.9-9.4 ms and the
   spread, hint T1, in 3.9-4.5 ms at 8 KB ahead (x1.87-2.07 in eight runs; x1.25-1.36 at depth
   4,096, float32 KV cache), 4.1-4.6 at 12 KB, 4.2-4.8 at 16 and 32 KB, 5.3 at 2 KB, 6.3 with hint
   T0 (x1.18): the int8 b32 rows take it (ML_PF_BYTES8, T1). On the packed SmolLM2 it was not
   A/B'd; the benchmark runs before and after it differ by more than the change. A row range
   still requests its first tiles at once (the float32 rows of a batch: two tiles, up to 49 KB
   into L1; int4 a8 g32: its first tiles; int8 b32: up to ML_PF_BYTES8), as measured, not tuned.
   A short last tile (N not a multiple of 4) is not prefetched (int4 a8 g32 since 2026-12-02,
   when its rows left the 4-row tile for w4a8_dot1_g32; int8 b32 never); SmolLM2's N are all
   multiples of 4. Batched decode (B > 1) runs the same int4 and int8 b32 rows once per row and
   64-row chunk (each chunk's first burst included); it was not re-measured. */
static inline void ml_prefetch4(const void *p0, const void *p1, const void *p2, const void *p3, int64_t off,
                                int hint_l2) {
    if (hint_l2) {
        /* inline asm, not _mm_prefetch: gcc 12 -O3 dropped every one of these T1 prefetches from
           f32_gemv.c (none left in the object file, the float32 decode ~15% slower) once the
           batched 2- and 3-row tiles called this too; an asm volatile is always emitted */
        __asm__ volatile("prefetcht1 %0" : : "m"(*((const char *)p0 + off)));
        __asm__ volatile("prefetcht1 %0" : : "m"(*((const char *)p1 + off)));
        __asm__ volatile("prefetcht1 %0" : : "m"(*((const char *)p2 + off)));
        __asm__ volatile("prefetcht1 %0" : : "m"(*((const char *)p3 + off)));
    } else {
        _mm_prefetch((const char *)p0 + off, _MM_HINT_T0);
        _mm_prefetch((const char *)p1 + off, _MM_HINT_T0);
        _mm_prefetch((const char *)p2 + off, _MM_HINT_T0);
        _mm_prefetch((const char *)p3 + off, _MM_HINT_T0);
    }
}

/* prefetch [p, p + bytes) into L1 (weights stream from DRAM at decode; read 4 rows at a time, as
   the quantized tiles do, they are 4 short streams, which the hardware prefetcher alone follows
   well below a sequential read's rate) */
static inline void ml_prefetch(const void *p, int64_t bytes) {
    const char *c = (const char *)p;
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

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

/* the largest of v's 8 floats (maxps from the two halves down: with a NaN in v the result is
   whatever maxps gives, so callers that care check for NaN themselves) */
static inline float hmax256(__m256 v) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* the four sums of hsum256(a), .., hsum256(d) (the same additions: (l0+l1)+(l2+l3) of lo+hi) in
   one register: a row tile's outputs leave its kernel without a store to memory that the caller
   would read back at once (four scalar stores read as one vector stall store forwarding) */
static inline __m128 hsum4x256(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 b4 = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
    const __m128 c4 = _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1));
    const __m128 d4 = _mm_add_ps(_mm256_castps256_ps128(d), _mm256_extractf128_ps(d, 1));
    return _mm_hadd_ps(_mm_hadd_ps(a4, b4), _mm_hadd_ps(c4, d4));
}

/* y[r] = v[r] + bias[r] (+ 0 without bias, as the scalar code adds) for the nr (1..4) rows of a tile */
static inline void ml_store_tile4(float *y, __m128 v, const float *bias, int64_t nr) {
    if (nr == 4) {
        _mm_storeu_ps(y, _mm_add_ps(v, bias ? _mm_loadu_ps(bias) : _mm_setzero_ps()));
        return;
    }
    float o[4];
    _mm_storeu_ps(o, v);
    for (int64_t r = 0; r < nr; r++) y[r] = o[r] + (bias ? bias[r] : 0.0f);
}

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

/* ------------------------------------------------------------------ the exported GEMV kernels
   Defined in the file of their family; the fused decode (fused_decode.c) dispatches to them. */

void ml_f32_linear(const float *x, int64_t M, int64_t K, const float *w, const float *bias,
                   float *y, int64_t N, int nthreads);
void ml_w8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
                  const float *bias, float *y, int64_t N, int nthreads);
void ml_w8_dequant(const int8_t *w, const float *scale, float *out, int64_t N, int64_t K, int nthreads);
int ml_w4_linear(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                 const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads);
int ml_w4a16_linear(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                    const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads);
int ml_w4a8_linear(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                   const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads);
void ml_w4_dequant(const uint8_t *wp, const uint16_t *scales, const uint16_t *mins, int64_t G,
                   float *out, int64_t N, int64_t K, int nthreads);
int ml_a8w8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
                   const float *bias, float *y, int64_t N, int nthreads, float *sx_out);
int ml_a8bw8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
                    const float *bias, float *y, int64_t N, int nthreads);
int ml_w4a8_gemm(const float *x, int64_t M, int64_t K, const uint8_t *wp, const uint16_t *scales,
                 const uint16_t *mins, int64_t G, const float *bias, float *y, int64_t N, int nthreads);
void ml_w4q_prep_ref(int bits, const float *x, int64_t K, int64_t G, void *xq, float *bs, float *xsum);
void ml_a8b_prep_ref(const float *x, int64_t K, int8_t *xq, float *bs);
int ml_w8_gemm(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale, const float *bias,
               float *y, int64_t N, int nthreads, int act_bits);
int ml_w8_gemm_isa(int want);
int ml_attn_causal(const float *q, const float *k, const float *v, float *out, int64_t B, int64_t T, int64_t S,
                   int64_t H, int64_t Hkv, int64_t hd, const int64_t *st, float scale, int32_t nthreads);
/* one-thread row ranges of one x row (decode), for the fused decode's single parallel region:
   y[n] for n in [n0, n1) (the fused decode splits at multiples of 4; the float32 rows take any
   n0), bit for bit the whole-layer kernel's rows */
void ml_f32_rows(const float *x, int64_t K, const float *w, const float *bias, float *y, int64_t n0, int64_t n1);
double ml_read_sum(const float *x, int64_t n, int nthreads);
void ml_f32_rows_batch(const float *x, int64_t ldx, int64_t M, int64_t K, const float *w, const float *bias,
                       float *y, int64_t ldy, int64_t n0, int64_t n1);
void ml_w8_rows(const float *x, int64_t K, const int8_t *w, const float *scale, const float *bias, float *y,
                int64_t n0, int64_t n1);
void ml_w4_prep(const float *x, int64_t K, int64_t G, float *xs, float *xsum);
void ml_w4_rows(const float *xs, const float *xsum, int64_t K, int64_t G, const uint8_t *wp, const uint16_t *scales,
                const uint16_t *mins, const float *bias, float *y, int64_t n0, int64_t n1);
void ml_w4q_prep(int bits, const float *x, int64_t K, int64_t G, void *xq, float *bs, float *xsum);
void ml_w4q_rows(int bits, const void *xq, const float *bs, const float *xsum, int64_t K, int64_t G,
                 const uint8_t *wp, const uint16_t *scales, const uint16_t *mins, const float *bias, float *y,
                 int64_t n0, int64_t n1);
float ml_a8_prep(const float *x, int64_t K, int8_t *xq);
void ml_a8w8_rows(const int8_t *xq, float sx, int64_t K, const int8_t *w, const float *scale, const float *bias,
                  float *y, int64_t n0, int64_t n1);
void ml_a8b_prep(const float *x, int64_t K, int8_t *xq, float *bs);
void ml_a8b_round(const float *x, int64_t M, int64_t K, float *out, int nthreads);
void ml_a8bw8_rows(const int8_t *xq, const float *bs, int64_t K, const int8_t *w, const float *scale,
                   const float *bias, float *y, int64_t n0, int64_t n1);
int ml_abi_version(void);

#endif /* ML_COMMON_H */
