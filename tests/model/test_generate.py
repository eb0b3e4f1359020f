"""Decoding with the KV cache equals full recomputation; left-padded batches equal rows alone."""

from __future__ import annotations

import pytest
import torch

from moorelab.model.config import TransformerConfig
from moorelab.model.generate import generate, sample_next
from moorelab.model.transformer import KVCache, Transformer
from model_helpers import scramble

CONFIGS = {
    "llama": dict(family="llama", vocab_size=61, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=64,
                  max_position_embeddings=64, rope_theta=100.0),
    "gpt2": dict(family="gpt2", vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64, norm="layernorm",
                 activation="gelu_tanh", position="learned", attn_bias=True, mlp_bias=True,
                 max_position_embeddings=64),
}


def tiny(kind: str) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(**CONFIGS[kind])).eval()
    scramble(m, std=0.25)
    return m


def _prompt(B=1, T=7, seed=0):
    return torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cache_logits_equal_full_recomputation(kind):
    m = tiny(kind)
    ids = _prompt(2, 12)
    with torch.no_grad():
        full = m(ids)
        cache = KVCache(max_len=8)  # too small on purpose: the cache must grow
        parts = [m(ids[:, :5], cache=cache), m(ids[:, 5:6], cache=cache), m(ids[:, 6:12], cache=cache)]
        stepped = torch.cat(parts, dim=1)
    assert cache.length == 12
    assert (stepped - full).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_greedy_cached_equals_uncached(kind):
    m = tiny(kind)
    ids = _prompt(1, 5)
    a = generate(m, ids, max_new_tokens=20, use_cache=True)
    b = generate(m, ids, max_new_tokens=20, use_cache=False)
    assert a.shape == (1, 25) and torch.equal(a, b)
    assert len(set(a[0, 5:].tolist())) > 1  # not a degenerate repeat of one token


def test_sampling_cached_equals_uncached_and_is_seeded():
    m = tiny("llama")
    ids = _prompt(2, 6)
    kw = dict(max_new_tokens=15, temperature=0.8, top_k=20, top_p=0.9)
    a = generate(m, ids, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(m, ids, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    c = generate(m, ids, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_left_padded_batch_equals_rows_alone(kind):
    m = tiny(kind)
    rows = [_prompt(1, 9, seed=1)[0], _prompt(1, 4, seed=2)[0], _prompt(1, 6, seed=3)[0]]
    T = max(len(r) for r in rows)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = r
        mask[b, T - len(r):] = 1
    batch = generate(m, ids, attention_mask=mask, max_new_tokens=12)
    for b, r in enumerate(rows):
        alone = generate(m, r[None], max_new_tokens=12)
        assert torch.equal(batch[b, T:], alone[0, len(r):]), f"row {b}"


def test_eos_stops_and_fills():
    m = tiny("llama")
    ids = _prompt(1, 5)
    free = generate(m, ids, max_new_tokens=10)
    eos = int(free[0, 7])  # the third generated token
    out = generate(m, ids, max_new_tokens=10, eos_token_id=eos)
    assert out.shape[1] <= 8 and int(out[0, -1]) == eos


def test_sample_next_rules():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert sample_next(logits).tolist() == [1]  # greedy
    g = torch.Generator().manual_seed(0)
    assert {int(sample_next(logits, 1.0, top_k=1, generator=g)) for _ in range(20)} == {1}
    # probabilities: softmax([1,3,2,0]) = [.087, .644, .237, .032]; top_p=0.8 keeps {1, 2}
    picks = {int(sample_next(logits, 1.0, top_p=0.8, generator=g)) for _ in range(200)}
    assert picks == {1, 2}
    picks = {int(sample_next(logits, 1.0, top_p=0.5, generator=g)) for _ in range(50)}
    assert picks == {1}


def test_fully_masked_rows_give_no_nan():
    m = tiny("llama")
    ids = _prompt(2, 6)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        for impl in ("sdpa", "eager"):
            m.attention_impl = impl
            assert torch.isfinite(m(ids, attention_mask=mask)).all()
    from moorelab.model.transformer import attention_eager

    q = torch.randn(1, 2, 3, 4)
    out = attention_eager(q, q, q, mask=torch.zeros(1, 1, 3, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))


def test_top_p_samples_the_renormalised_nucleus():
    """softmax([1, 3, 2, 0]) = [0.0871, 0.6439, 0.2369, 0.0321]; top_p=0.8 keeps tokens 1 and 2
    (0.6439 < 0.8 <= 0.6439 + 0.2369) and samples them as 0.6439/0.8808 = 0.731 and 0.269."""
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    g = torch.Generator().manual_seed(1)
    picks = torch.stack([sample_next(logits, 1.0, top_p=0.8, generator=g) for _ in range(4000)]).flatten()
    share1 = float((picks == 1).float().mean())
    assert set(picks.tolist()) == {1, 2}
    assert abs(share1 - 0.731) < 0.025  # 3.5 standard errors (sqrt(.731 * .269 / 4000) = 0.007)
    # temperature 2 flattens: softmax([.5, 1.5, 1, 0]) = [.140, .381, .231, .085] ... top_p=0.5 keeps {1, 2}
    picks = {int(sample_next(logits, 2.0, top_p=0.5, generator=g)) for _ in range(300)}
    assert picks == {1, 2}


def test_timings_are_one_pair_per_step():
    m = tiny("llama")
    timings = []
    out = generate(m, _prompt(1, 5), max_new_tokens=6, timings=timings)
    assert out.shape == (1, 11) and len(timings) == 6
    assert all(b >= a for a, b in timings) and all(timings[i][1] <= timings[i + 1][0] for i in range(5))


@pytest.mark.slow
def test_generate_text_on_smollm2_continues_with_rome(smollm2):
    from moorelab.model.generate import generate_text, prompt_ids

    res = generate_text(smollm2, "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
                        max_new_tokens=4)
    assert res.text.startswith(" Rome."), res.text
    assert res.stop == "max_new_tokens" and len(res.new_ids) == 4 and res.prefill_tokens_per_s > 0
    ids, text = prompt_ids(smollm2, "Hi", chat=True)  # SmolLM2's own template (converted from its GGUF)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|> and <|im_end|> as single special tokens
