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
