"""Pruned models through save_pruned/load_pruned and further training: masks and shapes survive."""

import pytest
import torch

from moorelab.improve.prune import (
    FFNChannelPruneConfig,
    HeadPruneConfig,
    MagnitudePruneConfig,
    current_mask,
    layout,
    load_pruned,
    prunable_linears,
    prune_,
    reapply_masks_,
    save_pruned,
    sparsity_report,
)
from moorelab.train import TokenWindows, TrainConfig, next_token_loss, train
from prune_helpers import X, tiny


@pytest.mark.parametrize("mode", ["parametrize", "buffer"])
def test_masks_survive_save_load_and_training(tmp_path, mode):
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.5, mask_mode=mode))
    ref = m(X)
    save_pruned(m, tmp_path)
    m2 = load_pruned(tmp_path)
    assert torch.equal(m2(X), ref)
    assert layout(m2)["masks"] == {n: mode for n, _ in prunable_linears(m)}
    masks = {n: current_mask(l).clone() for n, l in prunable_linears(m2)}
    data = TokenWindows(list(range(40)) * 5, 12, batch_size=2)
    after = reapply_masks_ if mode == "buffer" else None
    train(m2, next_token_loss, data, TrainConfig(steps=3, lr=1e-2), after_step=after)
    for n, l in prunable_linears(m2):
        assert torch.equal(current_mask(l), masks[n])
        assert (l.weight.detach()[~masks[n]] == 0).all(), n
        assert (l.weight.detach()[masks[n]] != 0).any()
    total, masked, _ = sparsity_report(m2)
    assert masked == round(0.5 * total)


def test_structured_model_save_load_and_train(tmp_path):
    m = tiny()
    prune_(m, HeadPruneConfig(heads_per_layer=3, layers=[0], importance="weight"))
    prune_(m, FFNChannelPruneConfig(0.5, layers=[1], importance="weight"))
    save_pruned(m, tmp_path)
    m2 = load_pruned(tmp_path)
    assert [(b.attn.n_heads, b.attn.n_kv_heads, b.ffn.up_proj.out_features) for b in m2.blocks] == [(3, 1, 32), (6, 2, 16)]
    assert torch.equal(m2(X), m(X))
    r = train(m2, next_token_loss, TokenWindows(list(range(40)) * 5, 12), TrainConfig(steps=2, lr=1e-3))
    assert len(r.losses) == 2
