/* Fused decode (LLaMA family), AVX2 + FMA.

   One call runs every decoder layer for one new token of each of B sequences (decode; B = 1 the
   usual case, B > 1 a batch, left-padded when its prompts differ in length), and then
   the final RMSNorm and the output layer (the logits), the same math as
   moorelab.model.transformer's Python path, on the same KV cache buffers:
       h = RMSNorm(x); q,k,v = Wq h, Wk h, Wv h; RoPE(q, k) (half-split); cache[pos] = k, v
       a = softmax(q·Kᵀ/√d)·V per head (query head j uses kv head j / (H/Hkv)); x += Wo a
       h = RMSNorm(x); x += Wdown (silu(Wgate h) ⊙ Wup h)
       logits = Whead RMSNorm(x)
   The KV cache holds float32, or float16 when a layer's kv_f16 is set (keys and values rounded
   to nearest even as they are written, as torch's .to(float16)); attention reads each cached
   K and V row once for all query heads that share it (grouped-query attention), converting
   float16 rows ML_ATT_CH at a time, with an online (split) softmax so the positions can be
   split over the threads (flash-decoding; llama.cpp keeps its cache in float16 by default).
   Each linear is described by an ml_lin (fused_decode.h; kind = which GEMV kernel of common.h
   runs it), so float32, int8, int4 (float / int16 / int8 activations) and dynamic int8 layers
   mix freely.

   Threads: ONE OpenMP parallel region for the whole token (as llama.cpp keeps one thread pool
   through its graph), the stages separated by barriers: per layer q/k/v, attention, o (+ the
   residual), gate/up, down (+ the residual): five barriers, against one fork/join per GEMV
   group before (~120 per token, each a wake-up of the sleeping or spinning workers). Each
   linear's 4-row tiles are split over the threads in contiguous ranges and run by the kernel's
   one-thread row function (ml_*_rows, common.h: the numbers of the whole-layer kernel); the
   small per-token ops (RMSNorm, SwiGLU, merging the attention partials, RoPE of a query group)
   are recomputed by every thread into its own buffer, which costs less than a barrier. */

#include "common.h"
#include "fused_decode.h"

/* A thread's activations as its linears' kernels want them, prepared once per input and stage
   (serial counts the stages; the tags say which input, stage and group size a buffer holds). */
typedef struct {
    int64_t serial;
    const float *x3; int64_t s3, g3; float *xs3, *xsum3;                     /* kind 3: float, even/odd split */
    const float *x45; int64_t s45, g45; int b45; void *xq45; float *bs45, *xsum45; /* kinds 4, 5: rounded per block */
    const float *x6; int64_t s6; int8_t *xq6; float sx6;                      /* kind 6: rounded per row */
    const float *x7; int64_t s7; int8_t *xq7; float *bs7;                     /* kind 7: rounded per 32-block */
} ml_tprep;

/* floats of a thread's ml_tprep buffers for inputs of up to kmax floats */
static int64_t ml_tprep_floats(int64_t kmax) {
    const int64_t k = (kmax + 31) / 32 * 32;
    return k + k / 2 + k / 4 + k / 4 + 4 * (k / 32) + 8 * 16;
}

static void ml_tprep_init(ml_tprep *tp, float *buf, int64_t kmax) {
    const int64_t k = (kmax + 31) / 32 * 32;
    memset(tp, 0, sizeof(*tp));
    tp->xs3 = buf; buf += k + 16;
    tp->xsum3 = buf; buf += k / 32 + 16;
    tp->xq45 = buf; buf += k / 2 + 16;
    tp->bs45 = buf; buf += k / 32 + 16;
    tp->xsum45 = buf; buf += k / 32 + 16;
    tp->xq6 = (int8_t *)buf; buf += k / 4 + 16;
    tp->xq7 = (int8_t *)buf; buf += k / 4 + 16;
    tp->bs7 = buf;
}

static int ml_kind_ok(const ml_lin *l) {
    return l->kind >= 1 && l->kind <= 7;
}

