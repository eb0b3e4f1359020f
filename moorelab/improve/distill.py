"""Knowledge distillation: a teacher's softened next-token distribution trains a student.

Loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"), per token
position ``t`` with temperature ``T``:

    L_KD(t) = T² · KL( softmax(z_teacher/T) ‖ softmax(z_student/T) )
            = T² · Σ_v p_T(v) · (log p_T(v) − log q_T(v))

The ``T²`` factor keeps the gradient scale of the soft targets independent of ``T``. Optionally
``alpha_ce`` adds the ordinary next-token cross-entropy on the real text:
``L = L_KD + alpha_ce · CE``. Every position of a window is a KD target (the distribution
needs no label); CE covers the ``T−1`` positions that have a next token. The loss is normalised
by the KD positions of the optimizer step (:mod:`moorelab.train` accumulation convention).

Training compute, stated formula (Kaplan et al. 2020; forward ≈ 2 FLOP per matmul parameter per
token, backward ≈ 2× forward):

    FLOP ≈ 6 · N_student · tokens  +  2 · N_teacher · tokens

with ``N`` the matmul parameters per token (:func:`matmul_parameters`: every ``nn.Linear`` weight
in the blocks plus the output head, even when tied to the embedding; embedding lookups, norms
and the attention-score products ``QKᵀ``/``AV`` are not counted) and ``tokens`` the token
positions processed by each model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.train import TrainConfig, train

__all__ = ["DistillConfig", "DistillReport", "distill", "kd_loss", "matmul_parameters", "FLOP_FORMULA"]

FLOP_FORMULA = "6 * N_student * tokens + 2 * N_teacher * tokens (N = matmul parameters per token incl. lm_head; attention scores excluded)"


@dataclass
class DistillConfig:
    """Hyper-parameters of :func:`distill`.

    Attributes:
        temperature: softening temperature ``T`` (> 0).
        steps: optimizer steps.
        lr: peak learning rate (AdamW; warmup + cosine as in :mod:`moorelab.train`).
        warmup_steps: linear warmup, optimizer steps.
        min_lr_ratio: cosine floor as a fraction of ``lr``.
        weight_decay: on Linear weight matrices only.
        grad_accum: micro-batches per optimizer step.
        grad_clip: global gradient-norm clip (None: off).
        alpha_ce: weight of the hard-label cross-entropy added to the KD loss (0: pure KD).
        seed: run seed.
        log_dir: TensorBoard directory, or None.
        checkpoint_dir: checkpoint directory, or None.
    """

    temperature: float = 2.0
    steps: int = 100
    lr: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    alpha_ce: float = 0.0
    seed: int = 0
    log_dir: str | None = None
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise MoorelabError(f"DistillConfig field temperature={self.temperature!r} must be > 0")
        if self.alpha_ce < 0:
            raise MoorelabError(f"DistillConfig field alpha_ce={self.alpha_ce!r} must be >= 0")
        self.train_config()  # validates the rest

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` this run uses."""
        return TrainConfig(
            steps=self.steps,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay,
            grad_accum=self.grad_accum,
            grad_clip=self.grad_clip,
            seed=self.seed,
            log_dir=self.log_dir,
            checkpoint_dir=self.checkpoint_dir,
        )


@dataclass
class DistillReport:
    """What :func:`distill` did.

    Attributes:
        config: the :class:`DistillConfig` as a dict.
        steps: optimizer steps taken.
        tokens: token positions processed by the student (= by the teacher).
        seconds: wall time of training (teacher forward included), seconds.
        flops: training compute by :data:`FLOP_FORMULA`, FLOP.
        flop_formula: the formula.
        n_student, n_teacher: matmul parameters per token of each model.
        losses: loss per optimizer step (nats per position, T²-scaled KD [+ alpha·CE]).
        bits_per_byte_before, bits_per_byte_after: from the ``evaluate`` callback, if given.
        evaluate_seconds: time spent in ``evaluate`` (not part of ``seconds``).
    """

    config: dict
    steps: int
    tokens: int
    seconds: float
    flops: float
    flop_formula: str
    n_student: int
    n_teacher: int
    losses: list[float] = field(default_factory=list)
    bits_per_byte_before: float | None = None
    bits_per_byte_after: float | None = None
    evaluate_seconds: float = 0.0

    def to_dict(self) -> dict:
        """Fields as a dict."""
        return asdict(self)


