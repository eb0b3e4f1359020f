"""The Transformer, written from its formulas and readable in one file.

    x      = Embed(tokens) (·√d_model, 2017) (+ PosEmbed(positions))     token + position
             PosEmbed: learned table, or fixed sinusoids (Vaswani et al. 2017, §3.5):
             PE[p, 2i] = sin(p / 10000^(2i/d)),  PE[p, 2i+1] = cos(p / 10000^(2i/d))
    for each block (pre-norm, GPT-2 / LLaMA):
        x  = x + Attention(Norm(x))                                      Vaswani et al. 2017
        x  = x + FFN(Norm(x))
    (post-norm, BERT:  x = Norm(x + Attention(x));  x = Norm(x + FFN(x)))
    logits = Norm(x) · Wᵀ_out                                            tied: W_out = W_embed

    Attention(Q, K, V) = softmax(Q·Kᵀ / √d_k + mask) · V                 per head, heads concatenated
    QK-norm (optional): Q, K ← RMSNorm_q(Q), RMSNorm_k(K) per head, before RoPE   Dehghani et al. 2023
    FFN(x) = W_down · act(W_up · x + b_up) + b_down                      ReLU / GELU / tanh-GELU
    FFN(x) = W_down · (SiLU(W_gate · x) ⊙ W_up · x)                      SwiGLU (Shazeer 2020)
    RoPE (Su et al. 2021), half-split layout as in Hugging Face llama:
        rope(x) = x · cos(θ·p) + rotate_half(x) · sin(θ·p),  rotate_half([a, b]) = [-b, a]

Every matmul is an ``nn.Linear`` (:class:`FastLinear`, a subclass whose decode-sized calls run a
compiled float32 GEMV kernel) so quantization can replace modules in place. Per-layer
sizes (heads, FFN width) are read from each module, so pruned layers may differ.

This file is the reference and knows nothing of its fast path: a one-token, one-sequence decode
step of a LLaMA-family model can run the same math in one compiled call
(:mod:`moorelab.model.fused_decode`), which decoding loops reach through
:func:`moorelab.model.decode.forward`; it falls back to this model's forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moorelab.kernels import get_library
from moorelab.model.config import TransformerConfig

ATTENTION_IMPLS = ("sdpa", "eager")


class FastLinear(nn.Linear):
    """``nn.Linear`` whose decode-sized calls use a compiled GEMV kernel.

    ``y [..., out_features] = x [..., in_features] · Wᵀ + b``, exactly ``F.linear``. The kernel
    (AVX2+FMA float32 dot products over the row-major ``[out, in]`` weight: one row: the weight
    rows one after another, one stream per thread; 2-32 rows: 4-row tiles, software prefetch;
    OpenMP over output rows with ``torch.get_num_threads()`` threads, one thread for layers under
    ``SMALL`` weights) runs when: x and the weight are float32 CPU tensors, the weight (and bias)
    are contiguous, no gradient is needed, and x is decode-sized: 1..``M_MAX`` rows in all, or one
    token each of 1..``M_BATCH`` sequences (``x: [B, 1, in]``, batched decode). Anything else
    (training, prefill, other dtypes or devices, column-major weights, no gcc) goes to ``F.linear``.
    The kernel runs three rows at a time against each 4-row weight tile, so a batch reads the
    weights once: 1.0-5.0x ``F.linear`` (MKL) per call from 2 to 32 rows on SmolLM2-135M's layer
    shapes, level at 64, slower from 128 (weights in cache, 2 threads; a script outside the
    repository). Prompts of more than ``M_MAX`` tokens keep torch, and its numbers; calls of 3-4
    rows and batched rows differ from one-row decode by float32 rounding (~2e-7 relative: the
    three-row tiles sum in another order).
    Sums are in a different order than torch's, so results differ by float32 rounding (~1e-6
    relative).
    """

    M_MAX = 4
    M_BATCH = 32
    SMALL = 32768  # weights (elements) below which one thread is faster than waking a second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        k = self.in_features
        # cheapest tests first: this runs ~200 times per decoded token
        if (
            x.dtype is torch.float32
            and x.is_cpu
            and k > 0
            and x.shape[-1] == k
            and (x.numel() <= self.M_MAX * k or (x.dim() == 3 and x.shape[1] == 1 and x.shape[0] <= self.M_BATCH))
            and w.dtype is torch.float32
            and w.is_cpu
            and w.is_contiguous()
            and (b is None or (b.dtype is torch.float32 and b.is_contiguous()))
            and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad or (b is not None and b.requires_grad)))
        ):
            m = x.numel() // k
            lib = get_library() if m > 0 else None
            if lib is not None:
                n = self.out_features
                if not x.is_contiguous():
                    x = x.contiguous()
                y = x.new_empty((*x.shape[:-1], n))
                lib.f32_linear(x.data_ptr(), m, k, w.data_ptr(), None if b is None else b.data_ptr(),
                               y.data_ptr(), n, self._gemv_threads())
                return y
        return F.linear(x, w, b)

    def _gemv_threads(self) -> int:
        return 1 if self.out_features * self.in_features < self.SMALL else torch.get_num_threads()

    def decode_descriptor(self) -> tuple | str:
        """This layer as a C ``ml_lin`` for :mod:`moorelab.model.fused_decode`:
        ``("f32", threads, N, K, 0, w, None, None, bias, tensors to keep alive)``, or the reason
        (a string) when its weight is not the contiguous float32 CPU tensor the kernel reads.
        Also serves plain ``nn.Linear`` modules (``FastLinear.decode_descriptor(linear)``)."""
        w, b = self.weight, self.bias
        if not (w.dtype is torch.float32 and w.is_cpu and w.is_contiguous()):
            return f"{type(self).__name__} weight is not a contiguous float32 CPU tensor"
        if b is not None and not (b.dtype is torch.float32 and b.is_contiguous()):
            return f"{type(self).__name__} bias is not a contiguous float32 tensor"
        threads = FastLinear._gemv_threads(self)
        keep = [w] + ([b] if b is not None else [])
        return ("f32", threads, self.out_features, self.in_features, 0, w.data_ptr(), None, None,
                None if b is None else b.data_ptr(), keep)


# ----------------------------------------------------------------------------- normalisation
class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``x / sqrt(mean(x²) + eps) · weight``.

    Shapes: ``[..., d] -> [..., d]``.
    """

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same formula as x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight, fused.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(config: TransformerConfig, d: int | None = None) -> nn.Module:
    """LayerNorm (Ba et al. 2016) or RMSNorm with ``eps`` taken from the config."""
    d = d or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(d, config.norm_eps)
    return nn.LayerNorm(d, eps=config.norm_eps)


