"""The measures behind the quantization report: SQNR and real storage bytes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moorelab.improve.quantize import (
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    quantize_,
    sqnr_db,
    weight_bytes,
)


def test_sqnr_definition():
    w = torch.ones(100)
    assert sqnr_db(w, 0.9 * w) == pytest.approx(20.0)  # ‖W‖² = 100, ‖W−Ŵ‖² = 1
    assert sqnr_db(w, w) == math.inf


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
