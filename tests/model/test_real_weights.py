"""Real checkpoints against transformers: MiniLM (1e-4 on last hidden state), SmolLM2 (1e-3 on logits)."""

from __future__ import annotations

import pytest
import torch

from moorelab.model.generate import generate
from moorelab.model.parity import max_logit_diff_vs_transformers

pytestmark = pytest.mark.slow

TEXT = (
    "Moore's law is the observation that the number of transistors in an integrated circuit doubles "
    "about every two years. Language models have their own version: the compute used to train the "
    "largest models has grown far faster, while algorithmic progress lets a fixed budget reach a "
    "lower perplexity each year. This project measures both, on one laptop, with real checkpoints."
)


def test_minilm_last_hidden_state_padded_batch(minilm):
    import transformers

    ref = transformers.AutoModel.from_pretrained(str(minilm.hf_dir), dtype=torch.float32).eval()
    cfg = minilm.config
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.activation, cfg.norm_eps) == ("bert", 6, 384, 12, "gelu", 1e-12)
    texts = ["A man is playing a guitar.", "Attention is all you need, said the paper in 2017."]
    encs = [minilm.tokenizer.encode(t).ids for t in texts]
    T = max(map(len, encs))
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, e in enumerate(encs):
        ids[b, : len(e)] = torch.tensor(e)
        mask[b, : len(e)] = 1
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask).last_hidden_state
        ours = minilm.model(ids, attention_mask=mask)
    diff = (ours - theirs)[mask.bool()].abs().max().item()
    assert diff < 1e-4, diff
    assert max_logit_diff_vs_transformers(minilm, texts[1]) < 1e-4


def test_smollm2_logits_64_tokens(smollm2):
    ids = smollm2.tokenizer.encode(TEXT).ids
    assert len(ids) >= 64
    text64 = smollm2.tokenizer.decode(ids[:64])
    assert len(smollm2.tokenizer.encode(text64).ids) == 64
    diff = max_logit_diff_vs_transformers(smollm2, text64)
    assert diff < 1e-3, diff


def test_smollm2_eager_equals_sdpa(smollm2):
    ids = torch.tensor([smollm2.tokenizer.encode(TEXT).ids[:24]])
    m = smollm2.model
    with torch.no_grad():
        a = m(ids)
        m.attention_impl = "eager"
        try:
            b = m(ids)
        finally:
            m.attention_impl = "sdpa"
    assert (a - b).abs().max() < 1e-3


def test_smollm2_left_padded_batch_and_cache(smollm2):
    tok = smollm2.tokenizer
    prompts = ["The capital of France is", "Once upon a time, in a small village by the sea, there"]
    rows = [tok.encode(p).ids for p in prompts]
    T = max(map(len, rows))
    ids = torch.full((2, T), smollm2.config.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = torch.tensor(r)
        mask[b, T - len(r):] = 1
    batch = generate(smollm2.model, ids, attention_mask=mask, max_new_tokens=4)
    for b, r in enumerate(rows):
        alone = generate(smollm2.model, torch.tensor([r]), max_new_tokens=4)
        assert batch[b, T:].tolist() == alone[0, len(r):].tolist()
    uncached = generate(smollm2.model, torch.tensor([rows[0]]), max_new_tokens=4, use_cache=False)
    assert uncached[0, len(rows[0]):].tolist() == batch[0, T:].tolist()


def test_smollm2_decode_steps_match_transformers(smollm2):
    """Decode path (one row per call: the fused decode when compiled) within 1e-3 of transformers."""
    import transformers

    from moorelab.model import decode
    from moorelab.model.transformer import KVCache

    ids = torch.tensor([smollm2.tokenizer.encode(TEXT).ids[:24]])
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2.hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = ref(ids).logits
        del ref
        cache = KVCache()
        ours = [smollm2.model(ids[:, :16], cache=cache)]
        ours += [decode.forward(smollm2.model, ids[:, t : t + 1], cache=cache) for t in range(16, 24)]  # 1-token steps
    diff = float((torch.cat(ours, dim=1) - theirs).abs().max())
    assert diff < 1e-3, diff
