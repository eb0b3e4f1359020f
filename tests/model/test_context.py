"""Issue 11.4: inputs longer than a model's learned positions give one clear error, not an IndexError."""

from __future__ import annotations

import pytest
import torch

from moorelab.errors import ContextLengthError, MoorelabError
from moorelab.measure.quality import score_text
from moorelab.model.generate import generate
from moorelab.model.load_hf import load_hf_folder
from moorelab.model.transformer import KVCache
from model_helpers import tiny_hf


@pytest.fixture()
def gpt2(tmp_path):
    tiny_hf("gpt2", tmp_path)  # n_positions = 64
    return load_hf_folder(tmp_path)


def test_forward_past_the_learned_positions(gpt2):
    ids = torch.zeros(1, 65, dtype=torch.long)
    with pytest.raises(ContextLengthError, match=r"reaches position 64 .* 64 learned positions .*max_position_embeddings=64"):
        gpt2(ids)
    assert isinstance(ContextLengthError("x"), MoorelabError)  # the CLI prints it as one line
    assert gpt2(ids[:, :64]).shape == (1, 64, 101)  # exactly the context is fine


def test_cached_decoding_past_the_context(gpt2):
    cache = KVCache()
    with torch.no_grad():
        gpt2(torch.zeros(1, 63, dtype=torch.long), cache=cache)
        gpt2(torch.zeros(1, 1, dtype=torch.long), cache=cache)  # position 63: the last one
        with pytest.raises(ContextLengthError, match="reaches position 64"):
            gpt2(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_generate_refuses_before_any_step(gpt2):
    steps = []
    with pytest.raises(ContextLengthError, match=r"prompt of 60 tokens \+ max_new_tokens=5 exceeds .* 64 learned positions"):
        generate(gpt2, torch.zeros(1, 60, dtype=torch.long), max_new_tokens=5, on_token=steps.append)
    assert steps == []
    # left padding does not count: 2 pad + 58 real tokens + 6 new = 64 positions
    mask = torch.ones(1, 60, dtype=torch.long)
    mask[0, :2] = 0
    assert generate(gpt2, torch.zeros(1, 60, dtype=torch.long), attention_mask=mask, max_new_tokens=6).shape == (1, 66)


def test_rope_models_are_not_limited(tmp_path):
    tiny_hf("llama", tmp_path)  # max_position_embeddings = 128, RoPE: positions are computed
    m = load_hf_folder(tmp_path)
    assert torch.isfinite(m(torch.zeros(1, 130, dtype=torch.long))).all()


def test_scoring_window_capped_at_the_context(gpt2):
    ids = torch.randint(0, 101, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        r = score_text(lambda x: gpt2(x), ids, n_bytes=300, window=100, bos_policy="first", bos_token_id=0,
                       context=gpt2.config.max_position_embeddings)
        assert (r.window, r.window_requested, r.tokens_scored) == (64, 100, 150)
        with pytest.raises(ContextLengthError):
            score_text(lambda x: gpt2(x), ids, n_bytes=300, window=100, bos_policy="first", bos_token_id=0)
