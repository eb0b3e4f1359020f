"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs",
:class:`WandaConfig`): score ``S_ij = |W_ij| · ‖X_j‖₂`` with ``X_j`` the j-th input feature over
calibration tokens; in each output row, the ``round(sparsity·in_features)`` lowest scores are
zeroed. Calibration runs block by block as in the paper: the inputs of block ``i`` come from
blocks ``< i`` already pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.improve.prune.base import (
    MASK_MODES,
    StructuredLayer,
    _check_calibration,
    _check_choice,
    _check_fraction,
    _count,
    _existing_pruned,
    _linear_children,
    _set_mask,
)


@dataclass
class WandaConfig:
    """Wanda: ``|W|·‖X‖₂`` scores, pruned per output row (Sun et al. 2023).

    Attributes:
        sparsity: fraction of each row to zero, in ``[0, 1)`` (the paper's setting is 0.5).
        calibration_tokens: tokens of calibration text used (the leading windows of the
            ``calibration`` tensor are taken up to this many).
        batch_size: calibration windows per forward pass.
        mask_mode: ``"parametrize"`` or ``"buffer"``.
    """

    sparsity: float = 0.5
    calibration_tokens: int = 4096
    batch_size: int = 4
    mask_mode: str = "parametrize"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MoorelabError naming the bad field."""
        _check_fraction("sparsity", self.sparsity, "WandaConfig")
        _check_choice("mask_mode", self.mask_mode, MASK_MODES, "WandaConfig")
        if self.calibration_tokens < 1 or self.batch_size < 1:
            raise MoorelabError("WandaConfig fields calibration_tokens and batch_size must be >= 1")


class _Stop(Exception):
    pass


@torch.no_grad()
def _block_inputs(model: nn.Module, cal: torch.Tensor, batch_size: int) -> tuple[list[torch.Tensor], tuple]:
    """Hidden states entering block 0 for each calibration batch, and the other block args."""
    captured: list[torch.Tensor] = []
    rest: list[tuple] = []

    def hook(_mod, args):
        captured.append(args[0].detach())
        rest.append(tuple(args[1:]))
        raise _Stop

    handle = model.blocks[0].register_forward_pre_hook(hook)
    try:
        for i in range(0, cal.shape[0], batch_size):
            try:
                model(cal[i : i + batch_size])
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured, rest


@torch.no_grad()
def _wanda(model: nn.Module, config: WandaConfig, cal: torch.Tensor) -> None:
    xs, rests = _block_inputs(model, cal, config.batch_size)
    for i, block in enumerate(model.blocks):
        mods = list(_linear_children(block, f"blocks.{i}"))
        sq = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in mods}
        handles = []
        for name, m in mods:
            def hook(_mod, args, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                sq[name] += (x * x).sum(0)
            handles.append(m.register_forward_pre_hook(hook))
        try:
            for x, rest in zip(xs, rests):
                block(x, *rest[:4], i, *rest[5:]) if len(rest) >= 6 else block(x, *rest)
        finally:
            for h in handles:
                h.remove()
        for name, m in mods:
            norm = sq[name].sqrt().float()  # ‖X_j‖₂ over calibration tokens
            scores = m.weight.detach().abs() * norm[None, :]
            pruned = _existing_pruned(m)
            if pruned is not None:
                scores = scores.masked_fill(pruned, -1.0)
            k = _count(config.sparsity, m.in_features)
            keep = torch.ones_like(scores, dtype=torch.bool)
            if k > 0:
                idx = torch.sort(scores, dim=1, stable=True).indices[:, :k]
                keep.scatter_(1, idx, False)
            _set_mask(m, keep, config.mask_mode)
        # inputs of the next block come from this block, pruned (as in the paper)
        xs = [block(x, *rest[:4], i, *rest[5:]) if len(rest) >= 6 else block(x, *rest) for x, rest in zip(xs, rests)]


def _run_wanda(model: nn.Module, config: WandaConfig, calibration) -> tuple[str, int, list[StructuredLayer]]:
    """:func:`~moorelab.improve.prune.prune_` for this config: ``(method, calibration tokens, [])``."""
    cal = _check_calibration(model, calibration, "WandaConfig", config.calibration_tokens)
    _wanda(model, config, cal)
    return "wanda", cal.numel(), []
