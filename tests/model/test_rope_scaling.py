"""Issue 11.1: every config field that changes the math is read or refused.

RoPE scaling (linear, llama3) is read from Hugging Face folders and GGUF files and the logits
equal transformers' LlamaForCausalLM built with the same ``rope_parameters``; other scalings and
math-changing fields are refused with one line naming the field.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from moorelab.errors import ModelLoadError
from moorelab.model.load_gguf import load_gguf
from moorelab.model.load_hf import load_hf_folder
from model_helpers import tiny_hf
from test_gguf import write_tiny_gguf

LINEAR = {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0}
# head_dim 16, theta 500: wavelengths 6.3, 13.3, 28.1, 59.4, 126, 265, 561, 1186; with L = 256,
# low 1, high 16: two kept, three in the smoothed band, three divided by the factor.
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 16.0,
          "original_max_position_embeddings": 256, "rope_theta": 500.0}


# float32 rounding: on these scrambled weights (|logits| up to ~8.5, 60 positions) every float32
# path is ~3e-5 from the float64 logits, transformers' own included (3.1e-5); ours differ from
# transformers' by up to 1.0e-5 (the eager formula 0.96e-5, the compiled causal attention 1.02e-5;
# torch's fused attention, which transformers runs too, 0). A wrong scaling moves
# them by > 1e-2.
TOL = 3e-5


def _ids(T=60, B=2):
    # long enough that positions reach where the scalings differ (tens of positions)
    return torch.randint(0, 103, (B, T), generator=torch.Generator().manual_seed(5))


def _diff(ours, ref, ids):
    with torch.no_grad():
        return (ours(ids) - ref(ids).logits).abs().max().item()


@pytest.mark.parametrize("params", [LINEAR, LLAMA3], ids=["linear", "llama3"])
def test_hf_rope_scaling_matches_transformers(tmp_path, params):
    ref = tiny_hf("llama", tmp_path, head_dim=16, rope_parameters=dict(params), max_position_embeddings=512)
    assert ref.config.rope_parameters["rope_type"] == params["rope_type"]
    ours = load_hf_folder(tmp_path)
    assert ours.config.rope_scaling["rope_type"] == params["rope_type"]
    assert _diff(ours, ref, _ids()) < TOL
    # the scaling matters: the same weights with plain RoPE give other logits
    ours.config.rope_scaling = None
    ours._rope = None
    assert _diff(ours, ref, _ids()) > 1e-2


def test_legacy_rope_scaling_field_and_top_level_theta(tmp_path):
    ref = tiny_hf("llama", tmp_path, rope_parameters=dict(LINEAR))
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["rope_parameters"]
    cfg["rope_theta"] = 500.0
    cfg["rope_scaling"] = {"type": "linear", "factor": 4.0}  # transformers 4.x spelling
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = load_hf_folder(tmp_path)
    assert ours.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert _diff(ours, ref, _ids()) < TOL


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "longrope"])
def test_other_hf_scalings_refused(tmp_path, kind):
    tiny_hf("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": kind, "factor": 4.0, "rope_theta": 500.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=rf"config.json: field rope_scaling type '{kind}' is not supported"):
        load_hf_folder(tmp_path)


@pytest.mark.parametrize("field, value", [
    ("sliding_window", 16), ("final_logit_softcapping", 30.0), ("attn_logit_softcapping", 50.0),
    ("partial_rotary_factor", 0.5),
])
def test_math_changing_hf_fields_refused(tmp_path, field, value):
    tiny_hf("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=rf"config.json: field {field}"):
        load_hf_folder(tmp_path)


def test_neutral_values_of_those_fields_load(tmp_path):
    ref = tiny_hf("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(sliding_window=None, use_sliding_window=False, partial_rotary_factor=1.0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert _diff(load_hf_folder(tmp_path), ref, _ids(T=11)) < 1e-5


def test_llama3_missing_key_refused(tmp_path):
    tiny_hf("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {k: v for k, v in LLAMA3.items() if k != "high_freq_factor"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="llama3: key 'high_freq_factor' must be a positive number"):
        load_hf_folder(tmp_path)


# ----------------------------------------------------------------------------- GGUF
def _gguf_keys(**kv):
    def add(w):
        for key, value in kv.items():
            key = "llama." + key.replace("__", ".")
            if isinstance(value, str):
                w.add_string(key, value)
            else:
                w.add_float32(key, value)
    return add


def test_gguf_linear_scaling_matches_transformers(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf", rope_parameters=dict(LINEAR))
    write_tiny_gguf(tmp_path / "m.gguf", ref, extra=_gguf_keys(rope__scaling__type="linear", rope__scaling__factor=4.0))
    ours = load_gguf(tmp_path / "m.gguf")
    assert ours.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert ours.config.rope_scaling == load_hf_folder(tmp_path / "hf").config.rope_scaling  # both paths agree
    assert _diff(ours, ref, _ids()) < TOL


def test_gguf_older_scale_linear_key(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf", rope_parameters=dict(LINEAR))
    write_tiny_gguf(tmp_path / "m.gguf", ref, extra=_gguf_keys(rope__scale_linear=4.0))
    # TOL as its sibling above: 1.05e-5 on an AVX-512 Xeon (2026-12-03), over the 1e-5 this had
    assert _diff(load_gguf(tmp_path / "m.gguf"), ref, _ids()) < TOL


def test_gguf_without_scaling_keys_is_not_the_scaled_model(tmp_path):
    # what moorelab did before: the scaled model's weights read as unscaled give other logits
    ref = tiny_hf("llama", tmp_path / "hf", rope_parameters=dict(LINEAR))
    write_tiny_gguf(tmp_path / "m.gguf", ref)
    assert _diff(load_gguf(tmp_path / "m.gguf"), ref, _ids()) > 1e-2


def _llama_cpp_rope_freqs(head_dim, theta, factor, low, high, old_ctx):
    """The divisors llama.cpp's convert_hf_to_gguf.py writes for Llama 3.1 (LlamaModel.generate_extra_tensors)."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_gguf_llama3_rope_freqs_matches_transformers(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf", head_dim=16, rope_parameters=dict(LLAMA3), max_position_embeddings=512)
    freqs = _llama_cpp_rope_freqs(16, 500.0, 8.0, 1.0, 16.0, 256)
    assert ((freqs > 1) & (freqs < 8)).sum() == 3

    def extra(w):
        w.add_uint32("llama.attention.key_length", 16)
        w.add_uint32("llama.attention.value_length", 16)
        w.add_uint32("llama.rope.dimension_count", 16)
        w.add_tensor("rope_freqs.weight", freqs)

    write_tiny_gguf(tmp_path / "m.gguf", ref, extra=extra)
    ours = load_gguf(tmp_path / "m.gguf")
    assert ours.config.rope_scaling["rope_type"] == "llama3" and ours.config.head_dim == 16
    # the file stores the divisors rounded to float32 (as llama.cpp reads them): the recovered
    # frequencies equal transformers' to 1.2e-7 relative, which these scrambled layers (sharp
    # attention) turn into logit differences of ~1.5e-5 (logits up to ~8.5); unscaled: > 1e-2
    assert _diff(ours, ref, _ids()) < 5e-5
    inv = 1.0 / (500.0 ** (torch.arange(0, 16, 2).float() / 16))
    theirs_inv = tf_llama3_inv_freq(ref.config)
    from moorelab.model.transformer import scale_rope_freqs

    assert torch.allclose(scale_rope_freqs(inv, ours.config.rope_scaling), theirs_inv, rtol=2e-7, atol=0)
    # the converted cache (to_hf_dict) is read back by transformers as the same model
    import transformers as tf

    back = tf.LlamaConfig(**ours.config.to_hf_dict())
    assert torch.allclose(tf_llama3_inv_freq(back), theirs_inv, rtol=2e-7, atol=0)


