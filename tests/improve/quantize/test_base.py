"""QuantizedLinear for every scheme: kernels vs dequantized references, fallbacks, copies,
state dicts, shapes.

No timing here (speed lives in benchmarks/bench_quant_kernels.py).
"""

from __future__ import annotations

import copy

import pytest
import torch

from moorelab import kernels
from moorelab.improve.quantize import Int4WeightOnlyConfig, Int8WeightOnlyConfig, dequantize_int4, quantize_
from quantize_helpers import CONFIGS, _assert_matches, _holder, _reference


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


def test_compiled_kernels_available_here():
    """gcc + AVX2 are expected on the development machines; say why if not."""
    if kernels.get_library() is None:
        pytest.skip(f"compiled kernels unavailable (pure-torch path tested above): {kernels.status()}")
    model = _holder(64, 8)
    quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert model[0].kernel == "moorelab-avx2-gemv int4-g32"


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
