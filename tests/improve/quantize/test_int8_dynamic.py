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