/* rows [n0, n1) of layer l (n0 a multiple of 4) on input x[K] into y (indexed by row) */
static void ml_lin_rows(const ml_lin *l, const float *x, float *y, int64_t n0, int64_t n1, ml_tprep *tp) {
    const int64_t K = l->K, G = l->G;
    switch (l->kind) {
    case 1: ml_f32_rows(x, K, (const float *)l->w, l->bias, y, n0, n1); break;
    case 2: ml_w8_rows(x, K, (const int8_t *)l->w, (const float *)l->s, l->bias, y, n0, n1); break;
    case 3:
        if (tp->x3 != x || tp->s3 != tp->serial || tp->g3 != G) {
            ml_w4_prep(x, K, G, tp->xs3, tp->xsum3);
            tp->x3 = x; tp->s3 = tp->serial; tp->g3 = G;
        }
        ml_w4_rows(tp->xs3, tp->xsum3, K, G, (const uint8_t *)l->w, (const uint16_t *)l->s, (const uint16_t *)l->mn,
                   l->bias, y, n0, n1);
        break;
    case 4: case 5: {
        const int bits = l->kind == 4 ? 16 : 8;
        if (tp->x45 != x || tp->s45 != tp->serial || tp->g45 != G || tp->b45 != bits) {
            ml_w4q_prep(bits, x, K, G, tp->xq45, tp->bs45, tp->xsum45);
            tp->x45 = x; tp->s45 = tp->serial; tp->g45 = G; tp->b45 = bits;
        }
        ml_w4q_rows(bits, tp->xq45, tp->bs45, tp->xsum45, K, G, (const uint8_t *)l->w, (const uint16_t *)l->s,
                    (const uint16_t *)l->mn, l->bias, y, n0, n1);
        break;
    }
    case 6:
        if (tp->x6 != x || tp->s6 != tp->serial) {
            tp->sx6 = ml_a8_prep(x, K, tp->xq6);
            tp->x6 = x; tp->s6 = tp->serial;
        }
        ml_a8w8_rows(tp->xq6, tp->sx6, K, (const int8_t *)l->w, (const float *)l->s, l->bias, y, n0, n1);
        break;
    case 7:
        if (tp->x7 != x || tp->s7 != tp->serial) {
            ml_a8b_prep(x, K, tp->xq7, tp->bs7);
            tp->x7 = x; tp->s7 = tp->serial;
        }
        ml_a8bw8_rows(tp->xq7, tp->bs7, K, (const int8_t *)l->w, (const float *)l->s, l->bias, y, n0, n1);
        break;
    default: break; /* kinds are checked before any thread starts */
    }
}

/* weight rows per chunk when a quantized layer runs B > 1 input rows one at a time: the chunk's
   weights (<= 64 rows x K) stay in L2 between the rows, so the layer is read from memory once */
#define ML_BATCH_CH 64

/* rows [n0, n1) of layer l for B input rows (x row b at x + b * ldx, y row b at y + b * ldy;
   tp: B preparation buffers, one per row). B == 1 is ml_lin_rows itself. */
static void ml_lin_rows_b(const ml_lin *l, const float *x, int64_t ldx, float *y, int64_t ldy, int B, int64_t n0,
                          int64_t n1, ml_tprep *tp) {
    if (B == 1) {
        ml_lin_rows(l, x, y, n0, n1, tp);
    } else if (l->kind == 1) {
        ml_f32_rows_batch(x, ldx, B, l->K, (const float *)l->w, l->bias, y, ldy, n0, n1);
    } else {
        for (int64_t c = n0; c < n1; c += ML_BATCH_CH) {
            const int64_t e = c + ML_BATCH_CH < n1 ? c + ML_BATCH_CH : n1;
            for (int b = 0; b < B; b++) ml_lin_rows(l, x + b * ldx, y + b * ldy, c, e, &tp[b]);
        }
    }
}

/* One entry of a group: layer l on B input rows x (row stride ldx) into y (row stride ldy);
   add non-NULL: the rows this thread computed are also added into add (same row stride as y:
   a residual, x += W a, row by row). */
