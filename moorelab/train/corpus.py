"""Training text: documents, a train/validation split by document, a byte-level BPE tokenizer,
and the token stream the windows are drawn from.

A *document* is one unit of text that is never cut between the two splits (a play, a file).
Validation documents are held out whole, so no window of validation text is ever trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from moorelab.errors import DataError

END_OF_TEXT = "<|endoftext|>"


@dataclass(frozen=True)
class Document:
    """One document: ``name`` (a label, e.g. the play's path) and its ``text``."""

    name: str
    text: str

    @property
    def n_bytes(self) -> int:
        """UTF-8 bytes of the text."""
        return len(self.text.encode("utf-8"))


@dataclass(frozen=True)
class Split:
    """Documents for training and for validation (disjoint, by document)."""

    train: tuple[Document, ...]
    validation: tuple[Document, ...]
    seed: int
    val_fraction: float

    def describe(self) -> str:
        """One line: counts and bytes of each side, and how they were drawn."""
        tb = sum(d.n_bytes for d in self.train)
        vb = sum(d.n_bytes for d in self.validation)
        names = ", ".join(d.name for d in self.validation)
        return (f"split by document (seed {self.seed}, {self.val_fraction:.0%} held out): "
                f"train {len(self.train)} documents, {tb:,} bytes; validation {len(self.validation)} "
                f"documents, {vb:,} bytes ({names})")


def split_documents(docs: Sequence[Document], val_fraction: float = 0.1, seed: int = 0) -> Split:
    """Hold out whole documents for validation.

    ``max(1, round(val_fraction·len(docs)))`` documents, chosen by a NumPy permutation seeded
    with ``seed``, form the validation side; the rest, in their original order, the train side.

    Raises:
        DataError: fewer than two documents, duplicate names, or ``val_fraction`` outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
    if len(docs) < 2:
        raise DataError(f"{len(docs)} document(s): the split holds out whole documents, give at least 2 "
                        "(several --text files or a --corpus)")
    names = [d.name for d in docs]
    if len(set(names)) != len(names):
        raise DataError("two documents have the same name: " + next(n for n in names if names.count(n) > 1))
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    order = np.random.default_rng(seed).permutation(len(docs))
    val_idx = set(order[:n_val].tolist())
    return Split(
        train=tuple(d for i, d in enumerate(docs) if i not in val_idx),
        validation=tuple(d for i, d in enumerate(docs) if i in val_idx),
        seed=seed,
        val_fraction=val_fraction,
    )


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts`` with ``tokenizers``.

    The vocabulary holds the 256 byte symbols, ``<|endoftext|>`` (id 0, the document separator)
    and merges up to ``vocab_size`` entries.

    Returns:
        A ``tokenizers.Tokenizer`` (no padding, no truncation).

    Raises:
        DataError: ``vocab_size`` below 257 + 1.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise DataError(f"--vocab-size {vocab_size}: a byte-level BPE needs at least 258 entries "
                        "(256 bytes, <|endoftext|>, one merge)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def document_stream(tokenizer, docs: Sequence[Document], separator_id: int | None) -> list[int]:
    """Token ids of the documents, each preceded by ``separator_id`` (when not None), as in
    GPT-2's pretraining data; texts are tokenized as ordinary text (no special tokens parsed).

    Returns:
        One list of ints.
    """
    from moorelab.model.tokenize import encode_text

    out: list[int] = []
    for d in docs:
        if separator_id is not None:
            out.append(separator_id)
        out.extend(encode_text(tokenizer, d.text))
    return out


def steps_for_budget(*, steps: int | None, tokens: float | None, flops: float | None,
                     tokens_per_step: int, flop_per_token: float) -> int:
    """Optimizer steps for exactly one of the three budgets, rounded down to whole steps.

    Args:
        steps: optimizer steps.
        tokens: trained tokens (``tokens_per_step`` per step).
        flops: training FLOP (``flop_per_token·tokens_per_step`` per step).

    Raises:
        DataError: not exactly one budget, or a budget smaller than one step (naming both sizes).
    """
    given = [n for n, v in (("--steps", steps), ("--tokens", tokens), ("--flops", flops)) if v is not None]
    if len(given) != 1:
        raise DataError("give exactly one budget: --steps, --tokens or --flops" + (f" (got {', '.join(given)})" if given else ""))
    if steps is not None:
        if steps < 1:
            raise DataError(f"--steps {steps}: the budget must be at least one step")
        return int(steps)
    if tokens is not None:
        n = math.floor(tokens / tokens_per_step)
        if n < 1:
            raise DataError(f"--tokens {tokens:g} is smaller than one step ({tokens_per_step:,} tokens)")
        return n
    per_step = flop_per_token * tokens_per_step
    n = math.floor(flops / per_step)
    if n < 1:
        raise DataError(f"--flops {flops:g} is smaller than one step ({per_step:.3g} FLOP)")
    return n
