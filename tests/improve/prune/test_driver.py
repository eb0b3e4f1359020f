"""prune_: invalid configs and inputs are clear errors raised before any change."""

import copy

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.improve.prune import (
    FFNChannelPruneConfig,
    HeadPruneConfig,
    MagnitudePruneConfig,
    WandaConfig,
    current_mask,
    prunable_linears,
    prune_,
)
from prune_helpers import tiny


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_an_error(bad):
    with pytest.raises(MoorelabError, match="sparsity"):
        MagnitudePruneConfig(bad)
    with pytest.raises(MoorelabError, match="sparsity"):
        WandaConfig(bad)
    with pytest.raises(MoorelabError, match="fraction"):
        FFNChannelPruneConfig(bad)
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    cfg = MagnitudePruneConfig(0.5)
    cfg.sparsity = bad  # mutated after construction: prune_ validates again
    with pytest.raises(MoorelabError, match="sparsity"):
        prune_(m, cfg)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_other_bad_inputs_are_clear_errors():
    m = tiny()
    with pytest.raises(MoorelabError, match="calibration"):
        prune_(m, WandaConfig(0.5))
    with pytest.raises(MoorelabError, match="calibration token ids"):
        prune_(m, FFNChannelPruneConfig(0.5), torch.full((2, 4), 99))
    with pytest.raises(MoorelabError, match="layers"):
        prune_(m, FFNChannelPruneConfig(0.5, layers=[7], importance="weight"))
    with pytest.raises(MoorelabError, match="exactly one"):
        HeadPruneConfig(heads_per_layer=1, fraction=0.2)
    with pytest.raises(MoorelabError, match="every channel"):
        prune_(m, FFNChannelPruneConfig(0.99, importance="weight"))  # round(0.99 * 32) = 32
    assert [b.ffn.up_proj.out_features for b in m.blocks] == [32, 32]

    class NotLinear(torch.nn.Module):  # e.g. a quantized replacement
        def forward(self, x):
            return x

    q = tiny()
    q.blocks[1].ffn.down_proj = NotLinear()
    with pytest.raises(MoorelabError, match=r"blocks\.1\.ffn\.down_proj is NotLinear"):
        prune_(q, MagnitudePruneConfig(0.5))  # not silently left out of the denominator
    prune_(m, MagnitudePruneConfig(0.2))
    with pytest.raises(MoorelabError, match="remove_masks_"):
        prune_(m, FFNChannelPruneConfig(0.5, importance="weight"))
    assert all(torch.equal(current_mask(l), current_mask(l)) for _, l in prunable_linears(m))
