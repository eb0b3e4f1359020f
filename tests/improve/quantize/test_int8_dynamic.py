"""Dynamic int8 quantization (int8 weights x per-token int8 activations): a hand-made layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moorelab.improve.quantize import Int8DynamicConfig, quantize_


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


def test_dynamic_int8_per_block_hand_made():
    # activation_block=32: one scale per 32 activations. Block 0 holds an outlier (127), block 1
    # small values (at most 127/64): per token both share the step 1 and block 1 rounds to 2 and
    # -1; per block its step is 1/64 and it keeps its digits. (Powers of two: exact in float32.)
    from moorelab.improve.quantize import Int8DynamicBlockLinear, quantize_activations_per_block

    lin = nn.Linear(64, 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 0] = 0.127  # row scale 0.001, q = 127
        lin.weight[0, 32] = 0.1  # q = 100
        lin.weight[0, 33] = -0.05  # q = -50
    model = nn.Sequential(lin)
    quantize_(model, Int8DynamicConfig(activation_block=32))
    assert isinstance(model[0], Int8DynamicBlockLinear)
    x = torch.zeros(1, 64)
    x[0, 0], x[0, 32], x[0, 33] = 127.0, 127 / 64, -63.5 / 64  # bs = [1, 1/64]; xq[33] = -63.5 -> -64 (half to even)
    xq, bs = quantize_activations_per_block(x)
    assert bs[0].tolist() == [1.0, 1 / 64]
    assert (xq[0, 0].item(), xq[0, 32].item(), xq[0, 33].item()) == (127, 127, -64)
    with torch.inference_mode():
        y = model(x)
    # 0.001 * (1 * 127*127 + (1/64) * (127*100 + (-64)*(-50))) = 0.001 * (16129 + 248.4375) = 16.3774375
    assert y.item() == pytest.approx(16.3774375, rel=1e-6)
    # per token the same input loses block 1's digits: 0.001 * (127*127 + 2*100 + (-1)*(-50)) = 16.379
    per_token = nn.Sequential(nn.Linear(64, 1, bias=False))
    with torch.no_grad():
        per_token[0].weight.copy_(lin.weight)
    quantize_(per_token, Int8DynamicConfig())
    with torch.inference_mode():
        assert per_token(x).item() == pytest.approx(16.379, rel=1e-6)


def test_dynamic_int8_block_size_other_than_32_is_refused():
    from moorelab.errors import MoorelabError

    with pytest.raises(MoorelabError, match="activation_block must be None .* or 32"):
        Int8DynamicConfig(activation_block=16)


@pytest.mark.parametrize("k", [64, 50])
def test_dynamic_int8_per_block_kernel_torch_and_prefill_agree(k):
    # the compiled decode kernel, the pure-torch path and the prefill GEMM (x rounded per block,
    # then int16 rows) on the same weights: decode kernel = torch within float32 sums; prefill
    # within the int16 step of the rounded row (1/32767 of its largest value) times sum|w|.
    # K = 50: a short last block (18 values) with its own scale.
    from moorelab import kernels
    from moorelab.improve.quantize import Int8DynamicBlockLinear

    if kernels.get_library() is None:
        pytest.skip(f"compiled kernels unavailable: {kernels.status()}")
    torch.manual_seed(3)
    lin = nn.Linear(k, 9)
    fast = Int8DynamicBlockLinear.from_linear(lin, kernel="moorelab", m_threshold=4)
    ref = Int8DynamicBlockLinear.from_linear(lin, kernel="torch")
    x = torch.randn(12, k)
    x[:, 40 % k] *= 30  # an outlier column
    with torch.inference_mode():
        want = ref(x)
        dec = fast(x[:3])
        assert fast.last_kernel == fast.kernel
        pre = fast(x)
        assert fast.last_kernel == fast.prefill_kernel
    assert (dec - want[:3]).abs().max().item() <= 1e-5 * want.abs().max().item()
    bound = (x.abs().amax(dim=1, keepdim=True) / 32767) * fast.dequantize().abs().sum(dim=1)[None, :]
    assert ((pre - want).abs() <= bound + 1e-5).all()


@pytest.mark.parametrize("m,k", [(5, 64), (3, 50), (1, 7)])
def test_prefill_rounding_in_c_equals_the_torch_definition(m, k):
    # ml_a8b_round (the prefill's rounding of x per 32-block) gives quantize_activations_per_block's
    # values bit for bit, short last blocks and all-zero blocks included
    from moorelab import kernels
    from moorelab.improve.quantize import quantize_activations_per_block

    lib = kernels.get_library()
    if lib is None:
        pytest.skip(f"compiled kernels unavailable: {kernels.status()}")
    torch.manual_seed(m * 100 + k)
    x = torch.randn(m, k) * torch.logspace(-3, 3, k)
    x[0, : min(k, 32)] = 0.0  # an all-zero block: scale 1, values 0
    xq, bs = quantize_activations_per_block(x)
    want = xq.float() * bs.repeat_interleave(32, dim=1)[:, :k]
    got = torch.empty_like(x)
    lib.a8b_round(x.data_ptr(), m, k, got.data_ptr(), 2)
    assert torch.equal(got, want)


def test_int8_kernels_propagate_nan_and_inf():
    # a NaN or an infinity in a row makes that row's outputs NaN (as float activations would),
    # in the decode kernels, the prefill GEMM and the torch paths alike; other rows stay finite
    from moorelab import kernels
    from moorelab.improve.quantize import Int8DynamicBlockLinear, quantize_activations_per_block

    torch.manual_seed(4)
    lin = nn.Linear(64, 5)
    x = torch.randn(10, 64)
    x[0, 5] = float("nan")
    x[3, 40] = float("inf")
    xq, bs = quantize_activations_per_block(x)
    assert torch.isnan(bs[0, 0]) and torch.isnan(bs[3, 1]) and xq[0, :32].abs().sum() == 0
    finite_rows = [1, 2, 4, 5, 6, 7, 8, 9]
    kinds = ["torch"] + (["moorelab"] if kernels.get_library() is not None else [])
    # the per-token variant and int8 weight-only too: the int8 prefill GEMM's row rounding (shared
    # by all three) and the per-token decode rounding make a non-finite row's outputs NaN
    from moorelab.improve.quantize import Int8DynamicLinear, Int8WeightOnlyLinear

    for cls in (Int8DynamicBlockLinear, Int8DynamicLinear, Int8WeightOnlyLinear):
        for kind in kinds:
            layer = cls.from_linear(lin, kernel=kind, m_threshold=4)
            with torch.inference_mode():
                for rows in (x[:4], x):  # 4 rows: decode kernel; 10 rows: prefill
                    y = layer(rows)
                    where = (cls.__name__, kind, rows.shape, layer.last_kernel)
                    assert torch.isnan(y[0]).all(), where
                    # weight-only with float activations (torch, decode GEMV): inf x w is +-inf, as in float32
                    float_act = cls is Int8WeightOnlyLinear and "int16" not in layer.last_kernel
                    assert (~torch.isfinite(y[3]) if float_act else torch.isnan(y[3])).all(), where
                    assert torch.isfinite(y[[r for r in finite_rows if r < rows.shape[0]]]).all(), where
