"""int8 weight-only quantization: golden values, per-channel outliers, kernel tails."""

from __future__ import annotations

import pytest
import torch

from moorelab.improve.quantize import quantize_, quantize_int8_per_channel, sqnr_db
from quantize_helpers import CONFIGS, _assert_matches, _holder, _reference


def test_int8_per_channel_golden():
    w = torch.tensor([[1.27, -0.5, 0.25], [0.0, 0.0, 0.0], [-2.54, 0.02, 1.0]])
    q, s = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, -50, 25], [0, 0, 0], [-127, 1, 50]]
    assert torch.allclose(s, torch.tensor([0.01, 1.0, 0.02]))


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
