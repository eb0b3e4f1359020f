"""Fine-tuning a classification head on an encoder: pooling, schedule and optimizer grouping
golden values, a tiny random BERT that learns a separable task, and the real MiniLM on a small
slice of the Amazon reviews.

Real-weight tests are marked slow; those needing the fetched reviews skip without them (fail
when env CI is set). Whole file: about 20 s on 2 idle cores (measured ~1 min with the machine
shared by other jobs).
"""

import copy
import os

import numpy as np
import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.improve import finetune as ft
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer

torch.set_num_threads(1)  # 2 OpenMP threads crawl when the 2 cores are shared


def tiny_bert(vocab: int = 20) -> Transformer:
    cfg = TransformerConfig(family="bert", vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                            max_position_embeddings=32, norm="layernorm", norm_eps=1e-12, norm_position="post",
                            activation="gelu", position="learned", attn_bias=True, mlp_bias=True,
                            tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(0)
    return Transformer(cfg)


# ------------------------------------------------------------------------ golden math


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                      [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    m = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(ft.mean_pool(h, m), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))
    assert torch.equal(ft.mean_pool(h[:1], torch.zeros(1, 3)), torch.zeros(1, 2))  # no real token


def test_pad_batch():
    ids, mask = ft.pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_warmup_linear_counts_optimizer_steps():
    # 10 optimizer steps, 2 of warmup: 0.5, 1.0, then (10 - s) / 8 for s = 2..9.
    got = [ft.warmup_linear(s, 2, 10) for s in range(10)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert ft.warmup_linear(0, 0, 4) == 1.0


def test_param_groups_no_decay_on_biases_and_norms():
    model = ft.SequenceClassifier(tiny_bert(), 32)
    decay, no_decay = ft.param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert "encoder.embed.weight" in decayed and "head.weight" in decayed
    assert "encoder.blocks.0.attn.q_proj.weight" in decayed
    assert "head.bias" in kept and "encoder.blocks.0.attn.q_proj.bias" in kept
    assert "encoder.embed_norm.weight" in kept and "encoder.blocks.1.ffn_norm.weight" in kept
    assert not any("bias" in n or "norm" in n for n in decayed)
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_baselines_golden():
    assert ft.majority_baseline(np.array([1, 1, 0]), np.array([1, 0, 0, 1])) == 0.5
    assert ft.majority_baseline(np.array([0, 1]), np.array([0, 0, 1])) == pytest.approx(2 / 3)  # tie -> 0
    texts = ["good good great", "great tasty good", "bad awful", "awful bad gross", "good tasty", "gross bad"]
    labels = np.array([1, 1, 0, 0, 1, 0])
    pred = ft.bow_logistic_regression(texts, labels, ["so good", "so awful", "很好吃", "很难吃"], min_df=1)
    assert pred[:2].tolist() == [1, 0]
    cpred = ft.bow_logistic_regression(["很好吃", "好吃好吃", "难吃", "太难吃"], np.array([1, 1, 0, 0]),
                                       ["真好吃", "真难吃"], analyzer="char", ngram_range=(1, 2), min_df=1)
    assert cpred.tolist() == [1, 0]
    with pytest.raises(MoorelabError):
        ft.accuracy(np.array([1, 0]), np.array([1]))


# ------------------------------------------------------------------- tiny random BERT


def separable_task(n: int = 64, seed: int = 0):
    """Label 1 iff token 3 occurs; other tokens 4..19 are noise; lengths 4..10."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        length = int(rng.integers(4, 11))
        body = rng.integers(4, 20, size=length).tolist()
        y = i % 2
        if y:
            body[int(rng.integers(0, length))] = 3
        seqs.append([1] + body + [2])
        labels.append(y)
    return seqs, np.array(labels)


def test_finetune_learns_and_repeats_with_the_seed():
    seqs, labels = separable_task()
    cfg = ft.FinetuneConfig(epochs=12, batch_size=16, lr=3e-3, warmup_ratio=0.1, seed=0, dropout=0.0)
    res = ft.finetune(tiny_bert(), 32, seqs, labels, cfg)
    assert res.steps == 48 and res.warmup_steps == 5
    assert res.lrs[0] == pytest.approx(3e-3 / 5) and res.lrs[4] == pytest.approx(3e-3)
    assert np.mean(res.losses[-4:]) < 0.5 * np.mean(res.losses[:4])
    acc = ft.accuracy(ft.predict_logits(res.model, seqs).argmax(-1).numpy(), labels)
    assert acc >= 0.9
    again = ft.finetune(tiny_bert(), 32, seqs, labels, cfg)
    assert again.losses == pytest.approx(res.losses, rel=1e-5)


def test_finetune_max_steps_and_errors():
    seqs, labels = separable_task(20)
    res = ft.finetune(tiny_bert(), 32, seqs, labels, ft.FinetuneConfig(epochs=5, batch_size=8, max_steps=4))
    assert res.steps == 4 and res.examples_seen == 8 + 8 + 4 + 8 and len(res.losses) == 4  # 20 = 8+8+4 per epoch
    with pytest.raises(MoorelabError, match="labels must be in"):
        ft.finetune(tiny_bert(), 32, seqs, labels + 5, ft.FinetuneConfig(max_steps=1))
    with pytest.raises(MoorelabError, match="3 texts and 2 labels"):
        ft.finetune(tiny_bert(), 32, seqs[:3], labels[:2])


def test_features_are_padding_invariant():
    enc = tiny_bert().eval()
    seqs = [[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 10, 11, 2]]
    batched = ft.encode_features(enc, seqs, batch_size=3)
    alone = np.concatenate([ft.encode_features(enc, [s]) for s in seqs])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


# --------------------------------------------------------------- real MiniLM, real data


@pytest.fixture(scope="module")
def minilm():
    from moorelab.model.zoo import load_pretrained

    try:
        return load_pretrained("minilm-l6")
    except MoorelabError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def amazon():
    from moorelab.measure import datasets as ds

    if not ds.is_available(ds.AMAZON):
        msg = f"Amazon reviews not fetched into {ds.dataset_dir(ds.AMAZON)}; run `python -m moorelab.measure.datasets fetch amazon-reviews`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return ds.load_amazon_reviews()


def balanced(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.where(labels == c)[0], n // 2, replace=False) for c in (0, 1)]))


@pytest.mark.slow
def test_minilm_tokenize_truncates_keeping_sep(minilm):
    ids = ft.tokenize(minilm.tokenizer, ["great " * 50, "Great food!"], max_length=16)
    assert len(ids[0]) == 16 and ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP]
    assert ids[1] == [101, 2307, 2833, 999, 102]
    rate = ft.unk_rate(minilm.tokenizer, ["质量很好，物流也快", "good"])
    assert rate["tokens"] == 10 and 0.0 <= rate["unk_rate"] <= 1.0


@pytest.mark.slow
def test_minilm_linear_probe_beats_majority_on_balanced_slice(minilm):
    """Frozen MiniLM mean-pooled features (48 tokens) + cross-validated logistic regression,
    384 balanced training reviews, 256 balanced test reviews; majority class = 0.50.

    Measured over 20 random draws of this size (from balanced pools of 600 train / 400 test
    reviews): 0.566-0.715, median 0.66. This draw: 0.684; we ask for >= 0.58,
    a margin of 8 points over the majority class. (With the natural 65 % "great" prior the
    probe needs ~500 reviews to beat the majority class: 0.73 vs 0.69 at 512; on the full
    4,000 / 1,000 split it gives 0.784 vs 0.658, benchmarks/bench_finetune.py.)"""
    data = amazon()
    tr, te = balanced(data.train.labels, 384, 0), balanced(data.test.labels, 256, 99)
    f_tr = ft.encode_features(minilm.model, ft.tokenize(minilm.tokenizer, [data.train.texts[i] for i in tr], 48))
    f_te = ft.encode_features(minilm.model, ft.tokenize(minilm.tokenizer, [data.test.texts[i] for i in te], 48))
    acc = ft.accuracy(ft.linear_probe(f_tr, data.train.labels[tr], f_te), data.test.labels[te])
    assert ft.majority_baseline(data.train.labels[tr], data.test.labels[te]) == 0.5
    assert acc >= 0.58, acc


@pytest.mark.slow
def test_minilm_finetune_lowers_loss_on_its_batch(minilm):
    """A few full fine-tuning steps on 16 reviews lower their cross-entropy (eval mode)."""
    data = amazon()
    idx = balanced(data.train.labels, 16, 1)
    ids = ft.tokenize(minilm.tokenizer, [data.train.texts[i] for i in idx], 48)
    y = torch.from_numpy(data.train.labels[idx])
    cfg = ft.FinetuneConfig(epochs=4, batch_size=16, lr=1e-4, warmup_ratio=0.0, seed=0)
    ft.set_seed(cfg.seed)  # finetune() seeds, then builds the head: the same initial classifier
    initial = ft.SequenceClassifier(copy.deepcopy(minilm.model), minilm.config.d_model, 2, cfg.dropout)
    before = torch.nn.functional.cross_entropy(ft.predict_logits(initial, ids), y).item()
    encoder = copy.deepcopy(minilm.model)
    res = ft.finetune(encoder, minilm.config.d_model, ids, data.train.labels[idx], cfg)
    after = torch.nn.functional.cross_entropy(ft.predict_logits(res.model, ids), y).item()
    assert res.steps == 4
    assert after < before - 0.05, (before, after)
    # the original encoder is untouched (the copy was trained)
    assert not torch.equal(encoder.blocks[0].attn.q_proj.weight, minilm.model.blocks[0].attn.q_proj.weight)
