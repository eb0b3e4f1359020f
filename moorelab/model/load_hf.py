"""Load Hugging Face folders (``config.json`` + ``*.safetensors``) into our :class:`Transformer`.

Weights are read with ``safetensors`` only (never pickle). Each family's tensor names are
translated to ours; GPT-2's ``Conv1D`` weights are stored ``[in, out]`` and are transposed to
``nn.Linear``'s ``[out, in]``; its fused ``c_attn`` is split into q, k, v.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moorelab.errors import ModelLoadError
from moorelab.kernels import get_library
from moorelab.model.config import TransformerConfig, token_id_list
from moorelab.model.transformer import Transformer

# Tensors present in some checkpoints that our model does not use (by design, not by accident).
_IGNORED = (
    re.compile(r"^(bert\.)?pooler\."),  # BERT pooler (sentence classification head)
    re.compile(r"^cls\."),  # BERT masked-LM / NSP heads
    re.compile(r"^(bert\.)?embeddings\.position_ids$"),
    re.compile(r"\.rotary_emb\.inv_freq$"),
    re.compile(r"^(transformer\.)?h\.\d+\.attn\.(masked_)?bias$"),  # GPT-2 causal-mask buffers
)


def _llama_names(hf: str) -> str | None:
    name = hf[len("model."):] if hf.startswith("model.") else hf
    if name == "lm_head.weight" or hf == "lm_head.weight":
        return "lm_head.weight"
    if name == "embed_tokens.weight":
        return "embed.weight"
    if name == "norm.weight":
        return "final_norm.weight"
    m = re.match(r"layers\.(\d+)\.(.+)$", name)
    if not m:
        return None
    i, rest = m.groups()
    rest = (
        rest.replace("self_attn.", "attn.")
        .replace("mlp.", "ffn.")
        .replace("input_layernorm.", "attn_norm.")
        .replace("post_attention_layernorm.", "ffn_norm.")
    )
    return f"blocks.{i}.{rest}"


_BERT = {
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.o_proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn.up_proj",
    "output.dense": "ffn.down_proj",
    "output.LayerNorm": "ffn_norm",
}
_BERT_EMB = {
    "word_embeddings": "embed",
    "position_embeddings": "pos_embed",
    "token_type_embeddings": "type_embed",
    "LayerNorm": "embed_norm",
}


def _bert_names(hf: str) -> str | None:
    name = hf[len("bert."):] if hf.startswith("bert.") else hf
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    m = re.match(r"embeddings\.(\w+)\.(weight|bias)$", name)
    if m and m.group(1) in _BERT_EMB:
        return f"{_BERT_EMB[m.group(1)]}.{m.group(2)}"
    m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", name)
    if m and m.group(2) in _BERT:
        return f"blocks.{m.group(1)}.{_BERT[m.group(2)]}.{m.group(3)}"
    return None


def convert_hf_state(state: dict[str, torch.Tensor], config: TransformerConfig, source: str = "") -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2 transpose/split) a Hugging Face state dict into our names.

    Raises:
        ModelLoadError: a tensor name we do not recognise (naming it and the file).
    """
    out: dict[str, torch.Tensor] = {}
    for hf_name, t in state.items():
        if any(p.search(hf_name) for p in _IGNORED):
            continue
        if config.family == "llama":
            name = _llama_names(hf_name)
            if name:
                out[name] = t
        elif config.family == "bert":
            name = _bert_names(hf_name)
            if name:
                out[name] = t
        else:
            name = _gpt2_into(out, hf_name, t, config, source)
        if not name:
            raise ModelLoadError(f"{source}: unexpected tensor {hf_name!r} for model type {config.family}")
    return out


def _gpt2_into(out: dict, hf_name: str, t: torch.Tensor, config: TransformerConfig, source: str) -> str | None:
    name = hf_name[len("transformer."):] if hf_name.startswith("transformer.") else hf_name
    simple = {"wte.weight": "embed.weight", "wpe.weight": "pos_embed.weight",
              "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias",
              "lm_head.weight": "lm_head.weight"}
    if name in simple:
        out[simple[name]] = t
        return simple[name]
    m = re.match(r"h\.(\d+)\.(.+)\.(weight|bias)$", name)
    if not m:
        return None
    i, mod, kind = m.groups()
    p = f"blocks.{i}."
    if mod in ("ln_1", "ln_2"):
        key = p + ("attn_norm" if mod == "ln_1" else "ffn_norm") + "." + kind
        out[key] = t
        return key
    conv = {"attn.c_proj": "attn.o_proj", "mlp.c_fc": "ffn.up_proj", "mlp.c_proj": "ffn.down_proj"}
    # Conv1D stores weight [in, out] (x @ W); nn.Linear wants [out, in] (x @ Wᵀ).
    if mod in conv:
        key = p + conv[mod] + "." + kind
        out[key] = t.t().contiguous() if kind == "weight" else t
        return key
    if mod == "attn.c_attn":
        d = config.d_model
        w = t.t() if kind == "weight" else t
        if w.shape[0] != 3 * d:
            raise ModelLoadError(f"{source}: tensor {hf_name!r} has shape {tuple(t.shape)}, expected 3*d_model={3 * d} outputs")
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), w.split(d, dim=0)):
            out[f"{p}attn.{part}.{kind}"] = chunk.contiguous()
        return p + "attn.c_attn"
    return None


