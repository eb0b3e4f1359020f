"""Worked examples computed by the library's own layers (nothing hard-coded but the inputs).

* Attention (Vaswani et al. 2017, eq. 1): ``softmax(Q·Kᵀ/√d_k)·V`` for the textbook
  ``Q = K = V = [[0.1,0.2,0.3],[0.4,0.5,0.6],[0.7,0.8,0.9]]``, d_k = 3. The input runs through
  an :class:`~moorelab.model.transformer.Attention` with identity projections (so Q = K = V = X)
  on the eager path, which records Q·Kᵀ, the scaled scores and the softmax weights.
  The output is a weighted average of V's rows, NOT V itself.
* FFN: ``ReLU(W2·ReLU(W1·x + b1) + b2)`` through a :class:`FeedForward` (ReLU) whose
  ``up_proj``/``down_proj`` hold W1, b1 and W2, b2. W1·x = [14, 32, 50] (not [10, 19, 28]).
* :func:`attention_heatmap` saves a real model's attention weights (one layer, one head) as PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from moorelab.model.transformer import Attention, FeedForward

TEXTBOOK_X = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]
TEXTBOOK_FFN = {
    "x": [1.0, 2.0, 3.0],
    "W1": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],
    "b1": [1.0, 1.0, 1.0],
    "W2": [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
    "b2": [1.0, 0.0, 1.0],
}


@dataclass
class AttentionSteps:
    """Intermediate values of one-head self-attention; all ``[T, T]`` or ``[T, d_k]`` float64."""

    x: torch.Tensor
    d_k: int
    qk: torch.Tensor  # Q·Kᵀ
    scores: torch.Tensor  # Q·Kᵀ / √d_k
    weights: torch.Tensor  # softmax over keys (rows sum to 1)
    output: torch.Tensor  # weights · V


def explain_attention(x: list[list[float]] | None = None) -> AttentionSteps:
    """Run single-head self-attention on ``x [T, d_k]`` (default: the textbook matrix).

    Q = K = V = x (identity projections in our :class:`Attention`, eager path, no mask).
    Computed in float64 so printed digits are exact to the shown precision.
    """
    X = torch.tensor(x if x is not None else TEXTBOOK_X, dtype=torch.float64)
    T, d = X.shape
    attn = Attention(d_model=d, n_heads=1, n_kv_heads=1, head_dim=d, bias=False, rope=False).double()
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            proj.weight.copy_(torch.eye(d, dtype=torch.float64))
        attn.record = {}
        out = attn(X[None], impl="eager")[0]
    r = attn.record
    return AttentionSteps(X, d, r["qk"][0, 0], r["scores"][0, 0], r["weights"][0, 0], out)


@dataclass
class FFNSteps:
    """Intermediate values of ``ReLU(W2·ReLU(W1·x + b1) + b2)``, each a vector ``[d]``."""

    x: torch.Tensor
    W1x: torch.Tensor
    W1x_b1: torch.Tensor
    hidden: torch.Tensor  # ReLU(W1·x + b1)
    W2h: torch.Tensor
    W2h_b2: torch.Tensor  # = FeedForward(x)
    output: torch.Tensor  # outer ReLU


def explain_ffn(x=None, W1=None, b1=None, W2=None, b2=None) -> FFNSteps:
    """Compute the textbook two-layer ReLU FFN step by step with our :class:`FeedForward`.

    ``up_proj`` holds (W1, b1), ``down_proj`` holds (W2, b2); W·x is ``nn.Linear``'s product
    without its bias (``F.linear(x, W)``); the formula's outer ReLU is applied last.
    """
    t = TEXTBOOK_FFN
    as64 = lambda v, default: torch.tensor(v if v is not None else default, dtype=torch.float64)  # noqa: E731
    x, W1, b1, W2, b2 = (as64(x, t["x"]), as64(W1, t["W1"]), as64(b1, t["b1"]), as64(W2, t["W2"]), as64(b2, t["b2"]))
    ffn = FeedForward(d_model=W1.shape[1], d_ff=W1.shape[0], activation="relu", bias=True).double()
    with torch.no_grad():
        ffn.up_proj.weight.copy_(W1)
        ffn.up_proj.bias.copy_(b1)
        ffn.down_proj.weight.copy_(W2)
        ffn.down_proj.bias.copy_(b2)
        seen = {}
        hook = ffn.down_proj.register_forward_hook(lambda m, inp, out: seen.update(hidden=inp[0]))
        y = ffn(x)
        hook.remove()
        hidden = seen["hidden"]
        return FFNSteps(
            x=x,
            W1x=F.linear(x, ffn.up_proj.weight),
            W1x_b1=ffn.up_proj(x),
            hidden=hidden,
            W2h=F.linear(hidden, ffn.down_proj.weight),
            W2h_b2=y,
            output=torch.relu(y),
        )


def fmt(t: torch.Tensor, digits: int = 4) -> str:
    """Format a vector or matrix with ``digits`` decimals (integers shown without decimals)."""
    def num(v: float) -> str:
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.{digits}f}"

    if t.dim() == 1:
        return "[" + ", ".join(num(v) for v in t.tolist()) + "]"
    return "[" + ",\n ".join(fmt(r, digits) for r in t) + "]"


def attention_report(s: AttentionSteps) -> list[tuple[str, str]]:
    """(title, value) lines for printing the attention walk-through."""
    lines = [
        ("Q = K = V = X", fmt(s.x, 1)),
        ("1. Q·Kᵀ (dot product of every query row with every key row)", fmt(s.qk)),
        (f"2. scale by 1/√d_k = 1/√{s.d_k} = {1 / s.d_k ** 0.5:.4f}", fmt(s.scores)),
        ("3. softmax over each row (weights; each row sums to 1)", fmt(s.weights)),
        ("4. output = weights · V (a weighted average of V's rows)", fmt(s.output)),
    ]
    diff = (s.output - s.x).abs().max().item()
    lines.append(("check: output equals V?", f"no: max |output - V| = {diff:.4f} (the weights are not one-hot)"))
    return lines


def ffn_report(s: FFNSteps) -> list[tuple[str, str]]:
    """(title, value) lines for printing the FFN walk-through."""
    return [
        ("x", fmt(s.x)),
        ("1. W1·x (row i of W1 dotted with x; not [10, 19, 28])", fmt(s.W1x)),
        ("2. W1·x + b1", fmt(s.W1x_b1)),
        ("3. h = ReLU(W1·x + b1)", fmt(s.hidden)),
        ("4. W2·h", fmt(s.W2h)),
        ("5. W2·h + b2 (our FeedForward's output)", fmt(s.W2h_b2)),
        ("6. FFN(x) = ReLU(W2·h + b2)", fmt(s.output)),
    ]


@torch.inference_mode()
def attention_heatmap(
    loaded, text: str, layer: int, head: int, out: str | Path
) -> tuple[torch.Tensor, list[str], Path]:
    """Save the attention weights of ``layer``/``head`` on ``text`` as a heat-map PNG.

    Args:
        loaded: a :class:`~moorelab.model.zoo.LoadedModel`.
        layer, head: 0-based indices (negative counts from the end).

    Returns:
        ``(weights [T, T], tokens, png_path)``.

    Raises:
        MoorelabError: empty text or layer/head out of range (naming the option).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moorelab.errors import MoorelabError

    model = loaded.model
    n_layers = len(model.blocks)
    if not -n_layers <= layer < n_layers:
        raise MoorelabError(f"--layer {layer} is out of range (model has {n_layers} layers)")
    attn = model.blocks[layer].attn
    if not -attn.n_heads <= head < attn.n_heads:
        raise MoorelabError(f"--head {head} is out of range (layer {layer} has {attn.n_heads} heads)")
    enc = loaded.tokenizer.encode(text)
    if not enc.ids:
        raise MoorelabError("--text is empty after tokenization")
    attn.record = {}
    try:
        model(torch.tensor([enc.ids]))
        weights = attn.record["weights"][0, head].float()
    finally:
        attn.record = None
    tokens = [loaded.tokenizer.decode([i]) or t for i, t in zip(enc.ids, enc.tokens)]
    T = len(tokens)
    labels = [repr(t)[1:-1].replace("$", r"\$") for t in tokens]  # "$" would start mathtext
    size = min(2 + 0.35 * T, 20)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0)
    ax.set_xticks(range(T), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(T), labels, fontsize=8)
    ax.set_xlabel("key (attended-to token)")
    ax.set_ylabel("query token")
    ax.set_title(f"{loaded.name}: attention weights, layer {layer}, head {head}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return weights, tokens, out
