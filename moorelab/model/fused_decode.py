"""Fused one-token decode for LLaMA-family models: all decoder layers in one compiled call, for one
sequence or a batch of them.

At batch 1, a decode step of a small model spends as much time in Python and in the ~50 tiny
torch ops of each layer (norms, RoPE, cache writes, attention, SwiGLU, residual adds) as in
its matmuls: with every linear replaced by a no-op, a SmolLM2-135M decode step still took
3.5–4.1 ms here, against 17.2 ms for the whole float32 step and 9.9 ms for int4. Fused, the
float32 step is 69.75 tok/s vs 53.76 on the Python path (``benchmarks/bench_quant_kernels.py``,
rows ``fp32`` and ``fp32-py``). This module runs the same
math (see the C comment of ``ml_decode_layers`` in ``moorelab/kernels/csrc/fused_decode.c``)
for every layer, and then the final RMSNorm and the output layer (``lm_head``, float32 or
quantized, tied or not), in one ``ctypes`` call and one OpenMP parallel region (the threads
meet at five barriers per layer instead of forking and joining for every group of linears);
an ``lm_head`` without a compiled kernel (e.g. a parametrized weight) runs in torch after the
call. Each linear layer is handed to the C side as a
descriptor of the GEMV kernel that already runs it on the Python path (float32
:class:`~moorelab.model.transformer.FastLinear`, or a quantized module's own kernel), so the
numbers are the Python path's up to float32 rounding (tested); every eligible row of a
comparison gets the same treatment (rows on the Python path, e.g. magnitude/Wanda-pruned models
whose masks are parametrizations, say so in their kernel text).

Batched decode (B > 1, ``ml_decode_batch``): each linear reads its weights once for all rows
(float32: three rows per 4-row weight tile; quantized kinds: chunks of 64 weight rows kept in
cache while each row runs through them), each row attends to its own tokens (from its first real
position) and is rotated at its own position. SmolLM2-135M on 2 threads, tokens/s of all rows,
fused / per-op Python path (``python benchmarks/bench_batched.py``, 2026-11-30, before
:func:`steady` and the spread prefetch: 3 interleaved rounds, 16
steps, prompts of 32-48 tokens, CPU share 0.99-1.00): float32 batch 1, 4, 16: 33.5 / 20.0,
101.6 / 67.8, 209.4 / 171.4; int4 g32 a8: 114.9 / 45.0, 175.8 / 101.2, 254.1 / 67.0.

Decoding loops reach it through :func:`moorelab.model.decode.forward`. It runs only when all of
these hold (otherwise that call runs ``model(...)``, the Python path, and :func:`why_not_fused`
says why):

* decoder with RoPE, RMSNorm, SwiGLU, pre-norm, no learned/segment embeddings (LLaMA family);
* one new token of each of B sequences (B ≥ 1), a :class:`KVCache` with no padding mask or a
  left-padding one (each row: padding, then its tokens; a batch of ragged prompts) storing float32 or
  float16 (``KVCache(dtype=torch.float16)``: the C side rounds new keys and values to float16
  as the Python path does and reads them back converted), default positions,
  ``attention_impl == "sdpa"``, no attention recording, no forward hooks;
* every linear layer is a plain float32 ``nn.Linear``/``FastLinear`` with contiguous weights or
  a quantized module whose compiled kernel is loaded (``decode_descriptor()`` not None), and
  nothing needs a gradient;
* the compiled kernels are available (gcc, AVX2) and ``model.fused_decode`` is True.

When it builds a plan for a model whose ``decode_weight_arena`` is true (set by
:func:`prepare_decode`, which the measurements and ``moorelab generate`` call; off by default),
it first packs the weights it will read into one block of memory in reading order
(:func:`moorelab.model.weight_arena.pack_decode_weights`: the same tensor objects and values,
new addresses; every layer with a ``weights_moved()`` method is told, so it drops the addresses
it cached). It is opt-in because memory handed out from a weight before the move (a NumPy array
from ``weight.numpy()``, a DLPack capsule, a raw pointer) would be left pointing at freed memory.

A plan (the ``ml_layer`` array) is built once per :class:`KVCache` and rebuilt when any module,
parameter or buffer is registered anywhere (e.g. ``quantize_`` or pruning swapped a layer; about
1.9 ms for SmolLM2, measured), when a tensor it points into changed storage (``.data =``, ``.to()``), or
when hooks, a forward patched on an instance, attention recording, a norm's eps or the thread
count changed (checked every step outside a :func:`steady` block). The plan holds every tensor it points into, including the
cache's K/V buffers, and re-binds the buffers whenever the cache replaced or grew them (e.g. a
multi-token call on the Python path), checking their shapes against the model first; so it never
reads or writes memory it does not hold.

Inside ``with steady(model):`` (a loop that owns the model between its steps; see :func:`steady`
for which use it) the per-step checks of hooks, patched forwards, recording, eps and storages run
once, on the block's first step; later steps check only what is O(1) (the model, the
registration generation, the thread count). That per-step check costs 0.47-0.64 ms of a 5.2-6.1
ms int4 decode step of SmolLM2-135M (its ~700 tensors and ~360 modules are evicted from the
caches by each step's weight stream; measured by instrumenting ``decode_step``, a script outside
the repository); decode tokens/s in and out of a block, 10 interleaved rounds of 64 steps:
int4 x1.11, int8 b32 x1.06, float32 x1.01.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import itertools
import operator
import weakref

import torch
from torch import nn
from torch.nn.modules import module as _module

from moorelab import kernels
from moorelab.model.transformer import FastLinear, RMSNorm
from moorelab.model.weight_arena import hold_freed_heap, release_freed_heap, pack_decode_weights

__all__ = ["check_next_ids", "decode_step", "decode_weights", "prepare_decode", "steady", "why_not_fused"]

#: KV-cache storage types the C attention reads (``ml_layer.kv_f16``)
_KV_DTYPES = (torch.float32, torch.float16)

_generation = [0]


def _bump(*_args):
    _generation[0] += 1


_module.register_module_module_registration_hook(_bump)
_module.register_module_parameter_registration_hook(_bump)
_module.register_module_buffer_registration_hook(_bump)


def _linear_descriptor(mod: nn.Module):
    """``(kind, threads, N, K, G, w, s, mn, bias, keep)`` for the C ``ml_lin``, or a reason string."""
    if type(mod) in (nn.Linear, FastLinear):
        return FastLinear.decode_descriptor(mod)
    desc = getattr(mod, "decode_descriptor", None)
    if desc is None or isinstance(mod, nn.Linear):
        # other nn.Linear subclasses (e.g. a pruning parametrization's, which computes its weight
        # at every access) keep their own forward
        return f"{type(mod).__name__} has no compiled decode kernel (e.g. a pruning parametrization)"
    d = desc()
    if d is None:
        return f"{type(mod).__name__}: its compiled kernel is not loaded"
    return d


def _has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _global_hooks() -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


class _Plan:
    """ctypes ``ml_layer`` array for one model and one KV cache, and what it was built from.

    ``still_valid`` re-checks, every step (outside a :func:`steady` block; inside one, on the
    block's first step), what can change without registering a module,
    parameter or buffer (which bumps the generation): hooks, attention recording, a forward
    replaced on an instance, norm eps, a tensor's storage (``.data =``, ``.half()``), the thread
    count. For SmolLM2's 30 layers quantized to int4 (694 tensors, 362 modules) that is ~230 µs
    when the objects are in cache and ~1 ms per step in decode, where the weights streamed by
    the previous step have evicted them (measured: ~8% of an int4 step; 600-690 µs of it the
    tensors' ``data_ptr`` reads, in two sessions). So the check first prefetches the tensors' objects (one C
    call, their misses overlapping; :func:`_object_lines`).
    """

    def __init__(self, model, reason: str | None, layers=None, transient: bool = False):
        self.model_ref = weakref.ref(model)
        self.transient = transient  # reason is a hook / recording / patch: re-check every step
        self.generation = _generation[0]
        self.threads = torch.get_num_threads()
        self.reason = reason
        self.layers = layers
        self.tensors: list[tuple[torch.Tensor, int]] = []  # (tensor, data_ptr) the plan points into
        self.modules: list[nn.Module] = []  # every module whose forward the C code replaces
        self.attns: list[nn.Module] = []
        self.norms: list[tuple[nn.Module, float]] = []
        self.params: list[torch.Tensor] = []
        self.kv: list[torch.Tensor] = []  # the cache tensors the layers point at (k0, v0, k1, v1, ...)
        self.stream: list[torch.Tensor] = []  # the weights in the order a step reads them (weight_arena)
        self.head = None  # the output layer as an ml_lin (None: lm_head runs in torch after the call)
        self.final_norm_ptr = 0
        self.final_eps = 0.0
        self.min_cap = 0
        self._checks = None  # still_valid's flat lists, made on its first call (after _build filled the plan)
        self.embed = None  # (module, data_ptr, rows, D): token rows copied from a plain float32 nn.Embedding
        self.steady = None  # the steady() block whose first step validated this plan
        self.held = None  # while that block lasts: the storages the plan points into, kept alive

    def registered_same(self, model) -> bool:
        """The O(1) part of :meth:`still_valid`: same model, nothing registered, same thread count."""
        return (self.model_ref() is model and self.generation == _generation[0]
                and self.threads == torch.get_num_threads())

    def still_valid(self, model) -> bool:
        if not self.registered_same(model):
            return False
        if self.reason is not None:
            # a structural verdict (config, a layer without a kernel) stays until something is
            # registered; hooks, recording and patched forwards may go away at any step
            return not self.transient
        if self._checks is None:
            self._checks = (
                [t for t, _ in self.tensors], [p for _, p in self.tensors], [m.__dict__ for m in self.modules],
                [n for n, _ in self.norms], [e for _, e in self.norms], _object_lines([t for t, _ in self.tensors]),
                kernels.get_library().prefetch_lines,
            )
        tensors, ptrs, dicts, norm_mods, eps, lines, prefetch = self._checks
        prefetch(lines, len(lines))
        # map() over C-level getters: ~220 µs in cache for SmolLM2 int4's 30 layers against ~300 µs as Python loops
        if list(map(_data_ptr, tensors)) != ptrs:
            return False
        if (any(map(_get_hooks, dicts)) or any(map(_get_pre_hooks, dicts))
                or any(map(operator.contains, dicts, itertools.repeat("forward")))):
            return False
        if any(r is not None for r in map(_get_record, self.attns)):
            return False
        return list(map(_get_eps, norm_mods)) == eps


def _object_lines(tensors: list[torch.Tensor]) -> "ctypes.Array":
    """Addresses of the memory ``data_ptr()`` reads for each tensor: its Python object, its
    TensorImpl (``_cdata``, four cache lines) and its StorageImpl (two), for
    ``ml_prefetch_lines``. They are hints only: an address that goes stale (the object freed or
    its storage replaced) costs a useless prefetch, never a wrong answer. SmolLM2 int4's 694
    tensors: the check's ``data_ptr`` pass went from 626 to 197 µs per decode step (+71 µs for
    the prefetch call), measured in one run (a script outside the repository)."""
    addrs = []
    for t in tensors:
        ti, si = t._cdata, t.untyped_storage()._cdata
        addrs += [id(t), id(t) + 32, ti, ti + 64, ti + 128, ti + 192, si, si + 64]
    return (ctypes.c_uint64 * len(addrs))(*addrs)


_data_ptr = torch.Tensor.data_ptr
_get_hooks = operator.itemgetter("_forward_hooks")  # nn.Module keeps both dicts in its __dict__
_get_pre_hooks = operator.itemgetter("_forward_pre_hooks")
_get_record = operator.attrgetter("record")
_get_eps = operator.attrgetter("eps")


def _lin_struct(kernels, d) -> "ctypes.Structure":
    kind, threads, n, k, g, w, s, mn, b, _keep = d
    return kernels.MlLin(kernels.LIN_KINDS[kind], threads, n, k, g, w, s, mn, b)


def _build(model) -> _Plan:
    lib = kernels.get_library()
    if lib is None:
        return _Plan(model, f"compiled kernels unavailable: {kernels.status()}")
    c = model.config
    if not (c.is_decoder and c.position == "rope" and c.norm == "rmsnorm" and c.activation == "swiglu"
            and c.norm_position == "pre" and not c.qk_norm and not c.scale_embeddings):
        return _Plan(model, "not a LLaMA-family decoder (RoPE, RMSNorm, SwiGLU, pre-norm, no QK-norm)")
    if model.pos_embed is not None or model.type_embed is not None or model.embed_norm is not None:
        return _Plan(model, "learned position / segment embeddings")
    if model.lm_head is None or type(model.final_norm) is not RMSNorm:
        return _Plan(model, "no output layer or final RMSNorm")
    if _has_hooks(model):
        return _Plan(model, "a module has forward hooks", transient=True)
    plan = _Plan(model, None, (kernels.MlLayer * len(model.blocks))())
    for i, blk in enumerate(model.blocks):
        attn, ffn = blk.attn, blk.ffn
        if attn.record is not None or not attn.rope:
            return _Plan(model, f"block {i}: attention recording or no RoPE", transient=attn.record is not None)
        for norm in (blk.attn_norm, blk.ffn_norm):
            if type(norm) is not RMSNorm or norm.weight.dtype is not torch.float32 or not norm.weight.is_contiguous():
                return _Plan(model, f"block {i}: norm is not a float32 RMSNorm")
        if blk.attn_norm.eps != blk.ffn_norm.eps:
            return _Plan(model, f"block {i}: the two norms have different eps")
        if ffn.activation != "swiglu" or ffn.gate_proj is None:
            return _Plan(model, f"block {i}: FFN is not SwiGLU")
        linears = (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj), ("o", attn.o_proj),
                   ("gate", ffn.gate_proj), ("up", ffn.up_proj), ("down", ffn.down_proj))
        patched = [n for n, m in (("block", blk), ("attn", attn), ("ffn", ffn), ("attn_norm", blk.attn_norm),
                                  ("ffn_norm", blk.ffn_norm), *linears) if "forward" in m.__dict__]
        if patched:
            return _Plan(model, f"block {i}.{patched[0]}: forward replaced on the instance", transient=True)
        descs = {}
        for name, mod in linears:
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
            and H % Hkv == 0 and hd % 2 == 0 and hd == c.head_dim  # RoPE tables are [N, config.head_dim]
        )
        if not shapes_ok:
            return _Plan(model, f"block {i}: layer shapes do not form a decoder layer")
        ly = plan.layers[i]
        for group in (("q", "k", "v"), ("o",), ("gate", "up"), ("down",)):
            if group[0] == "q":
                plan.stream.append(blk.attn_norm.weight)
            elif group[0] == "gate":
                plan.stream.append(blk.ffn_norm.weight)
            keeps = [descs[n][-1] for n in group]  # a group's weights first, then their scales, mins, biases
            plan.stream += [k[r] for r in range(max(map(len, keeps))) for k in keeps if r < len(k)]
        for name, d in descs.items():
            setattr(ly, name, _lin_struct(kernels, d))
            plan.tensors.extend((t, t.data_ptr()) for t in d[-1])
        for norm in (blk.attn_norm, blk.ffn_norm):
            plan.tensors.append((norm.weight, norm.weight.data_ptr()))
            plan.norms.append((norm, norm.eps))
        ly.attn_norm, ly.ffn_norm = blk.attn_norm.weight.data_ptr(), blk.ffn_norm.weight.data_ptr()
        ly.H, ly.Hkv, ly.hd, ly.rope, ly.eps = H, Hkv, hd, 1, float(blk.attn_norm.eps)
        plan.modules += [blk, attn, ffn, blk.attn_norm, blk.ffn_norm] + [m for _, m in linears]
        plan.attns.append(attn)
    # the final RMSNorm and the output layer in the same call, when the head has a kernel
    head = model.lm_head
    fn = model.final_norm
    if ("forward" not in head.__dict__ and "forward" not in fn.__dict__ and fn.weight.dtype is torch.float32
            and fn.weight.is_contiguous()):
        d = _linear_descriptor(head)
        if not isinstance(d, str) and d[3] == c.d_model:
            plan.head = _lin_struct(kernels, d)
            plan.stream += [fn.weight, *d[-1]]
            plan.tensors.extend((t, t.data_ptr()) for t in d[-1])
            plan.tensors.append((fn.weight, fn.weight.data_ptr()))
            plan.norms.append((fn, fn.eps))
            plan.modules += [head, fn]
            plan.final_norm_ptr, plan.final_eps = fn.weight.data_ptr(), float(fn.eps)
    emb = model.embed
    if (type(emb) is nn.Embedding and emb.max_norm is None and "forward" not in emb.__dict__
            and emb.weight.dtype is torch.float32 and emb.weight.is_contiguous() and emb.weight.dim() == 2
            and emb.weight.shape[1] == c.d_model):
        plan.embed = (emb, emb.weight.data_ptr(), emb.weight.shape[0], c.d_model)
        plan.tensors.append((emb.weight, emb.weight.data_ptr()))
        plan.modules.append(emb)
    plan.params = [p for p in model.parameters()]
    return plan


class _SteadyBlock:
    """One ``with steady(model):`` block: the plans its steps validated (weakly, once each)."""

    __slots__ = ("plans",)

    def __init__(self):
        self.plans: "weakref.WeakSet[_Plan]" = weakref.WeakSet()


#: the open steady blocks of this thread / asyncio task, ``(weakref to the model, block)``,
#: innermost last: a block is in force only for the code that opened it (another thread decoding
#: the same model is checked every step), and never travels with a copy of the model
_STEADY: "contextvars.ContextVar[tuple]" = contextvars.ContextVar("moorelab_decode_steady", default=())


def _open_block(model) -> "_SteadyBlock | None":
    """The innermost steady block this context has open on ``model``, or None."""
    for ref, block in reversed(_STEADY.get()):
        if ref() is model:
            return block
    return None


@contextlib.contextmanager
def steady(model):
    """A block of decode steps in which nothing changes ``model`` but the steps themselves.

    Inside it, :func:`decode_step` validates its plan fully on the block's first step of each
    cache (and again after an inner block closed) and then, per step, only that it is the same
    model, that no module, parameter or buffer was registered anywhere and that the thread count
    is the same (each of those still rebuilds the plan). Not re-checked per step: forward hooks,
    forwards patched on an instance, attention recording, norm eps, and tensors given new
    storage without registration (``.data =``, ``set_``); changing those inside the block breaks
    its contract. While the block lasts, the plan holds the storages it points into, so a tensor
    given new storage gives stale numbers, not a read of freed memory; an in-place resize of a
    storage (``resize_``) is not covered. (The held storages also keep a weight-arena pack made
    inside the block, after a registration, from moving those tensors: speed, not numbers.)
    Blocks nest (the innermost is the one in force) and may close in any order. A block is in
    force only in the thread (or asyncio task) that opened it, and lives outside the model, so a
    copy of the model made inside it is not in it.

    Used by ``generate`` (its ``on_token`` callback must not change the model; hence ``moorelab
    generate``, ``benchmarks/bench_model_speed.py`` and the lm-eval adapter), the run job's speed
    rows (``moorelab.measure.task``), batched decode (``moorelab.measure.batched``: the run's
    curve, ``benchmarks/bench_batched.py``) and ``benchmarks/bench_vs_llamacpp.py``. Not by
    ``moorelab.measure.speed.measure_speed`` (``benchmarks/bench_pruning.py``),
    ``bench_decode_depth.py``, ``bench_weight_arena.py`` or ``bench_quant_kernels.py``, whose
    decode steps are checked every step.

    Yields:
        ``model``.
    """
    block = _SteadyBlock()
    _STEADY.set(_STEADY.get() + ((weakref.ref(model), block),))
    try:
        yield model
    finally:
        _STEADY.set(tuple(e for e in _STEADY.get() if e[1] is not block))
        for plan in list(block.plans):  # the held storages go with the block
            if plan.steady is block:
                plan.steady, plan.held = None, None


def why_not_fused(model) -> str | None:
    """``None`` if :func:`decode_step` can run ``model``, else the reason (one line)."""
    return _switched_off(model) or _build(model).reason


def decode_weights(model) -> list[torch.Tensor]:
    """The tensors one fused decode step reads from the weights (each once), in the order it reads
    them: per layer the norms, q/k/v, o, gate/up, down with their scales, minimums and biases,
    then the final norm and the output layer — what :func:`prepare_decode` packs. Empty when the
    fused decode cannot run ``model`` (:func:`why_not_fused`). For benchmarks that check where
    these bytes lie (e.g. on huge pages, :func:`moorelab.measure.bandwidth.huge_page_fraction`)."""
    if _switched_off(model) is not None:
        return []
    plan = _build(model)
    if plan.reason is not None:
        return []
    seen: set[int] = set()
    return [t for t in plan.stream if not (id(t) in seen or seen.add(id(t)))]


def _switched_off(model) -> str | None:
    """The reasons against the fused decode that need no plan: the switch, global hooks."""
    if not getattr(model, "fused_decode", True):
        return "model.fused_decode is False"
    if _global_hooks():
        return "global module forward hooks are registered"
    return None


def _bind_cache(plan: _Plan, model, cache, pos: int, device, batch: int = 1) -> bool:
    """Point the plan's layers at the cache's K/V buffers (allocating or growing them through
    :meth:`KVCache.reserve`); False if a buffer does not fit the model (the Python path then
    raises its own shape error)."""
    layers = plan.layers
    n = len(layers)
    if len(cache.k) < n or min(t.shape[2] for t in cache.k[:n]) <= pos:
        want = max(pos + 1, cache.max_len or 0)
        for i, blk in enumerate(model.blocks):
            if i < len(cache.k) and (cache.k[i].shape[1], cache.k[i].shape[3]) != (blk.attn.n_kv_heads, blk.attn.head_dim):
                return False
            # (a cache created with a dtype stores that type: KVCache.reserve)
            cache.reserve(i, batch, blk.attn.n_kv_heads, blk.attn.head_dim, want, torch.float32, device)
    kv = []
    for i, blk in enumerate(model.blocks):
        kb, vb = cache.k[i], cache.v[i]
        want_shape = (batch, blk.attn.n_kv_heads, kb.shape[2], blk.attn.head_dim)
        if (tuple(kb.shape) != want_shape or tuple(vb.shape) != want_shape or kb.dtype not in _KV_DTYPES
                or vb.dtype is not kb.dtype or not kb.is_contiguous() or not vb.is_contiguous()
                or kb.device.type != "cpu"):
            return False
        layers[i].kc, layers[i].vc, layers[i].cap = kb.data_ptr(), vb.data_ptr(), kb.shape[2]
        layers[i].kv_f16 = int(kb.dtype is torch.float16)
        kv += [kb, vb]
    plan.kv = kv
    plan.min_cap = min(t.shape[2] for t in kv)
    return True


def _left_padding_starts(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor | None:
    """Per row, the first real position of a left-padding ``mask [B, length]`` (zeros, then ones),
    as ``int64 [B]``; ``None`` if the mask is not of that form (holes, right padding, a row of
    padding only) or not of that shape."""
    if mask.shape != (batch, length):
        return None
    m = mask.to(torch.bool)
    starts = length - m.sum(1)
    if bool((starts >= length).any()) or not torch.equal(m, torch.arange(length) >= starts[:, None]):
        return None
    return starts.to(torch.int64).contiguous()


def _pack(model, plan: _Plan) -> _Plan:
    """``plan``, or a new one when its weights were just packed into the arena (module docstring)."""
    if not getattr(model, "decode_weight_arena", False):
        return plan
    try:
        if not pack_decode_weights(plan.stream, others=itertools.chain(model.parameters(), model.buffers())):
            return plan  # already in place: nothing moved
    except (OSError, ValueError, RuntimeError, MemoryError):  # no memory for the block: decode in place
        pass  # (a pack that failed half way may have moved some tensors)
    # every layer that caches its buffers' addresses (the quantized ones; also those the plan does
    # not read, whose buffers may have left an old block) forgets them
    for mod in model.modules():
        moved = getattr(mod, "weights_moved", None)
        if moved is not None:
            moved()
    return _build(model)  # take the new addresses


def prepare_decode(model, pack: bool = True) -> str | None:
    """Check that the fused decode can run ``model`` and, with ``pack``, move the weights it reads
    into the decode weight arena and keep them there: sets ``model.decode_weight_arena``, so each
    later plan (a new cache, a swapped layer) packs again what is not in place. ``copy.deepcopy``
    carries the flag to the copy, whose first fused step then packs its own weights.

    Measurements call it before they reset a peak-memory mark or start a clock, so the one-off
    copy into the arena (a transient of up to the packed bytes; SmolLM2-135M float32: 538 MB
    packed, peak +181 MB over the resident size, measured by a script outside the repository)
    is not counted as the variant's.

    Whatever the model, it then hands freed heap pages back (``release_freed_heap``: the load's
    and the packing's transient copies) and sets the process's malloc to keep freed activation
    memory from then on (:func:`moorelab.model.weight_arena.hold_freed_heap`: process-wide and
    permanent, so a model loaded later in the process loads under it too; prefill of
    SmolLM2-135M float32 631-648 against 560-572 tokens/s, from page faults avoided).

    Returns:
        ``None`` when the fused decode can run ``model``, else the reason (as :func:`why_not_fused`).
    """
    reason = _switched_off(model)
    if reason is None:
        plan = _build(model)
        if plan.reason is None and pack:
            model.decode_weight_arena = True
            _pack(model, plan)
        reason = plan.reason
    release_freed_heap()
    hold_freed_heap()
    return reason


def check_next_ids(next_ids: torch.Tensor, batch: int) -> None:
    """Refuse a greedy-pick output other than a contiguous CPU int64 tensor ``[batch]``
    (:func:`decode_step`'s ``next_ids``, ``decode.forward``'s ``greedy_into``).

    Raises:
        ValueError: naming the tensor's dtype, shape and device.
    """
    if (next_ids.dtype is not torch.int64 or next_ids.shape != (batch,) or not next_ids.is_contiguous()
            or next_ids.device.type != "cpu"):
        raise ValueError(f"greedy_into (next_ids) must be a contiguous CPU int64 tensor of shape ({batch},), got "
                         f"{next_ids.dtype} {tuple(next_ids.shape)} on {next_ids.device}")


def decode_step(model, input_ids: torch.Tensor, cache, next_ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """One fused decode step: logits ``[B, 1, vocab]`` for ``input_ids [B, 1]``, or ``None``.

    ``next_ids``, if given (``int64 [B]``, contiguous, on the CPU), receives each row's greedy next
    token (``argmax`` of its logits, as :func:`moorelab.model.decode.greedy`), picked inside the C
    call from the logits it just wrote when the output layer runs there, so no Python runs between
    the logits and the pick (else here, after the call). Untouched when this returns ``None``.

    Appends the tokens' keys and values to ``cache`` (a :class:`KVCache`) at position
    ``cache.length`` and advances it (and its padding mask, if it has one), exactly as the Python
    path does. ``B > 1`` (batched decode) runs every row in the same call, each weight read once
    for all rows (``ml_decode_batch``); a cache with a padding mask is taken when the mask is
    left padding (each row: padding, then its real tokens), each row then attending to its own
    tokens and rotated at its own position (its count of real tokens), as the Python path's
    ``cumsum(mask) - 1``. Returns ``None`` (having touched, at most, the cache's buffer capacity
    and its cached plan) when the model or the call is not eligible (see the module docstring, a
    mask of another form, or ``input_ids`` not ``[B, 1]``); the caller then runs the Python path.

    Raises:
        ValueError: ``next_ids`` not a contiguous CPU int64 tensor ``[B]`` (before anything runs).
        IndexError: a token id outside the embedding table (before anything is computed; the
            cache's buffers may have grown).
        MemoryError: the C side could not allocate its work buffer.
        RuntimeError: the C side found a position beyond a layer's KV buffers or an unknown
            layer kind (checked before the call, so this means a bug, not bad input).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] != 1:
        return None  # one new token per row only
    if next_ids is not None:
        check_next_ids(next_ids, input_ids.shape[0])
    plan = cache.__dict__.get("_fused_plan")
    block = _open_block(model)
    if plan is not None and block is not None and plan.steady is block:
        fresh = not plan.registered_same(model)  # validated on this block's first step
    else:
        fresh = plan is None or not plan.still_valid(model)
    if fresh:
        plan = _build(model)
        cache.__dict__["_fused_plan"] = plan
    if plan.reason is not None or _global_hooks() or input_ids.device.type != "cpu":
        return None
    if torch.is_grad_enabled() and any(p.requires_grad for p in plan.params):
        return None  # training: autograd needs the Python path
    if fresh:
        plan = cache.__dict__["_fused_plan"] = _pack(model, plan)
    if block is not None and plan.steady is not block:
        # (its storages held while the block lasts: a tensor given new storage in the block
        # against the contract leaves stale numbers, not a read of freed memory)
        plan.steady, plan.held = block, [t.untyped_storage() for t, _ in plan.tensors]
        block.plans.add(plan)
    B = input_ids.shape[0]
    if B < 1:
        return None
    pos = cache.length
    starts = None
    if cache.mask is not None:
        starts = _left_padding_starts(cache.mask, B, pos)
        if starts is None:
            return None
    layers = plan.layers
    ks, vs = cache.k, cache.v
    bound = (
        len(plan.kv) == 2 * len(layers)
        and len(ks) >= len(layers)
        and all(a is b for a, b in zip(ks, plan.kv[0::2]))
        and all(a is b for a, b in zip(vs, plan.kv[1::2]))
        and plan.min_cap > pos
        and plan.kv[0].shape[0] == B
    )
    if not bound and not _bind_cache(plan, model, cache, pos, input_ids.device, B):
        return None
    if plan.embed is not None and plan.embed[0].max_norm is None and input_ids.dtype in (torch.int64, torch.int32):
        # the token rows copied from the table the plan was built on (what nn.Embedding's forward
        # returns, without its 110-180 µs per step of dispatch on caches the weight stream left
        # cold: instrumented decode_step, int4 / int8 b32 / float32, a script outside the repository)
        _emb, src, rows, D = plan.embed
        ids = input_ids.reshape(-1).tolist()
        if not all(0 <= t < rows for t in ids):
            raise IndexError(f"token id out of range [0, {rows}) in input_ids: {ids}")
        x = torch.empty(B, 1, D, dtype=torch.float32)
        dst, row = x.data_ptr(), 4 * D
        for b, t in enumerate(ids):
            ctypes.memmove(dst + b * row, src + t * row, row)
    else:
        x = model.embed(input_ids)
        if x.dtype is not torch.float32:
            return None
        x = x.contiguous()
    head = plan.head
    logits = torch.empty(B, 1, head.N, dtype=torch.float32) if head is not None else None
    lib = kernels.get_library()
    args = (torch.get_num_threads(), plan.final_norm_ptr or None, plan.final_eps,
            None if head is None else ctypes.addressof(head), None if logits is None else logits.data_ptr(),
            None if head is None or next_ids is None else next_ids.data_ptr())
    if B == 1 and starts is None:
        cos, sin = model.rope_tables(pos + 1, input_ids.device)
        off = pos * cos.stride(0) * cos.element_size()
        rc = lib.decode_layers(ctypes.addressof(layers), len(layers), model.config.d_model, x.data_ptr(), pos,
                               cos.data_ptr() + off, sin.data_ptr() + off, *args)
    else:
        if starts is None:
            starts = torch.zeros(B, dtype=torch.int64)
        rows = (pos - starts).tolist()  # each row's position: its real tokens so far
        cos, sin = model.rope_tables(max(rows) + 1, input_ids.device)
        step = cos.stride(0) * cos.element_size()
        cos_p = (ctypes.c_void_p * B)(*[cos.data_ptr() + r * step for r in rows])
        sin_p = (ctypes.c_void_p * B)(*[sin.data_ptr() + r * step for r in rows])
        rc = lib.decode_batch(ctypes.addressof(layers), len(layers), model.config.d_model, B, x.data_ptr(), pos,
                              starts.data_ptr(), cos_p, sin_p, *args)
    if rc == -1:
        raise MemoryError("fused decode: work buffer allocation failed")
    if rc != 0:
        reason = {-2: "unknown linear kind",
                  -3: f"position {pos} beyond a layer's KV-cache capacity, or a row starting after it"}.get(rc, "?")
        raise RuntimeError(f"fused decode: C side returned {rc} ({reason})")
    cache.length += 1
    if cache.mask is not None:
        cache.mask = torch.cat((cache.mask, cache.mask.new_ones(B, 1)), dim=1)
    if head is not None:
        return logits
    logits = model.lm_head(model.final_norm(x))
    if next_ids is not None:  # (the output layer ran in torch: so does the pick, the same argmax)
        next_ids.copy_(logits[:, -1].argmax(-1))
    return logits
