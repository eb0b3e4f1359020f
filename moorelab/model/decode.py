"""Decode dispatch: a model call that takes the fused one-token path when it can, else the reference.

:class:`~moorelab.model.transformer.Transformer` is the reference and does not know its fast
path; decoding loops (generation, batched decode, speed measurements) call :func:`forward`
instead of ``model(...)``. A one-token step of one or several sequences with a
:class:`~moorelab.model.transformer.KVCache` (left-padded, for a batch of different lengths)
goes to :func:`moorelab.model.fused_decode.decode_step` (every layer in one compiled call), which
declines when the model is not eligible (:func:`~moorelab.model.fused_decode.why_not_fused` says
why); everything else is ``model(...)``, the per-op Python path.

``model.fused_decode = False`` forces the Python path; after each call ``model.last_decode_path``
is ``"fused"`` or ``"python"``. :func:`greedy` picks greedy decoding's next token from the logits.
"""

from __future__ import annotations

import torch

from moorelab import kernels
from moorelab.model.fused_decode import check_next_ids, decode_step
from moorelab.model.transformer import KVCache, Transformer

__all__ = ["forward", "greedy"]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Greedy decoding's next token: ``logits [B, vocab]`` -> ``LongTensor[B]``, each row's
    ``argmax`` exactly as ``logits.argmax(-1)`` (the first index on ties; a NaN counts as the
    largest, so a row with one gives its first NaN; a row of ``-inf`` gives 0).

    Float32 CPU rows (each contiguous, any row stride) go to the compiled ``ml_argmax_rows``
    (two AVX2 passes over the row: its maximum, then its first index); anything else, or no
    compiled kernels, to ``torch.argmax``. On warm caches it takes 10-24 µs over SmolLM2's 49,152
    logits against torch's 50-83; in a decode loop, where each step's weight stream has evicted
    what the Python touches, both take 130-210 µs (``benchmarks/bench_decode_overhead.py``): the
    cold Python around the call, which is why decoding loops have the fused call pick instead
    (:func:`forward`'s ``greedy_into``).

    Raises:
        ValueError: ``logits`` is not 2-D or has no columns (``torch.argmax`` raises on an empty
            reduction too).
    """
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"greedy: logits must be [B, vocab] with vocab >= 1, got {tuple(logits.shape)}")
    lib = kernels.get_library()
    if (lib is None or logits.dtype is not torch.float32 or logits.device.type != "cpu"
            or logits.stride(1) != 1 or logits.shape[0] == 0):
        return logits.argmax(dim=-1)
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    lib.argmax_rows(logits.data_ptr(), logits.shape[0], logits.shape[1], logits.stride(0), out.data_ptr())
    return out


def forward(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: KVCache | None = None,
    token_type_ids: torch.Tensor | None = None,
    return_hidden: bool = False,
    last_only: bool = False,
    greedy_into: torch.Tensor | None = None,
) -> torch.Tensor:
    """``model(input_ids, ...)``, through the fused decode when the call and the model allow it.

    Arguments and result are those of :meth:`Transformer.forward
    <moorelab.model.transformer.Transformer.forward>` (``input_ids: LongTensor[B, T]``; logits
    ``[B, T, vocab]``), and so are the numbers, up to float32 rounding (~1e-6 relative). The
    fused path is tried for ``T == 1`` (any ``B``) with a cache whose padding mask, if any, is
    left padding, no mask, positions or segments given, logits wanted, ``attention_impl == "sdpa"`` and
    ``model.fused_decode`` true; it then also needs an eligible model (see
    :mod:`moorelab.model.fused_decode`). Sets ``model.last_decode_path`` to ``"fused"`` or
    ``"python"``.

    ``greedy_into``, if given (``int64 [B]``, contiguous, CPU), receives each row's greedy next
    token: :func:`greedy` of the last position's logits, the same numbers on both paths; on the
    fused one it is picked inside the compiled call (no Python between the logits and the pick:
    ``benchmarks/bench_decode_overhead.py``). Decoding loops pass the tensor they feed back as
    the next ``input_ids`` (viewed ``[B]``).

    Raises:
        Whatever ``model(...)`` raises on the Python path; MemoryError / RuntimeError from
        :func:`~moorelab.model.fused_decode.decode_step` on the fused one; ValueError for a
        ``greedy_into`` that is not a contiguous CPU int64 tensor ``[B]``, or given with
        ``return_hidden``.
    """
    T = input_ids.shape[1]
    if (
        cache is not None
        and T == 1
        and attention_mask is None
        and position_ids is None
        and token_type_ids is None
        and not return_hidden
        and getattr(model, "fused_decode", True)
        and model.attention_impl == "sdpa"
    ):
        logits = decode_step(model, input_ids, cache, greedy_into)  # (checks greedy_into first)
        if logits is not None:
            model.__dict__["last_decode_path"] = "fused"  # (skips nn.Module.__setattr__: every token)
            return logits
    if greedy_into is not None:
        if return_hidden:
            raise ValueError("greedy_into needs logits: not with return_hidden=True")
        check_next_ids(greedy_into, input_ids.shape[0])
    model.__dict__["last_decode_path"] = "python"
    logits = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                   token_type_ids=token_type_ids, return_hidden=return_hidden, last_only=last_only)
    if greedy_into is not None:
        greedy_into.copy_(greedy(logits[:, -1]))
    return logits
