/* Fused decode (LLaMA family), AVX2 + FMA.

   One call runs every decoder layer for ONE token of ONE sequence (batch 1, decode), the same
   math as moorelab.model.transformer's Python path, on the same KV cache buffers:
       h = RMSNorm(x); q,k,v = Wq h, Wk h, Wv h; RoPE(q, k) (half-split); cache[pos] = k, v
       a = softmax(q·Kᵀ/√d)·V per head (query head j uses kv head j / (H/Hkv)); x += Wo a
       h = RMSNorm(x); x += Wdown (silu(Wgate h) ⊙ Wup h)
   The KV cache holds float32, or float16 when a layer's kv_f16 is set (keys and values rounded
   to nearest even as they are written, as torch's .to(float16)); attention reads each cached
   K and V row once for all query heads that share it (grouped-query attention), converting
   float16 rows ML_ATT_CH at a time, with an online (split) softmax so the positions can be
   split over the threads (flash-decoding; llama.cpp keeps its cache in float16 by default).
   Each linear is described by an ml_lin (fused_decode.h; kind = which GEMV kernel of common.h
   runs it), so float32, int8, int4 (float / int16 / int8 activations) and dynamic int8 layers
   mix freely. */

#include "common.h"
#include "fused_decode.h"

/* y[N] = layer(x[K]) through the kernel of its kind; 0, -1 (allocation failed) or -2 (unknown kind) */
static int ml_lin_apply(const ml_lin *l, const float *x, float *y) {
    switch (l->kind) {
    case 1: ml_f32_linear(x, 1, l->K, (const float *)l->w, l->bias, y, l->N, l->nthreads); return 0;
    case 2: ml_w8_linear(x, 1, l->K, (const int8_t *)l->w, (const float *)l->s, l->bias, y, l->N, l->nthreads); return 0;
    case 3: return ml_w4_linear(x, 1, l->K, (const uint8_t *)l->w, (const uint16_t *)l->s, (const uint16_t *)l->mn,
                                l->G, l->bias, y, l->N, l->nthreads);
    case 4: return ml_w4a16_linear(x, 1, l->K, (const uint8_t *)l->w, (const uint16_t *)l->s, (const uint16_t *)l->mn,
                                   l->G, l->bias, y, l->N, l->nthreads);
    case 5: return ml_w4a8_linear(x, 1, l->K, (const uint8_t *)l->w, (const uint16_t *)l->s, (const uint16_t *)l->mn,
                                  l->G, l->bias, y, l->N, l->nthreads);
    case 6: return ml_a8w8_linear(x, 1, l->K, (const int8_t *)l->w, (const float *)l->s, l->bias, y, l->N,
                                  l->nthreads, NULL);
    default: return -2;
    }
}

/* rows n0..n1-1 of a layer: its kernel, one thread, on that slice of the weights (every kernel
   computes each output row from its own weight row, in 4-row tiles from the slice start; slices
   start at multiples of 4 rows, so the tiles, and the numbers, are those of the whole call) */
static int ml_lin_rows(const ml_lin *l, const float *x, float *y, int64_t n0, int64_t n1) {
    ml_lin s = *l;
    const int64_t K = l->K;
    s.N = n1 - n0;
    s.nthreads = 1;
    s.bias = l->bias ? l->bias + n0 : NULL;
    switch (l->kind) {
    case 1: s.w = (const float *)l->w + n0 * K; break;
    case 2: case 6: s.w = (const int8_t *)l->w + n0 * K; s.s = (const float *)l->s + n0; break;
    case 3: case 4: case 5:
        s.w = (const uint8_t *)l->w + n0 * (K / 2);
        s.s = (const uint16_t *)l->s + n0 * (K / l->G);
        s.mn = (const uint16_t *)l->mn + n0 * (K / l->G);
        break;
    default: return -2;
    }
    return ml_lin_apply(&s, x, y + n0);
}

/* Several independent layers (e.g. q, k, v on the same input) in ONE parallel region: their
   4-row tiles are concatenated and split in contiguous ranges over the threads (the most any
   of them asks for), each range run by ml_lin_rows. One fork/join instead of one per layer:
   at decode a step spends much of its time in those thread wake-ups, and on a shared machine
   each one may wait for a descheduled thread. Returns 0 or the first kernel error. */
