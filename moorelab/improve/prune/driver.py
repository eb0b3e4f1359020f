"""The entry point :func:`prune_`: check the config and the model, run the technique the
config names (:mod:`.magnitude`, :mod:`.wanda`, :mod:`.structured`), and report.

Errors: sparsity or fraction outside ``[0, 1)``, pruning every head/group of a layer, a
missing calibration set — :class:`moorelab.errors.MoorelabError`, raised before any tensor is
changed.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.improve.prune.base import DENOMINATOR, PruneReport, _require_linear, prunable_linears, sparsity_report
from moorelab.improve.prune.magnitude import MagnitudePruneConfig, _run_magnitude
from moorelab.improve.prune.structured import FFNChannelPruneConfig, HeadPruneConfig, _run_ffn, _run_heads
from moorelab.improve.prune.wanda import WandaConfig, _run_wanda

# One row per technique: config type -> f(model, config, calibration) -> (method, tokens, structured rows).
_TECHNIQUES = (
    (MagnitudePruneConfig, _run_magnitude),
    (WandaConfig, _run_wanda),
    (HeadPruneConfig, _run_heads),
    (FFNChannelPruneConfig, _run_ffn),
)


def _n_params(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def prune_(model: nn.Module, config, calibration: torch.Tensor | None = None) -> PruneReport:
    """Prune ``model`` in place.

    Args:
        model: a moorelab :class:`~moorelab.model.transformer.Transformer` (float weights).
        config: :class:`MagnitudePruneConfig`, :class:`WandaConfig`, :class:`HeadPruneConfig`
            or :class:`FFNChannelPruneConfig`.
        calibration: ``LongTensor[N, T]`` token ids of real text (Wanda; ``importance=
            "activation"``); the leading rows up to the config's ``calibration_tokens`` are used.

    Returns:
        :class:`PruneReport` — exact counts over :data:`DENOMINATOR` for unstructured methods;
        removed heads/channels and new shapes per layer for structured ones.

    Raises:
        MoorelabError: invalid config (sparsity/fraction outside ``[0, 1)``), every head of a layer
            pruned, a head count that breaks the GQA groups, missing/bad calibration, a
            quantized or masked layer given to structured pruning. Raised before any change.
    """
    t0 = time.perf_counter()
    if not hasattr(config, "validate"):
        raise MoorelabError(f"prune_: unknown config type {type(config).__name__}")
    config.validate()
    prunable_linears(model)  # raises on a non-Transformer
    _require_linear(model, type(config).__name__)
    was_training = model.training
    model.eval()
    params_before = _n_params(model)
    report_kw: dict = {"config": asdict(config), "parameters_before": params_before}
    try:
        run = next((fn for cls, fn in _TECHNIQUES if isinstance(config, cls)), None)
        if run is None:
            raise MoorelabError(f"prune_: unknown config type {type(config).__name__}")
        method, cal_tokens, report_kw["structured"] = run(model, config, calibration)
    finally:
        model.train(was_training)
    if method in ("magnitude", "wanda"):
        total, masked, rows = sparsity_report(model)
        report_kw.update(total=total, zeroed=masked, layers=rows)
        denominator = DENOMINATOR
    else:
        denominator = "structured: removed units per layer; parameters_before/after count every distinct parameter of the model"
    return PruneReport(
        method=method,
        denominator=denominator,
        parameters_after=_n_params(model),
        calibration_tokens=cal_tokens,
        seconds=time.perf_counter() - t0,
        **report_kw,
    )