def to_hf_llama_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our llama state dict under Hugging Face ``LlamaForCausalLM`` names (tied head omitted)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            if model.config.tie_word_embeddings:
                continue
            out[name] = t
        elif name == "embed.weight":
            out["model.embed_tokens.weight"] = t
        elif name == "final_norm.weight":
            out["model.norm.weight"] = t
        else:
            rest = (
                name.replace("blocks.", "model.layers.")
                .replace(".attn_norm.", ".input_layernorm.")
                .replace(".ffn_norm.", ".post_attention_layernorm.")
                .replace(".attn.", ".self_attn.")
                .replace(".ffn.", ".mlp.")
            )
            out[rest] = t
    return {k: v.contiguous() for k, v in out.items()}


def column_major(t: torch.Tensor) -> torch.Tensor:
    """The same ``[out, in]`` matrix stored column-major (``[in, out]`` in memory).

    For one token (decode), ``x @ W.T`` with this layout streams the weight as long contiguous
    rows and ran ~1.5x faster than the row-major layout on the project's 2-core machine
    (measured with ``F.linear``, float32, 1x576 @ 576x1536). Values are unchanged.
    """
    return t.t().contiguous().t()


def decode_layout_is_column_major() -> bool:
    """Whether ``decode_layout`` stores linear weights column-major on this machine.

    With the compiled kernels available (gcc, AVX2/FMA; see :mod:`moorelab.kernels`),
    decode-sized calls of :class:`moorelab.model.transformer.FastLinear` run a GEMV kernel that
    wants the plain row-major ``[out, in]`` layout (~1.5-2x faster than ``F.linear`` on either
    layout), so weights stay row-major; without it ``F.linear`` is fastest on column-major weights.
    """
    return get_library() is None


def _column_major_names(model: Transformer) -> set[str]:
    """Our names of the weights stored column-major: every nn.Linear and a tied embedding.

    Empty when :func:`decode_layout_is_column_major` is False (kernels keep row-major weights).
    """
    if not decode_layout_is_column_major():
        return set()
    names = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if model.lm_head is not None and model.config.tie_word_embeddings:
        names.add("embed.weight")  # it is also the output layer's weight
    return names


def load_state_into(
    model: Transformer, state: dict[str, torch.Tensor], source: str, decode_layout: bool = True
) -> Transformer:
    """Assign our-named tensors to ``model`` (which may live on the meta device), checking names and shapes.

    ``state`` is consumed (entries are popped so each source tensor can be freed as soon as it
    is placed). With ``decode_layout``, every ``nn.Linear`` weight (and a tied embedding) is
    stored column-major (see :func:`column_major`) unless the compiled decode kernels are
    available (see :func:`decode_layout_is_column_major`); shapes and values are unchanged.

    Raises:
        ModelLoadError: a missing tensor, a tensor of the wrong shape, or an unexpected one,
            naming the tensor and ``source``.
    """
    expected = dict(model.state_dict())  # tied head appears under both names
    tied = model.lm_head is not None and model.config.tie_word_embeddings
    for name, ref in expected.items():
        if tied and name == "lm_head.weight":
            continue
        if name not in state:
            raise ModelLoadError(f"{source}: missing tensor {name!r} (shape {tuple(ref.shape)})")
        if tuple(state[name].shape) != tuple(ref.shape):
            raise ModelLoadError(
                f"{source}: tensor {name!r} has shape {tuple(state[name].shape)}, expected {tuple(ref.shape)}"
            )
    for name in state:
        if name not in expected:
            raise ModelLoadError(f"{source}: unexpected tensor {name!r}")
    state.pop("lm_head.weight", None) if tied else None
    linear_weights = _column_major_names(model)
    for name in list(state):
        t = state.pop(name).to(torch.float32)
        if decode_layout and name in linear_weights and t.dim() == 2:
            t = column_major(t)
        model.load_state_dict({name: t}, strict=False, assign=True)
        del t
    model.tie_weights()
    return model


def build_model(
    config: TransformerConfig, state: dict[str, torch.Tensor], source: str, decode_layout: bool = True
) -> Transformer:
    """Construct a Transformer without random initialisation and load ``state`` (our names; consumed)."""
    with torch.device("meta"):
        model = Transformer(config)
    load_state_into(model, state, source, decode_layout=decode_layout)
    return model.eval()


