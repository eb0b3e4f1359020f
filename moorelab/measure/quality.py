"""Quality on the same text: token perplexity and bits per byte, with sliding windows.

Protocol (the Hugging Face "perplexity of fixed-length models" strided method, and lm-eval's
rolling log-likelihood for the document start):

* The text is tokenized once. Which text tokens are scored:

  ========  ==================================================  ======================
  policy    model input                                         scored
  ========  ==================================================  ======================
  first     a document-start token (BOS) once, before the text  every text token
  every     a BOS at the start of every window                  every text token
  none      the text alone                                      all but the first
  ========  ==================================================  ======================

  Under ``"every"`` the first window is the ``"first"`` one (its BOS predicts the first text
  token); each later window is ``[BOS] + window - 1`` text tokens (models such as Gemma need a
  BOS at the start of every input). Under ``"none"`` the first token has no context and is not
  scored (``tokens_unscored``).
* Windows of at most ``window`` tokens (BOS included) start every ``stride`` tokens; each token is
  scored exactly once, in the first window that reaches it, with up to ``window - stride`` tokens
  of context. A ``window`` longer than the model's ``context`` is capped to it (the result keeps
  ``window_requested``).
* Means are token-weighted: ``perplexity = exp(Σ NLL / n_scored)``; padding never enters the sums.
* ``bits_per_byte = Σ NLL / ln 2 / n_bytes`` with ``n_bytes`` the UTF-8 bytes of exactly the
  scored span of the original text: the whole text, less (under ``"none"``) the bytes of the
  unscored first token.
* ``bits_per_character = Σ NLL / ln 2 / n_chars`` with ``n_chars`` the characters (Unicode code
  points, ``len(str)`` in Python) of the same span, when the caller gives them. The two differ by
  the text's bytes per character: 1 for ASCII English, about 3 for Chinese (each Han character
  is 3 UTF-8 bytes), so a Chinese text's bits per character is about 3 x its bits per byte.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps input ids ``LongTensor[B, T]`` to logits ``FloatTensor[B, T, V]``."""

BOS_POLICIES = ("first", "every", "none")


@dataclass
class QualityResult:
    """Token-weighted quality of a model on one text.

    Attributes:
        nll_nats: total negative log-likelihood over scored tokens (nats).
        tokens_scored: number of tokens scored (each exactly once).
        tokens_unscored: text tokens not scored (only the first one under ``bos_policy="none"``).
        n_bytes: UTF-8 bytes of the scored span of the text (the bits-per-byte denominator).
        window: window length in tokens (including a BOS), after any cap to the model's context.
        stride: step between window starts, tokens.
        bos_policy: ``"first"``, ``"every"`` or ``"none"``.
        bos_token_id: the document-start token used, or None.
        n_windows: forward passes made.
        text_bytes: UTF-8 bytes of the whole text (``n_bytes`` plus any unscored first token's).
        window_requested: the window asked for when it was capped to the model's context, else None.
        n_chars: characters (Unicode code points) of the scored span of the original text (the
            bits-per-character denominator), or None when not given.
    """

    nll_nats: float
    tokens_scored: int
    tokens_unscored: int
    n_bytes: int
    window: int
    stride: int
    bos_policy: str
    bos_token_id: int | None
    n_windows: int
    text_bytes: int = 0
    window_requested: int | None = None
    n_chars: int | None = None

    @property
    def nll_per_token(self) -> float:
        """Mean NLL per scored token, nats/token."""
        return self.nll_nats / self.tokens_scored

    @property
    def perplexity(self) -> float:
        """Token perplexity ``exp(mean NLL)`` (dimensionless)."""
        return math.exp(self.nll_per_token)

    @property
    def bits_per_byte(self) -> float:
        """Bits per UTF-8 byte of the scored span of the text: ``Σ NLL / ln 2 / n_bytes``."""
        return self.nll_nats / math.log(2) / self.n_bytes

    @property
    def bits_per_character(self) -> float | None:
        """Bits per character (Unicode code point) of the scored span: ``Σ NLL / ln 2 / n_chars``;
        None when ``n_chars`` was not given."""
        return None if not self.n_chars else self.nll_nats / math.log(2) / self.n_chars

    def to_dict(self) -> dict:
        """All fields plus derived figures, each number with its unit where it has one."""
        d = asdict(self)
        d["perplexity"] = self.perplexity
        d["bits_per_byte"] = self.bits_per_byte
        if self.n_chars:
            d["bits_per_character"] = self.bits_per_character
        d["nll_per_token"] = self.nll_per_token
        return d


