"""The entry point :func:`quantize_`: pick the ``nn.Linear`` modules, quantize each with the
technique its config names (:mod:`.int8`, :mod:`.int4`, :mod:`.int8_dynamic`), swap them in
only when all succeeded, and report.

Tied embeddings: when ``lm_head.weight is embed.weight`` (SmolLM2), the lm_head gets its own
quantized copy and the embedding table stays float32 (a row lookup reads only d_model floats
per token, so quantizing it would save storage, not decode time). The report marks such rows
``tied=True``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.improve.quantize.base import QuantizedLinear, _kernels_status
from moorelab.improve.quantize.int4 import Int4WeightOnlyConfig, Int4WeightOnlyLinear
from moorelab.improve.quantize.int8 import Int8WeightOnlyConfig, Int8WeightOnlyLinear
from moorelab.improve.quantize.int8_dynamic import Int8DynamicConfig, Int8DynamicLinear
from moorelab.improve.quantize.report import LayerQuantReport, QuantizeReport, sqnr_db, weight_bytes

# One row per technique: quantize_ picks the class whose config_type the config is.
_QUANT_CLASSES = (Int8WeightOnlyLinear, Int4WeightOnlyLinear, Int8DynamicLinear)


def _module_bytes(m: nn.Module) -> int:
    return weight_bytes(m)


def _tied_weight_ids(model: nn.Module) -> set[int]:
    """Storage pointers of Linear weights also used by a non-Linear module (e.g. an Embedding)."""
    ptrs = set()
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            ptrs.add(mod.weight.untyped_storage().data_ptr())
    return ptrs


def _default_filter(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, (nn.Linear, QuantizedLinear))


def _linear_class(config) -> type[QuantizedLinear]:
    """The quantized module class whose ``config_type`` ``config`` is; MoorelabError if none."""
    for cls in _QUANT_CLASSES:
        if isinstance(config, cls.config_type):
            return cls
    names = [cls.config_type.__name__ for cls in _QUANT_CLASSES]
    raise MoorelabError(f"config {type(config).__name__}: expected {', '.join(names[:-1])} or {names[-1]}")


def _set_submodule(root: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize_(
    model: nn.Module,
    config: Int8WeightOnlyConfig | Int4WeightOnlyConfig | Int8DynamicConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> QuantizeReport:
    """Replace the model's ``nn.Linear`` modules in place by quantized modules; return a report.

    All selected layers are quantized first and swapped in only when every one succeeded, so on
    any error the model is left exactly as it was ("nothing written").

    Args:
        model: any module whose matmuls are ``nn.Linear`` (moorelab Transformer, HF models).
        config: :class:`Int8WeightOnlyConfig`, :class:`Int4WeightOnlyConfig` or
            :class:`Int8DynamicConfig`.
        filter_fn: ``filter_fn(module, fqn) -> bool`` choosing which ``nn.Linear`` modules to
            quantize (torchao convention); default: every ``nn.Linear``. Only nn.Linear and
            already-quantized modules are offered to it.

    Returns:
        :class:`QuantizeReport` with per-layer SQNR (dB), bytes before/after and kernel names.

    Raises:
        MoorelabError: a selected module is already quantized; int4 group size does not divide
            a layer's in_features; a weight is non-finite; unknown config; nothing to quantize.
    """
    linear_class = _linear_class(config)
    if not isinstance(model, nn.Module):
        raise MoorelabError(f"quantize_: expected an nn.Module, got {type(model).__name__}")
    filt = filter_fn or _default_filter
    selected: list[tuple[str, nn.Module]] = []
    for fqn, mod in model.named_modules(remove_duplicate=False):
        if not isinstance(mod, (nn.Linear, QuantizedLinear)):
            continue
        if not filt(mod, fqn):
            continue
        if isinstance(mod, QuantizedLinear):
            raise MoorelabError(
                f"module {fqn}: already quantized ({type(mod).__name__}, kernel {mod.kernel!r}); "
                "quantize the float model instead (nothing was changed)"
            )
        selected.append((fqn, mod))
    if not selected:
        raise MoorelabError(f"quantize_: no nn.Linear module selected in {type(model).__name__} (nothing was changed)")

    bytes_before = weight_bytes(model)
    tied_ptrs = _tied_weight_ids(model)
    built: list[tuple[str, QuantizedLinear, LayerQuantReport]] = []
    done: dict[int, QuantizedLinear] = {}  # a Linear shared under two names gets one copy
    with torch.no_grad():
        for fqn, lin in selected:
            if id(lin) in done:
                built.append((fqn, done[id(lin)], None))
                continue
            qmod = done[id(lin)] = linear_class.from_config(config, lin, fqn)
            tied = lin.weight.untyped_storage().data_ptr() in tied_ptrs
            row = LayerQuantReport(
                name=fqn,
                in_features=lin.in_features,
                out_features=lin.out_features,
                scheme=qmod.scheme,
                kernel=qmod.kernel,
                prefill_kernel=qmod.prefill_kernel,
                sqnr_db=sqnr_db(lin.weight, qmod.dequantize()),
                bytes_before=_module_bytes(lin),
                bytes_after=_module_bytes(qmod),
                tied=tied,
            )
            built.append((fqn, qmod, row))
    # every layer quantized without error: now swap them in
    for fqn, qmod, row in built:
        if row is not None and row.tied:
            qmod.tied_to = "embedding"
        _set_submodule(model, fqn, qmod)
    report = QuantizeReport(
        config=config.name,
        layers=[r for _, _, r in built if r is not None],
        model_bytes_before=bytes_before,
        model_bytes_after=weight_bytes(model),
        kernel_status=_kernels_status() if config.kernel != "torch" else "pure torch requested",
    )
    tied_rows = [r.name for r in report.layers if r.tied]
    if tied_rows:
        report.notes.append(
            f"tied weights: {', '.join(tied_rows)} got their own quantized copy; the embedding table stays float32"
        )
    return report
