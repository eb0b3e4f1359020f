"""Structured pruning: remove attention heads or FFN channels, so the matrices really shrink.

* :class:`HeadPruneConfig` — remove attention heads. q/k/v rows ``[h·head_dim, (h+1)·head_dim)``
  and o_proj columns of the same range go (RoPE acts within a head, so it is unaffected).
  Grouped-query attention (query head ``h`` reads kv head ``h // (n_heads/n_kv_heads)``):
  ``unit="kv_group"`` removes whole groups (their query heads and their k/v head);
  ``unit="query"`` removes the same number of query heads from every group and keeps all k/v
  heads, so the new mapping ``h' // (n_heads'/n_kv_heads)`` still sends each kept head to its
  own kv head.
  ``remove`` names the heads instead of counting them (see :class:`HeadPruneConfig`), by their
  *original* index (the model's numbering before any pruning), which stays valid across rounds.
* :class:`FFNChannelPruneConfig` — remove FFN hidden channels: rows of gate/up and columns of
  down.

**Head map.** Head pruning records on each pruned ``Attention`` the attribute ``head_map``:
``{"heads": [original index of each current query head], "kv_heads": [same for the KV heads],
"heads_removed": [...], "kv_heads_removed": [...]}`` (original indices). A later round reads
it (:func:`head_map`), the saved layout stores it (:mod:`.save`), and :mod:`moorelab.improve.save`
writes it to ``moorelab.json`` for readers. A layer without the attribute is unpruned (identity).

Importance ``"activation"`` (calibration text needed): the mean squared norm of the unit's
contribution to the residual stream, ``E‖W_o[:, h]·a_h‖²`` for head ``h``, ``E[a_j²]·‖W_down[:, j]‖²``
for channel ``j`` (output-norm importance, cf. Michel et al. 2019 and Ma et al. 2023
"LLM-Pruner", first-order-free variant). ``"weight"``: product of the Frobenius norms of the
unit's input rows and output columns (data-free).

Each ``Attention`` keeps its own ``n_heads``/``n_kv_heads`` (updated here) and ``FeedForward``
reads its width from the weights, so layers may differ after pruning. Every layer's plan is
validated before any tensor changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.improve.prune.base import (
    StructuredLayer,
    _check_calibration,
    _check_choice,
    _check_fraction,
    _count,
    _require_linear,
    _slice_cols,
    _slice_rows,
    current_mask,
    prunable_linears,
)


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
        remove: the heads to remove, by name instead of by count: ``{layer: [query head, ...]}``,
            or the same as a string ``"LAYER:HEAD+HEAD/LAYER:HEAD"`` (``"0:1+3/2:0"``: heads 1 and 3
            of layer 0, head 0 of layer 2; shell-safe, no quoting needed). Head indices are the
            layer's **original** query-head indices (before any pruning; after an earlier round,
            a head keeps its original number — the saved ``moorelab.json`` lists them per layer),
            so naming a head removed earlier is an error. ``unit`` applies: ``"kv_group"`` needs
            every named head's whole GQA group named (the group's KV head goes too); ``"query"``
            needs the same number named in every group. Neither ``layers`` nor ``importance`` is
            used (the layers are the keys).
    """

    heads_per_layer: int | None = None
    fraction: float | None = None
    importance: str = "activation"
    unit: str = "kv_group"
    layers: list[int] | None = None
    calibration_tokens: int = 4096
    batch_size: int = 4
    remove: dict[int, list[int]] | str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MoorelabError naming the bad field."""
        given = [n for n in ("heads_per_layer", "fraction", "remove") if getattr(self, n) is not None]
        if len(given) != 1:
            raise MoorelabError("HeadPruneConfig: give exactly one of the fields heads_per_layer, fraction or remove"
                                + (f" (got {', '.join(given)})" if given else ""))
        if self.remove is not None:
            self.remove = _parse_remove(self.remove)
            if self.layers is not None:
                raise MoorelabError("HeadPruneConfig field layers: not used with remove (its keys are the layers); drop it")
        if self.fraction is not None:
            _check_fraction("fraction", self.fraction, "HeadPruneConfig")
        if self.heads_per_layer is not None and (not isinstance(self.heads_per_layer, int) or self.heads_per_layer < 0):
            raise MoorelabError(f"HeadPruneConfig field heads_per_layer={self.heads_per_layer!r} must be an int >= 0")
        _check_choice("importance", self.importance, ("activation", "weight"), "HeadPruneConfig")
        _check_choice("unit", self.unit, ("kv_group", "query"), "HeadPruneConfig")


REMOVE_SYNTAX = "LAYER:HEAD+HEAD/LAYER:HEAD..., e.g. 0:1+3/2:0 (layer 0 heads 1 and 3, layer 2 head 0)"


def _parse_remove(value) -> dict[int, list[int]]:
    """``remove`` as ``{layer: sorted heads}`` from a dict (int or digit-string keys, an int or a
    list of ints per layer) or the string form ``"0:1+3/2:0"``."""
    where = f"HeadPruneConfig field remove={value!r}"
    if isinstance(value, str):
        parsed: dict = {}
        for part in value.split("/"):
            layer, colon, heads = part.partition(":")
            if not colon or not layer.strip() or not heads.strip():
                raise MoorelabError(f"{where}: expected {REMOVE_SYNTAX}; got part {part!r}")
            if layer.strip() in parsed:
                raise MoorelabError(f"{where}: layer {layer.strip()} named twice")
            parsed[layer.strip()] = [h.strip() for h in heads.split("+")]
        value = parsed
    if not isinstance(value, dict):
        raise MoorelabError(f"{where}: expected {{layer: [heads]}} or {REMOVE_SYNTAX}")
    if not value:
        raise MoorelabError(f"{where}: names no head; name at least one")
    out: dict[int, list[int]] = {}
    for layer, heads in value.items():
        try:
            i = int(layer)
            hs = [int(h) for h in (heads if isinstance(heads, (list, tuple)) else [heads])]
        except (TypeError, ValueError):
            raise MoorelabError(f"{where}: layer {layer!r}: layers and heads are integers ({REMOVE_SYNTAX})") from None
        if isinstance(layer, bool) or i < 0 or any(h < 0 for h in hs) or isinstance(heads, bool):
            raise MoorelabError(f"{where}: layer {layer!r}: indices must be integers >= 0")
        if i in out:
            raise MoorelabError(f"{where}: layer {i} named twice")
        if not hs:
            raise MoorelabError(f"{where}: layer {i} names no head")
        dup = sorted({h for h in hs if hs.count(h) > 1})
        if dup:
            raise MoorelabError(f"{where}: layer {i}: head {dup[0]} named twice")
        out[i] = sorted(hs)
    return dict(sorted(out.items()))


def head_map(attn) -> dict[str, list[int]]:
    """Original indices of an ``Attention``'s current heads (identity when never pruned).

    Returns:
        ``{"heads", "kv_heads", "heads_removed", "kv_heads_removed"}``: the original index of
        each current query / KV head, and the original indices removed so far (sorted).
    """
    m = getattr(attn, "head_map", None)
    if m is None:
        return {"heads": list(range(attn.n_heads)), "kv_heads": list(range(attn.n_kv_heads)),
                "heads_removed": [], "kv_heads_removed": []}
    return {k: list(v) for k, v in m.items()}


def _update_head_map(attn, old: dict, keep_q: list[int], keep_kv: list[int]) -> dict[str, list[int]]:
    """Compose the layer's map ``old`` (:func:`head_map` before the cut) with a pruning that keeps
    current heads ``keep_q`` / ``keep_kv``; store and return it."""
    new = {
        "heads": [old["heads"][h] for h in keep_q],
        "kv_heads": [old["kv_heads"][k] for k in keep_kv],
        "heads_removed": sorted(old["heads_removed"] + [o for h, o in enumerate(old["heads"]) if h not in keep_q]),
        "kv_heads_removed": sorted(old["kv_heads_removed"] + [o for k, o in enumerate(old["kv_heads"]) if k not in keep_kv]),
    }
    attn.head_map = new
    return new


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


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def _require_plain(model: nn.Module, method: str) -> None:
    _require_linear(model, method)
    for name, m in prunable_linears(model):
        if current_mask(m) is not None:
            raise MoorelabError(f"{method}: {name} carries an unstructured mask; call remove_masks_(model) first")


def _layers(model: nn.Module, layers: list[int] | None, cls: str) -> list[int]:
    n = len(model.blocks)
    if layers is None:
        return list(range(n))
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise MoorelabError(f"{cls} field layers: index {bad[0]!r} is not a block of this model (0..{n - 1})")
    return sorted(set(layers))


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


def _named_heads_plan(model: nn.Module, config: HeadPruneConfig) -> dict[int, tuple[list[int], list[int]]]:
    """Validate ``config.remove`` against the model's heads and GQA groups (before touching
    anything) and return ``{layer: (kept current query heads, kept current KV heads)}``."""
    n_layers = len(model.blocks)
    plan = {}
    for i, named in config.remove.items():
        if i >= n_layers:
            raise MoorelabError(f"HeadPruneConfig field remove: layer {i} is not a block of this model (0..{n_layers - 1})")
        attn = model.blocks[i].attn
        H, Hkv = attn.n_heads, attn.n_kv_heads
        g = H // Hkv
        hm = head_map(attn)
        gone = [h for h in named if h not in hm["heads"]]
        if gone:
            h = gone[0]
            if h in hm["heads_removed"]:
                raise MoorelabError(
                    f"HeadPruneConfig field remove: head {h} of layer {i} was already removed by an earlier pruning "
                    f"(heads are named by their original index; layer {i} still has original heads {hm['heads']})")
            raise MoorelabError(f"HeadPruneConfig field remove: layer {i} has no head {h} "
                                f"(its heads, by original index: {hm['heads']})")
        cur = sorted(hm["heads"].index(h) for h in named)
        groups = [list(range(k * g, (k + 1) * g)) for k in range(Hkv)]
        show = "; ".join(f"KV head {hm['kv_heads'][k]}: heads {[hm['heads'][h] for h in grp]}" for k, grp in enumerate(groups))
        if len(cur) >= H:
            raise MoorelabError(f"HeadPruneConfig field remove: names every head of layer {i} (n_heads={H}); keep at least one group")
        if config.unit == "kv_group":
            partial = [k for k, grp in enumerate(groups) if 0 < len(set(grp) & set(cur)) < g]
            if partial:
                grp = groups[partial[0]]
                raise MoorelabError(
                    f"HeadPruneConfig field remove: layer {i}: with unit='kv_group' a head goes with its whole KV group; "
                    f"heads {[hm['heads'][h] for h in grp]} share KV head {hm['kv_heads'][partial[0]]} but not all are named "
                    f"(layer {i} groups by original index: {show}); name whole groups or use unit='query'")
            keep_kv = [k for k, grp in enumerate(groups) if not set(grp) & set(cur)]
            keep_q = [h for k in keep_kv for h in groups[k]]
        else:
            counts = [len(set(grp) & set(cur)) for grp in groups]
            if len(set(counts)) != 1:
                raise MoorelabError(
                    f"HeadPruneConfig field remove: layer {i}: with unit='query' every KV group must lose the same number "
                    f"of query heads (so each kept head still reads its own KV head); named per group: {counts} "
                    f"(layer {i} groups by original index: {show})")
            keep_kv = list(range(Hkv))
            keep_q = [h for h in range(H) if h not in cur]
        plan[i] = (keep_q, keep_kv)
    return plan


def check_head_plan(model: nn.Module, config: HeadPruneConfig) -> None:
    """Raise :class:`MoorelabError` if ``config`` cannot prune ``model``'s heads as asked
    (unknown layer or head, a head removed earlier, a partial GQA group); changes nothing."""
    if config.remove is not None:
        _named_heads_plan(model, config)
    else:
        _heads_plan(model, config, _layers(model, config.layers, "HeadPruneConfig"))


@torch.no_grad()
def _cut_heads(model: nn.Module, i: int, keep_q: list[int], keep_kv: list[int]) -> StructuredLayer:
    """Remove every current head of layer ``i`` not in ``keep_q``/``keep_kv``; update its head map."""
    attn = model.blocks[i].attn
    H, Hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    before = head_map(attn)
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
    after = _update_head_map(attn, before, keep_q, keep_kv)
    return StructuredLayer(
        layer=i,
        kind="heads",
        removed=removed_q,
        removed_kv=removed_kv,
        kept=keep_q,
        before={"n_heads": H, "n_kv_heads": Hkv},
        after={"n_heads": attn.n_heads, "n_kv_heads": attn.n_kv_heads},
        shapes={f"blocks.{i}.attn.{p}": list(getattr(attn, p).weight.shape) for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
        removed_original=[before["heads"][h] for h in removed_q],
        kept_original=after["heads"],
    )


@torch.no_grad()
def _prune_heads(model: nn.Module, config: HeadPruneConfig, layers: list[int], cal) -> list[StructuredLayer]:
    if config.remove is not None:
        return [_cut_heads(model, i, q, kv) for i, (q, kv) in _named_heads_plan(model, config).items()]
    plan = _heads_plan(model, config, layers)
    if config.importance == "activation":
        scores = _unit_activations(model, cal, config.batch_size, layers, "heads")
    else:
        scores = {i: _head_weight_scores(model.blocks[i].attn) for i in layers}
    out = []
    for i in layers:
        attn = model.blocks[i].attn
        H, Hkv = attn.n_heads, attn.n_kv_heads
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
        out.append(_cut_heads(model, i, keep_q, keep_kv))
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


def _run_structured(model: nn.Module, config, calibration, method: str, cls: str,
                    plan: Callable, prune: Callable) -> tuple[str, int, list[StructuredLayer]]:
    _require_plain(model, cls)
    layers = _layers(model, config.layers, cls)
    plan(model, config, layers)  # validate every layer first: nothing written on error
    cal = None
    if config.importance == "activation":
        cal = _check_calibration(model, calibration, f"{cls}(importance='activation')", config.calibration_tokens)
    return method, (cal.numel() if cal is not None else 0), prune(model, config, layers, cal)


def _run_heads(model: nn.Module, config: HeadPruneConfig, calibration) -> tuple[str, int, list[StructuredLayer]]:
    """:func:`~moorelab.improve.prune.prune_` for this config: ``(method, calibration tokens, layers)``."""
    if config.remove is not None:  # named heads: no importance, no calibration
        _require_plain(model, "HeadPruneConfig")
        _named_heads_plan(model, config)  # validate every layer first: nothing written on error
        return "heads", 0, _prune_heads(model, config, sorted(config.remove), None)
    return _run_structured(model, config, calibration, "heads", "HeadPruneConfig", _heads_plan, _prune_heads)


def _run_ffn(model: nn.Module, config: FFNChannelPruneConfig, calibration) -> tuple[str, int, list[StructuredLayer]]:
    """:func:`~moorelab.improve.prune.prune_` for this config: ``(method, calibration tokens, layers)``."""
    return _run_structured(model, config, calibration, "ffn_channels", "FFNChannelPruneConfig", _ffn_plan, _prune_ffn)
