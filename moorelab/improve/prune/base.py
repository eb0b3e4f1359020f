"""What every pruning technique shares: the counted tensors (:data:`DENOMINATOR`,
:func:`prunable_linears`), the masks, the reports, and the checks and slicing helpers used by
more than one technique.

**Denominator** (:data:`DENOMINATOR`): the weight matrices of every ``nn.Linear`` inside
``model.blocks`` (attention q/k/v/o, FFN gate/up/down). Embeddings, the output head (tied to
the embedding in SmolLM2), norms and biases are neither pruned nor counted. Counts are exact:
ties at the threshold are broken by position so exactly ``k`` weights are masked.

Masks survive save/load and further training in one of two modes (``mask_mode``):

* ``"parametrize"`` (default): ``torch.nn.utils.parametrize`` makes ``weight = original ⊙ mask``
  at every forward, so an optimizer step cannot revive a pruned weight; the mask is the buffer
  ``<linear>.parametrizations.weight.0.mask`` and is saved with the state dict.
* ``"buffer"``: the mask is the buffer ``<linear>.weight_mask`` and the weight is plain; call
  :func:`reapply_masks_` after every optimizer step (``train(..., after_step=...)``).

:func:`remove_masks_` bakes the zeros in and drops the masks (plain dense ``nn.Linear``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from moorelab.errors import MoorelabError

DENOMINATOR = (
    "weights of every nn.Linear inside model.blocks (attention q/k/v/o_proj, FFN gate/up/down_proj); "
    "not counted: token/position embeddings, lm_head (tied to the embedding in SmolLM2), norms, biases"
)
MASK_MODES = ("parametrize", "buffer")


def _check_fraction(name: str, value: float, cls: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0.0 <= float(value) < 1.0):
        raise MoorelabError(f"{cls} field {name}={value!r} must be in [0, 1)")


def _check_choice(name: str, value: str, allowed: tuple, cls: str) -> None:
    if value not in allowed:
        raise MoorelabError(f"{cls} field {name}={value!r}: choose from {', '.join(allowed)}")


# --------------------------------------------------------------------------- reports
@dataclass
class LayerSparsity:
    """One counted tensor after unstructured pruning.

    Attributes:
        name: module path, e.g. ``blocks.3.ffn.up_proj``.
        shape: ``[out_features, in_features]``.
        total: elements of the weight.
        masked: elements whose mask is 0 (pruned by this or an earlier call).
        zeros: elements of the effective weight that are exactly 0.
    """

    name: str
    shape: list[int]
    total: int
    masked: int
    zeros: int

    @property
    def sparsity(self) -> float:
        """``masked / total``."""
        return self.masked / self.total


@dataclass
class StructuredLayer:
    """What structured pruning removed from one layer (indices are the layer's current ones, before this pruning).

    Attributes:
        layer: block index.
        kind: ``"heads"`` or ``"ffn_channels"``.
        removed: removed query heads (or FFN channels).
        removed_kv: removed key/value heads (heads only).
        kept: kept query heads (or channels), in their new order.
        before, after: ``{"n_heads", "n_kv_heads"}`` or ``{"d_ff"}``.
        shapes: new weight shapes by module name.
        removed_original, kept_original: the same query heads by their original index (before
            any pruning round; heads only, see ``structured.head_map``).
    """

    layer: int
    kind: str
    removed: list[int]
    removed_kv: list[int]
    kept: list[int]
    before: dict
    after: dict
    shapes: dict
    removed_original: list[int] = field(default_factory=list)
    kept_original: list[int] = field(default_factory=list)


@dataclass
class PruneReport:
    """What :func:`prune_` did.

    Attributes:
        method: ``"magnitude"``, ``"wanda"``, ``"heads"``, ``"ffn_channels"``.
        config: the config as a dict.
        denominator: which tensors the counts cover.
        total: counted weight elements (unstructured) — the denominator's size.
        zeroed: masked elements over the counted tensors (exact).
        layers: per-tensor figures (unstructured).
        structured: per-layer removals (structured).
        parameters_before, parameters_after: distinct parameters of the model.
        calibration_tokens: calibration tokens actually used (0 if none).
        seconds: wall time of the pruning call, seconds.
    """

    method: str
    config: dict
    denominator: str
    total: int = 0
    zeroed: int = 0
    layers: list[LayerSparsity] = field(default_factory=list)
    structured: list[StructuredLayer] = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    calibration_tokens: int = 0
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """``zeroed / total`` (0 for structured methods, whose effect is in the shapes)."""
        return self.zeroed / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict with ``sparsity`` added."""
        d = asdict(self)
        d["sparsity"] = self.sparsity
        for row in d["layers"]:
            row["sparsity"] = row["masked"] / row["total"]
        return d


# --------------------------------------------------------------------------- masks
class WeightMask(nn.Module):
    """Parametrization ``weight = original ⊙ mask`` with ``mask`` a bool buffer of the weight's shape."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())  # own storage (safetensors)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _linear_children(module: nn.Module, prefix: str) -> Iterable[tuple[str, nn.Linear]]:
    for name, m in module.named_modules(prefix=prefix):
        if isinstance(m, nn.Linear) and ".parametrizations." not in name:
            yield name, m


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The counted tensors' modules: every ``nn.Linear`` inside ``model.blocks``.

    Returns:
        ``[(module path, module)]`` in model order.

    Raises:
        MoorelabError: the model has no ``blocks`` (not a moorelab Transformer).
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise MoorelabError(f"pruning needs a moorelab Transformer with .blocks, got {type(model).__name__}")
    return list(_linear_children(blocks, "blocks"))


def current_mask(linear: nn.Linear) -> torch.Tensor | None:
    """The bool mask of a pruned Linear (parametrization or ``weight_mask`` buffer), or None."""
    if parametrize.is_parametrized(linear, "weight"):
        for p in linear.parametrizations.weight:
            if isinstance(p, WeightMask):
                return p.mask
    mask = getattr(linear, "weight_mask", None)
    return mask if isinstance(mask, torch.Tensor) else None


@torch.no_grad()
def _set_mask(linear: nn.Linear, keep: torch.Tensor, mode: str) -> None:
    """Combine ``keep`` with any existing mask, zero the weight, and store the mask."""
    old = current_mask(linear)
    if old is not None:
        keep = keep & old.to(keep.device)
    if parametrize.is_parametrized(linear, "weight"):
        for p in linear.parametrizations.weight:
            if isinstance(p, WeightMask):
                p.mask.copy_(keep)
        linear.parametrizations.weight.original.mul_(keep)
        return
    linear.weight.mul_(keep)
    if mode == "parametrize":
        if hasattr(linear, "weight_mask"):
            del linear.weight_mask
        parametrize.register_parametrization(linear, "weight", WeightMask(keep))
    else:
        if hasattr(linear, "weight_mask"):
            linear.weight_mask.copy_(keep)
        else:
            linear.register_buffer("weight_mask", keep.clone())


@torch.no_grad()
def reapply_masks_(model: nn.Module, *_: object) -> int:
    """Zero again every weight whose ``weight_mask`` (buffer mode) is 0.

    Call after each optimizer step when masks are buffers (signature fits
    ``train(..., after_step=reapply_masks_)``). Parametrized masks need no call.

    Returns:
        Number of Linear modules re-masked.
    """
    n = 0
    for m in model.modules():
        mask = getattr(m, "weight_mask", None)
        if isinstance(m, nn.Linear) and isinstance(mask, torch.Tensor) and not parametrize.is_parametrized(m, "weight"):
            m.weight.mul_(mask)
            n += 1
    return n


def _own_parametrized_class(m: nn.Module) -> None:
    """Give ``m`` a class of its own before its parametrization is removed.

    ``torch.nn.utils.parametrize`` makes a class per parametrized module (``ParametrizedFastLinear``)
    holding the ``weight`` property, and removing the parametrization deletes that property from
    the class. ``copy.deepcopy`` does not copy classes, so a module and its deep copy share the
    class: removing the mask of one would delete the other's ``weight`` ("no attribute 'weight'"
    at its next forward). A private copy of the class (same base, same attributes) keeps the
    removal local.
    """
    cls = type(m)
    own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    m.__class__ = type(cls.__name__, cls.__bases__, own)


@torch.no_grad()
def remove_masks_(model: nn.Module) -> int:
    """Bake masks into plain weights (zeros stay zeros) and drop the mask tensors.

    Returns:
        Number of Linear modules un-masked.
    """
    n = 0
    for _, m in list(model.named_modules()):
        if not isinstance(m, nn.Linear):
            continue
        if parametrize.is_parametrized(m, "weight"):
            _own_parametrized_class(m)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            n += 1
        elif isinstance(getattr(m, "weight_mask", None), torch.Tensor):
            m.weight.mul_(m.weight_mask)
            del m.weight_mask
            n += 1
    return n


@torch.no_grad()
def sparsity_report(model: nn.Module) -> tuple[int, int, list[LayerSparsity]]:
    """Count masked and zero weights over the counted tensors (:data:`DENOMINATOR`).

    Returns:
        ``(total, masked, per-tensor rows)``; ``masked`` counts mask zeros (a tensor with no mask
        contributes its exact zeros).
    """
    rows = []
    for name, m in prunable_linears(model):
        w = m.weight
        mask = current_mask(m)
        zeros = int((w == 0).sum())
        masked = int((~mask).sum()) if mask is not None else zeros
        rows.append(LayerSparsity(name, list(w.shape), w.numel(), masked, zeros))
    return sum(r.total for r in rows), sum(r.masked for r in rows), rows


# --------------------------------------------------------------------------- shared by the techniques
def _count(sparsity: float, n: int) -> int:
    """Elements to prune: ``round(sparsity·n)`` (Python round, ties to even)."""
    return int(round(sparsity * n))


def _existing_pruned(linear: nn.Linear) -> torch.Tensor | None:
    mask = current_mask(linear)
    return None if mask is None else ~mask


def _check_calibration(model: nn.Module, calibration, method: str, n_tokens: int) -> torch.Tensor:
    if calibration is None:
        raise MoorelabError(f"{method} needs calibration token ids (LongTensor[N, T] of real text)")
    cal = torch.as_tensor(calibration)
    if cal.dim() != 2 or cal.dtype not in (torch.int64, torch.int32) or cal.numel() == 0:
        raise MoorelabError(f"{method}: calibration must be a non-empty LongTensor[N, T], got {tuple(cal.shape)} {cal.dtype}")
    vocab = model.embed.num_embeddings
    if int(cal.min()) < 0 or int(cal.max()) >= vocab:
        raise MoorelabError(f"{method}: calibration token ids must be in [0, {vocab})")
    n_rows = max(1, math.ceil(n_tokens / cal.shape[1]))
    return cal[:n_rows].long()


def _new_linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    # Same class as the layer it replaces (e.g. the model's FastLinear with its decode kernel),
    # with a contiguous row-major weight, so that the smaller matrix keeps the fast path.
    cls = type(old) if isinstance(old, nn.Linear) else nn.Linear
    new = cls(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight.contiguous())
        if bias is not None:
            new.bias.copy_(bias)
    new.train(old.training)
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def _slice_rows(lin: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    return _new_linear(lin, lin.weight.detach()[rows], lin.bias.detach()[rows] if lin.bias is not None else None)


def _slice_cols(lin: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    return _new_linear(lin, lin.weight.detach()[:, cols], lin.bias.detach() if lin.bias is not None else None)


def _require_linear(model: nn.Module, method: str) -> None:
    """Every projection in the blocks must be a plain ``nn.Linear`` (nothing silently skipped)."""
    for i, block in enumerate(model.blocks):
        for part in ("attn", "ffn"):
            for name, m in getattr(block, part).named_children():
                if m is not None and name.endswith("_proj") and not isinstance(m, nn.Linear):
                    raise MoorelabError(
                        f"{method}: blocks.{i}.{part}.{name} is {type(m).__name__}, not nn.Linear (prune before quantizing)"
                    )
