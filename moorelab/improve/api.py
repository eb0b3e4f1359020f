"""One entry point for every improvement: ``apply(model, config)``.

Each technique is a transform with a config dataclass (torchao's ``quantize_(model, Config)``
taste); :data:`REGISTRY` maps config type → transform, and :data:`SPEC_NAMES` maps the short
names used on the command line (``--with int8``, ``--with heads:fraction=0.33``) → config type.

Spec syntax: ``NAME[:FIELD=VALUE[,FIELD=VALUE...]]``; values are Python literals (``0.5``, ``32``,
``[0,1,2]``, ``{0:[1,3]}``, ``None``) or bare words (``global``, ``0:1+3/2:0``); commas inside
brackets or braces do not split fields. Unknown names or fields raise
:class:`~moorelab.errors.MoorelabError` naming them. :func:`precheck_chain` refuses a chain of
techniques that would fail half-way, before anything is measured or written.
"""

from __future__ import annotations

import ast
import dataclasses
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
    check_head_plan,
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


def needs_calibration(config: Any) -> bool:
    """True when ``config`` reads calibration text: Wanda, distillation, and structured pruning
    with ``importance="activation"`` — not heads named by ``remove`` nor ``importance="weight"``."""
    if isinstance(config, HeadPruneConfig) and config.remove is not None:
        return False
    if isinstance(config, (HeadPruneConfig, FFNChannelPruneConfig)):
        return config.importance == "activation"
    return isinstance(config, NEEDS_CALIBRATION)


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
    """Split at the commas that are not inside ``[...]``, ``(...)`` or ``{...}``."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += (ch in "[({") - (ch in "])}")
        if ch == "," and depth <= 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


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
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs]
    if required:
        raise MoorelabError(f"--with {spec!r}: {cls.__name__} needs the field {required[0]!r} "
                            f"(write {name}:{required[0]}=VALUE)")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise MoorelabError(f"--with {spec!r}: {exc}") from None
    except MoorelabError as exc:  # the config's own check names the field; say which --with it was
        raise MoorelabError(f"--with {spec!r}: {exc}") from None


def precheck_chain(specs: list[str], configs: list, model: torch.nn.Module | None = None) -> None:
    """Reject a chain that would fail half-way, before anything is measured or written.

    Args:
        specs: the ``--with`` strings (named in errors).
        configs: their parsed configs.
        model: the loaded model, for checks that need its shapes (heads per layer).

    Raises:
        MoorelabError: a second quantization, a technique after a quantization that needs float
            weights (also when ``model`` itself is a saved quantized variant), head pruning that
            would remove every head of a layer, or named heads (``heads:remove=``) that the model
            does not have or that break a GQA group.
    """
    quant = (Int8WeightOnlyConfig, Int4WeightOnlyConfig, Int8DynamicConfig)
    structured = (HeadPruneConfig, FFNChannelPruneConfig)
    masked = None
    first_q = None
    seen_prune = False
    heads_changed = False
    if model is not None:  # a saved variant brings its quantization with it
        from moorelab.improve.quantize import QuantizedLinear

        schemes = sorted({m.scheme for m in model.modules() if isinstance(m, QuantizedLinear)})
        if schemes and specs:
            cfg = configs[0]
            what = "quantize an already quantized model" if isinstance(cfg, quant) else "change a quantized model"
            raise MoorelabError(f"--with {specs[0]!r}: the model is already quantized ({', '.join(schemes)}); "
                                f"cannot {what}; start from the float model")
    for spec, cfg in zip(specs, configs):
        if isinstance(cfg, DistillConfig) and not seen_prune:
            raise MoorelabError(f"--with {spec!r}: distillation recovers a pruned student; put a pruning step "
                                "(heads, ffn, magnitude, wanda) before it (the teacher is the unmodified model)")
        if isinstance(cfg, structured) and masked is not None:
            raise MoorelabError(f"--with {spec!r} after --with {masked!r}: structured pruning needs dense weights; "
                                "put structured pruning before unstructured pruning")
        amount = getattr(cfg, "sparsity", None) if isinstance(cfg, (MagnitudePruneConfig, WandaConfig)) else None
        if isinstance(cfg, FFNChannelPruneConfig):
            amount = cfg.fraction
        if isinstance(cfg, HeadPruneConfig):
            amount = cfg.fraction if cfg.fraction is not None else cfg.heads_per_layer
        if amount is not None and amount <= 0:
            raise MoorelabError(f"--with {spec!r}: removes nothing (0); drop it or give an amount > 0")
        if isinstance(cfg, (MagnitudePruneConfig, WandaConfig)):
            masked = spec
        if isinstance(cfg, (MagnitudePruneConfig, WandaConfig) + structured):
            seen_prune = True
        if first_q is not None:
            what = "quantize an already quantized model" if isinstance(cfg, quant) else "change a quantized model"
            raise MoorelabError(f"--with {spec!r} comes after --with {first_q!r}: cannot {what}; put the quantization last")
        if isinstance(cfg, quant):
            first_q = spec
        if model is not None and isinstance(cfg, Int4WeightOnlyConfig):
            widths = sorted({m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)})
            bad = [w for w in widths if w % cfg.group_size]
            if bad:
                raise MoorelabError(f"--with {spec!r}: group_size={cfg.group_size} does not divide the input width(s) "
                                    f"{bad} of the model's linear layers")
        if model is not None and isinstance(cfg, HeadPruneConfig) and cfg.remove is not None:
            if not heads_changed:  # after another heads step the heads left are known only then
                try:
                    check_head_plan(model, cfg)
                except MoorelabError as exc:
                    raise MoorelabError(f"--with {spec!r}: {exc}") from None
        elif model is not None and isinstance(cfg, HeadPruneConfig):
            for i, b in enumerate(model.blocks):
                if cfg.layers is not None and i not in cfg.layers:
                    continue
                n, g = b.attn.n_heads, b.attn.n_heads // b.attn.n_kv_heads
                k = cfg.heads_per_layer if cfg.heads_per_layer is not None else round(cfg.fraction * n)
                if k >= n:
                    raise MoorelabError(f"--with {spec!r}: would prune all {n} heads of layer {i}; keep at least one group")
                if k == 0:
                    raise MoorelabError(f"--with {spec!r}: removes no head of layer {i} ({n} heads)")
                step = g if cfg.unit == "kv_group" else b.attn.n_kv_heads
                if k % step:
                    raise MoorelabError(f"--with {spec!r}: layer {i} has {n} query heads in groups of {g}; "
                                        f"with unit={cfg.unit!r} prune a multiple of {step}")
        if isinstance(cfg, HeadPruneConfig):
            heads_changed = True