typedef struct {
    const ml_lin *l;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
    float *add;
} ml_gitem;

/* Thread tid's share of a group of n independent layers (e.g. q, k, v on the same input), each
   for B input rows: their 4-row tiles concatenated and split in contiguous ranges over the
   first min(nt, most threads any of them asks for) threads. Called by every thread of the
   region (each with its own B preparation buffers tp), between barriers. */
static void ml_group(const ml_gitem *it, int n, int B, int tid, int nt, ml_tprep *tp) {
    int64_t off[9];
    int gnt = 1;
    off[0] = 0;
    for (int i = 0; i < n; i++) {
        off[i + 1] = off[i] + (it[i].l->N + 3) / 4;
        if (it[i].l->nthreads > gnt) gnt = it[i].l->nthreads;
    }
    for (int b = 0; b < B; b++) tp[b].serial++;
    if (gnt > nt) gnt = nt;
    if (tid >= gnt) return;
    const int64_t total = off[n], a = total * tid / gnt, b = total * (tid + 1) / gnt;
    for (int i = 0; i < n; i++) {
        const int64_t lo = a > off[i] ? a : off[i], hi = b < off[i + 1] ? b : off[i + 1];
        if (lo >= hi) continue;
        const ml_lin *l = it[i].l;
        const int64_t n0 = 4 * (lo - off[i]), n1 = 4 * (hi - off[i]) < l->N ? 4 * (hi - off[i]) : l->N;
        ml_lin_rows_b(l, it[i].x, it[i].ldx, it[i].y, it[i].ldy, B, n0, n1, tp);
        if (it[i].add)
            for (int r = 0; r < B; r++) {
                float *dst = it[i].add + r * it[i].ldy;
                const float *src = it[i].y + r * it[i].ldy;
                for (int64_t j = n0; j < n1; j++) dst[j] += src[j];
            }
    }
}

/* one linear layer through the fused-decode dispatcher, as the decode runs it (tests check
   each kind against the module's own kernel call, bit for bit): y[N] = layer(x[K]) on
   l->nthreads threads; returns 0, -1 (allocation failed) or -2 (unknown kind) */
int ml_lin_forward(const ml_lin *l, const float *x, float *y) {
    if (!ml_kind_ok(l)) return -2;
    const int nt = l->nthreads > 1 ? l->nthreads : 1;
    const int64_t per = ml_tprep_floats(l->K);
    float *buf = (float *)malloc(sizeof(float) * (size_t)(per * nt + 16));
    ml_tprep *tps = (ml_tprep *)malloc(sizeof(ml_tprep) * (size_t)nt);
    if (!buf || !tps) { free(buf); free(tps); return -1; }
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int tid = omp_get_thread_num(), tn = omp_get_num_threads();
        const ml_gitem it[1] = {{l, x, l->K, y, l->N, NULL}};
        ml_tprep_init(&tps[tid], buf + per * tid, l->K);
        ml_group(it, 1, 1, tid, tn, &tps[tid]);
    }
    free(tps);
    free(buf);
    return 0;
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

/* scores of one query q[hd] against n keys (rows of kf, stride hd): sc[t] = q·k_t * scale.
   4 keys at a time (4 independent FMA chains). */
static void ml_scores(const float *q, const float *kf, int64_t n, int64_t hd, float scale, float *sc) {
    const int64_t hd8 = hd & ~(int64_t)7;
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const float *k0 = kf + t * hd, *k1 = k0 + hd, *k2 = k1 + hd, *k3 = k2 + hd;
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
    for (; t < n; t++) sc[t] = ml_dot(q, kf + t * hd, hd) * scale;
}

/* o[hd] = alpha * o + sum_t p[t] * v_t over n rows of vf (stride hd); up to 64 output floats
   stay in 8 registers per pass over the rows */
