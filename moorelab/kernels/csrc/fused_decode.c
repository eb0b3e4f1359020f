/* Fused decode (LLaMA family), AVX2 + FMA.

   One call runs every decoder layer for ONE token of ONE sequence (batch 1, decode), the same
   math as moorelab.model.transformer's Python path, on the same KV cache buffers:
       h = RMSNorm(x); q,k,v = Wq h, Wk h, Wv h; RoPE(q, k) (half-split); cache[pos] = k, v
       a = softmax(q·Kᵀ/√d)·V per head (query head j uses kv head j / (H/Hkv)); x += Wo a
       h = RMSNorm(x); x += Wdown (silu(Wgate h) ⊙ Wup h)
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

/* one linear layer through the fused-decode dispatcher (tests check each kind against the
   module's own kernel call): y[N] = layer(x[K]); returns ml_lin_apply's code */
int ml_lin_forward(const ml_lin *l, const float *x, float *y) { return ml_lin_apply(l, x, y); }

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

/* one query head against positions 0..T-1 of one kv head: out[hd] = softmax(q·Kᵀ·scale)·V.
   Scores take 4 keys at a time (4 independent FMA chains); the weighted sum of V keeps up to 64
   output floats in 8 registers per pass over the keys. */
static void ml_attend(const float *q, const float *kc, const float *vc, int64_t T, int64_t hd, float scale,
                      float *sc, float *out) {
    float mx = -INFINITY;
    const int64_t hd8 = hd & ~(int64_t)7;
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *k0 = kc + t * hd, *k1 = k0 + hd, *k2 = k1 + hd, *k3 = k2 + hd;
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
    for (; t < T; t++) sc[t] = ml_dot(q, kc + t * hd, hd) * scale;
    for (t = 0; t < T; t++) if (sc[t] > mx) mx = sc[t];
    __m256 mxv = _mm256_set1_ps(mx), sumv = _mm256_setzero_ps();
    t = 0;
    for (; t + 8 <= T; t += 8) {
        __m256 e = ml_exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + t), mxv));
        _mm256_storeu_ps(sc + t, e);
        sumv = _mm256_add_ps(sumv, e);
    }
    float sum = hsum256(sumv);
    for (; t < T; t++) { sc[t] = expf(sc[t] - mx); sum += sc[t]; }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    int64_t c0 = 0;
    for (; c0 + 64 <= hd8; c0 += 64) {
        __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps(), o2 = _mm256_setzero_ps(), o3 = _mm256_setzero_ps();
        __m256 o4 = _mm256_setzero_ps(), o5 = _mm256_setzero_ps(), o6 = _mm256_setzero_ps(), o7 = _mm256_setzero_ps();
        for (t = 0; t < T; t++) {
            const float *vr = vc + t * hd + c0;
            __m256 p = _mm256_broadcast_ss(sc + t);
            o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr), o0);
            o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8), o1);
            o2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 16), o2);
            o3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 24), o3);
            o4 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 32), o4);
            o5 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 40), o5);
            o6 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 48), o6);
            o7 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 56), o7);
        }
        _mm256_storeu_ps(out + c0, _mm256_mul_ps(o0, inv));
        _mm256_storeu_ps(out + c0 + 8, _mm256_mul_ps(o1, inv));
        _mm256_storeu_ps(out + c0 + 16, _mm256_mul_ps(o2, inv));
        _mm256_storeu_ps(out + c0 + 24, _mm256_mul_ps(o3, inv));
        _mm256_storeu_ps(out + c0 + 32, _mm256_mul_ps(o4, inv));
        _mm256_storeu_ps(out + c0 + 40, _mm256_mul_ps(o5, inv));
        _mm256_storeu_ps(out + c0 + 48, _mm256_mul_ps(o6, inv));
        _mm256_storeu_ps(out + c0 + 56, _mm256_mul_ps(o7, inv));
    }
    for (; c0 < hd8; c0 += 8) {
        __m256 o0 = _mm256_setzero_ps();
        for (t = 0; t < T; t++) o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + t), _mm256_loadu_ps(vc + t * hd + c0), o0);
        _mm256_storeu_ps(out + c0, _mm256_mul_ps(o0, inv));
    }
    float invs = 1.0f / sum;
    for (int64_t i = hd8; i < hd; i++) {
        float o = 0.0f;
        for (t = 0; t < T; t++) o += sc[t] * vc[t * hd + i];
        out[i] = o * invs;
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
    int64_t nsc = (T + 7) & ~(int64_t)7;
    size_t nfl = (size_t)(2 * D + 2 * mq + 2 * mkv + 2 * mf + nsc * (attn_threads > 1 ? attn_threads : 1) + 64);
    float *buf = (float *)malloc(sizeof(float) * nfl);
    if (!buf) return -1;
    float *h = buf, *o = h + D, *q = o + D, *att = q + mq, *k = att + mq, *v = k + mkv, *g = v + mkv, *u = g + mf;
    float *scores = u + mf;
    int rc = 0;
    for (int32_t li = 0; li < n_layers && rc == 0; li++) {
        const ml_layer *ly = &L[li];
        const int64_t H = ly->H, Hkv = ly->Hkv, hd = ly->hd, rep = H / Hkv;
        ml_rmsnorm(x, ly->attn_norm, ly->eps, h, D);
        if ((rc = ml_lin_apply(&ly->q, h, q)) || (rc = ml_lin_apply(&ly->k, h, k)) || (rc = ml_lin_apply(&ly->v, h, v)))
            break;
        if (ly->rope) {
            for (int64_t j = 0; j < H; j++) ml_rope(q + j * hd, cos, sin, hd);
            for (int64_t j = 0; j < Hkv; j++) ml_rope(k + j * hd, cos, sin, hd);
        }
        for (int64_t j = 0; j < Hkv; j++) {
            memcpy(ly->kc + (j * ly->cap + pos) * hd, k + j * hd, sizeof(float) * (size_t)hd);
            memcpy(ly->vc + (j * ly->cap + pos) * hd, v + j * hd, sizeof(float) * (size_t)hd);
        }
        const float scale = 1.0f / sqrtf((float)hd);
        int nt = (attn_threads > 1 && T * H >= 2048) ? attn_threads : 1;
        #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t j = 0; j < H; j++) {
            int tid = nt > 1 ? omp_get_thread_num() : 0;
            const int64_t kvh = j / rep;
            ml_attend(q + j * hd, ly->kc + kvh * ly->cap * hd, ly->vc + kvh * ly->cap * hd, T, hd, scale,
                      scores + tid * nsc, att + j * hd);
        }
        if ((rc = ml_lin_apply(&ly->o, att, o))) break;
        for (int64_t i = 0; i < D; i++) x[i] += o[i];
        ml_rmsnorm(x, ly->ffn_norm, ly->eps, h, D);
        if ((rc = ml_lin_apply(&ly->gate, h, g)) || (rc = ml_lin_apply(&ly->up, h, u))) break;
        const int64_t F = ly->gate.N;
        int64_t i = 0;
        for (; i + 8 <= F; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 sg = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), ml_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
            _mm256_storeu_ps(g + i, _mm256_mul_ps(sg, _mm256_loadu_ps(u + i)));
        }
        for (; i < F; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        if ((rc = ml_lin_apply(&ly->down, g, o))) break;
        for (int64_t i2 = 0; i2 < D; i2++) x[i2] += o[i2];
    }
    free(buf);
    return rc;
}
