"""The interleaved decode re-measurements of `moorelab run` decode on the fused path, like the first one."""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.measure.task import Budget
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer
from moorelab.report.run import interleave_decode_rounds

LLAMA = dict(family="llama", vocab_size=61, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
             max_position_embeddings=128, rope_theta=100.0)
BUDGET = Budget(max_chars=1000, window=32, stride=16, prefill_tokens=16, decode_tokens=3, batch_size=2,
                calibration_tokens=0)


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
def test_decode_rounds_take_the_fused_path():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**LLAMA)).eval()
    metrics = {k: {"value": 1.0} for k in ("decode_tokens_per_s", "decode_cpu_share", "usd_per_million_tokens_decode")}
    rows = [{"name": "tiny", "metrics": metrics, "speed_protocol": {}}]
    token_ids = torch.randint(0, 61, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    interleave_decode_rounds(rows, {"tiny": model}, token_ids, BUDGET, 0.25, rounds=2)
    assert model.last_decode_path == "fused"
    assert len(rows[0]["speed_protocol"]["decode_rounds"]) == 3