static void ml_pv(const float *p, const float *vf, int64_t n, int64_t hd, float alpha, float *o) {
    const int64_t hd8 = hd & ~(int64_t)7;
    const __m256 al = _mm256_set1_ps(alpha);
    int64_t c0 = 0;
    for (; c0 + 64 <= hd8; c0 += 64) {
        __m256 o0 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0)), o1 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0 + 8));
        __m256 o2 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0 + 16)), o3 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0 + 24));
        __m256 o4 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0 + 32)), o5 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0 + 40));
        __m256 o6 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0 + 48)), o7 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0 + 56));
        for (int64_t t = 0; t < n; t++) {
            const float *vr = vf + t * hd + c0;
            __m256 pv = _mm256_broadcast_ss(p + t);
            o0 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr), o0);
            o1 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8), o1);
            o2 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 16), o2);
            o3 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 24), o3);
            o4 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 32), o4);
            o5 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 40), o5);
            o6 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 48), o6);
            o7 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 56), o7);
        }
        _mm256_storeu_ps(o + c0, o0); _mm256_storeu_ps(o + c0 + 8, o1);
        _mm256_storeu_ps(o + c0 + 16, o2); _mm256_storeu_ps(o + c0 + 24, o3);
        _mm256_storeu_ps(o + c0 + 32, o4); _mm256_storeu_ps(o + c0 + 40, o5);
        _mm256_storeu_ps(o + c0 + 48, o6); _mm256_storeu_ps(o + c0 + 56, o7);
    }
    for (; c0 < hd8; c0 += 8) {
        __m256 o0 = _mm256_mul_ps(al, _mm256_loadu_ps(o + c0));
        for (int64_t t = 0; t < n; t++) o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + t), _mm256_loadu_ps(vf + t * hd + c0), o0);
        _mm256_storeu_ps(o + c0, o0);
    }
    for (int64_t i = hd8; i < hd; i++) {
        float acc = alpha * o[i];
        for (int64_t t = 0; t < n; t++) acc += p[t] * vf[t * hd + i];
        o[i] = acc;
    }
}

/* n rows of hd float16 (as uint16) -> float32 */
static void ml_f16_rows(const uint16_t *src, int64_t n, int64_t hd, float *dst) {
    const int64_t len = n * hd;
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < len; i++) dst[i] = _cvtsh_ss(src[i]);
}

/* float32 -> float16 (round to nearest even, as torch's .to(torch.float16)) */
static void ml_to_f16(const float *src, int64_t n, uint16_t *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

/* keys per step of the online softmax (ML_ATT_CH rows of K and V converted at a time) */
#define ML_ATT_CH 64

/* Attention of the rep query heads q[rep, hd] that share one kv head, over cache positions
   t0..t1-1 of that head (kc, vc: row t at + t * hd; float32, or float16 if f16), each K and V
   row read once for all rep heads (grouped-query attention). Online softmax over steps of
   ML_ATT_CH keys (flash-decoding's split-K partials): per head r, mx[r] = largest score,
   l[r] = sum_t exp(s_t - mx[r]), o[r, :] = sum_t exp(s_t - mx[r]) v_t (not yet divided by l).
   scratch: 2 * ML_ATT_CH * hd + rep * ML_ATT_CH floats. */
static void ml_attend_part(const float *q, int64_t rep, const void *kc, const void *vc, int f16, int64_t t0,
                           int64_t t1, int64_t hd, float scale, float *mx, float *l, float *o, float *scratch) {
    float *kf = scratch, *vf = kf + ML_ATT_CH * hd, *sc = vf + ML_ATT_CH * hd;
    for (int64_t r = 0; r < rep; r++) { mx[r] = -INFINITY; l[r] = 0.0f; }
    memset(o, 0, sizeof(float) * (size_t)(rep * hd));
    for (int64_t c = t0; c < t1; c += ML_ATT_CH) {
        const int64_t n = t1 - c < ML_ATT_CH ? t1 - c : ML_ATT_CH;
        const float *kr, *vr;
        if (f16) {
            ml_f16_rows((const uint16_t *)kc + c * hd, n, hd, kf);
            ml_f16_rows((const uint16_t *)vc + c * hd, n, hd, vf);
            kr = kf; vr = vf;
        } else {
            kr = (const float *)kc + c * hd; vr = (const float *)vc + c * hd;
        }
        for (int64_t r = 0; r < rep; r++) {
            float *s = sc + r * ML_ATT_CH;
            ml_scores(q + r * hd, kr, n, hd, scale, s);
            float cm = mx[r];
            for (int64_t t = 0; t < n; t++) if (s[t] > cm) cm = s[t];
            const float alpha = expf(mx[r] - cm); /* 0 on the first step (mx = -inf) */
            __m256 cmv = _mm256_set1_ps(cm), sumv = _mm256_setzero_ps();
            int64_t t = 0;
            for (; t + 8 <= n; t += 8) {
                __m256 e = ml_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + t), cmv));
                _mm256_storeu_ps(s + t, e);
                sumv = _mm256_add_ps(sumv, e);
            }
            float sum = hsum256(sumv);
            for (; t < n; t++) { s[t] = expf(s[t] - cm); sum += s[t]; }
            l[r] = l[r] * alpha + sum;
            mx[r] = cm;
            ml_pv(s, vr, n, hd, alpha, o + r * hd);
        }
    }
}

