"""One configuration dataclass for every Transformer family moorelab builds.

The three families differ only in a handful of switches (Vaswani et al. 2017, "Attention Is All
You Need"; Radford et al. 2019, GPT-2; Devlin et al. 2019, BERT; Touvron et al. 2023, LLaMA):

========  ==========  =========  ========  ==========  ===========
family    position    norm       where     activation  attention
========  ==========  =========  ========  ==========  ===========
gpt2      learned     layernorm  pre       gelu_tanh   causal
llama     rope        rmsnorm    pre       swiglu      causal, GQA
bert      learned     layernorm  post      gelu        bidirectional
========  ==========  =========  ========  ==========  ===========

Two switches exist for the training-recipe ladder (``moorelab ladder``) and no loaded family
uses them: ``position="sinusoidal"`` (the fixed sin/cos table of Vaswani et al. 2017, §3.5) and
``qk_norm=True`` (RMSNorm of each query and key head before RoPE and the dot product; Dehghani
et al. 2023, ViT-22B; OLMo 2, Qwen3, Gemma 3), ``scale_embeddings=True`` (token embeddings times
√d_model before the positions are added, Vaswani et al. 2017, §3.4; a tied output layer uses the
unscaled table). A decoder with ``norm_position="post"`` is the
2017 Transformer's block.

``TransformerConfig.from_hf_dict`` reads a Hugging Face ``config.json``; ``to_hf_dict`` writes
one that ``transformers`` loads (used for the converted GGUF cache).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from moorelab.errors import ModelLoadError

FAMILIES = ("gpt2", "llama", "bert")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")
POSITIONS = ("learned", "rope", "sinusoidal")
# RoPE frequency scalings we implement, with the keys each needs besides ``rope_type``
# (Hugging Face ``rope_parameters`` names; transformers ``modeling_rope_utils``).
ROPE_SCALINGS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}

# Hugging Face activation names -> ours ("gelu_new" is GPT-2's tanh approximation).
_HF_ACT = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "silu": "swiglu",
    "swish": "swiglu",
}


@dataclass
class TransformerConfig:
    """Hyper-parameters of a decoder (gpt2, llama) or encoder (bert) Transformer.

    Sizes: ``d_model`` is the residual width, ``n_heads`` query heads of ``head_dim`` each,
    ``n_kv_heads`` key/value heads (``n_kv_heads < n_heads`` is grouped-query attention,
    Ainslie et al. 2023), ``d_ff`` the feed-forward hidden width.
    """

    family: str = "llama"
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int = 2048
    max_position_embeddings: int = 2048
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    activation: str = "swiglu"
    position: str = "rope"
    rope_theta: float = 10000.0
    # None (plain RoPE) or {"rope_type": "linear" | "llama3", <that type's keys in ROPE_SCALINGS>}
    rope_scaling: dict[str, Any] | None = None
    attn_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # every id that ends a sequence (generation stops at any); eos_token_id is the first of them
    eos_token_ids: list[int] | None = None
    pad_token_id: int | None = None
    type_vocab_size: int = 0  # BERT token-type (segment) embeddings; 0 = none
    qk_norm: bool = False  # RMSNorm over head_dim of every query and key head (before RoPE)
    scale_embeddings: bool = False  # token embeddings times sqrt(d_model) (Vaswani et al. 2017, §3.4)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_heads
        if self.eos_token_ids is None:
            self.eos_token_ids = [] if self.eos_token_id is None else [self.eos_token_id]
        self.eos_token_ids = _unique_ints(self.eos_token_ids, "eos_token_ids")
        if self.eos_token_id is None and self.eos_token_ids:
            self.eos_token_id = self.eos_token_ids[0]
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)
        self.validate()

    def validate(self) -> None:
        """Check the switches name supported choices.

        Raises:
            ModelLoadError: naming the field with an unsupported value.
        """
        for name, allowed in (
            ("family", FAMILIES),
            ("norm", NORMS),
            ("activation", ACTIVATIONS),
            ("position", POSITIONS),
            ("norm_position", ("pre", "post")),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ModelLoadError(f"config field {name}={value!r} is not supported (choose from {allowed})")
        if self.n_heads % self.n_kv_heads:
            raise ModelLoadError(
                f"config field n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ModelLoadError(f"config field head_dim={self.head_dim} must be even for RoPE")
        if self.eos_token_id is not None and self.eos_token_id not in self.eos_token_ids:
            raise ModelLoadError(
                f"config field eos_token_id={self.eos_token_id} is not among eos_token_ids={self.eos_token_ids}"
            )
        if self.rope_scaling is not None:
            if self.position != "rope":
                raise ModelLoadError(f"config field rope_scaling={self.rope_scaling} needs position='rope'")
            check_rope_scaling(self.rope_scaling, "config field rope_scaling")

    @property
    def is_decoder(self) -> bool:
        """True for causal language models (gpt2, llama), False for the BERT encoder."""
        return self.family != "bert"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformerConfig":
        """Build from ``to_dict()`` output; unknown keys raise ModelLoadError naming the key."""
        names = {f.name for f in fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise ModelLoadError(f"unknown TransformerConfig field {extra[0]!r}")
        return cls(**d)

    # ------------------------------------------------------------------ Hugging Face configs
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "TransformerConfig":
        """Translate a Hugging Face ``config.json`` dict for model types gpt2, llama or bert.

        Raises:
            ModelLoadError: unsupported ``model_type``, missing field, or an option we do not
                implement (e.g. RoPE scaling), naming the field and the file.
        """
        model_type = hf.get("model_type")
        _refuse_set_fields(hf, model_type, source)

        def need(key: str) -> Any:
            if key not in hf:
                raise ModelLoadError(f"{source}: missing field {key!r} for model_type {model_type!r}")
            return hf[key]

        def act(key: str) -> str:
            # gpt2/bert FFNs are not gated: SiLU ("silu"/"swish") exists here only as LLaMA's
            # gated SwiGLU, so a plain-SiLU gpt2/bert is refused by name (not as a missing gate tensor)
            name = need(key)
            plain = sorted(k for k, v in _HF_ACT.items() if v != "swiglu")
            if name not in plain:
                what = "is not supported" if name not in _HF_ACT else "(plain, not gated) is not supported"
                raise ModelLoadError(f"{source}: field {key}={name!r}: activation {what} for model_type "
                                     f"{model_type!r} (supported: {', '.join(plain)})")
            return _HF_ACT[name]

        if model_type == "gpt2":
            if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
                raise ModelLoadError(f"{source}: field scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn is not supported")
            if hf.get("scale_attn_weights") is False:
                raise ModelLoadError(f"{source}: field scale_attn_weights=false is not supported")
            d_model = need("n_embd")
            return cls(
                family="gpt2",
                vocab_size=need("vocab_size"),
                d_model=d_model,
                n_layers=need("n_layer"),
                n_heads=need("n_head"),
                d_ff=hf.get("n_inner") or 4 * d_model,
                max_position_embeddings=need("n_positions"),
                norm="layernorm",
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                norm_position="pre",
                activation=act("activation_function"),
                position="learned",
                attn_bias=True,
                mlp_bias=True,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=token_id_list(hf.get("eos_token_id"), source, "eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
            )
        if model_type == "llama":
            theta, scaling = _hf_rope(hf, source)
            if hf.get("hidden_act", "silu") not in ("silu", "swish"):
                raise ModelLoadError(f"{source}: field hidden_act={hf.get('hidden_act')!r} is not supported for llama")
            n_heads = need("num_attention_heads")
            return cls(
                family="llama",
                vocab_size=need("vocab_size"),
                d_model=need("hidden_size"),
                n_layers=need("num_hidden_layers"),
                n_heads=n_heads,
                n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                head_dim=hf.get("head_dim") or need("hidden_size") // n_heads,
                d_ff=need("intermediate_size"),
                max_position_embeddings=hf.get("max_position_embeddings", 2048),
                norm="rmsnorm",
                norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                norm_position="pre",
                activation="swiglu",
                position="rope",
                rope_theta=float(theta),
                rope_scaling=scaling,
                attn_bias=bool(hf.get("attention_bias", False)),
                mlp_bias=bool(hf.get("mlp_bias", False)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=token_id_list(hf.get("eos_token_id"), source, "eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
            )
        if model_type == "bert":
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise ModelLoadError(
                    f"{source}: field position_embedding_type={hf['position_embedding_type']!r} is not supported"
                )
            return cls(
                family="bert",
                vocab_size=need("vocab_size"),
                d_model=need("hidden_size"),
                n_layers=need("num_hidden_layers"),
                n_heads=need("num_attention_heads"),
                d_ff=need("intermediate_size"),
                max_position_embeddings=need("max_position_embeddings"),
                norm="layernorm",
                norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                norm_position="post",
                activation=act("hidden_act"),
                position="learned",
                attn_bias=True,
                mlp_bias=True,
                tie_word_embeddings=False,
                pad_token_id=hf.get("pad_token_id"),
                type_vocab_size=int(hf.get("type_vocab_size", 2)),
            )
        raise ModelLoadError(
            f"{source}: field model_type={model_type!r} is not supported (supported: gpt2, llama, bert)"
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """Return a ``transformers`` ``config.json`` dict (llama, or gpt2 with its fixed shape).

        Raises:
            ModelLoadError: for bert, or a gpt2 config that ``GPT2LMHeadModel`` cannot express.
        """
        if self.family == "gpt2":
            return self._to_hf_gpt2()
        if self.family != "llama":
            raise ModelLoadError(f"to_hf_dict: family {self.family!r} is not supported (llama, gpt2)")
        expect = dict(norm="rmsnorm", norm_position="pre", activation="swiglu", position="rope", qk_norm=False,
                      scale_embeddings=False)
        for key, value in expect.items():
            if getattr(self, key) != value:
                raise ModelLoadError(f"to_hf_dict: llama needs {key}={value!r}, got {getattr(self, key)!r}")
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta},
            "rope_scaling": None,
            "attention_bias": self.attn_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids if len(self.eos_token_ids) > 1 else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
            "dtype": "float32",
        }

    def _to_hf_gpt2(self) -> dict[str, Any]:
        expect = dict(norm="layernorm", norm_position="pre", activation="gelu_tanh", position="learned",
                      attn_bias=True, mlp_bias=True, tie_word_embeddings=True, n_kv_heads=self.n_heads,
                      head_dim=self.d_model // self.n_heads, type_vocab_size=0, qk_norm=False,
                      scale_embeddings=False)
        for key, value in expect.items():
            if getattr(self, key) != value:
                raise ModelLoadError(f"to_hf_dict: gpt2 needs {key}={value!r}, got {getattr(self, key)!r}")
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_embd": self.d_model,
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "n_inner": self.d_ff,
            "n_positions": self.max_position_embeddings,
            "n_ctx": self.max_position_embeddings,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids if len(self.eos_token_ids) > 1 else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
            "dtype": "float32",
        }


# Fields of a Hugging Face config.json that change the math of a model type we otherwise load
# (soft-capping, sliding windows, Granite-style multipliers, cross-attention, QK norms), refused
# when present with a non-neutral value rather than ignored.
_REFUSED_WHEN_SET = {
    "gpt2": ("add_cross_attention",),
    "llama": ("sliding_window", "use_sliding_window", "attn_logit_softcapping", "final_logit_softcapping",
              "logit_scale", "logits_scaling", "attention_multiplier", "embedding_multiplier",
              "residual_multiplier", "query_pre_attn_scalar", "use_qk_norm", "qk_layernorm"),
    "bert": ("is_decoder", "add_cross_attention"),
}


def _refuse_set_fields(hf: dict[str, Any], model_type: Any, source: str) -> None:
    for key in _REFUSED_WHEN_SET.get(model_type, ()):
        value = hf.get(key)
        if value is not None and value is not False:
            raise ModelLoadError(
                f"{source}: field {key}={value!r} changes the model's math and is not supported for "
                f"model_type {model_type!r}"
            )


def _hf_rope(hf: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_scaling)`` from a llama ``config.json``.

    Reads transformers 5's ``rope_parameters`` and the older ``rope_theta`` + ``rope_scaling``
    (``type`` or ``rope_type``), as ``transformers.modeling_rope_utils`` does; llama3's
    ``original_max_position_embeddings`` falls back to ``max_position_embeddings`` there too.

    Raises:
        ModelLoadError: a scaling type other than linear / llama3 (yarn, dynamic, longrope, ...),
            a missing or unknown key, a partial rotary factor, or two different ``rope_theta``.
    """
    merged: dict[str, Any] = {}
    for key in ("rope_parameters", "rope_scaling"):
        part = hf.get(key)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ModelLoadError(f"{source}: field {key}={part!r} must be an object")
        merged.update(part)
    kind = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    merged.pop("type", None)
    theta = merged.pop("rope_theta", None)
    if "rope_theta" in hf:
        if theta is not None and float(theta) != float(hf["rope_theta"]):
            raise ModelLoadError(
                f"{source}: field rope_theta={hf['rope_theta']} disagrees with rope_parameters.rope_theta={theta}"
            )
        theta = hf["rope_theta"]
    theta = 10000.0 if theta is None else theta
    partial = merged.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial is not None and float(partial) != 1.0:
        raise ModelLoadError(
            f"{source}: field partial_rotary_factor={partial} is not supported (RoPE on every dimension only)"
        )
    if kind == "default":
        extra = sorted(k for k, v in merged.items() if v is not None)
        if extra:
            raise ModelLoadError(f"{source}: field rope_scaling key {extra[0]!r} is not used by default RoPE")
        return float(theta), None
    if kind not in ROPE_SCALINGS:
        raise ModelLoadError(
            f"{source}: field rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_SCALINGS)})"
        )
    if kind == "llama3" and merged.get("original_max_position_embeddings") is None:
        merged["original_max_position_embeddings"] = hf.get(
            "original_max_position_embeddings", hf.get("max_position_embeddings")
        )
    scaling = {"rope_type": kind, **{k: v for k, v in merged.items() if v is not None}}
    check_rope_scaling(scaling, f"{source}: field rope_scaling")
    return float(theta), scaling


