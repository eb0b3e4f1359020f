"""Real SmolLM2-135M weights (GGUF -> our Transformer): sanity, cache, parity with transformers."""

from __future__ import annotations

import pytest
import torch

from moorelab.model.generate import generate

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


def test_greedy_continuation_is_rome(smollm2):
    ids = smollm2.tokenizer.encode(PROMPT).ids
    out = generate(smollm2.model, torch.tensor([ids]), max_new_tokens=3)
    text = smollm2.tokenizer.decode(out[0, len(ids):].tolist())
    assert text.startswith(" Rome."), text


def test_loaded_model_fields(smollm2):
    cfg = smollm2.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == (30, 576, 9, 3, 64, 1536)
    assert cfg.rope_theta == 100000.0 and cfg.norm_eps == 1e-5 and cfg.tie_word_embeddings
    assert smollm2.model.num_parameters() == 134_515_008
    assert smollm2.model.lm_head.weight is smollm2.model.embed.weight
    assert (smollm2.hf_dir / "model.safetensors").is_file() and (smollm2.hf_dir / "tokenizer.json").is_file()
    assert smollm2.eos_token_id == 2 and smollm2.bos_token_id == 1
    assert not smollm2.model.training


def test_second_load_reuses_converted_cache(smollm2):
    import json

    from moorelab.model.zoo import load_pretrained

    again = load_pretrained("smollm2-135m")
    assert again.cache_hit and again.hf_dir == smollm2.hf_dir
    assert json.loads((again.hf_dir / "moorelab.json").read_text())["source"].endswith(".gguf")
    assert not list(again.hf_dir.parent.glob(".smollm2-135m.*"))  # no temp dirs left behind
    ids = torch.tensor([smollm2.tokenizer.encode(PROMPT).ids])
    with torch.no_grad():
        assert torch.equal(again.model(ids), smollm2.model(ids))
