"""Helpers shared by the quantization tests: one config per scheme, a one-layer model, and the
float64 reference a quantized module must match."""

from __future__ import annotations

import torch
from torch import nn

from moorelab.improve.quantize import (
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8DynamicLinear,
    Int8WeightOnlyConfig,
    Int8WeightOnlyLinear,
    QuantizedLinear,
    quantize_activations_per_token,
    round_activations_blocks,
    round_activations_rows,
)

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
    """Float64 reference of what the module's latest call computed (dequantized weight; per-token
    int8 x; for int8 weight-only prefill through the compiled GEMM, x rounded per row to int16)."""
    if isinstance(mod, Int8DynamicLinear):
        xq, sx = quantize_activations_per_token(x)
        xd = xq.double() * sx.double()[:, None]
    elif getattr(mod, "activation_bits", 32) < 32:
        # a16/a8: the whole dequantized weight (min term included) on x rounded per 32-block (every path)
        xd = round_activations_blocks(x, mod.activation_bits).double()
    elif isinstance(mod, Int8WeightOnlyLinear) and mod._lib is not None and mod.last_kernel == mod.prefill_kernel:
        xd = round_activations_rows(x, 16).double()
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
