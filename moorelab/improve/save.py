"""Saving and loading improved models.

Two formats, chosen by what the model has become:

* **Hugging Face folder** (dense results: the baseline, unstructured pruning with its masks
  baked in, structured pruning that left every layer the same shape): ``config.json``
  (transformers' llama format, with ``head_dim``/``intermediate_size`` updated) +
  ``model.safetensors`` + ``tokenizer.json``. ``transformers.AutoModelForCausalLM`` loads it.
  Beside them, ``moorelab.json`` records what transformers' config cannot:
  ``{"format": "moorelab-improved/1", "weights": "huggingface", "config": ..., "layout": ...,
  "techniques": [...]}`` (the layout carries the head map of pruned heads, below).
* **moorelab folder** (quantized layers, or per-layer shapes that a Hugging Face config cannot
  express): ``model.safetensors`` holding every tensor once (quantized layers as their integer
  buffers: int8 ``qweight`` [out, in] + float32 ``scale`` [out]; int4 ``qweight`` uint8
  [out, in/2] with the low nibble = even input index + float16 ``scales``/``mins``
  [out, in/group_size]), and ``moorelab.json``::

      {"format": "moorelab-improved/1", "weights": "moorelab", "config": TransformerConfig.to_dict(),
       "layout": {"layers": [{"n_heads", "n_kv_heads", "d_ff"}, ...], "masks": {...}},
       "quantized": {module path: {"scheme": ..., "group_size": ..., "tied_to": ..., "m_threshold": ..., "activation_bits": ...}},
       "aliases": {tensor name: name it shares storage with},
       "techniques": [spec strings in the order applied, earlier rounds first]}

  :func:`load_improved` rebuilds the model from it. Weights load with safetensors only.

**Head map.** A layer whose attention heads were pruned has, in ``layout["layers"][i]``,
``"heads"`` (the original index of each remaining query head, in order: current head ``h`` was
head ``heads[h]`` of the unpruned model), ``"kv_heads"`` (the same for key/value heads),
``"heads_removed"`` and ``"kv_heads_removed"`` (original indices). Loading restores it on each
``Attention`` (``head_map``), so a second round (``heads:remove=``, which names original indices)
knows which heads are already gone.

Loading by name: importing this module registers :func:`load_improved` with
:func:`moorelab.model.zoo.register_saved_format`, so ``load_pretrained(folder)`` — and with it
``moorelab run --model``, ``moorelab improve`` and ``moorelab explain --model`` — load these
folders (with their ``tokenizer.json``). ``model.applied_techniques`` holds the recorded specs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from moorelab.errors import ModelLoadError
from moorelab.improve import prune as prune_mod
from moorelab.improve.quantize import (
    Int4WeightOnlyLinear,
    Int8DynamicBlockLinear,
    Int8DynamicLinear,
    Int8WeightOnlyLinear,
    QuantizedLinear,
)

FORMAT = "moorelab-improved/1"
#: files beside ``tokenizer.json`` that are copied with it: the chat template and the special tokens
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
_SCHEMES = {cls.scheme: cls for cls in (Int8WeightOnlyLinear, Int4WeightOnlyLinear, Int8DynamicLinear,
                                        Int8DynamicBlockLinear)}


def _quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


_SHAPE_KEYS = ("n_heads", "n_kv_heads", "d_ff")


def _uniform(layout: dict) -> bool:
    """Every layer has the same shapes (head maps may differ: they go to moorelab.json)."""
    shapes = [tuple(L[k] for k in _SHAPE_KEYS) for L in layout["layers"]]
    return all(sh == shapes[0] for sh in shapes)


def save_improved(model: nn.Module, folder: Path, tokenizer_file: Path | None = None,
                  techniques: list[str] | None = None, tokenizer_gguf: str | None = None) -> dict:
    """Write an improved model to ``folder`` in the format it needs (see module docstring).

    Args:
        model: a moorelab Transformer, possibly pruned (masks are baked in, not kept) and/or
            quantized.
        folder: output folder (created).
        tokenizer_file: ``tokenizer.json`` to copy beside the weights (with the
            :data:`TOKENIZER_SIDE_FILES` found next to it).
        techniques: spec strings applied, recorded in the metadata.
        tokenizer_gguf: the GGUF the model came from, recorded as ``"tokenizer_gguf"`` so a later
            ``--format gguf`` can copy its tokenizer metadata (:mod:`moorelab.improve.gguf_out`).

    Returns:
        ``{"format": "huggingface" | FORMAT, "path": str, "bytes": file size of the weights}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prune_mod.remove_masks_(model)
    layout = prune_mod.layout(model)
    quantized = _quantized_modules(model)
    history = list(getattr(model, "applied_techniques", None) or []) + list(techniques or [])
    if tokenizer_file is not None and Path(tokenizer_file).is_file():
        shutil.copy(tokenizer_file, folder / "tokenizer.json")
        for name in TOKENIZER_SIDE_FILES:  # the chat template and special tokens (`moorelab generate --chat`)
            side = Path(tokenizer_file).parent / name
            if side.is_file():
                shutil.copy(side, folder / name)
    if not quantized and _uniform(layout) and model.config.family == "llama":
        from dataclasses import replace

        from moorelab.model.load_hf import save_hf_llama_folder

        L0 = layout["layers"][0]
        original = model.config
        model.config = replace(original, n_heads=L0["n_heads"], n_kv_heads=L0["n_kv_heads"], d_ff=L0["d_ff"])
        try:
            save_hf_llama_folder(model, folder)
            hf_config = model.config.to_dict()
        finally:
            model.config = original
        meta = {"format": FORMAT, "weights": "huggingface", "config": hf_config, "layout": layout, "techniques": history}
        if tokenizer_gguf:
            meta["tokenizer_gguf"] = str(tokenizer_gguf)
        (folder / "moorelab.json").write_text(json.dumps(meta, indent=1))
        return {"format": "huggingface", "path": str(folder), "bytes": (folder / "model.safetensors").stat().st_size}

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[tuple[int, int, tuple], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in by_storage:
            aliases[name] = by_storage[key]
            continue
        by_storage[key] = name
        tensors[name] = t.detach().contiguous()
    meta = {
        "format": FORMAT,
        "weights": "moorelab",
        "config": model.config.to_dict(),
        "layout": layout,
        "quantized": {
            n: {"scheme": m.scheme, "group_size": getattr(m, "group_size", None), "tied_to": m.tied_to,
                "m_threshold": m.m_threshold, "activation_bits": getattr(m, "activation_bits", 32)}
            for n, m in quantized.items()
        },
        "aliases": aliases,
        "techniques": history,
    }
    if tokenizer_gguf:
        meta["tokenizer_gguf"] = str(tokenizer_gguf)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", "moorelab": FORMAT})
    (folder / "moorelab.json").write_text(json.dumps(meta, indent=1))
    return {"format": FORMAT, "path": str(folder), "bytes": (folder / "model.safetensors").stat().st_size}


def load_improved(folder: Path) -> nn.Module:
    """Load a folder written by :func:`save_improved` (either format).

    Returns:
        A moorelab Transformer in eval mode, with its quantized layers and pruned shapes.

    Raises:
        ModelLoadError: missing files, unknown format or scheme, or a tensor that is missing or
            has the wrong shape (named).
    """
    from moorelab.model.config import TransformerConfig
    from moorelab.model.transformer import Transformer

    from moorelab.model.load_hf import load_hf_folder

    folder = Path(folder)
    meta_path = folder / "moorelab.json"
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such folder")
    if not meta_path.is_file():
        return load_hf_folder(folder)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{meta_path}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ModelLoadError(f"{meta_path}: field format={got!r}, expected {FORMAT!r}")
    for key in ("config", "layout"):
        if not isinstance(meta.get(key), dict):
            raise ModelLoadError(f"{meta_path}: field {key!r} is missing")
    if meta.get("weights", "moorelab") == "huggingface":
        model = load_hf_folder(folder)
        try:
            prune_mod.apply_layout_(model, {"layers": meta["layout"].get("layers", []), "masks": {}})
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{meta_path}: field layout is malformed ({exc})") from None
        model.applied_techniques = list(meta.get("techniques", []))
        return model.eval()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: model.safetensors is missing")
    model = Transformer(TransformerConfig.from_dict(meta["config"]))
    prune_mod.apply_layout_(model, {"layers": meta["layout"]["layers"], "masks": {}})
    with safe_open(str(weights), framework="pt") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
    for name, target in meta.get("aliases", {}).items():
        if target not in stored:
            raise ModelLoadError(f"{weights}: tensor {target!r} (alias of {name!r}) is missing")
        stored[name] = stored[target]
    for fqn, q in meta["quantized"].items():
        cls = _SCHEMES.get(q["scheme"])
        if cls is None:
            raise ModelLoadError(f"{meta_path}: module {fqn}: unknown quantization scheme {q['scheme']!r}")
        try:
            bias = stored.get(f"{fqn}.bias")
            if cls is Int4WeightOnlyLinear:
                mod = cls(stored[f"{fqn}.qweight"], stored[f"{fqn}.scales"], stored[f"{fqn}.mins"], int(q["group_size"]),
                          bias, m_threshold=q.get("m_threshold", 16), name=fqn,
                          activation_bits=int(q.get("activation_bits", 32)))
            else:
                qw = stored[f"{fqn}.qweight"]
                if qw.dtype is not torch.int8 or (qw.numel() and int(qw.min()) < -127):
                    # the kernels' sign trick (vpsignb) and the symmetric scheme assume -127..127
                    raise ModelLoadError(f"{weights}: {fqn}.qweight must be int8 in -127..127 "
                                         f"(got {qw.dtype}, min {int(qw.min()) if qw.numel() else 'n/a'})")
                mod = cls(qw, stored[f"{fqn}.scale"], bias, m_threshold=q.get("m_threshold", 16), name=fqn)
        except KeyError as exc:
            raise ModelLoadError(f"{weights}: tensor {exc.args[0]!r} of quantized module {fqn} is missing") from None
        mod.tied_to = q.get("tied_to")
        parent, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, mod)
    own = model.state_dict()
    for name, t in own.items():
        if name not in stored:
            raise ModelLoadError(f"{weights}: tensor {name!r} is missing")
        if tuple(stored[name].shape) != tuple(t.shape):
            raise ModelLoadError(f"{weights}: tensor {name!r} has shape {tuple(stored[name].shape)}, expected {tuple(t.shape)}")
    model.load_state_dict({k: stored[k] for k in own}, strict=True)
    if model.config.tie_word_embeddings and model.lm_head is not None and "lm_head" not in meta["quantized"]:
        model.lm_head.weight = model.embed.weight
    model.applied_techniques = list(meta.get("techniques", []))
    return model.eval()


def _register() -> None:
    from moorelab.model.zoo import register_saved_format

    register_saved_format(FORMAT, load_improved)


_register()
