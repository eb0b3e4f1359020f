"""The model switches the training-recipe ladder needs: post-norm decoder, sinusoidal positions,
ReLU FFN, QK-norm; each against a hand-built computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from moorelab.errors import ModelLoadError
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer, sinusoidal_positions


def _cfg(**kw):
    base = dict(family="gpt2", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                max_position_embeddings=32, norm="layernorm", norm_position="pre", activation="gelu_tanh",
                position="learned", attn_bias=True, mlp_bias=True)
    base.update(kw)
    return TransformerConfig(**base)


def _causal_attention(q, k, v):
    """softmax(q·kᵀ/√d + causal)·v for [H, T, d] tensors, spelled out."""
    T, d = q.shape[1], q.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, -1) @ v


def _heads(x, H):
    T, D = x.shape
    return x.view(T, H, D // H).transpose(0, 1)


def test_sinusoidal_table_golden_values():
    pe = sinusoidal_positions(torch.tensor([0, 1, 2]), 4)
    assert pe.shape == (3, 4)
    # PE[p, 2i] = sin(p / 10000^(2i/4)), PE[p, 2i+1] = cos(...): frequencies 1 and 1/100
    expect = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                           [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                           [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]])
    torch.testing.assert_close(pe, expect, atol=1e-6, rtol=0)
    assert sinusoidal_positions(torch.tensor([3]), 5).shape == (1, 5)  # odd width: last cosine dropped


def test_post_norm_relu_sinusoidal_decoder_equals_hand_built_block():
    torch.manual_seed(0)
    c = _cfg(norm_position="post", activation="relu", position="sinusoidal", scale_embeddings=True)
    m = Transformer(c).eval()
    assert m.pos_embed is None and m.final_norm is None
    ids = torch.tensor([[3, 7, 1, 9, 4]])
    blk = m.blocks[0]
    a = blk.attn
    x = m.embed.weight[ids[0]] * 4.0 + sinusoidal_positions(torch.arange(5), 16)  # sqrt(16) = 4
    q, k, v = (_heads(F.linear(x, p.weight, p.bias), 2) for p in (a.q_proj, a.k_proj, a.v_proj))
    att = _causal_attention(q, k, v).transpose(0, 1).reshape(5, 16)
    x = F.layer_norm(x + F.linear(att, a.o_proj.weight, a.o_proj.bias), (16,), blk.attn_norm.weight, blk.attn_norm.bias, 1e-5)
    f = blk.ffn
    h = torch.relu(F.linear(x, f.up_proj.weight, f.up_proj.bias))
    x = F.layer_norm(x + F.linear(h, f.down_proj.weight, f.down_proj.bias), (16,), blk.ffn_norm.weight, blk.ffn_norm.bias, 1e-5)
    logits = x @ m.embed.weight.T  # the tied output layer: the unscaled table
    with torch.no_grad():
        torch.testing.assert_close(m(ids)[0], logits, atol=1e-5, rtol=1e-5)


def test_qk_norm_normalises_each_head_before_attention():
    torch.manual_seed(1)
    c = _cfg(family="llama", norm="rmsnorm", activation="swiglu", position="rope", attn_bias=False,
             mlp_bias=False, qk_norm=True)
    m = Transformer(c).eval()
    a = m.blocks[0].attn
    assert a.q_norm.weight.shape == (8,) and a.k_norm.weight.shape == (8,)
    with torch.no_grad():
        a.q_norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
        a.k_norm.weight.fill_(3.0)
        x = 20 * torch.randn(1, 4, 16)  # large enough that eps barely moves the RMS
        q = _heads(a.q_proj(x[0]), 2)
        k = _heads(a.k_proj(x[0]), 2)
        v = _heads(a.v_proj(x[0]), 2)
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-5) * a.q_norm.weight
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-5) * 3.0
        # every key head now has RMS exactly 3 (before RoPE, which keeps the norm)
        torch.testing.assert_close(k.pow(2).mean(-1).sqrt(), torch.full((2, 4), 3.0), atol=1e-3, rtol=0)
        cos, sin = m.rope_tables(4, x.device)
        from moorelab.model.transformer import apply_rope

        q, k = apply_rope(q, cos[:4], sin[:4]), apply_rope(k, cos[:4], sin[:4])
        expect = a.o_proj(_causal_attention(q, k, v).transpose(0, 1).reshape(4, 16))
        got = a(x, (cos[:4][None, None], sin[:4][None, None]), is_causal=True)
        torch.testing.assert_close(got[0], expect, atol=1e-5, rtol=1e-5)
        # without QK-norm the same weights give another result: the switch is live
        plain = Transformer(TransformerConfig(**{**c.to_dict(), "qk_norm": False})).eval()
        assert plain.blocks[0].attn.q_norm is None


def test_new_switches_are_refused_where_they_cannot_go():
    from moorelab.model.fused_decode import why_not_fused

    c = _cfg(family="llama", norm="rmsnorm", activation="swiglu", position="rope", attn_bias=False,
             mlp_bias=False, qk_norm=True)
    assert "QK-norm" in why_not_fused(Transformer(c))
    with pytest.raises(ModelLoadError, match="qk_norm"):
        c.to_hf_dict()
    with pytest.raises(ModelLoadError, match="position"):
        _cfg(position="sinusoidal").to_hf_dict()
    with pytest.raises(ModelLoadError, match="position='bogus'"):
        _cfg(position="bogus")