def plan_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over a sequence so that every target is scored once.

    The sequence ``s`` has ``n_tokens`` ids; targets are ``s[1:]`` (predicted from what precedes).

    Args:
        n_tokens: length of the sequence, including a leading document-start token if any.
        window: maximum input length per forward pass (tokens), ≥ 1.
        stride: step between window starts (tokens), 1 ≤ stride ≤ window.

    Returns:
        ``(begin, end, n_new)`` per window: the input is ``s[begin:end]``, its targets are
        ``s[begin+1:end+1]`` and only the last ``n_new`` of them are scored.

    Raises:
        ValueError: window or stride out of range.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 token, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    n_targets = n_tokens - 1
    plans = []
    scored = 0
    begin = 0
    while scored < n_targets:
        end = min(begin + window, n_targets)
        plans.append((begin, end, end - scored))
        scored = end
        begin += stride
    return plans


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def score_text(
    logits_fn: LogitsFn,
    token_ids: Sequence[int],
    n_bytes: int,
    *,
    window: int = 512,
    stride: int | None = None,
    bos_policy: str = "first",
    bos_token_id: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    unscored_bytes: int | None = None,
    context: int | None = None,
    n_chars: int | None = None,
    unscored_chars: int | None = None,
) -> QualityResult:
    """Score a tokenized text with sliding windows: total NLL, perplexity, bits per byte.

    Args:
        logits_fn: model call, ``LongTensor[B, T] -> FloatTensor[B, T, V]`` (causal LM).
        token_ids: the text's token ids (no special tokens added), length N ≥ 2 (≥ 1 with a BOS).
        n_bytes: UTF-8 bytes of the original text, > 0.
        window: tokens per forward pass, a BOS included (the model's context budget for scoring).
        stride: step between windows (default ``window``: no overlap, least compute);
            ``window - stride`` is the minimum context of every token after the first window.
        bos_policy: ``"first"`` (document-start token once), ``"every"`` (at each window's start)
            or ``"none"``.
        bos_token_id: the document-start token id (required unless ``bos_policy="none"``).
        batch_size: windows per forward pass (full-length windows only are batched; no padding).
        progress: called with the number of tokens just scored, for progress bars.
        unscored_bytes: under ``"none"`` (required there), the UTF-8 bytes of the text the first
            token covers; they are left out of ``n_bytes`` because that token is not scored.
        context: the model's context length in tokens (e.g. learned positions, GPT-2's
            ``n_positions``); a longer ``window`` is capped to it (and ``stride`` to the window),
            the result keeps ``window_requested``. None: no cap.
        n_chars: characters (Unicode code points) of the original text, > 0, for bits per
            character; None: not computed.
        unscored_chars: with ``n_chars`` under ``"none"`` (required there), the characters the
            unscored first token covers.

    Returns:
        :class:`QualityResult`.

    Raises:
        ValueError: unknown policy, missing BOS id or first-token bytes, too few tokens,
            non-positive ``n_bytes``.
    """
    if bos_policy not in BOS_POLICIES:
        raise ValueError(f"bos_policy must be one of {BOS_POLICIES}, got {bos_policy!r}")
    if bos_policy != "none" and bos_token_id is None:
        raise ValueError(f"bos_policy={bos_policy!r} needs a bos_token_id")
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be > 0, got {n_bytes}")
    if n_chars is not None and n_chars <= 0:
        raise ValueError(f"n_chars must be > 0, got {n_chars}")
    stride = window if stride is None else stride
    window_requested = None
    if context is not None and window > context:
        window_requested, window, stride = window, context, min(stride, context)
    ids = list(token_ids)
    scored_bytes = n_bytes
    if bos_policy == "none":
        if unscored_bytes is None or not 0 <= unscored_bytes < n_bytes:
            raise ValueError(
                f"bos_policy='none' leaves the first token unscored: pass unscored_bytes, its UTF-8 bytes "
                f"(0 <= unscored_bytes < n_bytes={n_bytes}), got {unscored_bytes}"
            )
        seq = ids
        unscored = 1
        scored_bytes = n_bytes - unscored_bytes
        if n_chars is not None:
            if unscored_chars is None or not 0 <= unscored_chars < n_chars:
                raise ValueError(f"bos_policy='none' with n_chars: pass unscored_chars, the characters of the first "
                                 f"token (0 <= unscored_chars < n_chars={n_chars}), got {unscored_chars}")
            n_chars -= unscored_chars
    else:
        # "first" and "every": the BOS in front of the text predicts its first token
        seq = [bos_token_id] + ids
        unscored = 0
    if len(seq) < 2:
        raise ValueError("need at least one token to score")
    # Under "every" one position of each later window is taken by its own BOS token.
    span = window - 1 if bos_policy == "every" else window
    if span < 1 or stride > span:
        raise ValueError(f"window {window} leaves no room for stride {stride} under bos_policy={bos_policy!r}")
    plans = plan_windows(len(seq), span, stride)
    seq_t = torch.tensor(seq, dtype=torch.long)

    total = 0.0
    n_scored = 0
    # Group windows of equal input length (and, under "every", with or without an added BOS:
    # the first window starts with the text's own) so that batches need no padding.
    by_len: dict[tuple[int, bool], list[tuple[int, int, int]]] = {}
    for p in plans:
        by_len.setdefault((p[1] - p[0], bos_policy == "every" and p[0] > 0), []).append(p)
    for (length, add_bos), group in by_len.items():
        for batch in _batches(group, batch_size):
            inputs = torch.stack([seq_t[b:e] for b, e, _ in batch])
            targets = torch.stack([seq_t[b + 1 : e + 1] for b, e, _ in batch])
            if add_bos:
                bos = torch.full((len(batch), 1), bos_token_id, dtype=torch.long)
                inputs = torch.cat([bos, inputs], dim=1)
            logits = logits_fn(inputs).float()
            if add_bos:
                logits = logits[:, 1:]
            logp = torch.log_softmax(logits, dim=-1)
            nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
            for row, (_, _, n_new) in enumerate(batch):
                total += float(nll[row, length - n_new :].double().sum())
                n_scored += n_new
                if progress is not None:
                    progress(n_new)
    assert n_scored == len(seq) - 1, "every target must be scored exactly once"
    return QualityResult(
        nll_nats=total,
        tokens_scored=n_scored,
        tokens_unscored=unscored,
        n_bytes=scored_bytes,
        window=window,
        stride=stride,
        bos_policy=bos_policy,
        bos_token_id=bos_token_id if bos_policy != "none" else None,
        n_windows=len(plans),
        text_bytes=n_bytes,
        window_requested=window_requested,
        n_chars=n_chars,
    )


