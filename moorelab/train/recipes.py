"""A ladder of training recipes, 2017 to today: each a named, dated, cited configuration of the
same reference Transformer (:mod:`moorelab.model.transformer`), optimizer and schedule
(:mod:`moorelab.train.loop`).

Only the *recipe* changes between rungs: architecture switches, optimizer, schedule, learning
rate rule. Sizes (``d_model``, layers, heads, context, vocabulary) are the ladder's, shared by
every rung, and the FFN width keeps the FFN's parameter count equal (``4·d`` for a two-matrix
FFN, ``8/3·d`` rounded up to 32 for SwiGLU's three), so every rung costs about the same FLOP
per token (:func:`moorelab.train.flops.training_flop_per_token`).

What is left out of each paper and why: dropout and label smoothing (the runs see each token
about once: nothing to regularise), each paper's own initialisation (GPT-2's N(0, 0.02) for
every rung; the 2017 rung keeps its ``√d_model`` embedding scale, so its unit-size sinusoids
do not drown the 0.02-size token embeddings), batch-size and learning-rate tuning per rung (one
rule per rung, stated in its ``lr_rule``, never tuned on the validation set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moorelab.errors import MoorelabError
from moorelab.model.config import TransformerConfig
from moorelab.train.loop import TrainConfig

#: peak learning rate of the AdamW/Muon rungs at this project's small scale (d_model 64-256);
#: one value for every such rung, not tuned per rung
SMALL_MODEL_LR = 2e-3


@dataclass(frozen=True)
class Recipe:
    """One rung of the ladder.

    Attributes:
        name: short name (``transformer-2017``).
        date: ISO date of the publication the recipe comes from (its rung's date).
        citation: the papers, with arXiv ids.
        model: :class:`TransformerConfig` switches (norm, norm_position, activation, position,
            biases, tying, qk_norm).
        optimizer: ``"adamw"`` (Adam when ``weight_decay`` is 0) or ``"muon"``.
        betas, eps, weight_decay, grad_clip: optimizer settings (None: no clipping).
        schedule: ``"inverse_sqrt"``, ``"cosine"`` or ``"wsd"`` (:func:`moorelab.train.lr_at`).
        warmup_fraction: warmup steps as a fraction of the run's steps (at least one step).
        min_lr_ratio: final learning rate / peak (cosine and WSD).
        lr_rule: ``"noam"`` (``d_model^-0.5 · 4000^-0.5``, the 2017 formula's peak at its warmup
            of 4,000 steps) or ``"small"`` (:data:`SMALL_MODEL_LR`).
        notes: what the rung changes over the one before, in words.
    """

    name: str
    date: str
    citation: str
    model: dict
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    lr_rule: str = "small"
    notes: str = ""
    _keys: tuple = field(default=("norm", "norm_position", "activation", "position", "attn_bias", "mlp_bias",
                                  "tie_word_embeddings", "qk_norm", "scale_embeddings"), repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.model) - set(self._keys))
        if unknown:
            raise MoorelabError(f"recipe {self.name}: unknown model switch {unknown[0]!r}")
        if self.lr_rule not in ("noam", "small"):
            raise MoorelabError(f"recipe {self.name}: lr_rule {self.lr_rule!r} is not 'noam' or 'small'")

    def peak_lr(self, d_model: int) -> float:
        """Peak learning rate for a model of width ``d_model`` (see ``lr_rule``)."""
        if self.lr_rule == "noam":
            return d_model**-0.5 * 4000**-0.5
        return SMALL_MODEL_LR

    def model_config(self, *, vocab_size: int, d_model: int, n_layers: int, n_heads: int, context: int,
                     eot: int | None = None) -> TransformerConfig:
        """The rung's :class:`TransformerConfig` at the ladder's sizes.

        Raises:
            ModelLoadError: sizes the switches cannot take (e.g. an odd head size with RoPE).
        """
        m = dict(self.model)
        swiglu = m.get("activation") == "swiglu"
        d_ff = 32 * math.ceil(8 * d_model / 3 / 32) if swiglu else 4 * d_model
        return TransformerConfig(
            family="llama" if swiglu else "gpt2", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
            n_heads=n_heads, d_ff=d_ff, max_position_embeddings=context, norm_eps=1e-5,
            bos_token_id=eot, eos_token_id=eot, **m)

    def train_config(self, *, steps: int, d_model: int, seed: int) -> TrainConfig:
        """The rung's :class:`TrainConfig` for a run of ``steps`` optimizer steps."""
        return TrainConfig(
            steps=steps, lr=self.peak_lr(d_model), warmup_steps=min(steps, max(1, round(self.warmup_fraction * steps))),
            min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps,
            grad_clip=self.grad_clip, seed=seed, optimizer=self.optimizer, schedule=self.schedule)

    def describe(self) -> dict:
        """JSON-ready summary: name, date, citation, switches, optimizer and schedule."""
        return {"name": self.name, "date": self.date, "citation": self.citation, "model": dict(self.model),
                "optimizer": self.optimizer, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "grad_clip": self.grad_clip, "schedule": self.schedule,
                "warmup_fraction": self.warmup_fraction, "min_lr_ratio": self.min_lr_ratio,
                "lr_rule": self.lr_rule, "notes": self.notes}


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="transformer-2017",
        date="2017-06-12",
        citation="Vaswani et al. 2017, 'Attention Is All You Need', arXiv 1706.03762",
        model=dict(norm="layernorm", norm_position="post", activation="relu", position="sinusoidal",
                   attn_bias=True, mlp_bias=True, tie_word_embeddings=True, scale_embeddings=True),
        optimizer="adamw", betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, grad_clip=None,
        schedule="inverse_sqrt", warmup_fraction=0.04, lr_rule="noam",
        notes="post-norm LayerNorm, sinusoidal positions, embeddings x sqrt(d_model), ReLU FFN, biases, "
              "tied embeddings; Adam "
              "(0.9, 0.98, 1e-9) without decay or clipping; linear warmup then lr ∝ 1/√step (4,000 of "
              "100,000 steps in the paper: warmup 4%, peak d^-0.5·4000^-0.5)",
    ),
    Recipe(
        name="gpt2-2019",
        date="2019-02-14",
        citation="Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners' (GPT-2); "
                 "AdamW: Loshchilov & Hutter 2019, arXiv 1711.05101; cosine: Loshchilov & Hutter 2017, "
                 "arXiv 1608.03983 (GPT-1's schedule)",
        model=dict(norm="layernorm", norm_position="pre", activation="gelu_tanh", position="learned",
                   attn_bias=True, mlp_bias=True, tie_word_embeddings=True),
        optimizer="adamw", betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, grad_clip=1.0,
        schedule="cosine", warmup_fraction=0.05, min_lr_ratio=0.0, lr_rule="small",
        notes="pre-norm (+ final LayerNorm), learned positions, tanh-GELU; AdamW (decay 0.01), "
              "gradient clipping 1.0, warmup + cosine to 0",
    ),
    Recipe(
        name="llama-2023",
        date="2023-02-27",
        citation="Touvron et al. 2023, 'LLaMA: Open and Efficient Foundation Language Models', arXiv 2302.13971 "
                 "(RMSNorm: Zhang & Sennrich 2019; RoPE: Su et al. 2021; SwiGLU: Shazeer 2020)",
        model=dict(norm="rmsnorm", norm_position="pre", activation="swiglu", position="rope",
                   attn_bias=False, mlp_bias=False, tie_word_embeddings=False),
        optimizer="adamw", betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        schedule="cosine", warmup_fraction=0.05, min_lr_ratio=0.1, lr_rule="small",
        notes="RMSNorm pre-norm, RoPE, SwiGLU (8/3·d), no biases, untied output layer; AdamW "
              "(0.9, 0.95), decay 0.1, clipping 1.0, cosine to 10%",
    ),
    Recipe(
        name="modern-2025",
        date="2025-02-24",
        citation="Muon: Jordan et al. 2024 (kellerjordan.github.io/posts/muon), Liu et al. 2025, 'Muon is "
                 "Scalable for LLM Training', arXiv 2502.16982; QK-norm: Dehghani et al. 2023, arXiv "
                 "2302.05442, OLMo 2 (arXiv 2501.00656); WSD: Hu et al. 2024, MiniCPM, arXiv 2404.06395",
        model=dict(norm="rmsnorm", norm_position="pre", activation="swiglu", position="rope",
                   attn_bias=False, mlp_bias=False, tie_word_embeddings=False, qk_norm=True),
        optimizer="muon", betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        schedule="wsd", warmup_fraction=0.05, min_lr_ratio=0.0, lr_rule="small",
        notes="LLaMA + QK-norm; Muon (RMS matched to AdamW, same lr and decay) on hidden matrices, "
              "AdamW on the rest; warmup-stable-decay (last 20% linear to 0)",
    ),
)


def get_recipes(names: list[str] | None = None) -> tuple[Recipe, ...]:
    """The recipes named (in ladder order), or all; the first is the baseline.

    Raises:
        MoorelabError: an unknown name (the known ones listed), or a selection without
            ``transformer-2017`` (the baseline every gain is measured against).
    """
    if not names:
        return RECIPES
    known = {r.name: r for r in RECIPES}
    for n in names:
        if n not in known:
            raise MoorelabError(f"--rungs: unknown recipe {n!r} (known: {', '.join(known)})")
    if RECIPES[0].name not in names:
        raise MoorelabError(f"--rungs: the baseline {RECIPES[0].name} must be among the rungs")
    return tuple(r for r in RECIPES if r.name in names)
