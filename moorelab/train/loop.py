"""The training loop: AdamW, warmup + cosine learning rate, token-normalised accumulation.

Conventions (stated once, used everywhere):

* **Optimizer**: AdamW (Loshchilov & Hutter 2019). Weight decay applies only to the weight
  matrices of ``nn.Linear`` layers. No decay on norm weights, biases, or embedding tables
  (``nn.Embedding``; a tied ``lm_head`` *is* the embedding table, so it gets no decay either; an
  untied ``lm_head`` is an ``nn.Linear`` and does). Tied tensors appear once.
* **Schedule** in *optimizer steps* (not micro-batches): step ``s`` (0-based) uses
  ``lr·(s+1)/warmup`` while ``s < warmup``, then (``schedule="cosine"``, the default) cosine
  decay from ``lr`` to ``lr·min_lr_ratio``:
  ``lr_min + ½(lr − lr_min)(1 + cos(π·(s − warmup)/(steps − warmup)))``.
  ``"inverse_sqrt"`` (Vaswani et al. 2017, §5.3): ``lr·√(warmup/(s+1))`` after the warmup;
  ``"wsd"`` warmup-stable-decay (Hu et al. 2024, MiniCPM, arXiv 2404.06395): ``lr`` until the
  last ``decay_fraction`` of the steps, then linear to ``lr·min_lr_ratio`` at the last step.
* **Optimizer** ``"muon"`` (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM
  Training", arXiv 2502.16982): :class:`Float32Muon` (``torch.optim.Muon``'s update with
  ``adjust_lr_fn="match_rms_adamw"``: same ``lr`` and ``weight_decay`` as AdamW) on the 2-D
  weight matrices of the hidden layers; AdamW as above on the rest (embeddings, output layer,
  norms, biases). No checkpoints with it.
* **Accumulation** normalised by tokens: one optimizer step sums the per-token losses of its
  ``grad_accum`` micro-batches and divides by the total number of loss tokens in the step, so
  micro-batches with more tokens weigh more and the gradient equals that of one big batch.
* **Seeds**: ``set_seed(seed)`` seeds Python, NumPy and torch; the torch RNG state is saved in
  checkpoints; data come from a function of ``(step, micro)`` (see :class:`TokenWindows`), so a
  resumed run reproduces the uninterrupted one bit for bit on the same machine.
* **Logs**: TensorBoard scalars ``train/loss``, ``train/lr``, ``train/grad_norm``,
  ``train/tokens`` at each optimizer step (x-axis = optimizer steps done).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from moorelab.errors import MoorelabError

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "inverse_sqrt", "wsd")

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch) -> Σ per-token loss`` (a scalar tensor, summed, not averaged)."""


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this number).
        lr: peak learning rate.
        warmup_steps: linear warmup length, optimizer steps.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine floor).
        weight_decay: AdamW decoupled weight decay on Linear weight matrices only.
        betas, eps: AdamW moments.
        grad_accum: micro-batches per optimizer step.
        grad_clip: max global L2 norm of the gradient (None: no clipping).
        seed: seed for Python/NumPy/torch at the start of a fresh run.
        optimizer: "adamw" or "muon" (see the module docstring).
        schedule: "cosine", "inverse_sqrt" or "wsd".
        decay_fraction: the final fraction of the steps that ``"wsd"`` decays over.
        log_dir: TensorBoard directory (None: no logs).
        checkpoint_dir: where :func:`save_checkpoint` writes (None: no checkpoints).
        checkpoint_every: save every this many optimizer steps (0: only at the end).
    """

    steps: int
    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    seed: int = 0
    optimizer: str = "adamw"
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    log_dir: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = [
            ("steps", self.steps >= 1),
            ("lr", self.lr > 0 and math.isfinite(self.lr)),
            ("warmup_steps", 0 <= self.warmup_steps <= self.steps),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0),
            ("weight_decay", self.weight_decay >= 0),
            ("grad_accum", self.grad_accum >= 1),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0),
            ("checkpoint_every", self.checkpoint_every >= 0),
            ("optimizer", self.optimizer in OPTIMIZERS),
            ("schedule", self.schedule in SCHEDULES),
            ("decay_fraction", 0.0 < self.decay_fraction <= 1.0),
        ]
        for name, ok in checks:
            if not ok:
                raise MoorelabError(f"TrainConfig field {name}={getattr(self, name)!r} is out of range")

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class TrainReport:
    """What a :func:`train` call did.

    Attributes:
        start_step, end_step: optimizer steps done before and after this call.
        tokens: loss tokens processed in this call.
        seconds: wall time of this call, seconds.
        losses: mean per-token loss of each optimizer step (nats/token for cross-entropy).
        lrs: learning rate used at each step.
        grad_norms: global gradient L2 norm before clipping, per step.
        checkpoint: last checkpoint directory written, or None.
    """

    start_step: int
    end_step: int
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    checkpoint: str | None = None

    def to_dict(self) -> dict:
        """Fields as a dict."""
        return asdict(self)


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup then ``config.schedule``
    (cosine, inverse square root or warmup-stable-decay; formulas in the module docstring).

    Args:
        step: optimizer steps already taken.
        config: ``lr``, ``warmup_steps``, ``steps``, ``min_lr_ratio``, ``schedule``, ``decay_fraction``.

    Returns:
        The learning rate (same unit as ``config.lr``).
    """
    lr, warm, total = config.lr, config.warmup_steps, config.steps
    if step < warm:
        return lr * (step + 1) / warm
    lr_min = lr * config.min_lr_ratio
    if config.schedule == "inverse_sqrt":
        return lr * math.sqrt(max(1, warm) / (step + 1))
    if config.schedule == "wsd":
        n_decay = max(1, round(config.decay_fraction * total))
        start = total - n_decay  # first decaying step; the last step (total - 1) reaches lr_min
        if step < start:
            return lr
        return lr - (lr - lr_min) * min(1.0, (step - start + 1) / n_decay)
    span = max(1, total - warm)
    progress = min(1.0, (step - warm) / span)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


