"""Batched decode with ragged lengths equals decoding each sequence alone; the curve's fields."""

import pytest
import torch

from moorelab.measure.batched import batched_greedy, measure_batched_decode, ragged_prompts
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer


def tiny():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=60, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                            max_position_embeddings=128)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


def test_batched_decode_equals_per_sequence_decode():
    m = tiny()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 60, (n,), generator=g).tolist() for n in (3, 11, 7, 1)]
    gen, logits = batched_greedy(m, prompts, 6, return_logits=True)
    assert gen.shape == (4, 6) and logits.shape == (4, 6, 60)
    for b, p in enumerate(prompts):
        alone, alone_logits = batched_greedy(m, [p], 6, return_logits=True)
        assert torch.equal(gen[b], alone[0])
        assert (logits[b] - alone_logits[0]).abs().max().item() < 1e-4
    # the same without any cache: the full sequence through the reference forward
    full = torch.tensor([prompts[1] + gen[1].tolist()])
    with torch.no_grad():
        ref = m(full)[0, len(prompts[1]) - 1:-1].argmax(-1)
    assert torch.equal(ref, gen[1])


def test_ragged_prompts_come_from_the_text_with_their_lengths():
    ids = list(range(1000))
    ps = ragged_prompts(ids, 4, 10, spread=16)
    assert [len(p) for p in ps] == [10, 10 + 37 % 17, 10 + 74 % 17, 10 + 111 % 17]
    assert ps[1][0] == ps[0][-1] + 1
    with pytest.raises(ValueError):
        ragged_prompts(ids[:5], 1, 10)


def test_measure_batched_decode_reports_every_batch_size():
    rows = measure_batched_decode(tiny(), list(range(3, 60)) * 4, (1, 3), new_tokens=3, prompt_len=5, spread=4,
                                  rounds=2, usd_per_hour=0.36)
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        tps = r["decode_tokens_per_s"]["value"]
        assert tps > 0 and r["usd_per_million_tokens"]["value"] == pytest.approx(0.36 / 3600 / tps * 1e6)
        assert r["per_sequence_tokens_per_s"]["value"] == pytest.approx(tps / r["batch"])
        assert 0 < r["cpu_share"] <= 1.0 + 1e-9
    # ragged prompts (left padding) of 3 rows decode in the fused call, as one row does
    assert rows[0]["path"] == rows[1]["path"] == "fused" and len(rows[1]["prompt_lengths"]) == 3
    with pytest.raises(ValueError):
        measure_batched_decode(tiny(), [1, 2, 3], [0])