/* a thread's slice of n items split in nt contiguous ranges: [n * tid / nt, n * (tid + 1) / nt) */
#define ML_LO(n, tid, nt) ((int64_t)(n) * (tid) / (nt))

/* Every layer for one new token of each of B sequences, then (head non-NULL) the final RMSNorm
   and the output layer. The B sequences share one KV cache of L->cap positions per row (row b's
   kv head g at (b * Hkv + g) * cap * hd): the new tokens' keys and values go to cache position
   cpos of every row, and row b attends to positions start[b] .. cpos (a left-padded batch: the
   first start[b] positions of row b are padding); its RoPE tables cos[b], sin[b] ([hd] each)
   are those of its own position (its count of real tokens before this one).
   x[B, D] (in/out): the tokens' embeddings in, their last hidden states (before the final norm)
   out; nthreads: threads of the parallel region; final_norm [D], final_eps, head (N = vocab,
   K = D), logits [B, N] out: may be NULL (then only the layers run); next_ids [B] out, or NULL:
   each row's greedy next token (ml_argmax_rows of its logits), picked here so that no Python
   runs between the logits and the pick (moorelab.model.decode.forward's greedy_into); written
   only when head is not NULL.
   Each linear reads its weights once for all B rows (float32: three rows per weight tile,
   ml_f32_rows_batch; other kinds: chunks of ML_BATCH_CH rows kept in cache while each input row
   runs through them). B == 1 with start 0 is the one-sequence decode, the same numbers.
   Returns 0, -1 (allocation failed), -2 (B < 1, an unknown linear kind, or a head whose K is
   not D), -3 (cpos >= cache capacity, or a start[b] > cpos). */
