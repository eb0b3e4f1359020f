"""Pruning: unstructured (magnitude, Wanda) with masks, and structured (attention heads, FFN
channels) that really shrinks the matrices. torchao-style API: a config dataclass and
``prune_(model, config, calibration=None) -> PruneReport``.

Unstructured methods
--------------------
* :class:`MagnitudePruneConfig` — zero the smallest ``|W|`` (Han et al. 2015), either over all
  counted tensors at once (``scope="global"``) or ``round(sparsity·numel)`` in each tensor
  (``scope="layer"``).
* :class:`WandaConfig` — Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for
  LLMs"): score ``S_ij = |W_ij| · ‖X_j‖₂`` with ``X_j`` the j-th input feature over calibration
  tokens; in each output row, the ``round(sparsity·in_features)`` lowest scores are zeroed.
  Calibration runs block by block as in the paper: the inputs of block ``i`` come from blocks
  ``< i`` already pruned.

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

:func:`save_pruned` / :func:`load_pruned` write/read ``model.safetensors`` + ``pruning.json``
(the per-layer shapes and which masks exist), so a pruned model reloads with its masks.
:func:`remove_masks_` bakes the zeros in and drops the masks (plain dense ``nn.Linear``).
Unstructured sparsity stored densely makes the model neither smaller nor faster; the benchmark
measures that rather than assuming it.

Structured methods
------------------
* :class:`HeadPruneConfig` — remove attention heads. q/k/v rows ``[h·head_dim, (h+1)·head_dim)``
  and o_proj columns of the same range go (RoPE acts within a head, so it is unaffected).
  Grouped-query attention (query head ``h`` reads kv head ``h // (n_heads/n_kv_heads)``):
  ``unit="kv_group"`` removes whole groups (their query heads and their k/v head);
  ``unit="query"`` removes the same number of query heads from every group and keeps all k/v
  heads, so the new mapping ``h' // (n_heads'/n_kv_heads)`` still sends each kept head to its
  own kv head.
* :class:`FFNChannelPruneConfig` — remove FFN hidden channels: rows of gate/up and columns of
  down.
Importance ``"activation"`` (calibration text needed): the mean squared norm of the unit's
contribution to the residual stream, ``E‖W_o[:, h]·a_h‖²`` for head ``h``, ``E[a_j²]·‖W_down[:, j]‖²``
for channel ``j`` (output-norm importance, cf. Michel et al. 2019 and Ma et al. 2023
"LLM-Pruner", first-order-free variant). ``"weight"``: product of the Frobenius norms of the
unit's input rows and output columns (data-free).

Each ``Attention`` keeps its own ``n_heads``/``n_kv_heads`` (updated here) and ``FeedForward``
reads its width from the weights, so layers may differ after pruning.

Errors: sparsity or fraction outside ``[0, 1)``, pruning every head/group of a layer, a
missing calibration set — :class:`moorelab.errors.MoorelabError`, raised before any tensor is
changed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from moorelab.errors import MoorelabError, ModelLoadError

__all__ = [
    "DENOMINATOR",
    "MagnitudePruneConfig",
    "WandaConfig",
    "HeadPruneConfig",
    "FFNChannelPruneConfig",
    "LayerSparsity",
    "StructuredLayer",
    "PruneReport",
    "prune_",
    "prunable_linears",
    "sparsity_report",
    "reapply_masks_",
    "remove_masks_",
    "save_pruned",
    "load_pruned",
    "layout",
    "apply_layout_",
]

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


# --------------------------------------------------------------------------- configs
@dataclass
class MagnitudePruneConfig:
    """Unstructured magnitude pruning.

    Attributes:
        sparsity: fraction of the counted weights to zero, in ``[0, 1)``.
        scope: ``"global"`` (one threshold over all counted tensors) or ``"layer"``
            (``round(sparsity·numel)`` zeros in every tensor).
        mask_mode: ``"parametrize"`` or ``"buffer"`` (see module docstring).
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


