"""Write an improved LLaMA-family model as a GGUF file that llama.cpp loads.

Which of our layouts have an exact GGUF storage type (GGML block formats, ``ggml-common.h``):

* float32 weights (``nn.Linear``, the embedding, norms) -> ``F32``, bit for bit.
* int4 weight-only, groups of G (a multiple of 32) -> ``Q4_1``: a Q4_1 block is 32 weights with
  one float16 scale ``d``, one float16 min ``m`` and 16 bytes of nibbles, ``w = d*q + m``
  (``q`` 0..15) — exactly our (scale, min, q) with the same float16 rounding; a group of 64 is
  two blocks carrying the same pair. Only the nibble order differs: ours packs input ``2j`` /
  ``2j+1`` into the low / high nibble of byte ``j``, Q4_1 packs input ``j`` / ``j+16`` of a block
  into byte ``j``; the writer repacks. ``activation_bits`` is a property of the kernel, not of the
  weights: llama.cpp always multiplies Q4_1 weights by Q8_1-rounded activation blocks, which is
  our ``activation_bits=8`` arithmetic; a weight-only (float activation) variant is stored the
  same, and the engine then computes it as a8.
* int8 weight-only / int8-dynamic (one **float32** scale per output row) -> **refused**: ``Q8_0``
  is 32 weights with one **float16** scale per block; storing our rows as Q8_0 rounds each
  scale to float16 (relative error up to 2^-11 on every weight) or re-quantizes the float weights
  in blocks of 32 — either way another model than the one measured. Write the float model and let
  ``llama-quantize ... Q8_0`` make llama.cpp's own 8-bit file instead.
* per-layer shapes (heads or FFN channels pruned differently per layer) -> refused: the llama
  architecture in GGUF has one head count and one FFN width for every layer.

Tensor names and orientation follow llama.cpp's ``convert_hf_to_gguf.py``: ``token_embd``,
``blk.{i}.attn_{q,k,v,output}``, ``blk.{i}.ffn_{gate,up,down}``, ``blk.{i}.{attn,ffn}_norm``,
``output_norm``, ``output`` (absent when tied); dimensions are written fastest-first (a ``[out,
in]`` matrix has GGUF shape ``(in, out)``), and the rows of ``attn_q`` / ``attn_k`` are permuted
from the Hugging Face half-split RoPE layout to llama.cpp's interleaved pairs
(:func:`moorelab.model.load_gguf.permute_rope_rows`, the inverse of what the loader undoes).
A tied lm_head that was quantized on its own (the embedding stays float32, see
:mod:`moorelab.improve.quantize.driver`) is written as ``output`` beside an F32 ``token_embd``,
so the file computes what the in-memory variant computes.

Tokenizer metadata (every ``tokenizer.*`` field) is copied from the GGUF the model came from
(:func:`tokenizer_source`); without one the file has no tokenizer and llama.cpp refuses it —
the result says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.improve.quantize import Int4WeightOnlyLinear, Int8DynamicLinear, Int8WeightOnlyLinear, QuantizedLinear
from moorelab.improve.quantize.int4 import unpack_int4
from moorelab.model.load_gguf import permute_rope_rows

_BLOCK_NAMES = {
    "attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v", "attn.o_proj": "attn_output",
    "ffn.gate_proj": "ffn_gate", "ffn.up_proj": "ffn_up", "ffn.down_proj": "ffn_down",
}
Q4_1_BLOCK = 32  # weights per Q4_1 block (QK4_1 in ggml-common.h)
Q4_1_BYTES = 20  # fp16 d + fp16 m + 16 bytes of nibbles


def why_not_gguf(model: nn.Module) -> str | None:
    """The reason ``model`` cannot be written as GGUF exactly, or None when it can.

    Checks: a LLaMA-family moorelab Transformer with RMSNorm/SwiGLU/RoPE, one shape for every
    layer, RoPE scaling none or linear, and every linear layer float32 or int4 (group a multiple
    of 32). int8 layers are refused (see the module docstring: Q8_0 has float16 block scales,
    ours are float32 per row).
    """
    c = getattr(model, "config", None)
    if c is None or getattr(c, "family", None) != "llama":
        return f"only LLaMA-family moorelab Transformers are written as GGUF (got family {getattr(c, 'family', None)!r})"
    # switches the GGUF llama architecture has no field for (the ladder's recipes set some): a file
    # written without them would be another model in llama.cpp, so refuse (as to_hf_dict does)
    expect = dict(norm="rmsnorm", norm_position="pre", activation="swiglu", position="rope", qk_norm=False,
                  scale_embeddings=False)
    for key, value in expect.items():
        if getattr(c, key, value) != value:
            return f"the GGUF llama architecture needs {key}={value!r}; this model has {getattr(c, key)!r}"
    shapes = {(b.attn.n_heads, b.attn.n_kv_heads, b.ffn.up_proj.out_features) for b in model.blocks}
    if len(shapes) != 1:
        return ("layers have different shapes (heads or FFN channels pruned per layer); the GGUF llama "
                "architecture has one head count and one FFN width for all layers")
    rs = c.rope_scaling
    if rs and rs.get("rope_type", rs.get("type")) not in (None, "linear"):
        return f"RoPE scaling {rs.get('rope_type')!r} is not written (only none or linear)"
    for name, m in model.named_modules():
        if isinstance(m, (Int8WeightOnlyLinear, Int8DynamicLinear)):
            return (f"layer {name} is int8 with one float32 scale per output row; GGUF's Q8_0 stores one "
                    "float16 scale per block of 32 weights, so writing it would round every scale to "
                    "float16 or re-quantize the float weights (another model than the one measured). "
                    "Write the float model instead and make Q8_0 with llama-quantize")
        if isinstance(m, Int4WeightOnlyLinear) and m.group_size % Q4_1_BLOCK:
            return f"layer {name}: int4 group size {m.group_size} is not a multiple of 32 (Q4_1 blocks)"
        if isinstance(m, QuantizedLinear) and not isinstance(m, Int4WeightOnlyLinear):
            return f"layer {name}: {type(m).__name__} has no exact GGUF type"
    return None


def int4_to_q4_1(mod: Int4WeightOnlyLinear) -> np.ndarray:
    """Our int4 buffers as Q4_1 blocks, exactly.

    Args:
        mod: an :class:`Int4WeightOnlyLinear` (``qweight`` uint8 ``[N, K/2]``, ``scales`` and
            ``mins`` float16 ``[N, K/G]``, G a multiple of 32).

    Returns:
        uint8 ``[N, K/32 * 20]``: per block, float16 ``d`` (2 bytes), float16 ``m`` (2 bytes),
        then byte ``j`` = ``q[j] | q[j+16] << 4`` (ggml's ``block_q4_1``).

    Raises:
        MoorelabError: a group size that is not a multiple of 32.
    """
    g = mod.group_size
    if g % Q4_1_BLOCK:
        raise MoorelabError(f"int4 group size {g}: Q4_1 needs a multiple of 32")
    q = unpack_int4(mod.qweight).numpy()  # [N, K] values 0..15
    n, k = q.shape
    nb = k // Q4_1_BLOCK
    blocks = q.reshape(n, nb, Q4_1_BLOCK)
    qs = (blocks[..., :16] | (blocks[..., 16:] << 4)).astype(np.uint8)  # [N, nb, 16]
    rep = g // Q4_1_BLOCK
    d = np.repeat(mod.scales.numpy().astype(np.float16), rep, axis=1).view(np.uint8).reshape(n, nb, 2)
    m = np.repeat(mod.mins.numpy().astype(np.float16), rep, axis=1).view(np.uint8).reshape(n, nb, 2)
    return np.ascontiguousarray(np.concatenate([d, m, qs], axis=-1).reshape(n, nb * Q4_1_BYTES))


def tokenizer_source(source: str | Path | None, hf_dir: str | Path | None = None) -> Path | None:
    """The GGUF file whose tokenizer metadata a written GGUF copies, or None.

    ``source`` itself when it is a ``.gguf``; else the ``"source"`` recorded in
    ``hf_dir/moorelab.json`` (the converted-GGUF cache of :mod:`moorelab.model.zoo` records it)
    or ``"tokenizer_gguf"`` (recorded by ``moorelab improve`` saves) when that is a ``.gguf`` that exists.
    """
    if source is not None and str(source).endswith(".gguf") and Path(source).is_file():
        return Path(source)
    for folder in (hf_dir, source):
        if folder is None or not Path(folder).is_dir():
            continue
        meta = Path(folder) / "moorelab.json"
        try:
            data = json.loads(meta.read_text()) if meta.is_file() else {}
        except (OSError, json.JSONDecodeError):
            continue
        for key in ("tokenizer_gguf", "source"):
            p = data.get(key) if isinstance(data, dict) else None
            if isinstance(p, str) and p.endswith(".gguf") and Path(p).is_file():
                return Path(p)
    return None


def _copy_tokenizer(writer, src: Path) -> int:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(src))
    n = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        n += 1
    return n


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).contiguous().numpy())


def write_gguf(model: nn.Module, path: str | Path, tokenizer_gguf: str | Path | None = None,
               name: str = "moorelab") -> dict:
    """Write ``model`` to ``path`` as a llama-architecture GGUF (see the module docstring).

    Args:
        model: a LLaMA-family moorelab Transformer, float32 and/or int4-quantized; pruning
            masks are baked in first (the model is changed in place the way saving changes it).
        path: the ``.gguf`` file to write.
        tokenizer_gguf: a GGUF whose ``tokenizer.*`` fields are copied (see :func:`tokenizer_source`).
        name: ``general.name``.

    Returns:
        ``{"format": "gguf", "path", "bytes", "types": {GGUF type: tensor count},
        "file_type", "tokenizer": source or None, "note"}``.

    Raises:
        MoorelabError: the model has no exact GGUF form (the reason of :func:`why_not_gguf`).
    """
    import gguf

    from moorelab.improve import prune as prune_mod

    reason = why_not_gguf(model)  # before anything changes the caller's model
    if reason:
        raise MoorelabError(f"--format gguf: {reason}")
    prune_mod.remove_masks_(model)
    c = model.config
    b0 = model.blocks[0]
    n_heads, n_kv, d_ff = b0.attn.n_heads, b0.attn.n_kv_heads, b0.ffn.up_proj.out_features
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(int(c.max_position_embeddings))
    w.add_embedding_length(int(c.d_model))
    w.add_block_count(int(c.n_layers))
    w.add_feed_forward_length(int(d_ff))
    w.add_head_count(int(n_heads))
    w.add_head_count_kv(int(n_kv))
    if c.head_dim * n_heads != c.d_model:
        w.add_key_length(int(c.head_dim))
        w.add_value_length(int(c.head_dim))
    w.add_rope_dimension_count(int(c.head_dim))
    w.add_rope_freq_base(float(c.rope_theta))
    w.add_layer_norm_rms_eps(float(c.norm_eps))
    w.add_vocab_size(int(c.vocab_size))
    rs = c.rope_scaling
    if rs and float(rs.get("factor", 1.0)) != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rs["factor"]))

    types: dict[str, int] = {}

    def put(gname: str, mod_or_t, rope_heads: int | None = None) -> None:
        if isinstance(mod_or_t, Int4WeightOnlyLinear):
            data, qtype = int4_to_q4_1(mod_or_t), gguf.GGMLQuantizationType.Q4_1
        elif isinstance(mod_or_t, nn.Linear):
            data, qtype = _f32(mod_or_t.weight), gguf.GGMLQuantizationType.F32
        else:
            data, qtype = _f32(mod_or_t), gguf.GGMLQuantizationType.F32
        if rope_heads is not None:
            data = np.ascontiguousarray(permute_rope_rows(data, rope_heads))
        w.add_tensor(gname, data, raw_dtype=qtype if qtype != gguf.GGMLQuantizationType.F32 else None)
        types[qtype.name] = types.get(qtype.name, 0) + 1

    put("token_embd.weight", model.embed.weight)
    for i, blk in enumerate(model.blocks):
        put(f"blk.{i}.attn_norm.weight", blk.attn_norm.weight)
        for ours, theirs in _BLOCK_NAMES.items():
            mod = blk.get_submodule(ours)
            heads = n_heads if theirs == "attn_q" else n_kv if theirs == "attn_k" else None
            put(f"blk.{i}.{theirs}.weight", mod, heads)
            if getattr(mod, "bias", None) is not None:
                put(f"blk.{i}.{theirs}.bias", mod.bias, heads)
        put(f"blk.{i}.ffn_norm.weight", blk.ffn_norm.weight)
    put("output_norm.weight", model.final_norm.weight)
    head = model.lm_head
    tied = (not isinstance(head, QuantizedLinear) and head is not None
            and head.weight.untyped_storage().data_ptr() == model.embed.weight.untyped_storage().data_ptr())
    if head is not None and not tied:
        put("output.weight", head)
    q41 = types.get("Q4_1", 0)
    ftype = gguf.LlamaFileType.MOSTLY_Q4_1 if q41 else gguf.LlamaFileType.ALL_F32
    w.add_file_type(int(ftype))
    if q41:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_tok = _copy_tokenizer(w, Path(tokenizer_gguf)) if tokenizer_gguf is not None else 0
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    note = ("tokenizer metadata copied from " + str(tokenizer_gguf) if n_tok else
            "no tokenizer metadata (no source GGUF to copy it from): llama.cpp will refuse to load this file")
    return {"format": "gguf", "path": str(path), "bytes": path.stat().st_size, "types": types,
            "file_type": ftype.name, "tokenizer": str(tokenizer_gguf) if n_tok else None, "note": note}