int ml_decode_batch(const ml_layer *L, int32_t n_layers, int64_t D, int32_t B, float *x, int64_t cpos,
                    const int64_t *start, const float *const *cos, const float *const *sin, int32_t nthreads,
                    const float *final_norm, float final_eps, const ml_lin *head, float *logits,
                    int64_t *next_ids) {
    int64_t mq = 0, mkv = 0, mf = 0, mrep = 1, mhd = 1, mh = 1;
    if (B < 1) return -2;
    for (int32_t b = 0; b < B; b++) if (start[b] < 0 || start[b] > cpos) return -3;
    for (int32_t i = 0; i < n_layers; i++) {
        const ml_layer *ly = &L[i];
        if (cpos >= ly->cap) return -3;
        const ml_lin *ls[7] = {&ly->q, &ly->k, &ly->v, &ly->o, &ly->gate, &ly->up, &ly->down};
        for (int j = 0; j < 7; j++) if (!ml_kind_ok(ls[j])) return -2;
        const int64_t hq = (int64_t)ly->H * ly->hd, hk = (int64_t)ly->Hkv * ly->hd;
        if (hq > mq) mq = hq;
        if (hk > mkv) mkv = hk;
        if (ly->gate.N > mf) mf = ly->gate.N;
        if (ly->H / ly->Hkv > mrep) mrep = ly->H / ly->Hkv;
        if (ly->hd > mhd) mhd = ly->hd;
        if (ly->H > mh) mh = ly->H;
    }
    if (head && (!ml_kind_ok(head) || head->K != D || !final_norm || !logits)) return -2;
    const int nt = nthreads > 1 ? nthreads : 1;
    const int64_t T = cpos + 1;
    /* attention: units of (row, kv head, one of P slices of the positions) over the threads; the
       positions are sliced (P = nt) for one sequence from T * heads >= 2048 on, below which a
       slice's partial softmax and its merge cost about what the split saves (B > 1: the rows
       already give every thread units); each unit's partial softmax (mx, l, o per query head)
       is merged after */
    const int64_t P = (nt > 1 && B == 1 && T * mh >= 2048) ? nt : 1;
    const int64_t kmax = D > mq ? (D > mf ? D : mf) : (mq > mf ? mq : mf);
    const int64_t nscr = 2 * ML_ATT_CH * mhd + mrep * ML_ATT_CH + 16;
    /* per thread: h [B, D], act [B, mf], att [B, mq], qrot [mrep * mhd], attention scratch,
       B kernel-input preparations */
    const int64_t r16 = 16;
    const int64_t per = B * (D + mf + mq) + 3 * r16 + (mrep * mhd + r16) + nscr + B * (ml_tprep_floats(kmax) + r16);
    /* shared: q, k, v, g, u, o (B rows each), the attention partials (B * Hkv * P units of rep * (hd + 2) floats) */
    const int64_t shared = B * (mq + 2 * mkv + 2 * mf + D) + 6 * r16 + B * P * mh * (mhd + 2) + r16;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(shared + per * nt + 64));
    ml_tprep *tps = (ml_tprep *)malloc(sizeof(ml_tprep) * (size_t)(nt * B));
    if (!buf || !tps) { free(buf); free(tps); return -1; }
    float *q = buf, *k = q + B * mq + r16, *v = k + B * mkv + r16, *g = v + B * mkv + r16, *u = g + B * mf + r16;
    float *o = u + B * mf + r16, *parts = o + B * D + r16, *priv = buf + shared;
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int tid = omp_get_thread_num(), tn = omp_get_num_threads();
        float *h = priv + per * tid, *act = h + B * D + r16, *att = act + B * mf + r16, *qrot = att + B * mq + r16;
        float *scratch = qrot + mrep * mhd + r16, *pbuf = scratch + nscr;
        ml_tprep *tp = &tps[tid * B];
        for (int32_t b = 0; b < B; b++) ml_tprep_init(&tp[b], pbuf + b * (ml_tprep_floats(kmax) + r16), kmax);
        for (int32_t li = 0; li < n_layers; li++) {
            const ml_layer *ly = &L[li];
            const int64_t H = ly->H, Hkv = ly->Hkv, hd = ly->hd, rep = H / Hkv, F = ly->gate.N;
            const int64_t nq = H * hd, nkv = Hkv * hd;
            const int f16 = ly->kv_f16 != 0;
            const size_t esz = f16 ? sizeof(uint16_t) : sizeof(float);
            const float scale = 1.0f / sqrtf((float)hd);
            const int64_t pstride = rep * (hd + 2); /* part (b, g, p): per query head r of kv head g: mx, l, o[hd] */
            for (int32_t b = 0; b < B; b++) ml_rmsnorm(x + b * D, ly->attn_norm, ly->eps, h + b * D, D);
            {
                const ml_gitem it[3] = {{&ly->q, h, D, q, nq, NULL}, {&ly->k, h, D, k, nkv, NULL},
                                        {&ly->v, h, D, v, nkv, NULL}};
                ml_group(it, 3, B, tid, tn, tp);
            }
            #pragma omp barrier
            /* attention units; the unit holding position cpos (the last slice of its row's kv
               head) also rotates that head's key and writes the key and value into the cache: no
               other unit reads row cpos or that key */
            const int64_t units = B * Hkv * P;
            for (int64_t unit = ML_LO(units, tid, tn); unit < ML_LO(units, tid + 1, tn); unit++) {
                const int64_t bi = unit / (Hkv * P), gi = (unit / P) % Hkv, pi = unit % P;
                const float *cb = cos[bi], *sb = sin[bi];
                memcpy(qrot, q + bi * nq + gi * rep * hd, sizeof(float) * (size_t)(rep * hd));
                if (ly->rope)
                    for (int64_t r = 0; r < rep; r++) ml_rope(qrot + r * hd, cb, sb, hd);
                const size_t head0 = (size_t)((bi * Hkv + gi) * ly->cap * hd); /* row bi, kv head gi */
                if (pi == P - 1) {
                    float *kg = k + bi * nkv + gi * hd;
                    if (ly->rope) ml_rope(kg, cb, sb, hd);
                    char *kd = (char *)ly->kc + esz * (head0 + (size_t)(cpos * hd));
                    char *vd = (char *)ly->vc + esz * (head0 + (size_t)(cpos * hd));
                    if (f16) {
                        ml_to_f16(kg, hd, (uint16_t *)kd);
                        ml_to_f16(v + bi * nkv + gi * hd, hd, (uint16_t *)vd);
                    } else {
                        memcpy(kd, kg, sizeof(float) * (size_t)hd);
                        memcpy(vd, v + bi * nkv + gi * hd, sizeof(float) * (size_t)hd);
                    }
                }
                const int64_t s0 = start[bi], n = T - s0;
                const int64_t t0 = s0 + n * pi / P, t1 = s0 + n * (pi + 1) / P;
                float *pp = parts + unit * pstride;
                const char *kb = (const char *)ly->kc + esz * head0;
                const char *vb = (const char *)ly->vc + esz * head0;
                ml_attend_part(qrot, rep, kb, vb, f16, t0, t1, hd, scale, pp, pp + rep, pp + 2 * rep, scratch);
            }
            #pragma omp barrier
            /* merge the partials (every thread, into its own att) */
            for (int32_t bi = 0; bi < B; bi++) {
                for (int64_t gi = 0; gi < Hkv; gi++) {
                    for (int64_t r = 0; r < rep; r++) {
                        float M = -INFINITY, Lsum = 0.0f;
                        const float *p0 = parts + ((bi * Hkv + gi) * P) * pstride;
                        for (int64_t pi = 0; pi < P; pi++) {
                            const float *pp = p0 + pi * pstride;
                            if (pp[r] > M) M = pp[r];
                        }
                        float *out = att + bi * nq + (gi * rep + r) * hd;
                        memset(out, 0, sizeof(float) * (size_t)hd);
                        for (int64_t pi = 0; pi < P; pi++) {
                            const float *pp = p0 + pi * pstride;
                            if (pp[rep + r] == 0.0f) continue; /* an empty slice (T < P) */
                            const float wgt = expf(pp[r] - M);
                            Lsum += wgt * pp[rep + r];
                            const float *po = pp + 2 * rep + r * hd;
                            for (int64_t i = 0; i < hd; i++) out[i] += wgt * po[i];
                        }
                        const float inv = 1.0f / Lsum;
                        for (int64_t i = 0; i < hd; i++) out[i] *= inv;
                    }
                }
            }
            {
                const ml_gitem it[1] = {{&ly->o, att, nq, o, D, x}};
                ml_group(it, 1, B, tid, tn, tp);
            }
            #pragma omp barrier
            for (int32_t b = 0; b < B; b++) ml_rmsnorm(x + b * D, ly->ffn_norm, ly->eps, h + b * D, D);
            {
                const ml_gitem it[2] = {{&ly->gate, h, D, g, F, NULL}, {&ly->up, h, D, u, F, NULL}};
                ml_group(it, 2, B, tid, tn, tp);
            }
            #pragma omp barrier
            for (int32_t b = 0; b < B; b++) {
                const float *gb = g + b * F, *ub = u + b * F;
                float *ab = act + b * F;
                int64_t i = 0;
                for (; i + 8 <= F; i += 8) {
                    __m256 gv = _mm256_loadu_ps(gb + i);
                    __m256 sg = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), ml_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
                    _mm256_storeu_ps(ab + i, _mm256_mul_ps(sg, _mm256_loadu_ps(ub + i)));
                }
                for (; i < F; i++) ab[i] = gb[i] / (1.0f + expf(-gb[i])) * ub[i];
            }
            {
                const ml_gitem it[1] = {{&ly->down, act, F, o, D, x}};
                ml_group(it, 1, B, tid, tn, tp);
            }
            #pragma omp barrier
        }
        if (head) {
            for (int32_t b = 0; b < B; b++) ml_rmsnorm(x + b * D, final_norm, final_eps, h + b * D, D);
            const ml_gitem it[1] = {{head, h, D, logits, head->N, NULL}};
            ml_group(it, 1, B, tid, tn, tp);
        }
    }
    if (head && next_ids) ml_argmax_rows(logits, B, head->N, head->N, next_ids);
    free(tps);
    free(buf);
    return 0;
}