@dataclass
class HeadPruneConfig:
    """Remove attention heads from every layer (or the listed ``layers``).

    Attributes:
        heads_per_layer: query heads to remove per layer; or
        fraction: of each layer's query heads, in ``[0, 1)`` (rounded to the nearest count).
        importance: ``"activation"`` (needs calibration) or ``"weight"``.
        unit: ``"kv_group"`` (remove whole GQA groups: the count must be a multiple of the group
            size ``n_heads/n_kv_heads``) or ``"query"`` (remove the count spread evenly over the
            groups: it must be a multiple of ``n_kv_heads``).
        layers: layer indices to prune (None: all).
        calibration_tokens: tokens used for ``"activation"`` importance.
    """

    heads_per_layer: int | None = None
    fraction: float | None = None
    importance: str = "activation"
    unit: str = "kv_group"
    layers: list[int] | None = None
    calibration_tokens: int = 4096
    batch_size: int = 4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MoorelabError naming the bad field."""
        if (self.heads_per_layer is None) == (self.fraction is None):
            raise MoorelabError("HeadPruneConfig: give exactly one of heads_per_layer or fraction")
        if self.fraction is not None:
            _check_fraction("fraction", self.fraction, "HeadPruneConfig")
        if self.heads_per_layer is not None and (not isinstance(self.heads_per_layer, int) or self.heads_per_layer < 0):
            raise MoorelabError(f"HeadPruneConfig field heads_per_layer={self.heads_per_layer!r} must be an int >= 0")
        _check_choice("importance", self.importance, ("activation", "weight"), "HeadPruneConfig")
        _check_choice("unit", self.unit, ("kv_group", "query"), "HeadPruneConfig")


@dataclass
class FFNChannelPruneConfig:
    """Remove a fraction of the FFN hidden channels of every layer (or the listed ``layers``).

    Attributes:
        fraction: of each layer's channels, in ``[0, 1)``; ``round(fraction·d_ff)`` are removed.
        importance: ``"activation"`` (needs calibration) or ``"weight"``.
        layers: layer indices to prune (None: all).
        calibration_tokens: tokens used for ``"activation"`` importance.
    """

    fraction: float
    importance: str = "activation"
    layers: list[int] | None = None
    calibration_tokens: int = 4096
    batch_size: int = 4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MoorelabError naming the bad field."""
        _check_fraction("fraction", self.fraction, "FFNChannelPruneConfig")
        _check_choice("importance", self.importance, ("activation", "weight"), "FFNChannelPruneConfig")


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
    """What structured pruning removed from one layer (indices are the layer's own, before pruning).

    Attributes:
        layer: block index.
        kind: ``"heads"`` or ``"ffn_channels"``.
        removed: removed query heads (or FFN channels).
        removed_kv: removed key/value heads (heads only).
        kept: kept query heads (or channels), in their new order.
        before, after: ``{"n_heads", "n_kv_heads"}`` or ``{"d_ff"}``.
        shapes: new weight shapes by module name.
    """

    layer: int
    kind: str
    removed: list[int]
    removed_kv: list[int]
    kept: list[int]
    before: dict
    after: dict
    shapes: dict


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


# --------------------------------------------------------------------------- unstructured
def _count(sparsity: float, n: int) -> int:
    """Elements to prune: ``round(sparsity·n)`` (Python round, ties to even)."""
    return int(round(sparsity * n))


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


def _existing_pruned(linear: nn.Linear) -> torch.Tensor | None:
    mask = current_mask(linear)
    return None if mask is None else ~mask


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


class _Stop(Exception):
    pass


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


# --------------------------------------------------------------------------- structured
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


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def _require_linear(model: nn.Module, method: str) -> None:
    """Every projection in the blocks must be a plain ``nn.Linear`` (nothing silently skipped)."""
    for i, block in enumerate(model.blocks):
        for part in ("attn", "ffn"):
            for name, m in getattr(block, part).named_children():
                if m is not None and name.endswith("_proj") and not isinstance(m, nn.Linear):
                    raise MoorelabError(
                        f"{method}: blocks.{i}.{part}.{name} is {type(m).__name__}, not nn.Linear (prune before quantizing)"
                    )


def _require_plain(model: nn.Module, method: str) -> None:
    _require_linear(model, method)
    for name, m in prunable_linears(model):
        if current_mask(m) is not None:
            raise MoorelabError(f"{method}: {name} carries an unstructured mask; call remove_masks_(model) first")


@torch.no_grad()
def _unit_activations(model: nn.Module, cal: torch.Tensor, batch_size: int, layers: list[int], kind: str) -> dict[int, torch.Tensor]:
    """Mean squared contribution norm per head (kind="heads") or channel (kind="ffn")."""
    sums: dict[int, torch.Tensor] = {}
    count = [0]
    handles = []
    for i in layers:
        block = model.blocks[i]
        if kind == "heads":
            attn = block.attn

            def hook(_mod, args, i=i, attn=attn):
                x = args[0].detach().reshape(-1, attn.n_heads, attn.head_dim).float()  # [N, H, d]
                w = attn.o_proj.weight.detach().view(-1, attn.n_heads, attn.head_dim)  # [d_model, H, d]
                contrib = torch.einsum("nhd,mhd->nhm", x, w)
                s = contrib.pow(2).sum(-1).sum(0).double()
                sums[i] = sums.get(i, 0) + s

            handles.append(attn.o_proj.register_forward_pre_hook(hook))
        else:
            ffn = block.ffn

            def hook(_mod, args, i=i, ffn=ffn):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # [N, d_ff]
                col = ffn.down_proj.weight.detach().double().pow(2).sum(0)  # ‖W_down[:, j]‖²
                sums[i] = sums.get(i, 0) + x.pow(2).sum(0) * col

            handles.append(ffn.down_proj.register_forward_pre_hook(hook))
    try:
        for j in range(0, cal.shape[0], batch_size):
            batch = cal[j : j + batch_size]
            model(batch)
            count[0] += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return {i: (s / count[0]).float() for i, s in sums.items()}