def read_hf_config(folder: Path) -> TransformerConfig:
    """Read ``folder/config.json`` into a :class:`TransformerConfig`.

    End-of-sequence ids are those of ``config.json`` followed by any other ones listed in
    ``generation_config.json`` (each may be one id or a list); generation stops at any of them.

    Raises:
        ModelLoadError: missing/invalid file or unsupported model type (naming the field).
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no config.json")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: invalid JSON ({e})") from None
    config = TransformerConfig.from_hf_dict(hf, source=str(path))
    gen_path = Path(folder) / "generation_config.json"
    if gen_path.is_file() and config.is_decoder:
        try:
            gen = json.loads(gen_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{gen_path}: invalid JSON ({e})") from None
        extra = token_id_list(gen.get("eos_token_id"), str(gen_path), "eos_token_id")
        if extra:
            # transformers' generate() stops at generation_config's ids; keep config.json's too
            ids = config.eos_token_ids + [i for i in extra if i not in config.eos_token_ids]
            config = dataclasses.replace(config, eos_token_id=ids[0], eos_token_ids=ids)
    return config


def load_hf_folder(folder: str | Path, decode_layout: bool = True) -> Transformer:
    """Load a Hugging Face folder (config.json + *.safetensors) of model type gpt2, llama or bert.

    ``decode_layout``: store linear weights in the layout fastest for decoding (row-major with
    the compiled kernels, else column-major; see :func:`decode_layout_is_column_major`).

    Returns:
        Our :class:`Transformer` in eval mode, float32.

    Raises:
        ModelLoadError: unsupported model type, no safetensors file, missing tensor or wrong
            shape (naming the tensor).
    """
    folder = Path(folder)
    config = read_hf_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors weights (pickle checkpoints are not loaded)")
    with torch.device("meta"):
        model = Transformer(config)
    layout_names = _column_major_names(model) if decode_layout else set()
    # One tensor at a time, each from its own short-lived memory map, copied into memory we own
    # (column-major for linear weights): the map is released before the next tensor, so peak
    # RSS stays near the model's size instead of model + mapped file.
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys = list(fh.keys())
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(f"{f}: not a readable safetensors file ({e})") from None
        for key in keys:
            with safe_open(str(f), framework="pt") as fh:
                part = convert_hf_state({key: fh.get_tensor(key)}, config, source=str(folder))
            for name, t in part.items():
                state[name] = column_major(t) if name in layout_names and t.dim() == 2 else t.clone()
            del part
    load_state_into(model, state, source=str(folder), decode_layout=decode_layout)
    return model.eval()


def save_hf_llama_folder(model: Transformer, folder: Path) -> None:
    """Write ``config.json`` (transformers llama format) and ``model.safetensors`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))
    save_file(to_hf_llama_state(model), str(folder / "model.safetensors"), metadata={"format": "pt"})


def to_hf_gpt2_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our gpt2 state dict under ``GPT2LMHeadModel`` names: q, k, v fused into ``c_attn`` and
    every linear weight transposed to ``Conv1D``'s ``[in, out]`` (the inverse of loading); the
    tied head is omitted."""
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos_embed.weight"],
           "transformer.ln_f.weight": sd["final_norm.weight"], "transformer.ln_f.bias": sd["final_norm.bias"]}
    for i in range(model.config.n_layers):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            out[h + theirs + ".weight"] = sd[p + ours + ".weight"]
            out[h + theirs + ".bias"] = sd[p + ours + ".bias"]
        qkv = [p + f"attn.{x}_proj" for x in "qkv"]
        out[h + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv], dim=0).t()
        out[h + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv], dim=0)
        for ours, theirs in (("attn.o_proj", "attn.c_proj"), ("ffn.up_proj", "mlp.c_fc"), ("ffn.down_proj", "mlp.c_proj")):
            out[h + theirs + ".weight"] = sd[p + ours + ".weight"].t()
            out[h + theirs + ".bias"] = sd[p + ours + ".bias"]
    return {k: v.detach().contiguous() for k, v in out.items()}


def save_hf_folder(model: Transformer, folder: Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` that ``transformers`` loads
    (``LlamaForCausalLM`` or ``GPT2LMHeadModel``), each through a temporary file renamed into place.

    Raises:
        ModelLoadError: a family or shape transformers' classes cannot express (bert; see
            :meth:`TransformerConfig.to_hf_dict`).
    """
    import os

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = model.config.to_hf_dict()
    state = to_hf_gpt2_state(model) if model.config.family == "gpt2" else to_hf_llama_state(model)
    tmp_w, tmp_c = folder / ".model.safetensors.tmp", folder / ".config.json.tmp"
    save_file(state, str(tmp_w), metadata={"format": "pt"})
    tmp_c.write_text(json.dumps(hf, indent=2))
    os.replace(tmp_w, folder / "model.safetensors")
    os.replace(tmp_c, folder / "config.json")