/* One token of one sequence at position pos (no padding): ml_decode_batch with B = 1, start 0;
   cos/sin: [hd] RoPE tables of pos; next_ids [1] or NULL as there. Same returns. */
int ml_decode_layers(const ml_layer *L, int32_t n_layers, int64_t D, float *x, int64_t pos,
                     const float *cos, const float *sin, int32_t nthreads,
                      const float *final_norm, float final_eps, const ml_lin *head, float *logits,
                     int64_t *next_ids) {
    const int64_t start[1] = {0};
    const float *c[1] = {cos}, *sn[1] = {sin};
    return ml_decode_batch(L, n_layers, D, 1, x, pos, start, c, sn, nthreads, final_norm, final_eps, head, logits,
                           next_ids);
}

/* a prefetch (into all cache levels) of each of n addresses: the fused decode's Python side runs
   it at the start of each step's validity check, on the Python objects, TensorImpls and
   StorageImpls of the ~700 tensors the plan points into, which the previous step's weight stream
   evicted; their misses then overlap instead of coming one after another inside data_ptr()
   calls. A prefetch never faults, so stale addresses (an object since freed) cost nothing. */
void ml_prefetch_lines(const uintptr_t *addrs, int64_t n) {
    for (int64_t i = 0; i < n; i++) _mm_prefetch((const char *)addrs[i], _MM_HINT_T0);
}

