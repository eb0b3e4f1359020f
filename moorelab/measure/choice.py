"""Multiple-choice accuracy by log-likelihood, as EleutherAI's lm-evaluation-harness defines it.

For an item with context ``c``, choices ``a_1..a_K`` and the index of the right one ``gold``,
lm-evaluation-harness (``lm_eval/api/task.py``, ``ConfigurableTask``, ``output_type:
multiple_choice``; ``lm_eval/api/model.py``, ``TemplateLM``; ``lm_eval/models/huggingface.py``,
``HFLM._loglikelihood_tokens``; version 0.4.13 read) scores

    ll_k = log P(delimiter + a_k | c) = Σ_t log softmax(logits_t)[token_t]     (natural log, nats)

over the continuation's tokens, and reports per item

* ``acc``       = [argmax_k ll_k == gold]
* ``acc_norm``  = [argmax_k ll_k / len(a_k) == gold], ``len`` = the choice's length in
  **characters** (Python ``len`` of the choice string, the target delimiter not counted) --
  lm-eval's documentation calls this "byte-length normalised", its code counts characters;
* ``acc_bytes`` = [argmax_k ll_k / len(a_k.encode("utf-8")) == gold], length in UTF-8 **bytes**
  (equal to ``acc_norm`` when every choice is ASCII);

each aggregated by the mean, with the standard error ``sample_stddev / sqrt(n)`` (n - 1 in the
variance; lm-eval's ``mean_stderr``). We add a 95% Wilson score interval for each proportion
(``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).

Tokenization follows ``TemplateLM.loglikelihood`` / ``_encode_pair``: trailing whitespace of the
context moves to the continuation; ``whole = encode(context + continuation)``,
``ctx = encode(context)``, ``cont = whole[len(ctx):]``; an empty context becomes the prefix token
(``[prefix] , cont`` unless ``cont`` starts with it). The model sees
``(ctx + cont)[-(max_length + 1):][:-1]``: a prompt longer than the model's context is
**truncated from the left**, as lm-eval does, and counted (:attr:`ItemScore.truncated_tokens`);
a continuation longer than ``max_length`` is refused.

Speed: lm-eval's ``hf`` backend runs one forward pass of ``ctx + cont`` per choice (sharing only
one-token continuations). Here the context runs once with a KV cache, and the choices' remaining
tokens run as one right-padded batch on a copy of that cache (no attention mask is needed: padding
sits after every real token and a causal model never lets a real token see it), so an item with
K choices costs one context pass plus one short batched pass. Numbers are equal to the full-pass
ones within float32 rounding (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from moorelab.errors import MoorelabError


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice item.

    Attributes:
        context: the prompt text (lm-eval's ``doc_to_text`` result, few-shot examples included).
        choices: K ≥ 2 answer strings, without the delimiter.
        gold: index of the right choice, 0 ≤ gold < K.
        target_delimiter: put between context and each choice (lm-eval default ``" "``).
        where: the source of the item, "file:line", named in errors.
    """

    context: str
    choices: tuple[str, ...]
    gold: int
    target_delimiter: str = " "
    where: str = ""