# ----------------------------------------------------------------------------- RoPE
def rope_tables(
    head_dim: int, theta: float, n_positions: int, device=None, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary position embedding, half-split layout.

    ``scaling`` (a config's ``rope_scaling``) rescales the frequencies, see :func:`scale_rope_freqs`.

    Returns:
        ``(cos, sin)``, each ``[n_positions, head_dim]`` float32; angle of pair ``i`` at position
        ``p`` is ``p · theta^(-2i/head_dim)`` (scaled), repeated for both halves.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    if scaling is not None:
        inv_freq = scale_rope_freqs(inv_freq, scaling)
    positions = torch.arange(n_positions, device=device).float()
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def scale_rope_freqs(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """RoPE frequencies ``[head_dim / 2]`` (float32) under a context-extension scaling.

    * ``linear`` (Chen et al. 2023, position interpolation): every frequency divided by ``factor``
      (positions ``p`` become ``p / factor``); llama.cpp's ``rope.scaling.type = linear``.
    * ``llama3`` (Meta's Llama 3.1): wavelengths ``2π/f`` longer than
      ``original_max_position_embeddings / low_freq_factor`` are divided by ``factor``, those
      shorter than ``... / high_freq_factor`` kept, and the band between interpolated smoothly.

    Same operations, in the same float32 order, as transformers' ``modeling_rope_utils``
    (``_compute_linear_scaling_rope_parameters``, ``_compute_llama3_parameters``).

    Raises:
        ValueError: an unknown ``rope_type`` (configs are checked on load, so this is a bug).
    """
    kind = scaling["rope_type"]
    factor = scaling["factor"]
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        old = scaling["original_max_position_embeddings"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv_freq
        out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, out)
    raise ValueError(f"rope_scaling type {kind!r} is not implemented")


def sinusoidal_positions(position_ids: torch.Tensor, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal position embeddings (Vaswani et al. 2017, "Attention Is All You Need", §3.5).

    ``PE[p, 2i] = sin(p / base^(2i/d_model))`` and ``PE[p, 2i+1] = cos(p / base^(2i/d_model))``
    (interleaved, as in the paper; an odd ``d_model`` drops the last cosine).

    Args:
        position_ids: integer positions, any shape ``[...]``.
        d_model: embedding width.

    Returns:
        float32 ``[..., d_model]``.
    """
    i2 = torch.arange(0, d_model, 2, dtype=torch.float32, device=position_ids.device)
    angles = position_ids.to(torch.float32).unsqueeze(-1) / base ** (i2 / d_model)
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return pe[..., :d_model]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[a, b] -> [-b, a]`` on the last dimension (halves, not interleaved pairs)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, head_dim]`` by ``cos, sin [B, 1, T, head_dim]``."""
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------- attention
def attention_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    record: dict | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention spelled out: ``softmax(Q·Kᵀ/√d_k + mask)·V``.

    Args:
        q: ``[B, H, T, d_k]``; k, v: ``[B, H_kv, S, d_k]`` (``H_kv`` divides ``H``: grouped-query
            attention shares each key/value head among ``H / H_kv`` query heads).
        mask: bool ``[B or 1, 1, T, S]``, True where query t may attend to key s.
        is_causal: add the causal mask (query t sees keys ``s <= t + S - T``).
        record: if a dict, receives ``qk`` (Q·Kᵀ), ``scores`` (scaled and masked) and
            ``weights`` (softmax), each ``[B, H, T, S]``.

    Returns:
        ``[B, H, T, d_k]``. Rows with every key masked give zeros, never NaN; the softmax runs in
        float32 for every dtype.
    """
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    d_k = q.shape[-1]
    qk = q @ k.transpose(-2, -1)
    scores = qk / math.sqrt(d_k)
    T, S = q.shape[-2], k.shape[-2]
    if is_causal:
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # softmax in float32 (half-precision models too), a fully masked row: 0, not NaN
    weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(v.dtype)
    if record is not None:
        record.update(qk=qk.detach(), scores=scores.detach(), weights=weights.detach())
    return weights @ v


def causal_attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """Causal scaled dot-product attention of a whole prompt through the compiled kernel.

    ``softmax(Q·Kᵀ/√d_k + causal mask)·V`` with query position ``t`` seeing keys ``0..t + S - T``
    (the ``S - T`` positions before it in a KV cache, then the causal mask), query head ``h`` using
    key/value head ``h // (H / H_kv)`` (grouped-query attention). The C kernel
    (``moorelab/kernels/csrc/attn_prefill.c``, ``ml_attn_causal``) computes only the blocks on and
    below the diagonal, reads each key/value head once for all the query heads that share it, and
    takes the exact softmax of each row (FlashAttention's tiling, Dao et al. 2022, without its
    online rescaling: a row of scores fits in scratch).

    Args:
        q: ``[B, H, T, d_k]``; k, v: ``[B, H_kv, S, d_k]``, ``S >= T``; any strides with ``d_k``
            contiguous (the projections' ``[B, T, H, d_k]`` layout transposed is read as it is).

    Returns:
        ``[B, T, H, d_k]`` contiguous (``.view(B, T, H * d_k)`` is o_proj's input), equal to
        ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)`` (``S == T``)
        within float32 rounding; or ``None`` when the kernel does not apply: not float32 CPU
        tensors, a gradient wanted, ``d_k`` not a multiple of 8, ``S < T``, ``H`` not a multiple
        of ``H_kv``, ``d_k`` not contiguous, or no kernel library (:func:`moorelab.kernels.get_library`).
    """
    B, H, T, d = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    if not (
        q.dtype is torch.float32 and k.dtype is torch.float32 and v.dtype is torch.float32
        and q.is_cpu and k.is_cpu and v.is_cpu
        and d >= 8 and d % 8 == 0 and S >= T and H % H_kv == 0
        and k.shape == v.shape == (B, H_kv, S, d)
        and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    ):
        return None
    lib = get_library()
    if lib is None:
        return None
    out = q.new_empty((B, T, H, d))
    st = torch.tensor([*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], out.stride(0), out.stride(2),
                       out.stride(1)], dtype=torch.int64)
    rc = lib.attn_causal(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, T, S, H, H_kv, d,
                         st.data_ptr(), 1.0 / math.sqrt(d), torch.get_num_threads())
    if rc == -1:
        raise MemoryError(f"ml_attn_causal: scratch for B={B}, H={H}, S={S}, d_k={d} could not be allocated")
    if rc != 0:
        raise ValueError(f"ml_attn_causal refused q {tuple(q.shape)}, k {tuple(k.shape)} (code {rc})")
    return out


class Attention(nn.Module):
    """Multi-head (grouped-query) self-attention with its own ``n_heads``, ``n_kv_heads``, ``head_dim``.

    Head ``h`` of ``q_proj`` is output rows ``[h·head_dim, (h+1)·head_dim)``.
    Set ``record`` to a dict to capture the attention weights of the next forward (eager path).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, bias: bool, rope: bool,
                 qk_norm_eps: float | None = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.rope = rope
        # QK-norm: one RMSNorm over head_dim shared by all query heads, one by all key heads
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.q_proj = FastLinear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = FastLinear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = FastLinear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = FastLinear(n_heads * head_dim, d_model, bias=bias)
        self.record: dict | None = None

    #: causal prompts (no padding, no cache before them) through :func:`causal_attention_kernel`
    #: where it applies; False keeps torch's fused attention (A/B measurements, tests)
    causal_kernel = True

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: "KVCache | None" = None,
        layer_idx: int = 0,
        impl: str = "sdpa",
    ) -> torch.Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``; see :func:`attention_eager` for ``mask``."""
        B, T, _ = x.shape
        H, H_kv, d_k = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, d_k).transpose(1, 2)
        k = self.k_proj(x).view(B, T, H_kv, d_k).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H_kv, d_k).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope and rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        if impl == "eager" or self.record is not None:
            out = attention_eager(q, k, v, mask, is_causal, record=self.record)
        elif T == 1:
            # Decoding, one query per row: the formula itself, with the query heads that share a
            # key/value head folded into the "time" axis (grouped-query attention without copies
            # of K and V). Here the fused kernel's thread start-up cost more than the math
            # (measured 817 us vs 42 us per call after a matmul, 2 threads).
            q = q.view(B, H_kv, H // H_kv, d_k)
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d_k))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = (torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v).view(B, H, 1, d_k)
        else:
            if is_causal and mask is None and self.causal_kernel:
                o = causal_attention_kernel(q, k, v)
                if o is not None:
                    return self.o_proj(o.view(B, T, H * d_k))
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal and mask is None, enable_gqa=H != H_kv
            )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * d_k))


# ----------------------------------------------------------------------------- feed-forward
class FeedForward(nn.Module):
    """Position-wise feed-forward network; hidden width is read from ``up_proj``.

    ``relu``/``gelu``/``gelu_tanh``: ``down(act(up(x)))``; ``swiglu``: ``down(silu(gate(x)) * up(x))``.
    Shapes ``[..., d_model] -> [..., d_model]``.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool) -> None:
        super().__init__()
        self.activation = activation
        self.gate_proj = FastLinear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.up_proj = FastLinear(d_model, d_ff, bias=bias)
        self.down_proj = FastLinear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.activation == "relu":
            h = F.relu(self.up_proj(x))
        elif self.activation == "gelu":
            h = F.gelu(self.up_proj(x))  # exact: x·Φ(x)
        else:
            h = F.gelu(self.up_proj(x), approximate="tanh")  # GPT-2's "gelu_new"
        return self.down_proj(h)


class Block(nn.Module):
    """One Transformer layer: attention and FFN sub-layers with residuals, pre- or post-norm."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.norm_position = c.norm_position
        self.attn_norm = make_norm(c)
        self.attn = Attention(c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.attn_bias, c.position == "rope",
                              qk_norm_eps=c.norm_eps if c.qk_norm else None)
        self.ffn_norm = make_norm(c)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.activation, c.mlp_bias)

    def forward(self, x, rope=None, mask=None, is_causal=False, cache=None, layer_idx=0, impl="sdpa"):
        """``x [B, T, d_model] -> [B, T, d_model]``."""
        if self.norm_position == "pre":
            x = x + self.attn(self.attn_norm(x), rope, mask, is_causal, cache, layer_idx, impl)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, rope, mask, is_causal, cache, layer_idx, impl))
        return self.ffn_norm(x + self.ffn(x))


# ----------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys and values of past positions, preallocated and written in place.

    Layer ``i`` holds ``k, v [B, n_kv_heads_i, capacity, head_dim]``; ``length`` positions are
    filled. ``mask [B, length]`` (1 = real token) is kept once a padded batch has been seen.
    Capacity doubles if exceeded (``max_len`` avoids that).

    ``dtype`` is the storage type of keys and values: ``None`` keeps the type they arrive in
    (float32 for a float32 model); ``torch.float16`` rounds them to nearest-even float16 as they
    are written (half the memory, and half the bytes a decode step at depth reads: llama.cpp's
    default cache type) and :meth:`update` hands attention float copies in the type of the
    incoming keys, so the Python path and the fused decode (which reads float16 directly) see
    the same rounded values. Its quality cost is measured by scoring through such a cache
    (``benchmarks/bench_decode_depth.py``).
    """

    def __init__(self, max_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        if dtype not in (None, torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ValueError(f"KVCache: dtype {dtype} is not a float type")
        self.max_len = max_len
        self.dtype = dtype
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.length = 0
        self.mask: torch.Tensor | None = None

    def reserve(self, layer_idx: int, batch: int, n_kv_heads: int, head_dim: int, end: int,
                dtype: torch.dtype, device) -> None:
        """Make layer ``layer_idx``'s buffers exist and hold at least ``end`` positions.

        Layers are created in order (``layer_idx == len(self.k)``); growing keeps the filled
        positions and at least doubles the capacity.

        Raises:
            ValueError: ``layer_idx`` skips a layer (greater than the number of layers held).
        """
        if layer_idx > len(self.k):
            raise ValueError(f"KVCache.reserve: layer {layer_idx} requested but only {len(self.k)} layers exist")
        dtype = self.__dict__.get("dtype") or dtype
        if layer_idx == len(self.k):
            cap = max(self.max_len or 0, end, 64)
            self.k.append(torch.empty(batch, n_kv_heads, cap, head_dim, dtype=dtype, device=device))
            self.v.append(torch.empty(batch, n_kv_heads, cap, head_dim, dtype=dtype, device=device))
        if end > self.k[layer_idx].shape[2]:
            for buf in (self.k, self.v):
                old = buf[layer_idx]
                new = old.new_empty(old.shape[0], old.shape[1], max(2 * old.shape[2], end), old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                buf[layer_idx] = new

    def __getstate__(self) -> dict:
        # the fused-decode plan (ctypes pointers into this cache and the model) is not copied:
        # a copy builds its own on first use
        state = dict(self.__dict__)
        state.pop("_fused_plan", None)
        return state

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new ``k, v [B, H_kv, T, d]`` after the cached positions; return all ``[B, H_kv, length+T, d]``."""
        start, end = self.length, self.length + k.shape[2]
        B, H, _, d = k.shape
        self.reserve(layer_idx, B, H, d, end, k.dtype, k.device)
        self.k[layer_idx][:, :, start:end] = k
        self.v[layer_idx][:, :, start:end] = v
        kc, vc = self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]
        if kc.dtype != k.dtype:  # a float16 cache: attention computes in the model's type
            return kc.to(k.dtype), vc.to(v.dtype)
        return kc, vc


# ----------------------------------------------------------------------------- the model
class Transformer(nn.Module):
    """Decoder (gpt2, llama) or encoder (bert) Transformer built from a :class:`TransformerConfig`.

    ``attention_impl`` is ``"sdpa"`` (fused ``torch.nn.functional.scaled_dot_product_attention``)
    or ``"eager"`` (:func:`attention_eager`); both give the same numbers to float rounding.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.attention_impl = "sdpa"
        # read and written by moorelab.model.decode.forward, not here: False forces the per-op
        # Python path there; which path its last call took ("fused" or "python")
        self.fused_decode = True
        self.last_decode_path: str | None = None
        # read by moorelab.model.fused_decode: True (set by its prepare_decode) packs the weights a
        # fused step reads into one block in reading order (moorelab.model.weight_arena)
        self.decode_weight_arena = False
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_embed = nn.Embedding(c.max_position_embeddings, c.d_model) if c.position == "learned" else None
        self.type_embed = nn.Embedding(c.type_vocab_size, c.d_model) if c.type_vocab_size else None
        self.embed_norm = make_norm(c) if c.family == "bert" else None
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.final_norm = make_norm(c) if c.norm_position == "pre" else None
        self.lm_head = FastLinear(c.d_model, c.vocab_size, bias=False) if c.is_decoder else None
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.embed.weight.device.type != "meta":
            self.apply(self._init_weights)
        self.tie_weights()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # GPT-2 style initialisation: N(0, 0.02) weights, zero biases, unit norms.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def tie_weights(self) -> None:
        """Share the output layer's weight with the token embedding when the config says so."""
        if self.lm_head is not None and self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def num_parameters(self) -> int:
        """Count of distinct parameters (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())

    def rope_tables(self, n_positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables ``[N, head_dim]`` computed once and grown on demand (``device`` a
        ``torch.device`` or a string such as ``"cpu"``; both reuse the same tables)."""
        if not isinstance(device, torch.device):
            device = torch.device(device)
        if self._rope is None or self._rope[0].shape[0] < n_positions or self._rope[0].device != device:
            n = max(n_positions, self.config.max_position_embeddings)
            self._rope = rope_tables(self.config.head_dim, self.config.rope_theta, n, device,
                                     scaling=self.config.rope_scaling)
        return self._rope

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Run the model.

        Args:
            input_ids: ``LongTensor[B, T]``.
            attention_mask: ``[B, T]`` or, with a cache, ``[B, past + T]``; 1 = real token,
                0 = padding (left padding for batched generation).
            position_ids: ``[B, T]``; default for decoders is per-row ``cumsum(mask) - 1`` (so a
                left-padded row starts at position 0), for BERT ``0..T-1``.
            cache: a :class:`KVCache`; new keys/values are appended and attention covers all
                cached positions.
            token_type_ids: BERT segment ids ``[B, T]`` (default zeros).
            return_hidden: return the last hidden states ``[B, T, d_model]`` instead of logits.
            last_only: compute logits for the last position only (``[B, 1, vocab]``).

        Returns:
            logits ``[B, T, vocab_size]`` for decoders, last hidden states for BERT.

        Raises:
            ContextLengthError: learned positions (GPT-2, BERT) past ``max_position_embeddings``.
        """
        c = self.config
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        device = input_ids.device

        # Key mask over all (cached + new) positions, kept in the cache for later steps.
        key_valid = None
        if attention_mask is not None:
            key_valid = attention_mask.to(torch.bool)
            if cache is not None and key_valid.shape[1] == T and past:
                prev = cache.mask if cache.mask is not None else key_valid.new_ones(B, past)
                key_valid = torch.cat((prev, key_valid), dim=1)
        elif cache is not None and cache.mask is not None:
            key_valid = torch.cat((cache.mask, cache.mask.new_ones(B, T)), dim=1)
        if cache is not None and key_valid is not None:
            cache.mask = key_valid
        if key_valid is not None and key_valid.shape[1] != past + T:
            raise ValueError(f"attention_mask has {key_valid.shape[1]} columns, expected {past + T}")

        if position_ids is None:
            if c.is_decoder and key_valid is not None:
                position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=device).expand(B, T)

        x = self.embed(input_ids)
        if c.scale_embeddings:
            x = x * math.sqrt(c.d_model)
        if self.pos_embed is not None:
            check_positions(position_ids, self.pos_embed.num_embeddings)
            x = x + self.pos_embed(position_ids)
        elif c.position == "sinusoidal":
            x = x + sinusoidal_positions(position_ids, c.d_model).to(x.dtype)
        if self.type_embed is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.type_embed(token_type_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)

        rope = None
        if c.position == "rope":
            cos, sin = self.rope_tables(int(position_ids.max()) + 1, device)
            # tables are float32; rotate in the activations' dtype (as transformers does), so a
            # float16/bfloat16 model keeps q and k in its dtype
            rope = (cos[position_ids].unsqueeze(1).to(x.dtype), sin[position_ids].unsqueeze(1).to(x.dtype))

        mask, is_causal = build_mask(key_valid, T, past + T, causal=c.is_decoder, device=device)
        impl = self.attention_impl
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={impl!r}; choose from {ATTENTION_IMPLS}")
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, is_causal, cache, i, impl)
        if cache is not None:
            cache.length += T

        if self.final_norm is not None:
            x = self.final_norm(x)
        if return_hidden or self.lm_head is None:
            return x
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)


def check_positions(position_ids: torch.Tensor, n_positions: int) -> None:
    """Refuse positions beyond a learned position table of ``n_positions`` rows.

    Raises:
        ContextLengthError: the largest of ``position_ids [B, T]`` is ``>= n_positions``, naming
            the input length and the model's context (instead of an ``IndexError`` deep inside
            ``nn.Embedding``).
    """
    top = int(position_ids.max()) if position_ids.numel() else -1
    if top >= n_positions:
        from moorelab.errors import ContextLengthError

        raise ContextLengthError(
            f"input reaches position {top} (length {top + 1} with any cached tokens) but the model has "
            f"{n_positions} learned positions (config max_position_embeddings={n_positions}); "
            f"use at most {n_positions} tokens (prompt + new tokens, or scoring window)"
        )


def build_mask(
    key_valid: torch.Tensor | None, T: int, S: int, causal: bool, device=None
) -> tuple[torch.Tensor | None, bool]:
    """Combine the padding mask ``key_valid [B, S]`` with the causal mask.

    Returns:
        ``(mask, is_causal)``: ``mask`` is None or bool ``[B or 1, 1, T, S]`` (True = may attend);
        ``is_causal`` asks the attention kernel for its own causal mask (no padding, no cache).
        A query row that may attend to nothing (a padding token at the start of a left-padded
        row) is allowed to attend everywhere, so it stays finite; its output is never used.
    """
    if key_valid is not None and bool(key_valid.all()):
        key_valid = None
    if key_valid is None:
        if not causal or T == 1:
            return None, False
        if T == S:
            return None, True
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)[None, None], False
    mask = key_valid[:, None, None, :]
    if causal:
        mask = mask & torch.ones(T, S, dtype=torch.bool, device=key_valid.device).tril(S - T)
    else:
        mask = mask.expand(-1, 1, T, S)
    return mask | ~mask.any(-1, keepdim=True), False
