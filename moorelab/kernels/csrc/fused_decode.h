/* Structures of the fused decode (fused_decode.c), mirrored field for field by ctypes in
   moorelab/kernels/binding.py (MlLin, MlLayer); ml_fused_abi (abi.c) returns their sizes so the
   binding can check that both sides agree. */

#ifndef ML_FUSED_DECODE_H
#define ML_FUSED_DECODE_H

#include <stdint.h>

typedef struct {
    int32_t kind;      /* 1 f32, 2 int8 weight-only, 3 int4, 4 int4 x int16-act, 5 int4 x int8-act, 6 dynamic int8,
                          7 dynamic int8 with activations rounded per 32-block */
    int32_t nthreads;
    int64_t N, K, G;
    const void *w, *s, *mn;
    const float *bias;
} ml_lin;

typedef struct {
    ml_lin q, k, v, o, gate, up, down;
    const float *attn_norm, *ffn_norm;
    void *kc, *vc;     /* [B, Hkv, cap, hd] each (B = 1: [Hkv, cap, hd]), float32, or float16 (uint16 bits) if kv_f16 */
    int64_t cap;
    int32_t H, Hkv, hd, rope;
    float eps;
    int32_t kv_f16;    /* 0: float32 cache, 1: float16 cache */
} ml_layer;

int ml_fused_abi(void);
int ml_lin_forward(const ml_lin *l, const float *x, float *y);
int ml_decode_layers(const ml_layer *L, int32_t n_layers, int64_t D, float *x, int64_t pos,
                     const float *cos, const float *sin, int32_t nthreads,
                     const float *final_norm, float final_eps, const ml_lin *head, float *logits,
                     int64_t *next_ids);

void ml_prefetch_lines(const uintptr_t *addrs, int64_t n);
void ml_argmax_rows(const float *v, int64_t B, int64_t n, int64_t ldv, int64_t *out);

int ml_decode_batch(const ml_layer *L, int32_t n_layers, int64_t D, int32_t B, float *x, int64_t cpos,
                    const int64_t *start, const float *const *cos, const float *const *sin, int32_t nthreads,
                    const float *final_norm, float final_eps, const ml_lin *head, float *logits,
                    int64_t *next_ids);

#endif /* ML_FUSED_DECODE_H */