@dataclass
class ItemScore:
    """Scores of one item.

    Attributes:
        loglikelihoods: K sums of log-probabilities of each continuation (nats).
        is_greedy: K flags: the continuation is what greedy decoding would produce.
        n_tokens: K continuation lengths in tokens.
        gold: the right choice's index.
        pred, pred_norm, pred_bytes: argmax of ll, ll / characters, ll / UTF-8 bytes.
        truncated_tokens: context tokens dropped from the left (0 when the prompt fits).
    """

    loglikelihoods: list[float]
    is_greedy: list[bool]
    n_tokens: list[int]
    gold: int
    pred: int
    pred_norm: int
    pred_bytes: int
    truncated_tokens: int = 0


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                prefix_token_id: int | None) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) exactly as lm-eval's ``TemplateLM`` makes them.

    Args:
        encode: text -> token ids, without special tokens added.
        context: the prompt ('' allowed: then the prefix token stands for it).
        continuation: delimiter + choice.
        prefix_token_id: the token put before a continuation with an empty context (lm-eval:
            BOS, else EOS).

    Returns:
        ``(ctx_ids, cont_ids)``; ``ctx_ids + cont_ids`` is what the model reads.

    Raises:
        MoorelabError: empty context and no prefix token; a continuation of no tokens.
    """
    if context == "":
        cont = encode(continuation)
        if prefix_token_id is None:
            raise MoorelabError("an empty context needs a BOS or EOS token, and the model has neither")
        if cont and cont[0] == prefix_token_id:
            return cont[:1], cont[1:]
        return [prefix_token_id], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


def _score_from_logits(logprobs: torch.Tensor, cont: list[int]) -> tuple[float, bool]:
    """(Σ log p, greedy?) for ``logprobs [len(cont), vocab]`` predicting ``cont``."""
    target = torch.tensor(cont, dtype=torch.long)
    ll = float(logprobs.gather(1, target[:, None]).sum())
    return ll, bool((logprobs.argmax(-1) == target).all())


@torch.no_grad()
def score_continuations(model: torch.nn.Module, ctx: list[int], conts: Sequence[list[int]],
                        max_length: int) -> tuple[list[float], list[bool], int]:
    """Log-likelihood of each continuation after one shared context.

    Args:
        model: a decoder (``model(ids [B, T], cache=KVCache) -> logits [B, T, vocab]``, float32).
        ctx: context token ids (≥ 1).
        conts: K continuation token id lists (each ≥ 1 token, ≤ ``max_length``).
        max_length: the model's context in tokens (lm-eval's ``max_length``).

    Returns:
        (K log-likelihoods in nats, K greedy flags, context tokens truncated from the left).
        When every ``ctx + cont`` fits in ``max_length + 1`` tokens the context runs once with a
        KV cache and the continuations in one batch; otherwise each choice runs on its own
        left-truncated window ``(ctx + cont)[-(max_length + 1):][:-1]`` as lm-eval does.

    Raises:
        MoorelabError: an empty context or continuation, or a continuation longer than
            ``max_length`` tokens.
    """
    from moorelab.model.transformer import KVCache

    if not ctx:
        raise MoorelabError("empty context token list")
    for c in conts:
        if not c:
            raise MoorelabError("a choice that encodes to no tokens")
        if len(c) > max_length:
            raise MoorelabError(f"a choice of {len(c)} tokens is longer than the model's context ({max_length} tokens)")
    longest = max(len(ctx) + len(c) for c in conts)
    if longest > max_length + 1:  # lm-eval's left truncation, choice by choice
        lls, greedy = [], []
        for c in conts:
            inp = (ctx + c)[-(max_length + 1):][:-1]
            logits = model(torch.tensor([inp]))[0, -len(c):]
            ll, g = _score_from_logits(torch.log_softmax(logits.float(), -1), c)
            lls.append(ll)
            greedy.append(g)
        return lls, greedy, longest - (max_length + 1)

    n_ctx, K = len(ctx), len(conts)
    rest = max(len(c) for c in conts) - 1  # continuation tokens that must be fed (all but the last)
    cache = KVCache(max_len=n_ctx + rest)
    last = model(torch.tensor([ctx]), cache=cache, last_only=True)[0, -1]  # predicts each cont's first token
    batch_logits = None
    if rest > 0:
        big = KVCache(max_len=n_ctx + rest)
        for k, v in zip(cache.k, cache.v):
            kb = k.new_empty(K, k.shape[1], n_ctx + rest, k.shape[3])
            vb = v.new_empty(K, v.shape[1], n_ctx + rest, v.shape[3])
            kb[:, :, :n_ctx] = k[:, :, :n_ctx]
            vb[:, :, :n_ctx] = v[:, :, :n_ctx]
            big.k.append(kb)
            big.v.append(vb)
        big.length = n_ctx
        pad = conts[0][0]  # any id: right padding is never seen by a real token
        rows = [c[:-1] + [pad] * (rest - (len(c) - 1)) for c in conts]
        batch_logits = model(torch.tensor(rows), cache=big)  # [K, rest, vocab]
    lls, greedy = [], []
    for j, c in enumerate(conts):
        logits = last[None]
        if len(c) > 1:
            logits = torch.cat((logits, batch_logits[j, : len(c) - 1]), 0)
        ll, g = _score_from_logits(torch.log_softmax(logits.float(), -1), c)
        lls.append(ll)
        greedy.append(g)
    return lls, greedy, 0


def score_item(model: torch.nn.Module, encode: Callable[[str], list[int]], item: ChoiceItem, max_length: int,
               prefix_token_id: int | None = None) -> ItemScore:
    """Score one item (see the module docstring for the definitions).

    Args:
        model: decoder returning logits ``[B, T, vocab]``.
        encode: text -> token ids (no special tokens), the tokenizer lm-eval would use.
        item: the item.
        max_length: the model's context in tokens.
        prefix_token_id: BOS (else EOS), used only for an empty context.

    Returns:
        :class:`ItemScore`.

    Raises:
        MoorelabError: naming ``item.where``: a choice that encodes to no tokens or is longer
            than the model's context.
    """
    ctxs, conts = [], []
    for choice in item.choices:
        c, k = encode_pair(encode, item.context, item.target_delimiter + choice, prefix_token_id)
        ctxs.append(c)
        conts.append(k)
    # choices sharing context ids (all of them, but for an empty context whose continuation starts
    # with the prefix token) are scored together
    groups: dict[tuple, list[int]] = {}
    for j, c in enumerate(ctxs):
        groups.setdefault(tuple(c), []).append(j)
    lls, greedy, trunc = [0.0] * len(conts), [False] * len(conts), 0
    try:
        for c, idx in groups.items():
            g_ll, g_greedy, g_trunc = score_continuations(model, list(c), [conts[j] for j in idx], max_length)
            for j, ll, g in zip(idx, g_ll, g_greedy):
                lls[j], greedy[j] = ll, g
            trunc = max(trunc, g_trunc)
    except MoorelabError as exc:
        raise MoorelabError(f"{item.where}: {exc}") from None
    return make_score(lls, greedy, [len(k) for k in conts], item.choices, item.gold, trunc)


def make_score(lls: Sequence[float], greedy: Sequence[bool], n_tokens: Sequence[int], choices: Sequence[str],
               gold: int, truncated_tokens: int = 0) -> ItemScore:
    """An :class:`ItemScore` from K log-likelihoods: the three predictions (``np.argmax``, the
    first maximum on ties, as lm-eval)."""
    lls_a = np.asarray(lls, dtype=np.float64)
    chars = np.array([float(len(c)) for c in choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    return ItemScore(list(map(float, lls)), list(map(bool, greedy)), list(n_tokens), gold,
                     int(np.argmax(lls_a)), int(np.argmax(lls_a / chars)), int(np.argmax(lls_a / nbytes)),
                     truncated_tokens)


@dataclass
class Proportion:
    """A proportion of n items with lm-eval's standard error and a 95% Wilson interval.

    Attributes:
        value: mean of the 0/1 outcomes (a fraction, not percent).
        stderr: ``sample_stddev / sqrt(n)`` (lm-eval's ``mean_stderr``); NaN for n < 2.
        ci95: (low, high) Wilson score interval, 95%.
        n: items.
    """

    value: float
    stderr: float
    ci95: tuple[float, float]
    n: int

    def to_dict(self) -> dict:
        return {"value": self.value, "unit": "fraction of items", "stderr": self.stderr,
                "ci95": list(self.ci95), "ci_method": "Wilson score interval, 95%", "n": self.n}


def proportion(outcomes: Sequence[float]) -> Proportion:
    """:class:`Proportion` of 0/1 outcomes.

    Raises:
        MoorelabError: no outcomes.
    """
    from scipy.stats import binomtest

    x = np.asarray(outcomes, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise MoorelabError("no items were scored")
    mean = float(x.mean())
    stderr = float(math.sqrt(((x - mean) ** 2).sum() / (n - 1)) / math.sqrt(n)) if n > 1 else float("nan")
    ci = binomtest(int(round(x.sum())), n).proportion_ci(0.95, method="wilson")
    return Proportion(mean, stderr, (float(ci.low), float(ci.high)), n)


@dataclass
class Accuracy:
    """``acc``, ``acc_norm`` (per character), ``acc_bytes`` (per UTF-8 byte) over scored items,
    and how many prompts were truncated from the left."""

    acc: Proportion
    acc_norm: Proportion
    acc_bytes: Proportion
    n_truncated: int = 0
    scores: list[ItemScore] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"acc": self.acc.to_dict(), "acc_norm": self.acc_norm.to_dict(), "acc_bytes": self.acc_bytes.to_dict(),
                "prompts_truncated_from_left": self.n_truncated,
                "definitions": {
                    "acc": "argmax of the summed log-probability of each choice's continuation (lm-eval acc)",
                    "acc_norm": "argmax of log-probability / the choice's length in characters (lm-eval acc_norm)",
                    "acc_bytes": "argmax of log-probability / the choice's length in UTF-8 bytes (lm-eval acc_bytes)",
                    "stderr": "sample standard deviation / sqrt(n) (lm-eval mean_stderr)"}}


def accuracy(scores: Sequence[ItemScore]) -> Accuracy:
    """Aggregate item scores into :class:`Accuracy`.

    Raises:
        MoorelabError: no scores.
    """
    return Accuracy(proportion([s.pred == s.gold for s in scores]),
                    proportion([s.pred_norm == s.gold for s in scores]),
                    proportion([s.pred_bytes == s.gold for s in scores]),
                    sum(1 for s in scores if s.truncated_tokens), list(scores))


def score_items(model: torch.nn.Module, encode: Callable[[str], list[int]], items: Sequence[ChoiceItem],
                max_length: int, prefix_token_id: int | None = None,
                progress: Callable[[int], None] | None = None) -> Accuracy:
    """Score every item and aggregate (:func:`score_item`, :func:`accuracy`).

    Args:
        progress: called with 1 after each item (a progress bar's advance).
    """
    model.eval()
    out = []
    for item in items:
        out.append(score_item(model, encode, item, max_length, prefix_token_id))
        if progress is not None:
            progress(1)
    return accuracy(out)
