/* Causal self-attention for prefill (ml_attn_causal): out = softmax(q·kᵀ·scale + causal mask)·v
   for every head of every sequence in one call and one parallel region (float32, AVX2 + FMA).

   q [B, H, T, hd], k and v [B, Hkv, S, hd], out [B, H, T, hd], each given by its base pointer and
   three element strides (sequence, head, position; hd contiguous), so the projections'
   [B, T, H, hd] layout is read and the output written in the layout o_proj reads, without a copy.
   Query position t (0..T-1) sees keys 0..t + S - T: the S - T positions already in a KV cache,
   then the causal mask. Query head h uses kv head h / (H / Hkv) (grouped-query attention).

   Phase 1 packs the keys of each (sequence, kv head) transposed in tiles of 16 keys,
   kt [S16 / 16][hd][16] (S16 = S rounded up to 16, zero-filled, 64-byte aligned; one tile is 4 KB
   read in order, where a plain [hd][S16] layout put its 64 lines 2 KB apart, in two L1 sets, and
   ran at half the speed), so that a score tile is 6 query rows x 16 keys: per d, one 64-byte line
   of kt and 6 broadcasts feed 12 FMAs (the 6 x 16 register tile of BLIS's
   Haswell sgemm kernel). Phase 2 takes units of AP_MB positions of one (sequence, kv head): the
   rep = H / Hkv query heads of those positions are rep * AP_MB rows that share one K and one V
   (each read once for all of them), scored against the keys up to the unit's last position
   (a row's keys past its own are computed and then masked), an exact softmax per row (the whole
   row sits in scratch, so no online rescaling as in FlashAttention: Dao et al. 2022), then P·V
   in tiles of 6 rows x 16 columns over blocks of AP_KB keys, divided by each row's sum on the
   way out. Above-diagonal
   blocks are never computed. Units with the most keys go first (dynamic schedule), so the
   threads finish together.

   Returns 0; -1 (allocation failed); -2 (B < 0, T < 0, S < T, H or Hkv < 1, H % Hkv != 0,
   hd < 8, hd % 8 != 0, nthreads < 1). */

#include "common.h"

