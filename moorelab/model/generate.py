"""Autoregressive decoding with a KV cache: greedy, temperature, top-k and top-p (nucleus) sampling.

Prefill runs the prompt once and stores keys/values; each decode step feeds one token per row.
Left-padded batches work: padding is masked and each row's positions start at 0 at its first
real token, so a row decodes the same tokens in a batch as alone (Holtzman et al. 2020 for top-p).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from moorelab.model import decode
from moorelab.model.transformer import KVCache, Transformer


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from ``logits [B, vocab]`` -> ``LongTensor[B]``.

    ``temperature <= 0`` is greedy (argmax). Otherwise logits are divided by ``temperature``,
    restricted to the ``top_k`` largest and then to the smallest set whose probability reaches
    ``top_p`` (always keeping the most likely token), and sampled.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def generate(
    model: Transformer,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
    kv_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Continue ``input_ids [B, T]`` (left-padded if ``attention_mask`` has zeros) by up to ``max_new_tokens``.

    Args:
        attention_mask: ``[B, T]``, 1 = real token, 0 = left padding.
        temperature, top_k, top_p: see :func:`sample_next`; temperature 0 is greedy.
        eos_token_id: one id or several (e.g. ``model.config.eos_token_ids``: a config may list
            ``[eos, end_of_turn]``); a row stops after emitting any of them, as transformers'
            ``generate`` does, and is then filled with the first. None: never stop early.
        generator: ``torch.Generator`` for reproducible sampling.
        use_cache: False recomputes the whole sequence each step (reference for tests).
        on_token: called with the new tokens ``LongTensor[B]`` after each step.
        kv_dtype: storage type of the KV cache (``KVCache(dtype=...)``); ``torch.float16`` halves
            what each step reads at depth (cost in bits per byte: ``benchmarks/bench_decode_depth.py``).

    Returns:
        ``LongTensor[B, T + n]`` with ``n <= max_new_tokens`` new tokens (fewer if every row
        hit one of ``eos_token_id``).

    Raises:
        ContextLengthError: a model with learned positions (GPT-2) and a prompt plus
            ``max_new_tokens`` longer than its ``max_position_embeddings``, before any step runs.
    """
    stops = None
    if eos_token_id is not None:
        stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), dtype=torch.long)
        if stops.numel() == 0:
            stops = None
    B, T = input_ids.shape
    n_pos = model.config.max_position_embeddings
    if model.config.position == "learned":
        longest = T if attention_mask is None else int(attention_mask.sum(-1).max())
        if longest + max_new_tokens > n_pos:
            from moorelab.errors import ContextLengthError

            raise ContextLengthError(
                f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                f"{n_pos} learned positions (config max_position_embeddings={n_pos})"
            )
    out = input_ids.new_empty(B, T + max_new_tokens)
    out[:, :T] = input_ids
    mask = None
    if attention_mask is not None:
        mask = attention_mask.new_ones(B, T + max_new_tokens)
        mask[:, :T] = attention_mask
    cache = KVCache(max_len=T + max_new_tokens, dtype=kv_dtype) if use_cache else None
    done = torch.zeros(B, dtype=torch.bool)
    n = 0
    step_ids = input_ids
    for n in range(1, max_new_tokens + 1):
        L = T + n - 1
        if use_cache:
            logits = decode.forward(model, step_ids, attention_mask=None if mask is None else mask[:, :L], cache=cache,
                                    last_only=True)
        else:
            logits = model(out[:, :L], attention_mask=None if mask is None else mask[:, :L], last_only=True)
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        if stops is not None:
            nxt = torch.where(done, torch.full_like(nxt, int(stops[0])), nxt)
            done |= torch.isin(nxt, stops.to(nxt.device))
        out[:, L] = nxt
        if on_token is not None:
            on_token(nxt)
        if stops is not None and bool(done.all()):
            break
        step_ids = out[:, L : L + 1]
    return out[:, : T + n]