def _head_weight_scores(attn) -> torch.Tensor:
    H, d = attn.n_heads, attn.head_dim
    q = attn.q_proj.weight.detach().view(H, d, -1).pow(2).sum((1, 2)).sqrt()
    o = attn.o_proj.weight.detach().view(-1, H, d).pow(2).sum((0, 2)).sqrt()
    return q * o


def _ffn_weight_scores(ffn) -> torch.Tensor:
    s = ffn.up_proj.weight.detach().norm(dim=1) * ffn.down_proj.weight.detach().norm(dim=0)
    if ffn.gate_proj is not None:
        s = s * ffn.gate_proj.weight.detach().norm(dim=1)
    return s


def _heads_plan(model: nn.Module, config: HeadPruneConfig, layers: list[int]) -> dict[int, int]:
    """Validate and return query heads to remove per layer (before touching anything)."""
    plan = {}
    for i in layers:
        attn = model.blocks[i].attn
        H, Hkv = attn.n_heads, attn.n_kv_heads
        g = H // Hkv
        n = config.heads_per_layer if config.heads_per_layer is not None else int(round(config.fraction * H))
        if n >= H:
            raise MoorelabError(f"HeadPruneConfig: removing {n} heads from blocks.{i}.attn would prune every head of the layer (n_heads={H})")
        if config.unit == "kv_group" and n % g:
            raise MoorelabError(
                f"HeadPruneConfig: {n} heads in blocks.{i}.attn is not a whole number of KV groups of {g} heads "
                f"(n_heads={H}, n_kv_heads={Hkv}); use a multiple of {g} or unit='query'"
            )
        if config.unit == "query" and n % Hkv:
            raise MoorelabError(
                f"HeadPruneConfig: {n} heads in blocks.{i}.attn cannot be spread evenly over {Hkv} KV groups; "
                f"use a multiple of {Hkv} or unit='kv_group'"
            )
        plan[i] = n
    return plan