static int ml_lins_apply(const ml_lin *const *ls, const float *const *xs, float *const *ys, int n) {
    int64_t off[9];
    int nthreads = 1;
    off[0] = 0;
    for (int i = 0; i < n; i++) {
        off[i + 1] = off[i] + (ls[i]->N + 3) / 4;
        if (ls[i]->nthreads > nthreads) nthreads = ls[i]->nthreads;
    }
    const int64_t total = off[n];
    int rc = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t a = total * tid / nt, b = total * (tid + 1) / nt;
        int my = 0;
        for (int i = 0; i < n && my == 0; i++) {
            const int64_t lo = a > off[i] ? a : off[i], hi = b < off[i + 1] ? b : off[i + 1];
            if (lo >= hi) continue;
            const int64_t n0 = 4 * (lo - off[i]), n1 = 4 * (hi - off[i]) < ls[i]->N ? 4 * (hi - off[i]) : ls[i]->N;
            my = ml_lin_rows(ls[i], xs[i], ys[i], n0, n1);
        }
        if (my != 0) {
            #pragma omp critical(ml_lins_rc)
            if (rc == 0) rc = my;
        }
    }
    return rc;
}

/* one linear layer through the fused-decode dispatcher, as the decode runs it (tests check
   each kind against the module's own kernel call, bit for bit): y[N] = layer(x[K]); returns
   0, -1 (allocation failed) or -2 (unknown kind) */
