"""Training compute and model FLOP utilisation (MFU).

* **FLOP per token** (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1):
  a forward pass costs ``2·N + 2·n_layers·n_ctx·d_attn`` FLOP per token, training (forward +
  backward) three times that: ``6·N + 6·n_layers·n_ctx·d_attn``. ``N`` is the count of
  non-embedding parameters: every parameter except the token and position embedding tables and
  the output layer (tied or not); ``d_attn = n_heads·head_dim``; ``n_ctx`` the training context.
* **Matmul peak**: the best float32 ``torch.mm`` rate of square matrices on this machine with
  the current thread count, measured in the same run (:func:`measure_matmul_peak`).
* **MFU** = model FLOP per second / (peak FLOP per second × processes).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

FLOP_FORMULA = "6·N + 6·n_layers·n_ctx·d_attn FLOP per token (Kaplan et al. 2020; N = non-embedding parameters)"


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters of a moorelab Transformer less its token/position/type embedding tables and
    its output layer (a tied output layer is the embedding table, counted nowhere)."""
    skip = set()
    for name in ("embed", "pos_embed", "type_embed", "lm_head"):
        m = getattr(model, name, None)
        if m is not None:
            skip.update(id(p) for p in m.parameters())
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def training_flop_per_token(model: nn.Module, context: int) -> float:
    """Training FLOP per token: ``6·N + 6·n_layers·context·d_attn`` (see module docstring).

    Args:
        model: a moorelab Transformer (its ``config`` gives n_layers, n_heads, head_dim).
        context: tokens per training sequence (``n_ctx``).

    Returns:
        FLOP per trained token (float).
    """
    c = model.config
    return 6.0 * non_embedding_parameters(model) + 6.0 * c.n_layers * context * c.n_heads * c.head_dim


@dataclass
class MatmulPeak:
    """A measured float32 matmul rate.

    Attributes:
        flop_per_s: best ``2·n³ / seconds`` over the repeats, FLOP/s.
        n: matrix side (``[n, n] @ [n, n]``).
        repeats: timed calls (after one warm-up call).
        threads: ``torch.get_num_threads()`` during the timing.
        seconds: wall time of the whole measurement, seconds.
    """

    flop_per_s: float
    n: int
    repeats: int
    threads: int
    seconds: float

    def describe(self) -> str:
        """One line saying what was measured."""
        return (f"float32 torch.mm {self.n}x{self.n}, best of {self.repeats}, {self.threads} thread(s): "
                f"{self.flop_per_s / 1e9:.1f} GFLOP/s")

    def to_dict(self) -> dict:
        """Fields as a dict."""
        return asdict(self)


def measure_matmul_peak(n: int = 512, repeats: int = 10, min_seconds: float = 0.5) -> MatmulPeak:
    """Time ``torch.mm`` of two float32 ``[n, n]`` matrices and keep the best rate.

    The best of many calls is the peak the machine reaches when nothing else disturbs it; on a
    shared machine, calls continue until ``min_seconds`` have passed so that some run undisturbed.

    Args:
        n: matrix side (512: a few ms per call on a 2-core CPU).
        repeats: at least this many timed calls after one warm-up.
        min_seconds: keep timing calls until this much wall time has passed, seconds.

    Returns:
        :class:`MatmulPeak`.
    """
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    done = 0
    while done < repeats or time.perf_counter() - t_start < min_seconds:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
        done += 1
    return MatmulPeak(2.0 * n**3 / best, n, done, torch.get_num_threads(), time.perf_counter() - t_start)


def mfu(flop_per_token: float, tokens_per_s: float, peak_flop_per_s: float, processes: int = 1) -> float:
    """Model FLOP utilisation: ``flop_per_token·tokens_per_s / (peak_flop_per_s·processes)``."""
    return flop_per_token * tokens_per_s / (peak_flop_per_s * processes)
