"""Token data for training and calibration: deterministic windows of a tokenized text.

Exact resume needs the batch of optimizer step ``s`` to be a pure function of ``(seed, s,
micro)``; :class:`TokenWindows` draws window starts from a NumPy generator seeded with exactly
that triple, so a resumed run sees the same batches as an uninterrupted one without saving any
iterator state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from moorelab.errors import DataError


def tokenize_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as ordinary text: no special tokens added, none parsed
    (see :func:`moorelab.model.tokenize.encode_text`).

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (as in ``LoadedModel.tokenizer``).
        text: the text.

    Returns:
        List of int token ids.
    """
    from moorelab.model.tokenize import encode_text

    return encode_text(tokenizer, text)


class TokenWindows:
    """Random windows of ``seq_len`` consecutive tokens, a pure function of ``(seed, step, micro)``.

    ``windows(step, micro) -> LongTensor[batch_size / world, seq_len]``; the ``batch_size``
    window starts of the *global* batch are uniform on ``[0, N - seq_len]`` from
    ``numpy.random.default_rng([seed, step, micro])``; with ``shard=(rank, world)`` this object
    returns rows ``rank·b … (rank+1)·b − 1`` (``b = batch_size / world``), so the ranks of a
    data-parallel run read disjoint shards whose union is the one-process batch.

    Raises:
        DataError: the text has fewer than ``seq_len`` tokens, sizes are not positive, or
            ``batch_size`` is not a multiple of the world size.
    """

    def __init__(self, token_ids: Sequence[int], seq_len: int, batch_size: int = 1, seed: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> None:
        if seq_len < 2 or batch_size < 1:
            raise DataError(f"TokenWindows: seq_len={seq_len} must be >= 2 and batch_size={batch_size} >= 1")
        if len(token_ids) < seq_len:
            raise DataError(f"TokenWindows: text has {len(token_ids)} tokens, fewer than seq_len={seq_len}")
        rank, world = shard
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise DataError(f"TokenWindows: batch of {batch_size} sequences cannot be shared by {world} processes "
                            f"(it must be a multiple of {world})")
        self.ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world = rank, world

    def __call__(self, step: int, micro: int = 0) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step, micro])
        starts = rng.integers(0, len(self.ids) - self.seq_len + 1, size=self.batch_size)
        per = self.batch_size // self.world
        mine = starts[self.rank * per : (self.rank + 1) * per]
        return torch.stack([self.ids[s : s + self.seq_len] for s in mine.tolist()])


def calibration_batches(token_ids: Sequence[int], seq_len: int, n_tokens: int) -> torch.Tensor:
    """Consecutive, non-overlapping windows from the start of a text, for calibration.

    Args:
        token_ids: tokenized text.
        seq_len: tokens per window.
        n_tokens: total tokens wanted; rounded down to whole windows (at least one).

    Returns:
        ``LongTensor[n_windows, seq_len]`` with ``n_windows = max(1, n_tokens // seq_len)``.

    Raises:
        DataError: the text is too short for the requested windows.
    """
    n_windows = max(1, n_tokens // seq_len)
    need = n_windows * seq_len
    if len(token_ids) < need:
        raise DataError(f"calibration text has {len(token_ids)} tokens, needs {need} ({n_windows} x {seq_len})")
    return torch.as_tensor(list(token_ids[:need]), dtype=torch.long).view(n_windows, seq_len)
