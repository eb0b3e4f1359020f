"""Wanda: |W|·‖X‖₂ scores from calibration inputs, exact counts per output row."""

import copy

import torch

from moorelab.improve.prune import WandaConfig, current_mask, prunable_linears, prune_
from prune_helpers import CAL, tiny


def test_wanda_scores_and_per_row_counts():
    m = tiny()
    dense = copy.deepcopy(m)
    # inputs of blocks.0.attn.q_proj in the dense model: attn_norm(embed(x))
    x = dense.embed(CAL)
    a = dense.blocks[0].attn_norm(x).detach().reshape(-1, 24)
    norm = a.pow(2).sum(0).sqrt()
    w = dense.blocks[0].attn.q_proj.weight.detach()
    scores = w.abs() * norm
    k = round(0.5 * 24)
    expected_keep = torch.ones_like(w, dtype=torch.bool)
    expected_keep.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], False)

    r = prune_(m, WandaConfig(0.5, calibration_tokens=CAL.numel()), CAL)
    assert r.calibration_tokens == CAL.numel()
    assert torch.equal(current_mask(m.blocks[0].attn.q_proj), expected_keep)
    for _, l in prunable_linears(m):
        assert ((l.weight == 0).sum(1) == round(0.5 * l.in_features)).all()
    assert r.zeroed == sum(l.out_features * round(0.5 * l.in_features) for _, l in prunable_linears(m))
    # activation-aware: differs from per-row magnitude on the same layer
    mag_keep = torch.ones_like(w, dtype=torch.bool)
    mag_keep.scatter_(1, torch.sort(w.abs(), dim=1, stable=True).indices[:, :k], False)
    assert not torch.equal(mag_keep, expected_keep)
