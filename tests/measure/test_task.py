"""measure_model decodes a LLaMA-family model on the fused path and says which path its row ran."""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.measure.task import Budget, measure_model
from moorelab.measure.text import Text
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer

LLAMA = dict(family="llama", vocab_size=61, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
             max_position_embeddings=128, rope_theta=100.0)
BUDGET = Budget(max_chars=1000, window=32, stride=16, prefill_tokens=16, decode_tokens=3, batch_size=2,
                calibration_tokens=0)


class _Progress:
    def add_task(self, *_a, **_k):
        return 0

    def advance(self, *_a):
        pass


def _row(model: Transformer) -> dict:
    token_ids = torch.randint(0, 61, (80,), generator=torch.Generator().manual_seed(0)).tolist()
    text = Text(text="x" * 200, source="test", description="test")
    row, _ = measure_model("tiny", "none", "k", model, token_ids, text, BUDGET, 0, _Progress())
    return row


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
def test_speed_test_decodes_on_the_fused_path():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**LLAMA)).eval()
    assert _row(model)["kernel"] == "k; fused decode"
    assert model.last_decode_path == "fused"
    model.fused_decode = False
    assert _row(model)["kernel"] == "k; Python decode"


def test_kernel_label_names_decode_and_prefill_kernels():
    from moorelab.improve.quantize.int4 import Int4WeightOnlyLinear
    from moorelab.measure.task import FP32_KERNEL, kernel_label

    net = torch.nn.Sequential(torch.nn.Linear(64, 8))
    assert kernel_label(net) == FP32_KERNEL
    q = torch.nn.Sequential(Int4WeightOnlyLinear.from_linear(torch.nn.Linear(64, 8), 32, activation_bits=8))
    label = kernel_label(q)
    if kernels.get_library() is None:  # the torch fallback: one name for both
        assert label == q[0].kernel
    else:
        assert label == ("moorelab-avx2-gemv int4-g32 x int8-act, "
                         "moorelab-avx2-gemm int4-g32 x int8-act (vpmaddubsw, integer) (prefill)")
