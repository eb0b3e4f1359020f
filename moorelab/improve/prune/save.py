"""Pruned models on disk: :func:`layout` (per-layer shapes and which masks exist),
:func:`apply_layout_` (give a fresh model those shapes and mask slots), and :func:`save_pruned` /
:func:`load_pruned`, which write/read ``model.safetensors`` + ``pruning.json`` so a pruned model
reloads with its masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from moorelab.errors import ModelLoadError
from moorelab.improve.prune.base import MASK_MODES, _set_mask, _slice_cols, _slice_rows, prunable_linears
from moorelab.improve.prune.structured import head_map


def layout(model: nn.Module) -> dict:
    """Per-layer structure and masks of a (possibly pruned) model, JSON-ready.

    Returns:
        ``{"layers": [{"n_heads", "n_kv_heads", "d_ff"}, ...], "masks": {module path: mode}}``; a
        layer whose heads were pruned also has its head map (original indices, see
        ``structured.head_map``): ``"heads"``, ``"kv_heads"`` (of the current heads, in order),
        ``"heads_removed"``, ``"kv_heads_removed"``.
    """
    layers = []
    for b in model.blocks:
        L = {"n_heads": b.attn.n_heads, "n_kv_heads": b.attn.n_kv_heads, "d_ff": b.ffn.up_proj.out_features}
        if getattr(b.attn, "head_map", None) is not None:
            L.update(head_map(b.attn))
        layers.append(L)
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
        if "heads" in L:
            hm = {k: [int(h) for h in L.get(k, [])] for k in ("heads", "kv_heads", "heads_removed", "kv_heads_removed")}
            if len(hm["heads"]) != H or len(hm["kv_heads"]) != Hkv or set(hm["heads"]) & set(hm["heads_removed"]):
                raise ModelLoadError(f"pruning layout layer {i}: head map {hm} does not fit n_heads={H}, n_kv_heads={Hkv}")
            attn.head_map = hm
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