@torch.no_grad()
def _prune_heads(model: nn.Module, config: HeadPruneConfig, layers: list[int], cal) -> list[StructuredLayer]:
    plan = _heads_plan(model, config, layers)
    if config.importance == "activation":
        scores = _unit_activations(model, cal, config.batch_size, layers, "heads")
    else:
        scores = {i: _head_weight_scores(model.blocks[i].attn) for i in layers}
    out = []
    for i in layers:
        attn = model.blocks[i].attn
        H, Hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
        g = H // Hkv
        n = plan[i]
        s = scores[i]
        if config.unit == "kv_group":
            group_scores = s.view(Hkv, g).sum(1)
            drop_groups = sorted(torch.sort(group_scores, stable=True).indices[: n // g].tolist())
            keep_kv = [k for k in range(Hkv) if k not in drop_groups]
            keep_q = [k * g + r for k in keep_kv for r in range(g)]
        else:
            r = n // Hkv
            keep_kv = list(range(Hkv))
            keep_q = []
            for k in range(Hkv):
                heads = list(range(k * g, (k + 1) * g))
                order = torch.sort(s[heads], stable=True).indices.tolist()
                dropped = {heads[j] for j in order[:r]}
                keep_q += [h for h in heads if h not in dropped]  # kept in order, grouped by kv head
        removed_q = [h for h in range(H) if h not in keep_q]
        removed_kv = [k for k in range(Hkv) if k not in keep_kv]
        q_rows = _head_rows(keep_q, d)
        kv_rows = _head_rows(keep_kv, d)
        attn.q_proj = _slice_rows(attn.q_proj, q_rows)
        attn.k_proj = _slice_rows(attn.k_proj, kv_rows)
        attn.v_proj = _slice_rows(attn.v_proj, kv_rows)
        attn.o_proj = _slice_cols(attn.o_proj, q_rows)
        attn.n_heads, attn.n_kv_heads = len(keep_q), len(keep_kv)
        assert attn.n_heads % attn.n_kv_heads == 0
        out.append(
            StructuredLayer(
                layer=i,
                kind="heads",
                removed=removed_q,
                removed_kv=removed_kv,
                kept=keep_q,
                before={"n_heads": H, "n_kv_heads": Hkv},
                after={"n_heads": attn.n_heads, "n_kv_heads": attn.n_kv_heads},
                shapes={f"blocks.{i}.attn.{p}": list(getattr(attn, p).weight.shape) for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
            )
        )
    return out


def _ffn_plan(model: nn.Module, config: FFNChannelPruneConfig, layers: list[int]) -> dict[int, int]:
    """Validate and return FFN channels to remove per layer (before touching anything)."""
    plan = {}
    for i in layers:
        d_ff = model.blocks[i].ffn.up_proj.out_features
        n = _count(config.fraction, d_ff)
        if n >= d_ff:
            raise MoorelabError(f"FFNChannelPruneConfig: fraction={config.fraction} would remove every channel of blocks.{i}.ffn (d_ff={d_ff})")
        plan[i] = n
    return plan


@torch.no_grad()
def _prune_ffn(model: nn.Module, config: FFNChannelPruneConfig, layers: list[int], cal) -> list[StructuredLayer]:
    plan = _ffn_plan(model, config, layers)
    if config.importance == "activation":
        scores = _unit_activations(model, cal, config.batch_size, layers, "ffn")
    else:
        scores = {i: _ffn_weight_scores(model.blocks[i].ffn) for i in layers}
    out = []
    for i in layers:
        ffn = model.blocks[i].ffn
        d_ff = ffn.up_proj.out_features
        n = plan[i]
        drop = set(torch.sort(scores[i], stable=True).indices[:n].tolist())
        keep = [j for j in range(d_ff) if j not in drop]
        idx = torch.tensor(keep, dtype=torch.long)
        if ffn.gate_proj is not None:
            ffn.gate_proj = _slice_rows(ffn.gate_proj, idx)
        ffn.up_proj = _slice_rows(ffn.up_proj, idx)
        ffn.down_proj = _slice_cols(ffn.down_proj, idx)
        names = [p for p in ("gate_proj", "up_proj", "down_proj") if getattr(ffn, p) is not None]
        out.append(
            StructuredLayer(
                layer=i,
                kind="ffn_channels",
                removed=sorted(drop),
                removed_kv=[],
                kept=keep,
                before={"d_ff": d_ff},
                after={"d_ff": len(keep)},
                shapes={f"blocks.{i}.ffn.{p}": list(getattr(ffn, p).weight.shape) for p in names},
            )
        )
    return out


def _layers(model: nn.Module, layers: list[int] | None, cls: str) -> list[int]:
    n = len(model.blocks)
    if layers is None:
        return list(range(n))
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise MoorelabError(f"{cls} field layers: index {bad[0]!r} is not a block of this model (0..{n - 1})")
    return sorted(set(layers))


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
        if isinstance(config, MagnitudePruneConfig):
            _magnitude(model, config)
            method, cal_tokens = "magnitude", 0
        elif isinstance(config, WandaConfig):
            cal = _check_calibration(model, calibration, "WandaConfig", config.calibration_tokens)
            _wanda(model, config, cal)
            method, cal_tokens = "wanda", cal.numel()
        elif isinstance(config, HeadPruneConfig):
            _require_plain(model, "HeadPruneConfig")
            layers = _layers(model, config.layers, "HeadPruneConfig")
            _heads_plan(model, config, layers)  # validate every layer first: nothing written on error
            cal = None
            if config.importance == "activation":
                cal = _check_calibration(model, calibration, "HeadPruneConfig(importance='activation')", config.calibration_tokens)
            report_kw["structured"] = _prune_heads(model, config, layers, cal)
            method, cal_tokens = "heads", (cal.numel() if cal is not None else 0)
        elif isinstance(config, FFNChannelPruneConfig):
            _require_plain(model, "FFNChannelPruneConfig")
            layers = _layers(model, config.layers, "FFNChannelPruneConfig")
            _ffn_plan(model, config, layers)  # validate every layer first
            cal = None
            if config.importance == "activation":
                cal = _check_calibration(model, calibration, "FFNChannelPruneConfig(importance='activation')", config.calibration_tokens)
            report_kw["structured"] = _prune_ffn(model, config, layers, cal)
            method, cal_tokens = "ffn_channels", (cal.numel() if cal is not None else 0)
        else:
            raise MoorelabError(f"prune_: unknown config type {type(config).__name__}")
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


# --------------------------------------------------------------------------- save / load
def layout(model: nn.Module) -> dict:
    """Per-layer structure and masks of a (possibly pruned) model, JSON-ready.

    Returns:
        ``{"layers": [{"n_heads", "n_kv_heads", "d_ff"}, ...], "masks": {module path: mode}}``.
    """
    layers = [
        {"n_heads": b.attn.n_heads, "n_kv_heads": b.attn.n_kv_heads, "d_ff": b.ffn.up_proj.out_features}
        for b in model.blocks
    ]
    masks = {}
    for name, m in prunable_linears(model):
        if parametrize.is_parametrized(m, "weight"):
            masks[name] = "parametrize"
        elif isinstance(getattr(m, "weight_mask", None), torch.Tensor):
            masks[name] = "buffer"
    return {"layers": layers, "masks": masks}


@torch.no_grad()
def apply_layout_(model: nn.Module, spec: dict) -> nn.Module:
    """Give a freshly built model the shapes and mask slots of ``spec`` (from :func:`layout`).

    Weights of resized layers are placeholders until a state dict is loaded.

    Raises:
        ModelLoadError: the layout does not fit the model (layer count, head/width values).
    """
    layers = spec.get("layers", [])
    if len(layers) != len(model.blocks):
        raise ModelLoadError(f"pruning layout has {len(layers)} layers, model has {len(model.blocks)}")
    for i, (b, L) in enumerate(zip(model.blocks, layers)):
        attn, ffn = b.attn, b.ffn
        H, Hkv, d_ff = int(L["n_heads"]), int(L["n_kv_heads"]), int(L["d_ff"])
        if not (0 < H <= attn.n_heads and 0 < Hkv <= attn.n_kv_heads and H % Hkv == 0 and 0 < d_ff <= ffn.up_proj.out_features):
            raise ModelLoadError(f"pruning layout layer {i}: n_heads={H}, n_kv_heads={Hkv}, d_ff={d_ff} do not fit the model")
        d = attn.head_dim
        if H != attn.n_heads or Hkv != attn.n_kv_heads:
            attn.q_proj = _slice_rows(attn.q_proj, torch.arange(H * d))
            attn.k_proj = _slice_rows(attn.k_proj, torch.arange(Hkv * d))
            attn.v_proj = _slice_rows(attn.v_proj, torch.arange(Hkv * d))
            attn.o_proj = _slice_cols(attn.o_proj, torch.arange(H * d))
            attn.n_heads, attn.n_kv_heads = H, Hkv
        if d_ff != ffn.up_proj.out_features:
            idx = torch.arange(d_ff)
            if ffn.gate_proj is not None:
                ffn.gate_proj = _slice_rows(ffn.gate_proj, idx)
            ffn.up_proj = _slice_rows(ffn.up_proj, idx)
            ffn.down_proj = _slice_cols(ffn.down_proj, idx)
    mods = dict(prunable_linears(model))
    for name, mode in spec.get("masks", {}).items():
        if name not in mods or mode not in MASK_MODES:
            raise ModelLoadError(f"pruning layout: mask {name!r} ({mode!r}) does not fit the model")
        _set_mask(mods[name], torch.ones_like(mods[name].weight, dtype=torch.bool), mode)
    return model


def save_pruned(model: nn.Module, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` (weights and masks; tied tensors once) and ``pruning.json``
    (model config, :func:`layout`, ``extra``) to ``folder``.

    Returns:
        The folder path.
    """
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    meta = {"format": 1, "config": model.config.to_dict(), "layout": layout(model), "extra": extra or {}}
    (folder / "pruning.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_pruned(folder: str | Path) -> nn.Module:
    """Rebuild a model written by :func:`save_pruned`, with its pruned shapes and masks.

    Returns:
        The :class:`~moorelab.model.transformer.Transformer` in eval mode.

    Raises:
        ModelLoadError: missing files, or tensors that do not match (named).
    """
    from safetensors.torch import load_model

    from moorelab.model.config import TransformerConfig
    from moorelab.model.transformer import Transformer

    folder = Path(folder)
    meta_path = folder / "pruning.json"
    if not meta_path.is_file() or not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"{folder}: needs pruning.json and model.safetensors (written by save_pruned)")
    meta = json.loads(meta_path.read_text())
    model = Transformer(TransformerConfig.from_dict(meta["config"]))
    apply_layout_(model, meta["layout"])
    try:
        load_model(model, str(folder / "model.safetensors"), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{folder / 'model.safetensors'}: {str(exc).strip().splitlines()[0]}") from None
    return model.eval()
