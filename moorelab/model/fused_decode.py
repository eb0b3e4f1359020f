"""Fused one-token decode for LLaMA-family models: all decoder layers in one compiled call.

At batch 1, a decode step of a small model spends as much time in Python and in the ~50 tiny
torch ops of each layer (norms, RoPE, cache writes, attention, SwiGLU, residual adds; about
4 ms per token for SmolLM2-135M's 30 layers here) as in its matmuls. This module runs the same
math (see the C comment of ``ml_decode_layers`` in :mod:`moorelab.improve.kernels.quant_kernels_c`)
for every layer in one ``ctypes`` call: each linear layer is handed to the C side as a
descriptor of the GEMV kernel that already runs it on the Python path (float32
:class:`~moorelab.model.transformer.FastLinear`, or a quantized module's own kernel), so the
numbers are the Python path's up to float32 rounding (tested), and the speed-up is the same
for every row of a comparison.

It runs only when all of these hold (otherwise :meth:`Transformer.forward` takes the Python
path, and :func:`why_not_fused` says why):

* decoder with RoPE, RMSNorm, SwiGLU, pre-norm, no learned/segment embeddings (LLaMA family);
* one sequence, one new token, a :class:`KVCache` without padding mask, default positions,
  ``attention_impl == "sdpa"``, no attention recording, no forward hooks;
* every linear layer is a plain float32 ``nn.Linear``/``FastLinear`` with contiguous weights or
  a quantized module whose compiled kernel is loaded (``decode_descriptor()`` not None), and
  nothing needs a gradient;
* the compiled kernels are available (gcc, AVX2) and ``model.fused_decode`` is True.

A plan (the ``ml_layer`` array) is built once per :class:`KVCache` and rebuilt when any module,
parameter or buffer is registered anywhere (e.g. ``quantize_`` or pruning swapped a layer); the
plan holds the storages it points to, so a stale plan can never read freed memory.
"""

from __future__ import annotations

import ctypes
import weakref

import torch
from torch import nn
from torch.nn.modules import module as _module

__all__ = ["decode_step", "why_not_fused"]

_generation = [0]


def _bump(*_args):
    _generation[0] += 1


_module.register_module_module_registration_hook(_bump)
_module.register_module_parameter_registration_hook(_bump)
_module.register_module_buffer_registration_hook(_bump)


def _linear_descriptor(mod: nn.Module):
    """``(kind, threads, N, K, G, w, s, mn, bias, keep)`` for the C ``ml_lin``, or a reason string."""
    from moorelab.model.transformer import FastLinear

    if type(mod) in (nn.Linear, FastLinear):
        w, b = mod.weight, mod.bias
        if not (w.dtype is torch.float32 and w.is_cpu and w.is_contiguous()):
            return f"{type(mod).__name__} weight is not a contiguous float32 CPU tensor"
        if b is not None and not (b.dtype is torch.float32 and b.is_contiguous()):
            return f"{type(mod).__name__} bias is not a contiguous float32 tensor"
        n, k = mod.out_features, mod.in_features
        threads = 1 if n * k < FastLinear.SMALL else torch.get_num_threads()
        keep = [w] + ([b] if b is not None else [])
        return ("f32", threads, n, k, 0, w.data_ptr(), None, None, None if b is None else b.data_ptr(), keep)
    desc = getattr(mod, "decode_descriptor", None)
    if desc is None:
        return f"{type(mod).__name__} has no compiled decode kernel (e.g. a pruning parametrization)"
    d = desc()
    if d is None:
        return f"{type(mod).__name__}: its compiled kernel is not loaded"
    return d


def _has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class _Plan:
    """ctypes ``ml_layer`` array for one model and one KV cache."""

    def __init__(self, model, reason: str | None, layers=None, keep=None, needs_grad=False):
        self.model_ref = weakref.ref(model)
        self.generation = _generation[0]
        self.reason = reason
        self.layers = layers
        self.keep = keep or []
        self.needs_grad = needs_grad
        self.kv_ptrs: tuple | None = None


def _lin_struct(kernels, d) -> "ctypes.Structure":
    kind, threads, n, k, g, w, s, mn, b, _keep = d
    return kernels.MlLin(kernels.LIN_KINDS[kind], threads, n, k, g, w, s, mn, b)