/* the index of the largest of v[0 .. n) for each of B rows (row b at v + b * ldv) into out[b],
   as torch.argmax: the first index on ties, the first NaN when a row has one (NaN counts as the
   largest), 0 for an empty row or one of -inf only. Greedy decoding's next token, read from the
   logits the fused decode just wrote (moorelab.model.decode.greedy): one vector pass for the
   maximum (and whether a NaN is there), one for its first index. */
void ml_argmax_rows(const float *v, int64_t B, int64_t n, int64_t ldv, int64_t *out) {
    for (int64_t b = 0; b < B; b++) {
        const float *r = v + b * ldv;
        int64_t i = 0, best = 0;
        __m256 mx = _mm256_set1_ps(-INFINITY), un = _mm256_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            const __m256 x = _mm256_loadu_ps(r + i);
            un = _mm256_or_ps(un, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
            mx = _mm256_max_ps(mx, x);
        }
        float m = hmax256(mx);
        int nan = _mm256_movemask_ps(un) != 0;
        for (; i < n; i++) {
            if (r[i] != r[i]) nan = 1;
            else if (r[i] > m) m = r[i];
        }
        if (nan) {
            for (i = 0; i < n && r[i] == r[i]; i++) {}
            best = i;
        } else {
            const __m256 mv = _mm256_set1_ps(m);
            for (i = 0; i + 8 <= n; i += 8) {
                const int msk = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(r + i), mv, _CMP_EQ_OQ));
                if (msk) break;
            }
            for (; i < n && r[i] != m; i++) {}
            best = i < n ? i : 0;
        }
        out[b] = best;
    }
}