int ml_lin_forward(const ml_lin *l, const float *x, float *y) {
    const ml_lin *ls[1] = {l};
    const float *xs[1] = {x};
    float *ys[1] = {y};
    return ml_lins_apply(ls, xs, ys, 1);
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

/* x[D] (in/out): the hidden state of the token at position pos; cos/sin: [hd] tables of pos.
   Returns 0, -1 (allocation failed), -2 (unknown linear kind), -3 (pos >= cache capacity). */
int ml_decode_layers(const ml_layer *L, int32_t n_layers, int64_t D, float *x, int64_t pos,
                     const float *cos, const float *sin, int32_t attn_threads) {
    int64_t mq = 0, mkv = 0, mf = 0;
    for (int32_t i = 0; i < n_layers; i++) {
        if (pos >= L[i].cap) return -3;
        int64_t hq = (int64_t)L[i].H * L[i].hd, hk = (int64_t)L[i].Hkv * L[i].hd;
        if (hq > mq) mq = hq;
        if (hk > mkv) mkv = hk;
        if (L[i].gate.N > mf) mf = L[i].gate.N;
    }
    int64_t T = pos + 1;
    int64_t mrep = 1, mhd = 1, mh = 1;
    for (int32_t i = 0; i < n_layers; i++) {
        if (L[i].H / L[i].Hkv > mrep) mrep = L[i].H / L[i].Hkv;
        if (L[i].hd > mhd) mhd = L[i].hd;
        if (L[i].H > mh) mh = L[i].H;
    }
    /* attention: units of (kv head, one of P slices of the positions) over the threads (from
       T * heads >= 2048 on: below, a fork/join costs about what it saves); each unit's partial
       softmax (mx, l, o per query head) is merged after */
    const int nt = (attn_threads > 1 && T * mh >= 2048) ? attn_threads : 1;
    const int64_t P = nt > 1 ? nt : 1;
    const int64_t nscr = 2 * ML_ATT_CH * mhd + mrep * ML_ATT_CH + 16;
    const int64_t npart = P * mh * (mhd + 2);
    size_t nfl = (size_t)(2 * D + 2 * mq + 2 * mkv + 2 * mf + nscr * nt + npart + 64);
    float *buf = (float *)malloc(sizeof(float) * nfl);
    if (!buf) return -1;
    float *h = buf, *o = h + D, *q = o + D, *att = q + mq, *k = att + mq, *v = k + mkv, *g = v + mkv, *u = g + mf;
    float *scratch = u + mf, *parts = scratch + nscr * nt;
    int rc = 0;
    for (int32_t li = 0; li < n_layers && rc == 0; li++) {
        const ml_layer *ly = &L[li];
        const int64_t H = ly->H, Hkv = ly->Hkv, hd = ly->hd, rep = H / Hkv;
        const int f16 = ly->kv_f16 != 0;
        const size_t esz = f16 ? sizeof(uint16_t) : sizeof(float);
        ml_rmsnorm(x, ly->attn_norm, ly->eps, h, D);
        {
            const ml_lin *ls[3] = {&ly->q, &ly->k, &ly->v};
            const float *xs[3] = {h, h, h};
            float *ys[3] = {q, k, v};
            if ((rc = ml_lins_apply(ls, xs, ys, 3))) break;
        }
        if (ly->rope) {
            for (int64_t j = 0; j < H; j++) ml_rope(q + j * hd, cos, sin, hd);
            for (int64_t j = 0; j < Hkv; j++) ml_rope(k + j * hd, cos, sin, hd);
        }
        for (int64_t j = 0; j < Hkv; j++) {
            char *kd = (char *)ly->kc + esz * (size_t)((j * ly->cap + pos) * hd);
            char *vd = (char *)ly->vc + esz * (size_t)((j * ly->cap + pos) * hd);
            if (f16) {
                ml_to_f16(k + j * hd, hd, (uint16_t *)kd);
                ml_to_f16(v + j * hd, hd, (uint16_t *)vd);
            } else {
                memcpy(kd, k + j * hd, sizeof(float) * (size_t)hd);
                memcpy(vd, v + j * hd, sizeof(float) * (size_t)hd);
            }
        }
        const float scale = 1.0f / sqrtf((float)hd);
        /* part (g, p) stores, per query head r of kv head g: mx, l, o[hd] */
        const int64_t pstride = rep * (hd + 2);
        #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t unit = 0; unit < Hkv * P; unit++) {
            const int tid = nt > 1 ? omp_get_thread_num() : 0;
            const int64_t gi = unit / P, pi = unit % P;
            const int64_t t0 = T * pi / P, t1 = T * (pi + 1) / P;
            float *pp = parts + unit * pstride;
            const char *kb = (const char *)ly->kc + esz * (size_t)(gi * ly->cap * hd);
            const char *vb = (const char *)ly->vc + esz * (size_t)(gi * ly->cap * hd);
            ml_attend_part(q + gi * rep * hd, rep, kb, vb, f16, t0, t1, hd, scale, pp, pp + rep, pp + 2 * rep,
                           scratch + tid * nscr);
        }
        for (int64_t gi = 0; gi < Hkv; gi++) {
            for (int64_t r = 0; r < rep; r++) {
                float M = -INFINITY, Lsum = 0.0f;
                for (int64_t pi = 0; pi < P; pi++) {
                    const float *pp = parts + (gi * P + pi) * pstride;
                    if (pp[r] > M) M = pp[r];
                }
                float *out = att + (gi * rep + r) * hd;
                memset(out, 0, sizeof(float) * (size_t)hd);
                for (int64_t pi = 0; pi < P; pi++) {
                    const float *pp = parts + (gi * P + pi) * pstride;
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
        if ((rc = ml_lin_forward(&ly->o, att, o))) break;
        for (int64_t i = 0; i < D; i++) x[i] += o[i];
        ml_rmsnorm(x, ly->ffn_norm, ly->eps, h, D);
        {
            const ml_lin *ls[2] = {&ly->gate, &ly->up};
            const float *xs[2] = {h, h};
            float *ys[2] = {g, u};
            if ((rc = ml_lins_apply(ls, xs, ys, 2))) break;
        }
        const int64_t F = ly->gate.N;
        int64_t i = 0;
        for (; i + 8 <= F; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 sg = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), ml_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
            _mm256_storeu_ps(g + i, _mm256_mul_ps(sg, _mm256_loadu_ps(u + i)));
        }
        for (; i < F; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        if ((rc = ml_lin_forward(&ly->down, g, o))) break;
        for (int64_t i2 = 0; i2 < D; i2++) x[i2] += o[i2];
    }
    free(buf);
    return rc;
}