def _build(model) -> _Plan:
    from moorelab.improve import kernels
    from moorelab.model.transformer import RMSNorm

    lib = kernels.get_library()
    if lib is None:
        return _Plan(model, f"compiled kernels unavailable: {kernels.status()}")
    c = model.config
    if not (c.is_decoder and c.position == "rope" and c.norm == "rmsnorm" and c.activation == "swiglu"
            and c.norm_position == "pre"):
        return _Plan(model, "not a LLaMA-family decoder (RoPE, RMSNorm, SwiGLU, pre-norm)")
    if model.pos_embed is not None or model.type_embed is not None or model.embed_norm is not None:
        return _Plan(model, "learned position / segment embeddings")
    if model.lm_head is None or type(model.final_norm) is not RMSNorm:
        return _Plan(model, "no output layer or final RMSNorm")
    if _has_hooks(model):
        return _Plan(model, "a module has forward hooks")
    layers = (kernels.MlLayer * len(model.blocks))()
    keep: list = []
    for i, blk in enumerate(model.blocks):
        attn, ffn = blk.attn, blk.ffn
        if attn.record is not None or not attn.rope:
            return _Plan(model, f"block {i}: attention recording or no RoPE")
        for norm in (blk.attn_norm, blk.ffn_norm):
            if type(norm) is not RMSNorm or norm.weight.dtype is not torch.float32 or not norm.weight.is_contiguous():
                return _Plan(model, f"block {i}: norm is not a float32 RMSNorm")
        if blk.attn_norm.eps != blk.ffn_norm.eps:
            return _Plan(model, f"block {i}: the two norms have different eps")
        if ffn.activation != "swiglu" or ffn.gate_proj is None:
            return _Plan(model, f"block {i}: FFN is not SwiGLU")
        descs = {}
        for name, mod in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj), ("o", attn.o_proj),
                          ("gate", ffn.gate_proj), ("up", ffn.up_proj), ("down", ffn.down_proj)):
            d = _linear_descriptor(mod)
            if isinstance(d, str):
                return _Plan(model, f"block {i}.{name}: {d}")
            descs[name] = d
        D, H, Hkv, hd = c.d_model, attn.n_heads, attn.n_kv_heads, attn.head_dim
        shapes_ok = (
            descs["q"][2] == H * hd and descs["k"][2] == Hkv * hd and descs["v"][2] == Hkv * hd
            and descs["o"][3] == H * hd and descs["o"][2] == D
            and all(descs[n][3] == D for n in ("q", "k", "v", "gate", "up"))
            and descs["gate"][2] == descs["up"][2] == descs["down"][3] and descs["down"][2] == D
            and H % Hkv == 0 and hd % 2 == 0
        )
        if not shapes_ok:
            return _Plan(model, f"block {i}: layer shapes do not form a decoder layer")
        ly = layers[i]
        for name, d in descs.items():
            setattr(ly, name, _lin_struct(kernels, d))
            keep.extend(t.untyped_storage() for t in d[-1])
        ly.attn_norm, ly.ffn_norm = blk.attn_norm.weight.data_ptr(), blk.ffn_norm.weight.data_ptr()
        keep += [blk.attn_norm.weight.untyped_storage(), blk.ffn_norm.weight.untyped_storage()]
        ly.H, ly.Hkv, ly.hd, ly.rope, ly.eps = H, Hkv, hd, 1, float(blk.attn_norm.eps)
    needs_grad = any(p.requires_grad for p in model.parameters())
    return _Plan(model, None, layers, keep, needs_grad)


def why_not_fused(model) -> str | None:
    """``None`` if :func:`decode_step` can run ``model``, else the reason (one line)."""
    if not getattr(model, "fused_decode", True):
        return "model.fused_decode is False"
    return _build(model).reason


def decode_step(model, input_ids: torch.Tensor, cache) -> torch.Tensor | None:
    """One fused decode step: logits ``[1, 1, vocab]`` for ``input_ids [1, 1]``, or ``None``.

    Appends the token's keys and values to ``cache`` (a :class:`KVCache`) at position
    ``cache.length`` and advances it, exactly as the Python path does. Returns ``None`` (and
    touches nothing) when the model or the call is not eligible (see the module docstring);
    the caller then runs the Python path.

    Raises:
        MemoryError: the C side could not allocate its work buffer.
        RuntimeError: the C side rejected a layer descriptor (a bug, not bad input).
    """
    plan = cache.__dict__.get("_fused_plan")
    if plan is None or plan.model_ref() is not model or plan.generation != _generation[0]:
        plan = _build(model)
        cache.__dict__["_fused_plan"] = plan
    if plan.reason is not None:
        return None
    if plan.needs_grad and torch.is_grad_enabled():
        return None
    if input_ids.device.type != "cpu":
        return None
    from moorelab.improve import kernels

    pos = cache.length
    layers = plan.layers
    c = model.config
    # KV buffers: allocate / grow through the cache itself, then point the plan at them
    if not cache.k or cache.k[0].shape[2] <= pos or len(cache.k) < len(layers):
        want = max(pos + 1, cache.max_len or 0)
        for i, blk in enumerate(model.blocks):
            cache.reserve(i, 1, blk.attn.n_kv_heads, blk.attn.head_dim, want, torch.float32, input_ids.device)
        plan.kv_ptrs = None
    if plan.kv_ptrs is None:
        for i in range(len(layers)):
            kb, vb = cache.k[i], cache.v[i]
            if kb.dtype is not torch.float32 or kb.shape[0] != 1 or not kb.is_contiguous() or not vb.is_contiguous():
                return None
            layers[i].kc, layers[i].vc, layers[i].cap = kb.data_ptr(), vb.data_ptr(), kb.shape[2]
        plan.kv_ptrs = True
    x = model.embed(input_ids)
    if x.dtype is not torch.float32:
        return None
    x = x.contiguous()
    cos, sin = model.rope_tables(pos + 1, input_ids.device)
    off = pos * cos.stride(0) * 4
    rc = kernels.get_library().decode_layers(
        ctypes.addressof(layers), len(layers), c.d_model, x.data_ptr(), pos,
        cos.data_ptr() + off, sin.data_ptr() + off, torch.get_num_threads())
    if rc == -1:
        raise MemoryError("fused decode: work buffer allocation failed")
    if rc != 0:
        raise RuntimeError(f"fused decode: C side returned {rc}")
    cache.length += 1
    return model.lm_head(model.final_norm(x))