#define AP_MB 16 /* query positions per work unit */
#define AP_NR 6  /* rows per register tile */
#define AP_KB 256 /* keys per block of P·V: 256 rows of V (64 KB at d_k = 64) stay in L2 while every row
                     tile of the unit passes over them; at 2,048 keys without the blocks each pass
                     streamed all of V from L3 (x1.14 torch's attention there against x2.1 at 512) */
#define AP_ALWAYS static inline __attribute__((always_inline))

/* The two register tiles, written with one named accumulator pair per row (x<r>0, x<r>1) and nr,
   nv compile-time constants after inlining: with arrays of __m256, gcc kept the 12 accumulators
   in registers but also stored each to the stack on every step, and the tile ran at 40% of the
   FMA peak. */
#define AP_ACC(r) __m256 x##r##0 = _mm256_setzero_ps(), x##r##1 = _mm256_setzero_ps()
#define AP_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

/* scores of rows qr[0..nr) against keys j..j+15, times scale, into srow[r][j..j+15]; kp: those
   keys' packed tile, [hd][16] */
AP_ALWAYS void ap_score_tile(const float *const *qr, const int nr, const float *kp, int64_t hd,
                             __m256 scale, float *const *srow, int64_t j) {
    AP_ACC(0); AP_ACC(1); AP_ACC(2); AP_ACC(3); AP_ACC(4); AP_ACC(5);
#define AP_QP(r) const float *q##r = qr[nr > r ? r : 0];
    AP_ROWS(AP_QP)
    for (int64_t d = 0; d < hd; d++, kp += 16) {
        const __m256 k0 = _mm256_load_ps(kp), k1 = _mm256_load_ps(kp + 8);
#define AP_SSTEP(r)                                                                                             \
        if (nr > r) {                                                                                           \
            const __m256 b = _mm256_broadcast_ss(q##r + d);                                                     \
            x##r##0 = _mm256_fmadd_ps(b, k0, x##r##0);                                                          \
            x##r##1 = _mm256_fmadd_ps(b, k1, x##r##1);                                                          \
        }
        AP_ROWS(AP_SSTEP)
    }
#define AP_SSTORE(r)                                                                                            \
    if (nr > r) {                                                                                               \
        _mm256_storeu_ps(srow[r] + j, _mm256_mul_ps(x##r##0, scale));                                          \
        _mm256_storeu_ps(srow[r] + j + 8, _mm256_mul_ps(x##r##1, scale));                                      \
    }
    AP_ROWS(AP_SSTORE)
}

/* acc[r][c..c+8*nv) += sum_{j0 <= j < j1} pr[r][j] * v[j][c..c+8*nv), v's row j at vb + j * vt;
   acc's row r at acc + r * lda */
AP_ALWAYS void ap_pv_tile(const float *const *pr, const int nr, const float *vb, int64_t vt, int64_t j0,
                          int64_t j1, int64_t c, const int nv, float *acc, int64_t lda) {
#define AP_PLOAD(r)                                                                                             \
    __m256 x##r##0 = _mm256_setzero_ps(), x##r##1 = _mm256_setzero_ps();                                      \
    if (nr > r) {                                                                                               \
        x##r##0 = _mm256_loadu_ps(acc + r * lda + c);                                                           \
        if (nv == 2) x##r##1 = _mm256_loadu_ps(acc + r * lda + c + 8);                                         \
    }
    AP_ROWS(AP_PLOAD)
#define AP_PP(r) const float *p##r = pr[nr > r ? r : 0];
    AP_ROWS(AP_PP)
    const float *vp = vb + j0 * vt + c;
    for (int64_t j = j0; j < j1; j++, vp += vt) {
        const __m256 v0 = _mm256_loadu_ps(vp);
        const __m256 v1 = nv == 2 ? _mm256_loadu_ps(vp + 8) : v0;
#define AP_PSTEP(r)                                                                                             \
        if (nr > r) {                                                                                           \
            const __m256 p = _mm256_broadcast_ss(p##r + j);                                                     \
            x##r##0 = _mm256_fmadd_ps(p, v0, x##r##0);                                                          \
            if (nv == 2) x##r##1 = _mm256_fmadd_ps(p, v1, x##r##1);                                             \
        }
        AP_ROWS(AP_PSTEP)
    }
#define AP_PSTORE(r)                                                                                            \
    if (nr > r) {                                                                                               \
        _mm256_storeu_ps(acc + r * lda + c, x##r##0);                                                           \
        if (nv == 2) _mm256_storeu_ps(acc + r * lda + c + 8, x##r##1);                                         \
    }
    AP_ROWS(AP_PSTORE)
}

/* the tiles above with nr (1..6) and nv (1, 2) as compile-time constants */
static void ap_scores(const float *const *qr, int nr, const float *kp, int64_t hd, __m256 scale,
                      float *const *srow, int64_t j) {
    switch (nr) {
    case 6: ap_score_tile(qr, 6, kp, hd, scale, srow, j); break;
    case 5: ap_score_tile(qr, 5, kp, hd, scale, srow, j); break;
    case 4: ap_score_tile(qr, 4, kp, hd, scale, srow, j); break;
    case 3: ap_score_tile(qr, 3, kp, hd, scale, srow, j); break;
    case 2: ap_score_tile(qr, 2, kp, hd, scale, srow, j); break;
    default: ap_score_tile(qr, 1, kp, hd, scale, srow, j); break;
    }
}

#define AP_PV_CASE(n)                                                                                           \
    case n:                                                                                                     \
        if (nv == 2) ap_pv_tile(pr, n, vb, vt, j0, j1, c, 2, acc, lda);                                        \
        else ap_pv_tile(pr, n, vb, vt, j0, j1, c, 1, acc, lda);                                                \
        break;

static void ap_pv(const float *const *pr, int nr, const float *vb, int64_t vt, int64_t j0, int64_t j1, int64_t c,
                  int nv, float *acc, int64_t lda) {
    switch (nr) {
    AP_PV_CASE(6)
    AP_PV_CASE(5)
    AP_PV_CASE(4)
    AP_PV_CASE(3)
    AP_PV_CASE(2)
    default: AP_PV_CASE(1)
    }
}

/* softmax of s[0..n) in place (s[n..nk) set to 0); returns 1 / the sum of the exponentials */
static float ap_softmax_row(float *s, int64_t n, int64_t nk) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
    float mx = hmax256(mv);
    for (; i < n; i++) if (s[i] > mx) mx = s[i];
    const __m256 mxv = _mm256_set1_ps(mx);
    __m256 sumv = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = ml_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), mxv));
        _mm256_storeu_ps(s + i, e);
        sumv = _mm256_add_ps(sumv, e);
    }
    float sum = hsum256(sumv);
    for (; i < n; i++) { s[i] = expf(s[i] - mx); sum += s[i]; }
    for (; i < nk; i++) s[i] = 0.0f;
    return 1.0f / sum;
}

int ml_attn_causal(const float *q, const float *k, const float *v, float *out, int64_t B, int64_t T, int64_t S,
                   int64_t H, int64_t Hkv, int64_t hd, const int64_t *st, float scale, int32_t nthreads) {
    if (B < 0 || T < 0 || S < T || H < 1 || Hkv < 1 || H % Hkv || hd < 8 || hd % 8 || nthreads < 1) return -2;
    if (B == 0 || T == 0) return 0;
    const int64_t qb = st[0], qh = st[1], qt = st[2], kb = st[3], kh = st[4], kt_ = st[5];
    const int64_t vb = st[6], vh = st[7], vt = st[8], ob = st[9], oh = st[10], ot = st[11];
    const int64_t rep = H / Hkv, S16 = (S + 15) & ~(int64_t)15, past = S - T, BG = B * Hkv;
    /* scratch row stride: an odd number of 64-byte lines, so rows of scores are not a power of two apart
       (6 rows 2 KB apart fall in the same few L1 sets) */
    const int64_t ld = (S16 >> 4) % 2 ? S16 : S16 + 16;
    const int64_t nblk = (T + AP_MB - 1) / AP_MB, rows_max = rep * AP_MB;
    const int64_t n_sb = (S + 63) / 64; /* packing units: 64 key positions of one (sequence, kv head) */
    float *ktall = aligned_alloc(64, sizeof(float) * (size_t)(BG * hd * S16));
    float *scr = aligned_alloc(64, sizeof(float) * (size_t)(nthreads * rows_max * ld));
    float *inv = malloc(sizeof(float) * (size_t)(nthreads * rows_max));
    const float **ptr = malloc(sizeof(float *) * (size_t)(nthreads * rows_max * 2));
    float *accall = malloc(sizeof(float) * (size_t)(nthreads * rows_max * hd));
    if (!ktall || !scr || !inv || !ptr || !accall) {
        free(ktall); free(scr); free(inv); free(ptr); free(accall);
        return -1;
    }
    const __m256 scv = _mm256_set1_ps(scale);

#pragma omp parallel num_threads(nthreads)
    {
        /* phase 1: kt [b, g][s / 16][d][s % 16] = k[b, g, s, d], zero past S */
#pragma omp for schedule(static)
        for (int64_t u = 0; u < BG * n_sb; u++) {
            const int64_t i = u / n_sb, s0 = (u % n_sb) * 64, s1 = s0 + 64 < S16 ? s0 + 64 : S16;
            const float *ks = k + (i / Hkv) * kb + (i % Hkv) * kh;
            float *dst = ktall + i * hd * S16;
            for (int64_t s = s0; s < s1; s++) {
                float *tile = dst + (s >> 4) * hd * 16 + (s & 15);
                if (s < S) for (int64_t d = 0; d < hd; d++) tile[d * 16] = ks[s * kt_ + d];
                else for (int64_t d = 0; d < hd; d++) tile[d * 16] = 0.0f;
            }
        }
        /* phase 2: units of AP_MB positions of one (sequence, kv head), the latest positions first */
        const int tid = omp_get_thread_num();
        float *sc = scr + (int64_t)tid * rows_max * ld, *iv = inv + (int64_t)tid * rows_max;
        const float **qr = ptr + (int64_t)tid * rows_max * 2;
        float **orow = (float **)(qr + rows_max), *acc = accall + (int64_t)tid * rows_max * hd;
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < BG * nblk; u++) {
            const int64_t blk = nblk - 1 - u / BG, i = u % BG, b = i / Hkv, g = i % Hkv;
            const int64_t t0 = blk * AP_MB, t1 = t0 + AP_MB < T ? t0 + AP_MB : T, R = rep * (t1 - t0);
            const int64_t nk = t1 + past, nk16 = (nk + 15) & ~(int64_t)15;
            const float *ktg = ktall + i * hd * S16, *vg = v + b * vb + g * vh;
            for (int64_t r = 0; r < R; r++) {
                const int64_t h = g * rep + r % rep, t = t0 + r / rep;
                qr[r] = q + b * qb + h * qh + t * qt;
                orow[r] = out + b * ob + h * oh + t * ot;
            }
            for (int64_t j = 0; j < nk16; j += 16)
                for (int64_t r0 = 0; r0 < R; r0 += AP_NR) {
                    float *sr[AP_NR];
                    const int nr = R - r0 < AP_NR ? (int)(R - r0) : AP_NR;
                    for (int r = 0; r < nr; r++) sr[r] = sc + (r0 + r) * ld;
                    ap_scores(qr + r0, nr, ktg + j * hd, hd, scv, sr, j);
                }
            for (int64_t r = 0; r < R; r++) iv[r] = ap_softmax_row(sc + r * ld, t0 + r / rep + past + 1, nk);
            memset(acc, 0, sizeof(float) * (size_t)(R * hd));
            for (int64_t j0 = 0; j0 < nk; j0 += AP_KB) {
                const int64_t j1 = j0 + AP_KB < nk ? j0 + AP_KB : nk;
                for (int64_t r0 = 0; r0 < R; r0 += AP_NR) {
                    const float *pr[AP_NR];
                    const int nr = R - r0 < AP_NR ? (int)(R - r0) : AP_NR;
                    for (int r = 0; r < nr; r++) pr[r] = sc + (r0 + r) * ld;
                    for (int64_t c = 0; c < hd; c += 16)
                        ap_pv(pr, nr, vg, vt, j0, j1, c, hd - c >= 16 ? 2 : 1, acc + r0 * hd, hd);
                }
            }
            for (int64_t r = 0; r < R; r++) {
                const __m256 sv = _mm256_set1_ps(iv[r]);
                for (int64_t c = 0; c < hd; c += 8)
                    _mm256_storeu_ps(orow[r] + c, _mm256_mul_ps(_mm256_loadu_ps(acc + r * hd + c), sv));
            }
        }
    }
    free(ktall); free(scr); free(inv); free(ptr); free(accall);
    return 0;
}
