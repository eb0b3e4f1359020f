"""The fused one-token decode (all layers in one compiled call) equals the per-op Python path.

Steps go through the dispatcher (:func:`moorelab.model.decode.forward`), as in generation."""

from __future__ import annotations

import contextlib
import copy
import threading

import pytest
import torch

from moorelab import kernels
from moorelab.improve.api import ApplyContext, apply, parse_spec
from moorelab.improve.quantize import Int4WeightOnlyConfig, quantize_
from moorelab.model import decode
from moorelab.model.config import TransformerConfig
from moorelab.model import fused_decode
from moorelab.model.fused_decode import why_not_fused
from moorelab.model.transformer import KVCache, Transformer
from model_helpers import scramble

pytestmark = pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")

LLAMA = dict(family="llama", vocab_size=61, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
             max_position_embeddings=128, rope_theta=100.0)


def tiny(**over) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(**{**LLAMA, **over})).eval()
    scramble(m, std=0.25)
    return m


PROMPT = torch.randint(0, 61, (1, 5), generator=torch.Generator().manual_seed(3))
STEPS = torch.randint(0, 61, (14,), generator=torch.Generator().manual_seed(4)).tolist()


def run_steps(m: Transformer, fused: bool, prompt=PROMPT, max_len: int | None = 8,
              kv_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, list[str]]:
    """Prefill ``prompt`` (Python path), then decode ``STEPS`` one token at a time; logits [steps, V]."""
    m.fused_decode = fused
    cache = KVCache(max_len=max_len, dtype=kv_dtype)  # 8 < 5 + 14: the buffers must grow during decoding
    outs, paths = [], []
    with torch.inference_mode():
        if prompt is not None:
            m(prompt, cache=cache)
        for j, t in enumerate(STEPS):
            # every other step also asks for the greedy pick (inside the C call on the fused path):
            # it is the argmax of the logits returned, exactly
            pick = torch.full((1,), -1, dtype=torch.long) if j % 2 else None
            outs.append(decode.forward(m, torch.tensor([[t]]), cache=cache, greedy_into=pick)[0, -1])
            paths.append(m.last_decode_path)
            if pick is not None:
                assert int(pick) == int(outs[-1].argmax())
    assert cache.length == (0 if prompt is None else prompt.shape[1]) + len(STEPS)
    assert cache.k[0].dtype is (kv_dtype or torch.float32)
    return torch.stack(outs), paths


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's (and the fused call's) thread count set to ``n`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_same(m: Transformer, tol: float = 2e-4, **kw) -> None:
    ref, ref_paths = run_steps(copy.deepcopy(m), False, **kw)
    got, paths = run_steps(m, True, **kw)
    assert set(ref_paths) == {"python"} and set(paths) == {"fused"}, (paths, why_not_fused(m))
    scale = ref.abs().max().item()
    assert scale > 1.0  # scrambled weights: the logits are not all near zero
    assert (got - ref).abs().max().item() <= tol * scale
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("spec", [None, "int8", "int4:group_size=32", "int8-dynamic", "int8-dynamic:activation_block=32"])
def test_fused_equals_python_path(spec):
    m = tiny()
    if spec:
        apply(m, parse_spec(spec))
    assert why_not_fused(m) is None
    assert_same(m)


@pytest.mark.parametrize("spec", [None, "int8", "int4:group_size=32"])
def test_fused_equals_python_path_with_a_float16_cache(spec):
    # both paths round keys and values to float16 when they are written: equal within float32 rounding
    m = tiny()
    if spec:
        apply(m, parse_spec(spec))
    assert_same(m, kv_dtype=torch.float16)


def test_float16_cache_on_the_python_path_and_in_generation():
    m = tiny()
    with pytest.raises(ValueError, match="not a float type"):
        KVCache(dtype=torch.int8)
    cache = KVCache(dtype=torch.float16)
    x = torch.randn(1, 2, 3, 16)
    k, v = cache.update(0, x, -x)
    assert cache.k[0].dtype is torch.float16 and k.dtype is torch.float32
    assert torch.equal(k, x.half().float()) and torch.equal(v, -x.half().float()) and not torch.equal(k, x)
    from moorelab.model.generate import generate

    with torch.inference_mode():
        a = generate(m, PROMPT, max_new_tokens=6, kv_dtype=torch.float16)
        assert m.last_decode_path == "fused"
        m.fused_decode = False
        b = generate(m, PROMPT, max_new_tokens=6, kv_dtype=torch.float16)
    assert torch.equal(a, b)


def test_float16_cache_costs_little_and_is_not_the_float32_cache():
    m = tiny()
    f32, _ = run_steps(copy.deepcopy(m), True)
    f16, paths = run_steps(m, True, kv_dtype=torch.float16)
    assert set(paths) == {"fused"}
    diff = (f16 - f32).abs().max().item() / f32.abs().max().item()
    assert 0 < diff < 1e-2, diff  # rounded (so not the float32 cache), but only at float16 precision


@pytest.mark.parametrize("head_dim", [12, 80])
@pytest.mark.parametrize("kv_dtype", [None, torch.float16])
def test_fused_head_dims_off_the_vector_width(head_dim, kv_dtype):
    # 12 = one 8-wide vector + 4 scalar tail; 80 = one 64-float register pass + one 8-wide pass + tail 8
    assert_same(tiny(head_dim=head_dim), kv_dtype=kv_dtype)


def test_fused_from_an_empty_cache_and_without_max_len():
    assert_same(tiny(), prompt=None, max_len=None)


def test_fused_with_structurally_pruned_layers_of_different_sizes():
    m = tiny()
    cal = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(5))
    apply(m, parse_spec("heads:heads_per_layer=2,importance=weight,layers=[1]"), ApplyContext(calibration=cal))
    apply(m, parse_spec("ffn:fraction=0.33,importance=weight"), ApplyContext(calibration=cal))
    shapes = {(b.attn.n_heads, b.attn.n_kv_heads, b.ffn.up_proj.out_features) for b in m.blocks}
    assert len(shapes) == 2  # layer 1 differs from layers 0 and 2
    assert_same(m)
    apply(m, parse_spec("int8"))
    assert_same(m)


@pytest.mark.parametrize("bits", [16, 8])
def test_fused_rounded_activation_kernels_agree_within_their_rounding(bits):
    # Rounding x per 32-block re-randomises with any 1e-7 change of x, so the two paths differ by
    # the rounding noise itself, never more: compare against the float-activation int4 model.
    m = tiny()
    float_act = copy.deepcopy(m)
    quantize_(m, Int4WeightOnlyConfig(group_size=32, activation_bits=bits))
    quantize_(float_act, Int4WeightOnlyConfig(group_size=32))
    ref, _ = run_steps(copy.deepcopy(m), False)
    got, paths = run_steps(m, True)
    base, _ = run_steps(float_act, False)
    assert set(paths) == {"fused"}
    noise = (ref - base).abs().max().item()
    assert noise > 0
    assert (got - ref).abs().max().item() <= 4 * noise


def test_not_eligible_runs_the_python_path_and_says_why():
    gpt2 = Transformer(TransformerConfig(family="gpt2", vocab_size=61, d_model=32, n_layers=1, n_heads=4, d_ff=64,
                                         norm="layernorm", activation="gelu_tanh", position="learned",
                                         max_position_embeddings=64)).eval()
    assert "LLaMA" in why_not_fused(gpt2)
    m = tiny()
    apply(m, parse_spec("magnitude:sparsity=0.5"))  # parametrized weights (mask applied each forward)
    assert "q" in why_not_fused(m) and "kernel" in why_not_fused(m)
    ref, paths = run_steps(m, True)
    assert set(paths) == {"python"}
    m2 = tiny()
    m2.blocks[0].ffn.register_forward_hook(lambda *a: None)
    assert why_not_fused(m2) == "a module has forward hooks"
    m3 = tiny()
    m3.fused_decode = False
    assert why_not_fused(m3) == "model.fused_decode is False"


def _left_padded(lengths, seed=7):
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.randint(0, 61, (len(lengths), n), generator=g)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for b, ln in enumerate(lengths):
        mask[b, n - ln:] = 1
    return ids, mask


def run_batch(m, fused: bool, lengths, steps: int = 10, max_len: int | None = 9, kv_dtype=None, mask=True):
    """Prefill a left-padded batch (Python path), then decode ``steps`` tokens per row through the
    dispatcher; logits [B, steps, V] and the paths taken."""
    ids, am = _left_padded(lengths)
    m.fused_decode = fused
    cache = KVCache(max_len=max_len, dtype=kv_dtype)  # 9 < 7 + 10: the buffers grow during decoding
    toks = torch.randint(0, 61, (len(lengths), steps), generator=torch.Generator().manual_seed(8))
    outs, paths = [], []
    with torch.inference_mode():
        m(ids, attention_mask=am if mask else None, cache=cache)
        for j in range(steps):
            pick = torch.full((len(lengths),), -1, dtype=torch.long) if j % 2 else None  # (as run_steps)
            outs.append(decode.forward(m, toks[:, j:j + 1], cache=cache, greedy_into=pick)[:, -1])
            paths.append(m.last_decode_path)
            if pick is not None:
                assert torch.equal(pick, outs[-1].argmax(-1))
    if mask:
        assert cache.mask.shape == (len(lengths), max(lengths) + steps) and bool(cache.mask[:, -steps:].all())
    return torch.stack(outs, 1), paths


# weights rounded again from the activations: compared within their rounding noise (below)
_ROUNDED_ACT = {"int8-dynamic": "int8", "int8-dynamic:activation_block=32": "int8",
                "int4:group_size=64,activation_bits=8": "int4:group_size=64",
                "int4:group_size=64,activation_bits=16": "int4:group_size=64"}


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("spec", [None, "int8", "int4:group_size=32", *_ROUNDED_ACT])
def test_batched_fused_decode_equals_the_python_path(spec, threads, split, monkeypatch):
    # 5 rows of 1..7 prompt tokens, left-padded: each row attends to its own tokens only and is
    # rotated at its own positions (cumsum(mask) - 1), every weight read once for the 5 rows.
    # split: the tiny layers are below the sizes where a second thread pays; with both thresholds
    # at 0 every linear's rows are split over the threads too (ranges starting mid-layer, the
    # 64-row chunks of the quantized kinds inside a range, residual adds of B rows per range)
    if split:
        from moorelab.improve.quantize import base
        from moorelab.model.transformer import FastLinear

        if threads == 1:
            pytest.skip("one thread: nothing to split")
        monkeypatch.setattr(FastLinear, "SMALL", 0)
        monkeypatch.setattr(base, "_FUSED_SINGLE_THREAD_WEIGHTS", 0)
    m = tiny(d_ff=128)  # (groups of 64 divide every input width)
    if spec:
        apply(m, parse_spec(spec))
    lengths = [3, 7, 1, 5, 7]
    with torch_threads(threads):
        if split:
            from moorelab.model.fused_decode import _build
            assert {plan_lin.nthreads for plan_lin in (_build(m).layers[0].up, _build(m).layers[0].q)} == {threads}
        ref, ref_paths = run_batch(copy.deepcopy(m), False, lengths)
        got, paths = run_batch(m, True, lengths)
    assert set(ref_paths) == {"python"} and set(paths) == {"fused"}, why_not_fused(m)
    scale = ref.abs().max().item()
    assert scale > 1.0
    if spec in _ROUNDED_ACT:
        # activations rounded per row or block: the Python path's several-row GEMM and the
        # kernel's rows see inputs 1e-7 apart, which re-rolls a rounding now and then; so they may
        # differ by the rounding noise itself, never more (noise: the same weights, float activations)
        wo = tiny(d_ff=128)
        apply(wo, parse_spec(_ROUNDED_ACT[spec]))
        with torch_threads(threads):
            base_logits, _ = run_batch(wo, False, lengths)
        noise = (ref - base_logits).abs().max().item()
        assert noise > 0
        assert (got - ref).abs().max().item() <= 4 * noise
    else:
        assert (got - ref).abs().max().item() <= 2e-4 * scale
        assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("kv_dtype", [None, torch.float16])
def test_one_left_padded_row_over_a_long_context(threads, kv_dtype):
    # one row whose first 137 positions are padding, 600 + 10 positions in all: the fused call
    # with start > 0 and the positions sliced over the threads (T * heads >= 2048)
    m = tiny(max_position_embeddings=1024)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, 61, (1, 600), generator=g)
    am = torch.zeros(1, 600, dtype=torch.long)
    am[:, 137:] = 1
    toks = torch.randint(0, 61, (1, 10), generator=g)
    outs = {}
    with torch_threads(threads):
        for fused in (False, True):
            mm = copy.deepcopy(m)
            mm.fused_decode = fused
            cache = KVCache(dtype=kv_dtype)
            with torch.inference_mode():
                mm(ids, attention_mask=am, cache=cache)
                steps = [decode.forward(mm, toks[:, j:j + 1], cache=cache)[0, -1] for j in range(10)]
            assert mm.last_decode_path == ("fused" if fused else "python")
            outs[fused] = torch.stack(steps)
    ref = outs[False]
    assert (outs[True] - ref).abs().max().item() <= 2e-4 * ref.abs().max().item()


def test_batched_fused_decode_rows_equal_each_row_decoded_alone():
    # the batched call gives each row what one-sequence decoding gives it (no padding, no other rows)
    m = tiny()
    lengths = [2, 6, 4]
    ids, am = _left_padded(lengths)
    got, paths = run_batch(m, True, lengths, steps=6)
    assert set(paths) == {"fused"}
    toks = torch.randint(0, 61, (3, 6), generator=torch.Generator().manual_seed(8))
    for b, ln in enumerate(lengths):
        cache = KVCache()
        with torch.inference_mode():
            m(ids[b:b + 1, -ln:], cache=cache)
            alone = torch.stack([decode.forward(m, toks[b:b + 1, j:j + 1], cache=cache)[0, -1] for j in range(6)])
        assert m.last_decode_path == "fused"
        assert (got[b] - alone).abs().max().item() <= 2e-4 * alone.abs().max().item(), b


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("kv_dtype", [None, torch.float16])
def test_batched_fused_decode_without_padding_and_with_a_float16_cache(kv_dtype, mask):
    m = tiny()
    lengths = [6, 6, 6, 6] if not mask else [6, 2, 6, 4]
    ref, _ = run_batch(copy.deepcopy(m), False, lengths, kv_dtype=kv_dtype, mask=mask)
    got, paths = run_batch(m, True, lengths, kv_dtype=kv_dtype, mask=mask)
    assert set(paths) == {"fused"}
    assert (got - ref).abs().max().item() <= 2e-4 * ref.abs().max().item()


def test_batched_fused_decode_from_an_empty_cache_and_zero_rows():
    m = tiny()
    toks = torch.randint(0, 61, (3, 4), generator=torch.Generator().manual_seed(12))
    out = {}
    for fused in (False, True):
        m.fused_decode = fused
        cache = KVCache()
        with torch.inference_mode():
            out[fused] = torch.stack([decode.forward(m, toks[:, j:j + 1], cache=cache)[:, -1] for j in range(4)], 1)
        assert m.last_decode_path == ("fused" if fused else "python")
    assert (out[True] - out[False]).abs().max().item() <= 2e-4 * out[False].abs().max().item()
    # no rows: the fused path declines (the Python path then raises its own error)
    from moorelab.model.fused_decode import decode_step
    with torch.inference_mode():
        assert decode_step(m, toks[:0, :1], KVCache()) is None


def test_masks_other_than_left_padding_take_the_python_path():
    m = tiny()
    with torch.inference_mode():
        # a mask given with the step itself
        cache = KVCache()
        m(PROMPT, attention_mask=torch.ones_like(PROMPT), cache=cache)
        decode.forward(m, torch.tensor([[1]]), attention_mask=torch.ones(1, 6, dtype=torch.long), cache=cache)
        assert m.last_decode_path == "python"
        decode.forward(m, torch.tensor([[1]]), cache=cache)  # the kept all-ones mask is left padding of 0
        assert m.last_decode_path == "fused"
        # right padding, and a hole in the middle: not left padding
        for row in ([1, 1, 1, 0, 0], [1, 0, 1, 1, 1]):
            cache = KVCache()
            am = torch.tensor([row, [1] * 5])
            m(PROMPT.repeat(2, 1), attention_mask=am, cache=cache)
            decode.forward(m, torch.tensor([[1], [2]]), cache=cache)
            assert m.last_decode_path == "python", row
            assert cache.mask.shape == (2, 6)


def test_plan_is_rebuilt_when_a_layer_is_swapped_mid_generation():
    m = tiny()
    ref_model, c_fused, c_ref = _prefilled(m)
    with torch.inference_mode():
        decode.forward(m, torch.tensor([[7]]), cache=c_fused)
        decode.forward(ref_model, torch.tensor([[7]]), cache=c_ref)
        quantize_(m, Int4WeightOnlyConfig(group_size=32))  # swaps every Linear for a new module
        quantize_(ref_model, Int4WeightOnlyConfig(group_size=32))
        got = decode.forward(m, torch.tensor([[9]]), cache=c_fused)
        want = decode.forward(ref_model, torch.tensor([[9]]), cache=c_ref)
    assert m.last_decode_path == "fused"
    _assert_close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [None, "int8"])
def test_smollm2_fused_greedy_tokens_equal_python_path(smollm2, spec):
    from moorelab.model.generate import generate

    ids = torch.tensor([smollm2.tokenizer.encode("The capital of France is Paris. The capital of Italy is").ids])
    m = smollm2.model if spec is None else copy.deepcopy(smollm2.model)
    if spec:
        apply(m, parse_spec(spec))
    try:
        m.fused_decode = False
        ref = generate(m, ids, max_new_tokens=24)
        m.fused_decode = True
        got = generate(m, ids, max_new_tokens=24)
        assert m.last_decode_path == "fused"
    finally:
        m.fused_decode = True
    assert torch.equal(got, ref)


# ------------------------------------------------------------------ dispatch, long context, cache binding


_KINDS = [None, "int8", "int4:group_size=32", "int4:group_size=64", "int4:group_size=32,activation_bits=16",
          "int4:group_size=32,activation_bits=8", "int8-dynamic", "int8-dynamic:activation_block=32"]


# K = 96: 3 blocks of 32 (the int4 a8 g32 rows' pair and lone block); groups of 64 need K = 128
@pytest.mark.parametrize("spec,k", [(s, 128) for s in _KINDS] + [(s, 96) for s in _KINDS if "group_size=64" not in (s or "")])
def test_each_layer_kind_runs_its_own_kernel_in_the_fused_dispatcher(spec, k):
    # Same input, same kernel: the C dispatcher's output is bit-identical to the module's own
    # decode call, so a layer routed to the wrong kernel (e.g. a8 to the float-activation one) fails.
    import ctypes

    from moorelab.model.fused_decode import _lin_struct, _linear_descriptor
    from moorelab.model.transformer import FastLinear

    torch.manual_seed(0)
    holder = torch.nn.Sequential(FastLinear(k, 75))  # 75 rows: 18 full 4-row tiles and one of 3
    if spec:
        apply(holder, parse_spec(spec))
    layer = holder[0]
    d = _linear_descriptor(layer)
    assert not isinstance(d, str), d
    x = torch.randn(1, k)
    with torch.inference_mode():
        ref = layer(x)
    # the fused decode splits a layer's tiles over the threads (and q/k/v, gate/up share one
    # split): 1, 2 and 3 threads give the module's numbers bit for bit
    for threads in (1, 2, 3):
        y = torch.full((1, 75), float("nan"))
        lin = _lin_struct(kernels, d)
        lin.nthreads = threads
        rc = kernels.get_library().lin_forward(ctypes.byref(lin), x.data_ptr(), y.data_ptr())
        assert rc == 0
        assert torch.equal(y, ref), threads


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("kv_dtype", [None, torch.float16])
def test_threaded_attention_over_a_long_context(threads, kv_dtype):
    # T * n_heads >= 2048 splits the C attention's positions over the threads (partial softmaxes
    # merged); 600 + 14 positions are not a multiple of 2 or 3 threads, nor of the 64-key steps
    with torch_threads(threads):
        prompt = torch.randint(0, 61, (1, 600), generator=torch.Generator().manual_seed(6))
        assert_same(tiny(max_position_embeddings=1024), prompt=prompt, max_len=None, kv_dtype=kv_dtype)


def _step(m, cache, t):
    with torch.inference_mode():
        return decode.forward(m, torch.tensor([[t]]), cache=cache)[0, -1]


def test_cache_rebinds_when_its_buffers_are_replaced_or_grown_elsewhere():
    m = tiny()
    ref = copy.deepcopy(m)
    ref.fused_decode = False
    c, r = KVCache(max_len=8), KVCache(max_len=8)
    with torch.inference_mode():
        m(PROMPT, cache=c)
        ref(PROMPT, cache=r)
    outs = []
    for i, t in enumerate(STEPS[:6]):
        if i == 1:
            c.reserve(0, 1, 2, 16, 100, torch.float32, "cpu")  # public growth of one layer's buffers
        if i == 2:
            c.k[1] = c.k[1].clone()  # a buffer replaced behind the plan's back
        if i == 3:  # a multi-token call on the Python path grows every buffer (8 -> 16 positions)
            with torch.inference_mode():
                extra = torch.tensor([[3, 4, 5, 6]])
                m(extra, cache=c)
                ref(extra, cache=r)
        outs.append((_step(m, c, t), _step(ref, r, t), m.last_decode_path))
    for got, want, path in outs:
        assert path == "fused"
        assert (got - want).abs().max().item() <= 2e-4 * want.abs().max().item()


def test_cache_of_another_model_shape_is_refused_not_overwritten():
    small, big = tiny(), tiny(n_kv_heads=4)
    c = KVCache()
    with torch.inference_mode():
        small(PROMPT, cache=c)
        with pytest.raises(RuntimeError):  # the Python path's own shape error, not a silent write
            decode.forward(big, torch.tensor([[1]]), cache=c)
    assert big.last_decode_path == "python"


def test_plan_follows_changes_that_register_nothing():
    m = tiny()
    c = KVCache()
    with torch.inference_mode():
        m(PROMPT, cache=c)
    _step(m, c, 1)
    assert m.last_decode_path == "fused"
    calls = []
    h = m.blocks[0].ffn.register_forward_hook(lambda *a: calls.append(1))
    _step(m, c, 2)
    assert calls and m.last_decode_path == "python"
    h.remove()
    # a pre-hook on a linear the C code runs, and a forward replaced on an instance after the
    # plan was built: both send the step to the Python path, and their removal brings it back
    pre = m.blocks[1].attn.q_proj.register_forward_pre_hook(lambda *a: calls.append(2))
    _step(m, c, 2)
    assert 2 in calls and m.last_decode_path == "python"
    pre.remove()
    _step(m, c, 2)
    assert m.last_decode_path == "fused"
    norm = m.blocks[1].ffn_norm
    norm.forward = lambda x, _f=type(norm).forward, _n=norm: (calls.append(3), _f(_n, x))[1]
    _step(m, c, 2)
    assert 3 in calls and m.last_decode_path == "python"
    del norm.forward
    _step(m, c, 2)
    assert m.last_decode_path == "fused"
    m.blocks[1].attn.record = {}
    _step(m, c, 3)
    assert "weights" in m.blocks[1].attn.record and m.last_decode_path == "python"
    m.blocks[1].attn.record = None
    # a weight whose storage is swapped with .data = must be the one used
    ref = copy.deepcopy(m)
    ref.fused_decode = False
    r = copy.deepcopy(c)
    new_w = torch.randn_like(m.blocks[0].ffn.down_proj.weight)
    m.blocks[0].ffn.down_proj.weight.data = new_w.clone()
    ref.blocks[0].ffn.down_proj.weight.data = new_w.clone()
    got, want = _step(m, c, 4), _step(ref, r, 4)
    assert m.last_decode_path == "fused"
    assert (got - want).abs().max().item() <= 2e-4 * want.abs().max().item()
    m.blocks[2].ffn_norm.eps = m.blocks[2].attn_norm.eps = 0.5
    ref.blocks[2].ffn_norm.eps = ref.blocks[2].attn_norm.eps = 0.5
    got, want = _step(m, c, 5), _step(ref, r, 5)
    assert (got - want).abs().max().item() <= 2e-4 * want.abs().max().item()
    # training: gradients need the Python path
    m.blocks[0].attn.q_proj.weight.requires_grad_(True)
    c4 = KVCache()
    with torch.no_grad():  # (inference-mode caches cannot be written with autograd on)
        m(PROMPT, cache=c4)
    with torch.enable_grad():
        decode.forward(m, torch.tensor([[6]]), cache=c4).sum().backward()
    assert m.last_decode_path == "python" and m.blocks[0].attn.q_proj.weight.grad is not None


def test_cache_can_be_copied_after_fused_steps():
    import pickle

    m = tiny()
    c = KVCache()
    with torch.inference_mode():
        m(PROMPT, cache=c)
    _step(m, c, 1)
    c2 = copy.deepcopy(c)
    c3 = pickle.loads(pickle.dumps(c))
    a, b, d = _step(m, c, 2), _step(m, c2, 2), _step(m, c3, 2)
    assert m.last_decode_path == "fused"
    assert torch.equal(a, b) and torch.equal(a, d)
    assert c2.k[0].data_ptr() != c.k[0].data_ptr()


# ------------------------------------------------------------------ one parallel region per token: rows, head


@pytest.mark.parametrize("spec,k", [(None, 37), ("int8", 37), ("int8-dynamic", 37), ("int8-dynamic:activation_block=32", 37),
                                    ("int8-dynamic:activation_block=32", 64), ("int4:group_size=32", 96),
                                    ("int4:group_size=32,activation_bits=16", 96),
                                    ("int4:group_size=32,activation_bits=8", 96),
                                    # 10 blocks: a step of 8 blocks, then a short step of 2 (one pair)
                                    ("int4:group_size=32,activation_bits=8", 320),
                                    ("int4:group_size=64,activation_bits=8", 320)])
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("threads", [1, 3])
def test_row_split_linear_matches_a_float64_reference(spec, k, n, threads):
    # ml_lin_forward runs a layer as the fused decode does: its 4-row tiles split over the
    # threads, each range through the kernel's one-thread row function (x prepared once per
    # thread). Edge shapes: K off the 16/32-wide vector block (float / int8 kinds; int4 needs K a
    # multiple of its group), one output row, a partial tile, more threads than tiles.
    import ctypes

    from moorelab.model.fused_decode import _lin_struct, _linear_descriptor
    from moorelab.model.transformer import FastLinear

    torch.manual_seed(1)
    holder = torch.nn.Sequential(FastLinear(k, n))
    if spec:
        apply(holder, parse_spec(spec))
    layer = holder[0]
    w = layer.dequantize() if spec else layer.weight.detach()  # the weights the layer multiplies by
    x = torch.randn(1, k)
    ref = x.double() @ w.double().t() + layer.bias.detach().double()
    if spec and spec.endswith("activation_block=32"):
        # per-32-block rounding is exact arithmetic on the rounded x: check it to float32 rounding
        # (a per-token rounding, or a short last block scaled with the wrong step, fails here)
        from moorelab.improve.quantize import quantize_activations_per_block

        xq, bs = quantize_activations_per_block(x)
        xr = xq.double() * bs.double().repeat_interleave(32, dim=1)[:, :k]
        ref = xr @ w.double().t() + layer.bias.detach().double()
    lin = _lin_struct(kernels, _linear_descriptor(layer))
    lin.nthreads = threads
    y = torch.full((1, n), float("nan"))
    assert kernels.get_library().lin_forward(ctypes.byref(lin), x.data_ptr(), y.data_ptr()) == 0
    # float kinds: float32 rounding; rounded activations: the rounding of x (8 bits: ~1/254 of a
    # block's largest |x| per element, summed over K with the weights)
    if spec in (None, "int8") or spec.endswith("activation_block=32"):
        tol = 1e-5
    else:
        tol = 1e-2 if spec.endswith("bits=8") or spec.startswith("int8-dynamic") else 1e-4
    scale = (x.double().abs() @ w.double().abs().t()).max().item()
    err = (y.double() - ref).abs().max().item()
    assert err <= tol * scale, (err, scale)


@pytest.mark.parametrize("spec,k", [(None, 64), ("int8-dynamic:activation_block=32", 96),
                                    ("int8-dynamic:activation_block=32", 37),
                                    ("int4:group_size=32,activation_bits=8", 96)])
@pytest.mark.parametrize("threads", [1, 3])
def test_row_split_linear_with_enough_rows_to_prefetch_ahead(spec, k, threads):
    # the decode rows prefetch tiles ahead only in a range longer than the prefetch distance (int8
    # b32 at K = 96: 21 tiles, 88 rows; common.h's spread prefetch): 301 rows, a partial last tile,
    # K = 96 (32- but not 64-byte multiples) and K = 37 (a short block in every row)
    test_row_split_linear_matches_a_float64_reference(spec, k, 301, threads)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("spec", [None, "int8", "int4:group_size=32"])
def test_output_layer_runs_inside_the_fused_call(threads, spec):
    # the final norm and lm_head (vocab 61: 15 full tiles and a partial one) run in the same
    # compiled call as the layers, on 1 and 3 threads, and give the Python path's logits
    # (rounded-activation kinds: test_fused_rounded_activation_kernels_agree_within_their_rounding)
    from moorelab.model.fused_decode import _build

    with torch_threads(threads):
        m = tiny()
        if spec:
            apply(m, parse_spec(spec))
        assert _build(m).head is not None
        assert_same(m)


def test_output_layer_without_a_kernel_runs_in_torch_after_the_fused_layers():
    # an lm_head the C side cannot run (a parametrized weight, computed at every access) leaves
    # the layers fused and the head to torch, with the same logits
    from torch.nn.utils import parametrize

    from moorelab.model.fused_decode import _build

    class Same(torch.nn.Module):
        def forward(self, w):
            return w

    m = tiny()
    m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())  # untie before parametrizing
    parametrize.register_parametrization(m.lm_head, "weight", Same())
    plan = _build(m)
    assert plan.reason is None and plan.head is None
    assert_same(m)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("spec", [None, "int8", "int4:group_size=32", "int8-dynamic", "int8-dynamic:activation_block=32"])
def test_every_linear_split_over_threads_inside_the_fused_call(threads, spec, monkeypatch):
    # the tiny model's layers are below the sizes where a second thread pays (FastLinear.SMALL,
    # _FUSED_SINGLE_THREAD_WEIGHTS), so elsewhere thread 0 runs every GEMV; with both at 0 each
    # linear's rows and the head's are split over 2 or 3 threads inside the one parallel region
    # (residual adds into x from several threads, per-thread activation caches), and the logits
    # still equal the Python path's
    from moorelab.improve.quantize import base
    from moorelab.model.fused_decode import _build
    from moorelab.model.transformer import FastLinear

    monkeypatch.setattr(FastLinear, "SMALL", 0)
    monkeypatch.setattr(base, "_FUSED_SINGLE_THREAD_WEIGHTS", 0)
    with torch_threads(threads):
        m = tiny()
        if spec:
            apply(m, parse_spec(spec))
        plan = _build(m)
        lins = [getattr(plan.layers[i], f) for i in range(LLAMA["n_layers"])
                for f in ("q", "k", "v", "o", "gate", "up", "down")] + [plan.head]
        assert [lin.nthreads for lin in lins] == [threads] * len(lins)
        assert_same(m)


def _prefilled(m, python_ref: bool = True):
    """``(ref, c, r)``: a copy of ``m`` (on the Python path when ``python_ref``) and caches
    holding ``PROMPT`` for ``m`` and for it."""
    ref = copy.deepcopy(m)
    ref.fused_decode = not python_ref
    c, r = KVCache(), KVCache()
    with torch.inference_mode():
        m(PROMPT, cache=c)
        ref(PROMPT, cache=r)
    return ref, c, r


def _assert_close(got, want):
    assert (got - want).abs().max().item() <= 2e-4 * want.abs().max().item()


def _count_full_checks(monkeypatch) -> list:
    """From now on, a list that gets one entry per full plan check (``_Plan.still_valid`` call)."""
    checks = []
    real = fused_decode._Plan.still_valid

    def counting(self, model):
        checks.append(1)
        return real(self, model)

    monkeypatch.setattr(fused_decode._Plan, "still_valid", counting)
    return checks


def test_steady_block_gives_the_checked_steps_numbers_and_checks_once(monkeypatch):
    m = tiny()
    ref, c, r = _prefilled(m, python_ref=False)
    _step(m, c, 0), _step(ref, r, 0)  # each cache has its plan before the counting starts
    checks = _count_full_checks(monkeypatch)
    with fused_decode.steady(m) as same:
        assert same is m
        got = [_step(m, c, t) for t in STEPS[:6]]
    want = [_step(ref, r, t) for t in STEPS[:6]]
    assert m.last_decode_path == ref.last_decode_path == "fused"
    for g, w in zip(got, want):
        assert torch.equal(g, w)  # the same plan and kernels: bit for bit
    # the checked model ran the full check on each of its 6 steps; the steady one on its first
    # step only (the plan from before the block validated once, then O(1) checks)
    assert len(checks) == 1 + 6
    assert fused_decode._open_block(m) is None


def test_steady_blocks_nest_close_in_any_order_and_release_their_storages(monkeypatch):
    m = tiny()
    _ref, c, _r = _prefilled(m)
    _step(m, c, 0)
    checks = _count_full_checks(monkeypatch)
    with fused_decode.steady(m):
        outer = fused_decode._open_block(m)
        _step(m, c, 1)
        plan = c.__dict__["_fused_plan"]
        assert plan.steady is outer and plan.held is not None and len(checks) == 1
        with fused_decode.steady(m):
            inner = fused_decode._open_block(m)
            assert inner is not outer
            _step(m, c, 2)
            _step(m, c, 3)
            assert plan.steady is inner and len(checks) == 2  # validated again for the inner block
        assert fused_decode._open_block(m) is outer and plan.held is None
        _step(m, c, 4)
        _step(m, c, 5)
        assert plan.steady is outer and len(checks) == 3  # and again for the outer one
        assert len(outer.plans) == 1  # the same plan, listed once
        copied = copy.deepcopy(m)  # a copy made inside the block is not in it
        assert fused_decode._open_block(copied) is None
        # another thread decoding the same model is not in this thread's block
        seen = []
        t = threading.Thread(target=lambda: seen.append(fused_decode._open_block(m)))
        t.start()
        t.join()
        assert seen == [None]
    assert fused_decode._open_block(m) is None and plan.held is None and plan.steady is None
    # blocks closed out of order leave none open, and each releases what it held
    a, b = fused_decode.steady(m), fused_decode.steady(m)
    a.__enter__()
    _step(m, c, 6)
    b.__enter__()
    inner_b = fused_decode._open_block(m)
    _step(m, c, 7)
    assert plan.steady is inner_b and plan.held is not None
    a.__exit__(None, None, None)
    assert fused_decode._open_block(m) is inner_b and plan.held is not None
    b.__exit__(None, None, None)
    assert fused_decode._open_block(m) is None and plan.held is None


def test_steady_block_still_rebuilds_on_registration_and_releases_the_new_plan():
    m = tiny()
    ref, c, r = _prefilled(m)
    with fused_decode.steady(m):
        _step(m, c, 1)
        _step(ref, r, 1)
        first = c.__dict__["_fused_plan"]
        # a swapped layer registers a module: the plan is rebuilt inside the block too
        quantize_(m, Int4WeightOnlyConfig(group_size=32))
        quantize_(ref, Int4WeightOnlyConfig(group_size=32))
        got, want = _step(m, c, 2), _step(ref, r, 2)
        second = c.__dict__["_fused_plan"]
        assert second is not first and m.last_decode_path == "fused"
        _assert_close(got, want)
        assert second.held is not None
    assert second.held is None and second.steady is None  # released with the block


def test_steady_block_holds_the_storages_a_broken_contract_leaves_stale_not_freed():
    m = tiny()
    _ref, c, _r = _prefilled(m)
    lin = m.blocks[0].ffn.down_proj
    with fused_decode.steady(m):
        _step(m, c, 1)
        plan = c.__dict__["_fused_plan"]
        old_ptr, old_vals = lin.weight.data_ptr(), lin.weight.detach().clone()
        lin.weight.data = torch.randn_like(lin.weight)  # against the contract: not re-checked in the block
        held = [s for s in plan.held if s.data_ptr() == old_ptr]
        assert len(held) == 1 and torch._C._storage_Use_Count(held[0]._cdata) == 1  # the plan its only owner
        old_w = torch.empty(0).set_(held[0], 0, old_vals.shape)
        assert torch.equal(old_w, old_vals)  # and intact
        # the (tied) embedding table replaced by a smaller one: the copy still reads the held old
        # table (id 50 is past the new one's 10 rows), then the table is put back
        table = m.embed.weight.data
        lin.weight.data = old_w  # (back to the old weight's storage, for the reference below)
        before = copy.deepcopy(m)
        before.fused_decode = False
        r0 = copy.deepcopy(c)
        m.embed.weight.data = torch.randn(10, m.config.d_model)
        got, want = _step(m, c, 50), _step(before, r0, 50)
        assert m.last_decode_path == "fused" and torch.equal(old_w, old_vals)
        _assert_close(got, want)
        m.embed.weight.data = table
    ref = copy.deepcopy(m)
    ref.fused_decode = False
    r = copy.deepcopy(c)
    got, want = _step(m, c, 3), _step(ref, r, 3)  # outside the block: checked, the new weights used
    _assert_close(got, want)


def test_fused_step_copies_token_rows_and_refuses_ids_out_of_range():
    m = tiny()
    _ref, c, _r = _prefilled(m)
    with torch.inference_mode():
        _step(m, c, 1)
        plan = c.__dict__["_fused_plan"]
        assert plan.embed is not None and plan.embed[0] is m.embed
        # more than one token per row is not a decode step (decode.forward never sends one)
        assert fused_decode.decode_step(m, torch.tensor([[1, 2, 3]]), c) is None
        assert c.length == PROMPT.shape[1] + 1
        with pytest.raises(IndexError, match="input_ids"):
            decode.forward(m, torch.tensor([[61]]), cache=c)
        with pytest.raises(IndexError, match="input_ids"):
            decode.forward(m, torch.tensor([[-1]]), cache=c)
    # a hook on the embedding (the copy would skip it) sends the step to the Python path
    calls = []
    h = m.embed.register_forward_hook(lambda *a: calls.append(1))
    _step(m, c, 2)
    assert calls and m.last_decode_path == "python"
    h.remove()
    # an embedding that renormalises rows in its forward keeps its own forward (and the numbers)
    m2 = tiny()
    m2.embed.max_norm = 1.0
    ref2, c2, r2 = _prefilled(m2)
    got, want = _step(m2, c2, 5), _step(ref2, r2, 5)
    assert m2.last_decode_path == "fused" and c2.__dict__["_fused_plan"].embed is None
    _assert_close(got, want)
    # max_norm set after the plan was built (a plain attribute: nothing registered)
    m3 = tiny()
    ref3, c3, r3 = _prefilled(m3)
    _step(m3, c3, 1), _step(ref3, r3, 1)
    m3.embed.max_norm = ref3.embed.max_norm = 0.5
    got, want = _step(m3, c3, 2), _step(ref3, r3, 2)
    assert m3.last_decode_path == "fused"
    _assert_close(got, want)


def test_greedy_into_is_refused_in_any_other_form():
    m = tiny()
    cache = KVCache(max_len=8)
    with torch.inference_mode():
        m(PROMPT, cache=cache)
        for bad in (torch.empty(1, dtype=torch.int32), torch.empty(2, dtype=torch.long),
                    torch.empty(1, 1, dtype=torch.long), torch.empty(1)):
            with pytest.raises(ValueError, match="greedy_into"):
                decode.forward(m, torch.tensor([[3]]), cache=cache, greedy_into=bad)
        assert cache.length == PROMPT.shape[1]  # refused before anything ran
        m.fused_decode = False  # the Python path refuses them too (it would cast into an int32 tensor)
        for bad in (torch.empty(1, dtype=torch.int32), torch.empty(2, dtype=torch.long), torch.empty(1)):
            with pytest.raises(ValueError, match="greedy_into"):
                decode.forward(m, torch.tensor([[3]]), cache=cache, greedy_into=bad)
            with pytest.raises(ValueError, match="greedy_into"):  # a prompt (T > 1): the Python path
                decode.forward(m, PROMPT, greedy_into=bad)
        m.fused_decode = True
        with pytest.raises(ValueError, match="return_hidden"):
            decode.forward(m, PROMPT, greedy_into=torch.empty(1, dtype=torch.long), return_hidden=True)


def test_greedy_generation_picks_inside_the_fused_call(monkeypatch):
    # generate's greedy steps take the pick from the fused call (no argmax after it) and give the
    # Python path's tokens
    from moorelab.model import generate as gen_mod

    m = tiny()
    ref_m = copy.deepcopy(m)
    ref_m.fused_decode = False
    paths = []
    ref = gen_mod.generate(ref_m, PROMPT, max_new_tokens=6, on_token=lambda _t: paths.append(ref_m.last_decode_path))
    assert paths == ["python"] * 6
    calls, paths = [], []
    monkeypatch.setattr(gen_mod, "sample_next", lambda *a, **k: calls.append(1) or torch.zeros(1, dtype=torch.long))
    got = gen_mod.generate(m, PROMPT, max_new_tokens=6, on_token=lambda _t: paths.append(m.last_decode_path))
    assert paths == ["python"] + ["fused"] * 5 and calls == []
    assert torch.equal(got, ref)


@pytest.mark.parametrize("spec", [None, "int4:group_size=32"])
def test_greedy_pick_fed_back_as_the_next_input(spec):
    # the decoding loops' form: the tensor given as input_ids receives the step's pick (its ids
    # were read before the call writes it) and is the next step's input; the same tokens as the
    # Python path's argmax decoding
    m = tiny()
    if spec:
        apply(m, parse_spec(spec))

    def decode_loop(model, fused):
        model.fused_decode = fused
        cache = KVCache(max_len=8)
        toks = []
        with torch.inference_mode():
            x = model(PROMPT, cache=cache)[:, -1:].argmax(-1)
            for _ in range(10):
                toks.append(int(x))
                decode.forward(model, x, cache=cache, greedy_into=x.view(-1))
                assert model.last_decode_path == ("fused" if fused else "python")
        return toks

    ref = decode_loop(copy.deepcopy(m), False)
    assert len(set(ref)) > 2  # not one token over and over
    assert decode_loop(m, True) == ref