def tf_llama3_inv_freq(config):
    import transformers as tf

    return tf.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](config, None)[0]


def test_gguf_rope_freqs_not_llama3_refused(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf")
    write_tiny_gguf(tmp_path / "m.gguf", ref,
                    extra=lambda w: w.add_tensor("rope_freqs.weight", np.array([1.0, 3.0, 2.0, 5.0], np.float32)))
    with pytest.raises(ModelLoadError, match="rope_freqs.weight.*does not follow the llama3"):
        load_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("kv, match", [
    ({"rope__scaling__type": "yarn", "rope__scaling__factor": 4.0}, r"llama.rope.scaling.type='yarn' is not supported"),
    ({"attention__sliding_window": 16.0}, r"llama.attention.sliding_window=16.0 is not supported"),
    ({"attn_logit_softcapping": 50.0}, r"llama.attn_logit_softcapping=50.0 is not supported"),
    ({"rope__scale_linear": 2.0, "rope__scaling__factor": 4.0}, r"scale_linear=2.0 and rope.scaling.factor=4.0 disagree"),
])
def test_gguf_unread_or_unsupported_fields_refused(tmp_path, kv, match):
    ref = tiny_hf("llama", tmp_path / "hf")
    write_tiny_gguf(tmp_path / "m.gguf", ref, extra=_gguf_keys(**kv))
    with pytest.raises(ModelLoadError, match=match):
        load_gguf(tmp_path / "m.gguf")


def test_gguf_head_dim_from_key_length(tmp_path):
    # head_dim 16 with d_model 48 and 6 heads (d_model / n_heads would be 8)
    ref = tiny_hf("llama", tmp_path / "hf", head_dim=16)

    def extra(w):
        w.add_uint32("llama.attention.key_length", 16)
        w.add_uint32("llama.attention.value_length", 16)
        w.add_uint32("llama.rope.dimension_count", 16)

    write_tiny_gguf(tmp_path / "m.gguf", ref, extra=extra)
    ours = load_gguf(tmp_path / "m.gguf")
    assert ours.config.head_dim == 16
    assert _diff(ours, ref, _ids(T=11)) < 1e-5


def test_gguf_partial_rotary_refused(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf")
    write_tiny_gguf(tmp_path / "m.gguf", ref, extra=lambda w: w.add_uint32("llama.rope.dimension_count", 4))
    with pytest.raises(ModelLoadError, match=r"llama.rope.dimension_count=4 differs from the head size 8"):
        load_gguf(tmp_path / "m.gguf")


def test_rope_tables_are_cached_for_a_device_given_as_a_string():
    from moorelab.model.config import TransformerConfig
    from moorelab.model.transformer import Transformer

    m = Transformer(TransformerConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                      max_position_embeddings=8, family="llama"))
    first = m.rope_tables(4, "cpu")
    assert m.rope_tables(6, torch.device("cpu"))[0] is first[0]  # a torch.device and "cpu" are one device
    assert m.rope_tables(3, "cpu")[1] is first[1]
    assert first[0].shape == (8, 8)  # grown to max_position_embeddings once, not per call
    assert m.rope_tables(20, "cpu")[0].shape == (20, 8)