def matmul_parameters(model: nn.Module) -> int:
    """Matmul parameters used per token: weights of every ``nn.Linear`` in ``model.blocks`` plus
    ``model.lm_head`` (counted even if tied to the embedding, since it is a matmul).

    Returns:
        Count of weight elements (biases excluded).
    """
    n = 0
    for m in model.blocks.modules():
        if isinstance(m, nn.Linear):
            n += m.weight.numel()
    head = getattr(model, "lm_head", None)
    if head is not None:
        n += head.weight.numel()
    return n


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed distillation loss ``T² · Σ_positions KL(p_teacher,T ‖ q_student,T)``.

    Args:
        student_logits, teacher_logits: ``[..., V]`` (same shape).
        temperature: ``T`` > 0.

    Returns:
        Scalar tensor, nats (a sum over positions, not a mean).
    """
    T = temperature
    s = F.log_softmax(student_logits.float() / T, dim=-1)
    t = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return F.kl_div(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), log_target=True, reduction="sum") * (T * T)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    token_batches: Callable[[int, int], torch.Tensor] | torch.Tensor,
    config: DistillConfig,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    after_step: Callable[[nn.Module, int], None] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> DistillReport:
    """Train ``student`` in place to match ``teacher`` (frozen, eval mode) on token windows.

    Args:
        student: causal LM ``LongTensor[B, T] -> logits[B, T, V]`` (same vocabulary).
        teacher: causal LM of the same vocabulary; never updated.
        token_batches: ``f(step, micro) -> LongTensor[B, T]`` (e.g.
            :class:`moorelab.train.TokenWindows`), or a ``LongTensor[N, T]`` pool used in order
            (batch ``i`` is row ``i mod N``).
        config: :class:`DistillConfig`.
        evaluate: optional ``evaluate(model) -> bits per byte`` run before and after training.
        after_step: called after each optimizer step (e.g. to re-apply pruning masks).
        progress: ``progress(step_done, loss)``.

    Returns:
        :class:`DistillReport` with measured seconds and FLOP by :data:`FLOP_FORMULA`.

    Raises:
        MoorelabError: vocabularies differ, or the batch source is not usable.
    """
    v_s = student.embed.num_embeddings
    v_t = teacher.embed.num_embeddings
    if v_s != v_t:
        raise MoorelabError(f"distill: student vocab_size={v_s} differs from teacher vocab_size={v_t}")
    if torch.is_tensor(token_batches):
        pool = token_batches
        if pool.dim() != 2 or pool.shape[0] == 0:
            raise MoorelabError(f"distill: token_batches tensor must be LongTensor[N, T], got shape {tuple(pool.shape)}")

        def get_batch(step: int, micro: int) -> torch.Tensor:
            i = (step * config.grad_accum + micro) % pool.shape[0]
            return pool[i : i + 1]
    else:
        get_batch = token_batches

    teacher_was_training = teacher.training
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(batch)
        s_logits = model(batch)
        loss = kd_loss(s_logits, t_logits, config.temperature)
        if config.alpha_ce:
            ce = F.cross_entropy(
                s_logits[:, :-1].reshape(-1, s_logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
            )
            loss = loss + config.alpha_ce * ce
        return loss

    before = after = None
    eval_seconds = 0.0
    if evaluate is not None:
        t0 = time.perf_counter()
        student.eval()
        before = float(evaluate(student))
        eval_seconds += time.perf_counter() - t0
    rep = train(
        student,
        loss_fn,
        get_batch,
        config.train_config(),
        count_tokens=lambda b: int(b.numel()),
        after_step=after_step,
        progress=progress,
    )
    student.eval()
    teacher.train(teacher_was_training)
    if evaluate is not None:
        t0 = time.perf_counter()
        after = float(evaluate(student))
        eval_seconds += time.perf_counter() - t0
    n_s, n_t = matmul_parameters(student), matmul_parameters(teacher)
    return DistillReport(
        config=asdict(config),
        steps=rep.end_step - rep.start_step,
        tokens=rep.tokens,
        seconds=rep.seconds,
        flops=6.0 * n_s * rep.tokens + 2.0 * n_t * rep.tokens,
        flop_formula=FLOP_FORMULA,
        n_student=n_s,
        n_teacher=n_t,
        losses=rep.losses,
        bits_per_byte_before=before,
        bits_per_byte_after=after,
        evaluate_seconds=eval_seconds,
    )