def _weight_param(module: nn.Module) -> nn.Parameter | None:
    """The trainable tensor behind ``module.weight`` (the parametrization's original if any)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    w = getattr(module, "weight", None)
    return w if isinstance(w, nn.Parameter) else None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on Linear weight matrices, none on the rest.

    Args:
        model: the model to train (trainable parameters only are grouped; tied ones once).
        weight_decay: decay of the first group.

    Returns:
        ``[{"params", "names", "weight_decay": weight_decay}, {"params", "names",
        "weight_decay": 0.0}]``: the second group holds norms, biases and embeddings.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_ids = set()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = _weight_param(m)
            if w is not None and id(w) not in embedding_ids:
                linear_ids.add(id(w))
    decay, no_decay = {"params": [], "names": []}, {"params": [], "names": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        group = decay if id(p) in linear_ids else no_decay
        group["params"].append(p)
        group["names"].append(name)
    decay["weight_decay"] = weight_decay
    no_decay["weight_decay"] = 0.0
    return [decay, no_decay]


class Float32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with its Newton–Schulz iteration in float32 instead of bfloat16.

    Same constructor, state (``momentum_buffer``) and update, per 2-D parameter ``W [A, B]``:
    ``buf ← lerp(buf, g, 1−μ)``; ``u = lerp(g, buf, μ)`` (Nesterov) or ``buf``;
    ``O = NS₅(u / ‖u‖_F)`` (quintic iteration, coefficients ``ns_coefficients``, on the wide
    orientation); ``W ← W·(1 − lr·λ) − lr·r·O`` with ``r = 0.2·√max(A, B)``
    (``match_rms_adamw``), ``√max(1, A/B)`` (``original``/None). torch runs NS₅ in bfloat16, which
    on CPUs without bfloat16 matrix units costs ~15x float32 (measured 116 ms vs 8 ms for a
    352x128 matrix, one thread): more than the model's forward and backward at this scale.
    ``ns_dtype = torch.bfloat16`` gives torch's numbers back (tested).
    """

    ns_dtype = torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (``closure`` re-evaluates the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = float(group["lr"]), group["weight_decay"], group["momentum"]
            a, b, c = group["ns_coefficients"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.ndim != 2:
                    raise ValueError("Muon: parameter gradient must be a 2-D matrix")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - mu)
                u = g.lerp(buf, mu) if group["nesterov"] else buf
                x = u.to(self.ns_dtype)
                if u.shape[0] > u.shape[1]:
                    x = x.T
                x = x / x.norm().clamp(min=group["eps"])
                for _ in range(group["ns_steps"]):
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                if u.shape[0] > u.shape[1]:
                    x = x.T
                A, B = p.shape[:2]
                fn = group["adjust_lr_fn"]
                ratio = (0.2 * math.sqrt(max(A, B)) if fn == "match_rms_adamw"
                         else math.sqrt(max(1, A / B)) if fn in (None, "original") else 1.0)
                p.mul_(1 - lr * wd)
                p.add_(x.to(p.dtype), alpha=-lr * ratio)
        return loss


class MuonAdamW:
    """Muon on the hidden 2-D weight matrices, AdamW on every other parameter, stepped together.

    ``param_groups`` lists the groups of both (the loop sets each group's ``lr``); ``muon`` and
    ``adamw`` are the two torch optimizers.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)


def _adamw(groups: list[dict], config: TrainConfig) -> torch.optim.AdamW:
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, foreach=False)


def make_optimizer(model: nn.Module, config: TrainConfig):
    """AdamW over :func:`param_groups` (names kept in each group for checkpoints), or with
    ``config.optimizer == "muon"`` a :class:`MuonAdamW`: the decay group's matrices that are not
    embeddings or the output layer (the hidden layers' weights) go to ``torch.optim.Muon``
    (:class:`Float32Muon`, ``adjust_lr_fn="match_rms_adamw"``, momentum 0.95, Nesterov, 5
    Newton–Schulz steps), the rest to AdamW.

    Uses torch's fused AdamW kernel when the build supports it for these tensors (same update
    rule, one pass over memory), else the per-tensor loop.
    """
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "muon":
        head = getattr(model, "lm_head", None)
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        hidden = {"params": [], "names": [], "weight_decay": config.weight_decay}
        rest = {"params": [], "names": [], "weight_decay": config.weight_decay}
        for p, name in zip(groups[0]["params"], groups[0]["names"]):
            g = hidden if p.ndim == 2 and id(p) not in head_ids else rest
            g["params"].append(p)
            g["names"].append(name)
        muon = Float32Muon([hidden], lr=config.lr, weight_decay=config.weight_decay,
                           adjust_lr_fn="match_rms_adamw")
        return MuonAdamW(muon, _adamw([g for g in (rest, groups[1]) if g["params"]], config))
    return _adamw(groups, config)


def default_token_count(batch: Any) -> int:
    """Loss tokens in a next-token batch: ``B·(T−1)`` for ``LongTensor[B, T]``; for a dict,
    the sum of ``batch["loss_mask"]`` if present, else ``B·(T−1)`` of ``batch["input_ids"]``."""
    if isinstance(batch, dict):
        if "loss_mask" in batch:
            return int(batch["loss_mask"].sum())
        batch = batch["input_ids"]
    return int(batch.shape[0] * (batch.shape[1] - 1))


def next_token_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of a causal LM.

    Args:
        model: ``LongTensor[B, T] -> logits[B, T, V]``.
        batch: ``LongTensor[B, T]``; position ``t`` predicts token ``t+1``.

    Returns:
        Scalar tensor: Σ over the ``B·(T−1)`` targets of −log p (nats).
    """
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum")


def train(
    model: nn.Module,
    loss_fn: LossFn,
    get_batch: Callable[[int, int], Any],
    config: TrainConfig,
    *,
    count_tokens: Callable[[Any], int] = default_token_count,
    after_step: Callable[[nn.Module, int], None] | None = None,
    resume_from: str | Path | None = None,
    progress: Callable[[int, float], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
    flop_per_token: float | None = None,
    peak_flop_per_s: float | None = None,
) -> TrainReport:
    """Train ``model`` in place for ``config.steps`` optimizer steps (or up to it when resuming).

    Args:
        model: module to train (put in train mode during the call, restored after).
        loss_fn: ``loss_fn(model, batch) -> Σ per-token loss`` (scalar tensor, a sum).
        get_batch: ``get_batch(step, micro) -> batch``, a pure function of its arguments
            (e.g. :class:`moorelab.train.TokenWindows`).
        config: :class:`TrainConfig`.
        count_tokens: loss tokens of a batch (the normaliser); default ``B·(T−1)``.
        after_step: called as ``after_step(model, step_done)`` after each optimizer step, e.g.
            to re-apply pruning masks (:func:`moorelab.improve.prune.reapply_masks_`).
        resume_from: a checkpoint directory from :func:`save_checkpoint` to continue from.
        progress: called as ``progress(step_done, loss)`` after each step.
        on_step: called after each step with ``{"step", "loss", "lr", "grad_norm", "tokens",
            "seconds", "tokens_per_s", "mfu"}`` (``tokens`` over all ranks, ``seconds`` the
            step's wall time; ``mfu`` None unless both FLOP arguments are given).
        flop_per_token: training FLOP per token (:func:`moorelab.train.flops.training_flop_per_token`),
            for the ``train/mfu`` log.
        peak_flop_per_s: measured matmul peak of one process, FLOP/s.

    Data parallel: when a ``torch.distributed`` group is initialised, the forward/backward runs
    through ``DistributedDataParallel`` (gradients all-reduced once per optimizer step, not per
    micro-batch); each rank's summed loss is divided by the *global* loss-token count and
    multiplied by the world size, so the averaged gradient is token-weighted over all ranks.
    ``get_batch`` must return this rank's shard. Only rank 0 writes logs and checkpoints; every
    rank reads ``resume_from``.

    Returns:
        :class:`TrainReport`.

    Raises:
        MoorelabError: a micro-batch with zero loss tokens, or a non-finite loss (naming the step).
    """
    from moorelab.train.checkpoint import load_checkpoint, save_checkpoint

    import contextlib

    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    world = dist.get_world_size() if distributed else 1
    main = not distributed or dist.get_rank() == 0

    if config.optimizer == "muon" and (resume_from is not None or config.checkpoint_dir):
        raise MoorelabError("optimizer 'muon' does not write or read checkpoints; train without them")
    optimizer = make_optimizer(model, config)
    start = 0
    if resume_from is not None:
        start = load_checkpoint(resume_from, model, optimizer)
    else:
        set_seed(config.seed)
    runner: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(model)
    writer = None
    if config.log_dir and main:
        from torch.utils.tensorboard import SummaryWriter

        if start:
            _wait_past_event_files(config.log_dir)
        writer = SummaryWriter(config.log_dir, purge_step=start + 1 if start else None)
    report = TrainReport(start_step=start, end_step=start)
    was_training = model.training
    model.train()
    t0 = time.perf_counter()
    try:
        for step in range(start, config.steps):
            t_step = time.perf_counter()
            batches = [get_batch(step, micro) for micro in range(config.grad_accum)]
            counts = [count_tokens(b) for b in batches]
            if min(counts) <= 0:
                raise MoorelabError(f"training step {step}: a micro-batch has no loss tokens")
            n_tokens = sum(counts)
            if distributed:
                n_tokens = int(_all_reduce(float(n_tokens)))
            lr = lr_at(step, config)
            for g in optimizer.param_groups:
                g["lr"] = lr
            total = 0.0
            for i, b in enumerate(batches):
                last = i == len(batches) - 1
                sync = contextlib.nullcontext() if last or not distributed else runner.no_sync()
                with sync:
                    loss_sum = loss_fn(runner, b)
                    # DDP averages over ranks: scale by world so the result is Σ loss / global tokens
                    (loss_sum / n_tokens if world == 1 else loss_sum * (world / n_tokens)).backward()
                total += float(loss_sum.detach())
            if distributed:
                total = _all_reduce(total)
            loss = total / n_tokens
            if not math.isfinite(loss):
                raise MoorelabError(f"training step {step}: loss is {loss} (diverged; lower lr)")
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if config.grad_clip is not None:
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
            else:
                gnorm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(model, step + 1)
            seconds = time.perf_counter() - t_step
            tokens_per_s = n_tokens / seconds
            step_mfu = None
            if flop_per_token and peak_flop_per_s:
                step_mfu = flop_per_token * tokens_per_s / (peak_flop_per_s * world)
            report.end_step = step + 1
            report.tokens += n_tokens
            report.losses.append(loss)
            report.lrs.append(lr)
            report.grad_norms.append(gnorm)
            if writer is not None:
                writer.add_scalar("train/loss", loss, step + 1)
                writer.add_scalar("train/lr", lr, step + 1)
                writer.add_scalar("train/grad_norm", gnorm, step + 1)
                writer.add_scalar("train/tokens", n_tokens, step + 1)
                writer.add_scalar("train/tokens_per_s", tokens_per_s, step + 1)
                if step_mfu is not None:
                    writer.add_scalar("train/mfu", step_mfu, step + 1)
            if progress is not None:
                progress(step + 1, loss)
            if on_step is not None:
                on_step({"step": step + 1, "loss": loss, "lr": lr, "grad_norm": gnorm, "tokens": n_tokens,
                         "seconds": seconds, "tokens_per_s": tokens_per_s, "mfu": step_mfu})
            done = step + 1
            if config.checkpoint_dir and main and (
                (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps
            ):
                if writer is not None:
                    # events up to this step reach disk before the checkpoint that a resume starts
                    # from exists: a run killed after it (SIGKILL) loses none of them
                    writer.flush()
                report.checkpoint = str(save_checkpoint(config.checkpoint_dir, model, optimizer, done, config))
    finally:
        report.seconds = time.perf_counter() - t0
        if writer is not None:
            writer.close()
        model.train(was_training)
    return report


def _wait_past_event_files(log_dir: str | Path) -> None:
    """Wait until the clock's whole second is past every events file already in ``log_dir``.

    A resumed run hides the killed run's later steps with ``SummaryWriter(purge_step=...)``, and
    TensorBoard applies a purge only to events read before it: it reads a folder's
    ``events.out.tfevents.<seconds>.<host>.<pid>...`` files in name order. A resume started in the
    same whole second as the killed run would otherwise sort by process id, and a lower id puts the
    resumed file first, so the killed run's steps would show twice. Waits at most about one second
    past the newest file's stamp (a file stamped further ahead, e.g. by another machine's clock,
    makes it wait at most 3 seconds, then go on).
    """
    stamps = []
    for f in Path(log_dir).glob("events.out.tfevents.*"):
        part = f.name.split(".")[3]
        if part.isdigit():
            stamps.append(int(part))
    if not stamps:
        return
    deadline = time.time() + 3.0
    while int(time.time()) <= max(stamps) and time.time() < deadline:
        time.sleep(min(0.05, max(0.001, max(stamps) + 1 - time.time())))
    now = int(time.time())
    if now <= max(stamps):
        import warnings

        warnings.warn(f"{log_dir}: an events file is stamped at {max(stamps)}, {max(stamps) - now} s after this "
                      "clock's second; TensorBoard may show the interrupted run's later steps beside the resumed ones",
                      stacklevel=2)


def _all_reduce(value: float) -> float:
    """Sum over the ranks of the initialised process group (float64)."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])