@dataclass
class ChunkPerplexity:
    """Perplexity under llama.cpp's ``llama-perplexity`` rule (:func:`perplexity_llamacpp_rule`).

    Fields: ``perplexity`` (per token), ``nll_nats`` (sum), ``tokens_scored``, ``chunks``,
    ``n_ctx`` (tokens per chunk), ``scored_bytes`` (UTF-8 bytes of the scored tokens, when a
    ``decode`` was given, else 0) and ``bits_per_byte`` (``nll / ln 2 / scored_bytes``, or None).
    """

    perplexity: float
    nll_nats: float
    tokens_scored: int
    chunks: int
    n_ctx: int
    scored_bytes: int = 0
    bits_per_byte: float | None = None


@torch.inference_mode()
def perplexity_llamacpp_rule(
    logits_fn: LogitsFn,
    token_ids: Sequence[int],
    n_ctx: int,
    *,
    bos_token_id: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> ChunkPerplexity:
    """Score tokens as llama.cpp's ``llama-perplexity`` does (``tools/perplexity/perplexity.cpp``,
    ``perplexity()``, build 11434), so the two perplexities can be compared.

    The rule: the token list (a BOS first only if the vocabulary adds one: SmolLM2's GGUF says
    ``add_bos_token = false``) is cut into ``len // n_ctx`` non-overlapping chunks of ``n_ctx``
    tokens (the tail is dropped); with a BOS id, each chunk's first token is replaced by it; in
    each chunk only the second half is scored: the logits at positions ``n_ctx/2 .. n_ctx-2``
    predict tokens ``n_ctx/2 + 1 .. n_ctx - 1`` (``n_ctx/2 - 1`` tokens per chunk, each with at
    least ``n_ctx/2`` tokens of context). ``perplexity = exp(Σ NLL / n)``. This differs from
    :func:`score_text` (every token scored once, overlapping windows), so the two are not the
    same number.

    Args:
        logits_fn: ``LongTensor[1, n_ctx] -> FloatTensor[1, n_ctx, V]``.
        token_ids: the text's tokens, as llama.cpp tokenizes it.
        n_ctx: tokens per chunk (llama-perplexity's ``-c``), even, ≥ 4.
        bos_token_id: replaces each chunk's first token when given (the vocabulary's add_bos).
        decode: token ids -> text, to count the UTF-8 bytes of the scored tokens (bits per byte).

    Returns:
        :class:`ChunkPerplexity`.

    Raises:
        ValueError: ``n_ctx`` odd or < 4, or fewer than ``2 * n_ctx`` tokens (llama-perplexity's
            own minimum).
    """
    if n_ctx < 4 or n_ctx % 2:
        raise ValueError(f"n_ctx={n_ctx}: must be an even number ≥ 4")
    ids = list(token_ids)
    if len(ids) < 2 * n_ctx:
        raise ValueError(f"{len(ids)} tokens: llama-perplexity needs at least 2*n_ctx = {2 * n_ctx}")
    first = n_ctx // 2
    chunks = len(ids) // n_ctx
    nll, count, scored_bytes = 0.0, 0, 0
    for i in range(chunks):
        chunk = ids[i * n_ctx:(i + 1) * n_ctx]
        if bos_token_id is not None:
            chunk[0] = bos_token_id
        x = torch.tensor([chunk])
        logits = logits_fn(x)[0, first:n_ctx - 1].float()
        target = x[0, first + 1:n_ctx]
        nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        count += n_ctx - 1 - first
        if decode is not None:
            scored_bytes += len(decode(chunk[first + 1:]).encode("utf-8"))
    bpb = nll / math.log(2) / scored_bytes if scored_bytes else None
    return ChunkPerplexity(math.exp(nll / count), nll, count, chunks, n_ctx, scored_bytes, bpb)
