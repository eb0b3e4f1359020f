"""int4 weight-only quantization: packing and group golden values, outliers, activation
rounding (a16/a8), group-size errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab import kernels
from moorelab.improve.quantize import (
    Int4WeightOnlyConfig,
    dequantize_int4,
    pack_int4,
    quantize_,
    quantize_int4_groupwise,
    round_activations_blocks,
    sqnr_db,
    unpack_int4,
)
from quantize_helpers import _holder


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


@pytest.mark.parametrize("bad", [0, 16, 48, -32, 3.0])
def test_bad_group_size_config(bad):
    with pytest.raises(MoorelabError, match="group_size"):
        Int4WeightOnlyConfig(group_size=bad)


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


@pytest.mark.parametrize("k,n", [(320, 7), (512, 4), (96, 1)])
def test_a8_g32_kernel_equals_its_integer_arithmetic_in_float64(k, n):
    # the a8 kernel for groups of 32 (w4a8_dot4_g32 / w4a8_dot1_g32: scales folded per block, 8
    # blocks per vector step, blocks taken in pairs, a last odd block alone) computes
    # sum_k xr[k] * (scale * q + min), where xr is x rounded per 32-block to int8 steps (the min
    # term on the rounded x too): checked in float64 to float32 rounding.
    # K = 320: 10 blocks (a step of 8, then a short step of one pair); 512: two full steps; 96: 3
    # blocks, one pair and a lone block; N = 7 and 1: partial 4-row tiles.
    if kernels.get_library() is None:
        pytest.skip(f"compiled kernels unavailable: {kernels.status()}")
    torch.manual_seed(k + n)
    model = _holder(k, n)
    quantize_(model, Int4WeightOnlyConfig(group_size=32, activation_bits=8, kernel="moorelab"))
    layer = model[0]
    x = torch.randn(1, k) * torch.linspace(0.1, 3.0, k)
    with torch.inference_mode():
        y = layer(x)
    assert layer.last_kernel == layer.kernel and "int8-act" in layer.kernel
    w = layer.dequantize().double()
    xr = round_activations_blocks(x, 8).double()
    ref = xr @ w.t()
    if layer.bias is not None:
        ref = ref + layer.bias.double()
    scale = (xr.abs() @ w.abs().t()).max().item()
    assert (y.double() - ref).abs().max().item() <= 2e-6 * scale


@pytest.mark.parametrize("bits", [16, 8])
def test_a_nan_or_infinity_in_x_reaches_the_output_on_every_path(bits):
    # the rounded activations drop a NaN (it rounds to no integer); the min term keeps the float
    # group sum when that is not finite, so y is NaN as float activations would make it
    model = _holder(64, 12)
    quantize_(model, Int4WeightOnlyConfig(group_size=32, activation_bits=bits))
    for bad in (float("nan"), float("inf")):
        x = torch.randn(16, 64)
        x[:, 5] = bad
        with torch.inference_mode():
            prefill, decode = model(x), model(x[:1])
        assert not torch.isfinite(prefill).any(), (bad, model[0].last_kernel)
        assert not torch.isfinite(decode).any(), bad
        x[:, 5] = 1.0
        with torch.inference_mode():
            assert torch.isfinite(model(x)).all() and torch.isfinite(model(x[:1])).all()
