"""One entry point for every improvement: ``apply(model, config)``.

Each technique is a transform with a config dataclass (torchao's ``quantize_(model, Config)``
taste); :data:`REGISTRY` maps config type → transform, and :data:`SPEC_NAMES` maps the short
names used on the command line (``--with int8``, ``--with heads:fraction=0.33``) → config type.

Spec syntax: ``NAME[:FIELD=VALUE[,FIELD=VALUE...]]``; values are Python literals (``0.5``, ``32``,
``[0,1,2]``, ``None``) or bare words (``global``). Unknown names or fields raise
:class:`~moorelab.errors.MoorelabError` naming them.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.improve.distill import DistillConfig, distill
from moorelab.improve.prune import (
    FFNChannelPruneConfig,
    HeadPruneConfig,
    MagnitudePruneConfig,
    WandaConfig,
    prune_,
)
from moorelab.improve.quantize import Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, quantize_


@dataclass
class ApplyContext:
    """What some transforms need besides the model.

    Attributes:
        calibration: ``LongTensor[N, T]`` windows of real text (Wanda, activation importance,
            distillation training data).
        teacher: a frozen copy of the original model (distillation).
        after_step: hook run after each training step (e.g. to re-apply pruning masks).
    """

    calibration: torch.Tensor | None = None
    teacher: nn.Module | None = None
    after_step: Callable[[nn.Module, int], None] | None = None


def _distill(model: nn.Module, config: DistillConfig, ctx: ApplyContext):
    if ctx.teacher is None:
        raise MoorelabError("distill: needs a teacher model (the unmodified baseline)")
    if ctx.calibration is None:
        raise MoorelabError("distill: needs training text windows (calibration tokens)")
    from moorelab.improve.prune import reapply_masks_

    hook = ctx.after_step or (lambda m, step: reapply_masks_(m))
    return distill(model, ctx.teacher, ctx.calibration, config, after_step=hook)


REGISTRY: dict[type, Callable[[nn.Module, Any, ApplyContext], Any]] = {
    Int8WeightOnlyConfig: lambda m, c, ctx: quantize_(m, c),
    Int4WeightOnlyConfig: lambda m, c, ctx: quantize_(m, c),
    Int8DynamicConfig: lambda m, c, ctx: quantize_(m, c),
    MagnitudePruneConfig: lambda m, c, ctx: prune_(m, c),
    WandaConfig: lambda m, c, ctx: prune_(m, c, calibration=ctx.calibration),
    HeadPruneConfig: lambda m, c, ctx: prune_(m, c, calibration=ctx.calibration),
    FFNChannelPruneConfig: lambda m, c, ctx: prune_(m, c, calibration=ctx.calibration),
    DistillConfig: _distill,
}
"""Config type → transform ``f(model, config, context) -> report`` (model changed in place)."""

SPEC_NAMES: dict[str, type] = {
    "int8": Int8WeightOnlyConfig,
    "int4": Int4WeightOnlyConfig,
    "int8-dynamic": Int8DynamicConfig,
    "magnitude": MagnitudePruneConfig,
    "wanda": WandaConfig,
    "heads": HeadPruneConfig,
    "ffn": FFNChannelPruneConfig,
    "distill": DistillConfig,
}
"""Command-line names of the techniques."""

NEEDS_CALIBRATION = (WandaConfig, HeadPruneConfig, FFNChannelPruneConfig, DistillConfig)


def apply(model: nn.Module, config: Any, context: ApplyContext | None = None) -> Any:
    """Apply one improvement to ``model`` in place.

    Args:
        model: a moorelab Transformer.
        config: an instance of a config type in :data:`REGISTRY`.
        context: calibration text / teacher where the technique needs them.

    Returns:
        The technique's report (``QuantizeReport``, ``PruneReport``, ``DistillReport``).

    Raises:
        MoorelabError: unknown config type, or the technique's own validation errors.
    """
    fn = REGISTRY.get(type(config))
    if fn is None:
        known = ", ".join(t.__name__ for t in REGISTRY)
        raise MoorelabError(f"apply: no transform registered for {type(config).__name__} (known: {known})")
    return fn(model, config, context or ApplyContext())


def _split_fields(s: str) -> list[str]:
    return [p for p in re.split(r",(?![^\[]*\])", s) if p.strip()]


def _coerce(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def parse_spec(spec: str) -> Any:
    """Turn ``NAME[:FIELD=VALUE,...]`` into a config instance.

    Args:
        spec: e.g. ``"int4:group_size=64"``, ``"magnitude:sparsity=0.5,scope=layer"``.

    Returns:
        The config dataclass instance (validated by its own ``__post_init__``).

    Raises:
        MoorelabError: unknown technique, unknown field, malformed ``FIELD=VALUE``, or a value the
            config rejects (the message names the field).
    """
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    cls = SPEC_NAMES.get(name)
    if cls is None:
        raise MoorelabError(f"--with {spec!r}: unknown technique {name!r} (known: {', '.join(SPEC_NAMES)})")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for part in _split_fields(rest):
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq:
            raise MoorelabError(f"--with {spec!r}: expected FIELD=VALUE, got {part!r}")
        if key in kwargs:
            raise MoorelabError(f"--with {spec!r}: field {key!r} given twice")
        if key not in fields:
            raise MoorelabError(f"--with {spec!r}: {cls.__name__} has no field {key!r} (fields: {', '.join(sorted(fields))})")
        value = _coerce(raw.strip())
        if hints.get(key) is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise MoorelabError(f"--with {spec!r}: {exc}") from None