def check_rope_scaling(scaling: dict[str, Any], where: str) -> None:
    """Check a ``rope_scaling`` dict names a type in :data:`ROPE_SCALINGS` with exactly its keys.

    Raises:
        ModelLoadError: unsupported type, missing or unknown key, or a non-positive value,
            prefixed with ``where`` (the file and field).
    """
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALINGS:
        raise ModelLoadError(f"{where} type {kind!r} is not supported (supported: {', '.join(ROPE_SCALINGS)})")
    keys = ROPE_SCALINGS[kind]
    for k in keys:
        v = scaling.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ModelLoadError(f"{where} {kind}: key {k!r} must be a positive number, got {v!r}")
    extra = sorted(set(scaling) - set(keys) - {"rope_type"})
    if extra:
        raise ModelLoadError(f"{where} {kind}: key {extra[0]!r} is not supported")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ModelLoadError(f"{where} llama3: high_freq_factor must exceed low_freq_factor")


def token_id_list(v: Any, source: str, field: str) -> list[int]:
    """A token-id field that may be one id or a list (``eos_token_id: [a, b]``), as a list of
    distinct ids in their order (``[]`` for None).

    Raises:
        ModelLoadError: a value that is not a non-negative integer, naming ``source`` and ``field``.
    """
    if v is None:
        return []
    items = v if isinstance(v, (list, tuple)) else [v]
    for x in items:
        if not isinstance(x, int) or isinstance(x, bool) or x < 0:
            raise ModelLoadError(f"{source}: field {field}={v!r} must be a token id or a list of token ids")
    return _unique_ints(items, field)


def _unique_ints(items: Any, field: str) -> list[int]:
    out: list[int] = []
    for x in items:
        if not isinstance(x, int) or isinstance(x, bool):
            raise ModelLoadError(f"config field {field}={items!r} must hold token ids (integers)")
        if x not in out:
            out.append(int(x))
    return out
