"""Masks: buffer masks need re-applying after a step; remove_masks_ bakes the zeros in."""

import torch

from moorelab.improve.prune import (
    MagnitudePruneConfig,
    current_mask,
    prunable_linears,
    prune_,
    reapply_masks_,
    remove_masks_,
    sparsity_report,
)
from moorelab.measure.resources import weight_bytes
from moorelab.model.transformer import FastLinear
from moorelab.train import TokenWindows, TrainConfig, next_token_loss, train
from prune_helpers import X, tiny


def test_buffer_masks_are_lost_without_reapply():
    """The trap: a plain weight with a mask buffer regrows after an optimizer step."""
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.5, mask_mode="buffer"))
    train(m, next_token_loss, TokenWindows(list(range(40)) * 5, 12), TrainConfig(steps=1, lr=1e-2))
    zeros = sum(int((l.weight == 0).sum()) for _, l in prunable_linears(m))
    total, masked, _ = sparsity_report(m)
    assert zeros < masked  # revived weights
    reapply_masks_(m)
    assert sum(int((l.weight == 0).sum()) for _, l in prunable_linears(m)) == masked


def test_remove_masks_bakes_zeros_into_plain_linears():
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.5))
    ref = m(X)
    assert remove_masks_(m) == 14
    # plain = no parametrization left (the model's linears are FastLinear, an nn.Linear subclass)
    assert all(type(l) in (torch.nn.Linear, FastLinear) and current_mask(l) is None for _, l in prunable_linears(m))
    assert torch.allclose(m(X), ref, atol=0, rtol=0)
    assert weight_bytes(m) == weight_bytes(tiny())  # dense storage: no bytes saved by zeros


def test_deepcopy_then_remove_masks_leaves_the_other_model_whole():
    """parametrize gives each pruned Linear a generated class holding the `weight` property;
    deepcopy shares that class, and removing the mask of one copy used to delete the other's
    `weight` ("'ParametrizedFastLinear' object has no attribute 'weight'")."""
    import copy

    for first in ("copy", "original"):
        m = tiny()
        prune_(m, MagnitudePruneConfig(0.5))
        with torch.no_grad():
            ref = m(X)
        c = copy.deepcopy(m)
        removed, kept = (c, m) if first == "copy" else (m, c)
        assert remove_masks_(removed) == 14
        with torch.no_grad():
            assert torch.equal(kept(X), ref), first
            assert torch.equal(removed(X), ref), first
        assert current_mask(dict(prunable_linears(kept))["blocks.0.attn.q_proj"]) is not None
        # the kept model's masks are its own: masking more in one does not touch the other
        prune_(kept, MagnitudePruneConfig(0.7))
        with torch.no_grad():
            assert torch.equal(removed(X), ref)
