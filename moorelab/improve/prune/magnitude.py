"""Unstructured magnitude pruning (:class:`MagnitudePruneConfig`): zero the smallest ``|W|``
(Han et al. 2015), either over all counted tensors at once (``scope="global"``) or
``round(sparsity·numel)`` in each tensor (``scope="layer"``). Counts are exact: ties at the
threshold are broken by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moorelab.improve.prune.base import (
    MASK_MODES,
    StructuredLayer,
    _check_choice,
    _check_fraction,
    _count,
    _existing_pruned,
    _set_mask,
    prunable_linears,
)


@dataclass
class MagnitudePruneConfig:
    """Unstructured magnitude pruning.

    Attributes:
        sparsity: fraction of the counted weights to zero, in ``[0, 1)``.
        scope: ``"global"`` (one threshold over all counted tensors) or ``"layer"``
            (``round(sparsity·numel)`` zeros in every tensor).
        mask_mode: ``"parametrize"`` or ``"buffer"`` (see :mod:`moorelab.improve.prune.base`).
    """

    sparsity: float
    scope: str = "global"
    mask_mode: str = "parametrize"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MoorelabError naming the bad field."""
        _check_fraction("sparsity", self.sparsity, "MagnitudePruneConfig")
        _check_choice("scope", self.scope, ("global", "layer"), "MagnitudePruneConfig")
        _check_choice("mask_mode", self.mask_mode, MASK_MODES, "MagnitudePruneConfig")


def _lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool keep-mask of a 1-D score vector with exactly ``k`` lowest entries False.

    Ties at the threshold are broken by position (earliest first), so the count is exact.
    """
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k <= 0:
        return keep
    if k >= scores.numel():
        return torch.zeros_like(keep)
    t = scores.kthvalue(k).values
    below = scores < t
    need = k - int(below.sum())
    keep &= ~below
    if need > 0:
        eq = (scores == t).nonzero().flatten()[:need]
        keep[eq] = False
    return keep


@torch.no_grad()
def _magnitude(model: nn.Module, config: MagnitudePruneConfig) -> None:
    mods = prunable_linears(model)
    if config.scope == "layer":
        for _, m in mods:
            scores = m.weight.detach().abs().flatten().float()
            pruned = _existing_pruned(m)
            if pruned is not None:
                scores = scores.masked_fill(pruned.flatten(), -1.0)  # already pruned go first
            keep = _lowest_k_mask(scores, _count(config.sparsity, scores.numel()))
            _set_mask(m, keep.view_as(m.weight), config.mask_mode)
        return
    parts = []
    for _, m in mods:
        s = m.weight.detach().abs().flatten().float()
        pruned = _existing_pruned(m)
        if pruned is not None:
            s = s.masked_fill(pruned.flatten(), -1.0)
        parts.append(s)
    flat = torch.cat(parts)
    keep = _lowest_k_mask(flat, _count(config.sparsity, flat.numel()))
    del flat, parts
    offset = 0
    for _, m in mods:
        n = m.weight.numel()
        _set_mask(m, keep[offset : offset + n].view_as(m.weight), config.mask_mode)
        offset += n


def _run_magnitude(model: nn.Module, config: MagnitudePruneConfig, calibration) -> tuple[str, int, list[StructuredLayer]]:
    """:func:`~moorelab.improve.prune.prune_` for this config (no calibration): ``(method, 0, [])``."""
    _magnitude(model, config)
    return "magnitude", 0, []
