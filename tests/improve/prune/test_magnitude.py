"""Magnitude pruning: exact counts (ties broken by position), one global threshold or per
layer, repeated rounds keep earlier zeros."""

import pytest
import torch

from moorelab.improve.prune import DENOMINATOR, MagnitudePruneConfig, current_mask, prunable_linears, prune_
from moorelab.improve.prune.magnitude import _lowest_k_mask
from prune_helpers import tiny


def block_weight_count(m):
    return sum(l.weight.numel() for _, l in prunable_linears(m))


def test_lowest_k_mask_golden_with_ties():
    s = torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])
    assert _lowest_k_mask(s, 2).tolist() == [True, False, True, False, True]
    assert _lowest_k_mask(s, 1).tolist() == [True, False, True, True, True]  # tie: earliest first
    assert _lowest_k_mask(s, 3).tolist() == [True, False, False, False, True]
    assert _lowest_k_mask(s, 0).all() and not _lowest_k_mask(s, 5).any()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_global_exact_count_and_threshold(sparsity):
    m = tiny()
    embed_before = m.embed.weight.detach().clone()
    total = block_weight_count(m)
    r = prune_(m, MagnitudePruneConfig(sparsity, scope="global"))
    assert r.total == total == 2 * (24 * 24 + 2 * 24 * 8 + 24 * 24 + 3 * 24 * 32)
    assert r.zeroed == round(sparsity * total)
    assert r.denominator == DENOMINATOR and "lm_head" in r.denominator and "embeddings" in r.denominator
    assert torch.equal(m.embed.weight, embed_before)  # embeddings (and the tied head) untouched
    w = torch.cat([l.weight.detach().flatten() for _, l in prunable_linears(m)])
    kept_abs = torch.cat([l.weight.detach()[current_mask(l)].abs() for _, l in prunable_linears(m)])
    assert int((w == 0).sum()) == r.zeroed
    if r.zeroed:
        orig = torch.cat([l.weight.detach().flatten() for _, l in prunable_linears(tiny())]).abs()
        pruned_max = orig[w == 0].max()
        assert kept_abs.min() >= pruned_max  # one global threshold


def test_magnitude_layer_scope_exact_per_tensor():
    m = tiny()
    r = prune_(m, MagnitudePruneConfig(0.3, scope="layer"))
    for row in r.layers:
        assert row.masked == round(0.3 * row.total) == row.zeros
    assert r.zeroed == sum(round(0.3 * row.total) for row in r.layers)
    d = r.to_dict()
    assert d["sparsity"] == pytest.approx(r.zeroed / r.total)


def test_exact_count_with_all_weights_tied_in_value():
    m = tiny()
    with torch.no_grad():
        for _, l in prunable_linears(m):
            l.weight.fill_(0.5)
    r = prune_(m, MagnitudePruneConfig(0.37))
    assert r.zeroed == round(0.37 * r.total)


def test_second_pruning_round_keeps_earlier_zeros():
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.3))
    first = {n: current_mask(l).clone() for n, l in prunable_linears(m)}
    r = prune_(m, MagnitudePruneConfig(0.6))
    assert r.zeroed == round(0.6 * r.total)
    for n, l in prunable_linears(m):
        assert not (current_mask(l) & ~first[n]).any()  # nothing un-pruned
