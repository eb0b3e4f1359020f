"""Transfer learning: a classification head on a pretrained encoder, fine-tuned end to end.

The recipe is the standard one of BERT fine-tuning (Devlin et al. 2019, "BERT: Pre-training of
Deep Bidirectional Transformers", section 4) with the pooling of Sentence-BERT (Reimers &
Gurevych 2019), which is how all-MiniLM-L6-v2 was trained:

* the sentence vector is the **mean of the last hidden states over real tokens**
  (padding masked out), ``[B, T, d_model] -> [B, d_model]``;
* a dropout + linear head maps it to class logits ``[B, n_classes]``; loss is cross-entropy;
* AdamW (Loshchilov & Hutter 2019) with **no weight decay on biases and normalisation
  weights** (every parameter with fewer than 2 dimensions), the usual BERT grouping;
* learning rate warmed up linearly from 0 over ``warmup_steps`` **optimizer steps**, then
  decayed linearly to 0 at the last optimizer step; gradients clipped at global norm 1.0;
* seeds for Python, NumPy and torch, and a seeded shuffle, so a run repeats.

Baselines measured beside it (same data, same run): the majority class of the training labels,
and a bag-of-words (TF-IDF uni+bigram, or character n-gram for Chinese) logistic regression
from scikit-learn; plus the frozen encoder's mean-pooled features with a logistic regression
("linear probe"), which isolates what fine-tuning adds.

The loop is deliberately small and self-contained (no dependence on ``moorelab.train``).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from moorelab.errors import MoorelabError


# ----------------------------------------------------------------------------- basics


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over real tokens (Sentence-BERT pooling).

    Args:
        hidden: ``FloatTensor[B, T, D]``.
        attention_mask: ``[B, T]``, 1 = real token, 0 = padding.

    Returns:
        ``FloatTensor[B, D]``; a row with no real token gives zeros (the count is clamped to 1).
    """
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 128) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens, truncated to ``max_length``.

    Truncation keeps the first ``max_length - 1`` ids and puts the final special token back
    (``[CLS] ... [SEP]`` for BERT), as Hugging Face truncation does.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (padding/truncation off, as ``load_pretrained``
            returns it).
        texts: N strings.
        max_length: tokens per text, >= 2.

    Returns:
        N lists of ids, each of length <= ``max_length``.
    """
    if max_length < 2:
        raise MoorelabError(f"max_length must be >= 2, got {max_length}")
    out = []
    for enc in tokenizer.encode_batch(list(texts)):
        ids = enc.ids
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + ids[-1:]
        out.append(ids)
    return out


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to one tensor.

    Returns:
        ``(input_ids LongTensor[B, T_max], attention_mask LongTensor[B, T_max])``.
    """
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def unk_rate(tokenizer, texts: Sequence[str], unk_token: str = "[UNK]") -> dict[str, float]:
    """How much of a text set a tokenizer cannot represent.

    Returns:
        dict with ``tokens`` (non-special tokens), ``unk_tokens``, ``unk_rate`` (fraction of
        tokens that are ``unk_token``) and ``chars_per_token`` (characters / tokens).
    """
    unk_id = tokenizer.token_to_id(unk_token)
    special = {tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")} - {None}
    n_tok = n_unk = n_chars = 0
    for text, enc in zip(texts, tokenizer.encode_batch(list(texts))):
        ids = [i for i in enc.ids if i not in special]
        n_tok += len(ids)
        n_unk += sum(1 for i in ids if i == unk_id)
        n_chars += len(text)
    return {"tokens": n_tok, "unk_tokens": n_unk, "unk_rate": n_unk / max(n_tok, 1),
            "chars_per_token": n_chars / max(n_tok, 1)}


# ------------------------------------------------------------------------------ model


class SequenceClassifier(nn.Module):
    """Encoder + mean pooling + dropout + linear head.

    ``forward(input_ids LongTensor[B, T], attention_mask LongTensor[B, T]) -> logits [B, n_classes]``.
    The encoder is any module called as ``encoder(input_ids, attention_mask=..., return_hidden=True)``
    returning ``[B, T, d_model]`` (``moorelab.model.Transformer``).
    """

    def __init__(self, encoder: nn.Module, d_model: int, n_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled sentence vectors ``[B, d_model]``."""
        hidden = self.encoder(input_ids, attention_mask=attention_mask, return_hidden=True)
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on weight matrices and embeddings, none on biases and
    normalisation weights (parameters with ``ndim < 2``), as in BERT's optimizer.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based, the step about to be
    taken): ``(step+1)/warmup_steps`` during warmup, then linear decay reaching 0 after
    ``total_steps`` steps. Steps are optimizer steps, not examples or micro-batches."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# ----------------------------------------------------------------------------- config


@dataclass
class FinetuneConfig:
    """Fine-tuning settings.

    Attributes:
        epochs: passes over the training set (may be fractional via ``max_steps``).
        batch_size: examples per optimizer step.
        lr: peak learning rate (encoder and head).
        weight_decay: AdamW decay on weight matrices (0 on biases / norms).
        warmup_ratio: warmup optimizer steps as a fraction of all optimizer steps.
        max_length: tokens per example (truncation).
        max_steps: stop after this many optimizer steps (None = ``epochs`` full passes).
        dropout: before the head.
        grad_clip: global-norm clip (None = off).
        seed: for the head init, dropout and the shuffle.
        eval_batch_size: batch size for prediction.
    """

    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 128
    max_steps: int | None = None
    dropout: float = 0.1
    grad_clip: float | None = 1.0
    seed: int = 0
    eval_batch_size: int = 64


@dataclass
class FinetuneResult:
    """What a fine-tuning run did.

    Attributes:
        model: the fine-tuned :class:`SequenceClassifier` (eval mode).
        losses: training cross-entropy (nats) of each optimizer step.
        lrs: learning rate used at each optimizer step.
        steps: optimizer steps taken; warmup_steps: of which warmup.
        train_seconds: wall time of the loop, seconds.
        examples_seen: training examples processed.
    """

    model: SequenceClassifier
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    steps: int = 0
    warmup_steps: int = 0
    train_seconds: float = 0.0
    examples_seen: int = 0


def _batches_by_length(token_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (less padding), in original-length order."""
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def predict_logits(classifier: SequenceClassifier, token_ids: list[list[int]], batch_size: int = 64,
                   pad_id: int = 0) -> torch.Tensor:
    """Class logits ``[N, n_classes]`` for tokenized texts (eval mode, no grad)."""
    was_training = classifier.training
    classifier.eval()
    out = torch.empty(len(token_ids), classifier.head.out_features)
    for idx in _batches_by_length(token_ids, batch_size):
        ids, mask = pad_batch([token_ids[i] for i in idx], pad_id)
        out[idx] = classifier(ids, mask).float()
    classifier.train(was_training)
    return out


@torch.no_grad()
def encode_features(encoder: nn.Module, token_ids: list[list[int]], batch_size: int = 64, pad_id: int = 0,
                    progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Frozen-encoder sentence vectors (mean pooling) ``float32 [N, d_model]``."""
    was_training = encoder.training
    encoder.eval()
    feats = None
    batches = _batches_by_length(token_ids, batch_size)
    for b, idx in enumerate(batches):
        ids, mask = pad_batch([token_ids[i] for i in idx], pad_id)
        v = mean_pool(encoder(ids, attention_mask=mask, return_hidden=True), mask).float().numpy()
        if feats is None:
            feats = np.zeros((len(token_ids), v.shape[1]), dtype=np.float32)
        feats[idx] = v
        if progress and (b + 1) % 20 == 0:
            progress(f"features {b + 1}/{len(batches)} batches")
    encoder.train(was_training)
    return feats


def accuracy(pred: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Fraction of ``pred == labels`` (both int arrays ``[N]``)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.size == 0:
        raise MoorelabError(f"accuracy: predictions {pred.shape} and labels {labels.shape} differ or are empty")
    return float((pred == labels).mean())


def finetune(encoder: nn.Module, d_model: int, token_ids: list[list[int]], labels: np.ndarray,
             config: FinetuneConfig = FinetuneConfig(), n_classes: int = 2, pad_id: int = 0,
             progress: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune ``encoder`` with a new mean-pool classification head, all weights trained.

    Args:
        encoder: the pretrained encoder (modified in place; pass a copy to keep the original).
        d_model: width of its hidden states.
        token_ids: N tokenized training texts (see :func:`tokenize`).
        labels: int array ``[N]`` in ``[0, n_classes)``.
        config: :class:`FinetuneConfig`.
        n_classes: number of classes.
        pad_id: padding token id.
        progress: optional callback, called every 10 optimizer steps with a status line.

    Returns:
        :class:`FinetuneResult` with the trained classifier (eval mode) and per-step losses.

    Raises:
        MoorelabError: empty data, mismatched lengths, or labels out of range.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(token_ids) == 0 or len(token_ids) != len(labels):
        raise MoorelabError(f"finetune: {len(token_ids)} texts and {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise MoorelabError(f"finetune: labels must be in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
    set_seed(config.seed)
    model = SequenceClassifier(encoder, d_model, n_classes, config.dropout)
    model.train()
    steps_per_epoch = math.ceil(len(token_ids) / config.batch_size)
    total = math.ceil(steps_per_epoch * config.epochs)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = int(round(config.warmup_ratio * total))
    opt = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    rng = np.random.default_rng(config.seed)
    y_all = torch.from_numpy(labels)
    result = FinetuneResult(model=model, warmup_steps=warmup)
    t0 = time.perf_counter()
    step = 0
    while step < total:
        order = rng.permutation(len(token_ids))
        for start in range(0, len(order), config.batch_size):
            if step >= total:
                break
            idx = order[start : start + config.batch_size]
            ids, mask = pad_batch([token_ids[i] for i in idx], pad_id)
            lr = config.lr * warmup_linear(step, warmup, total)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = nn.functional.cross_entropy(model(ids, mask), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            result.losses.append(float(loss.detach()))
            result.lrs.append(lr)
            result.examples_seen += len(idx)
            step += 1
            if progress and (step % 10 == 0 or step == total):
                recent = result.losses[-10:]
                progress(f"step {step}/{total} loss {sum(recent) / len(recent):.4f} lr {lr:.2e} "
                         f"{time.perf_counter() - t0:.0f}s")
    result.steps = step
    result.train_seconds = time.perf_counter() - t0
    model.eval()
    return result


# ------------------------------------------------------------------------- baselines


def majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy on ``test_labels`` of always predicting the most frequent training label
    (ties -> the smaller label index)."""
    train_labels = np.asarray(train_labels)
    majority = int(np.bincount(train_labels).argmax())
    return accuracy(np.full(len(test_labels), majority), test_labels)


def bow_logistic_regression(train_texts: Sequence[str], train_labels: np.ndarray, test_texts: Sequence[str],
                            analyzer: str = "word", ngram_range: tuple[int, int] = (1, 2), C: float = 10.0,
                            min_df: int = 2) -> np.ndarray:
    """Bag-of-words baseline: TF-IDF (sublinear tf) n-grams + L2 logistic regression
    (scikit-learn ``TfidfVectorizer`` + ``LogisticRegression(solver="liblinear")``).

    Args:
        analyzer: ``"word"`` (lower-cased word n-grams; English) or ``"char"`` (character
            n-grams; Chinese, which has no spaces).
        ngram_range, C, min_df: as in scikit-learn.

    Returns:
        predicted labels ``int64 [N_test]``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, min_df=min_df, sublinear_tf=True)
    x_train = vec.fit_transform(list(train_texts))
    clf = LogisticRegression(C=C, max_iter=2000, solver="liblinear")
    clf.fit(x_train, np.asarray(train_labels))
    return clf.predict(vec.transform(list(test_texts))).astype(np.int64)


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 Cs: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), folds: int = 5,
                 seed: int = 0) -> np.ndarray:
    """Logistic regression on frozen features ``[N, D]`` ("linear probe"): features
    standardised with the training mean/std, L2 penalty strength chosen by ``folds``-fold
    stratified cross-validation on the training set only (scikit-learn
    ``LogisticRegressionCV``), then refit on all training rows.

    Returns:
        predicted labels ``int64 [N_test]``.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(Cs), cv=cv, max_iter=5000))
    with warnings.catch_warnings():  # scikit-learn 1.8 announces future defaults; results unchanged
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(np.asarray(train_features), np.asarray(train_labels))
    return clf.predict(np.asarray(test_features)).astype(np.int64)
