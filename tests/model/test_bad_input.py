"""Bad checkpoints and configs give one clear ModelLoadError naming the tensor or field."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moorelab.errors import ModelLoadError
from moorelab.model.config import TransformerConfig
from moorelab.model.load_hf import load_hf_folder
from moorelab.model.zoo import load_pretrained
from model_helpers import tiny_hf


def _edit_weights(folder, fn):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path))


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(ModelLoadError, match=r"model_type='t5' is not supported"):
        load_hf_folder(tmp_path)


def test_missing_config_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    with pytest.raises(ModelLoadError, match=r"config.json: missing field 'num_attention_heads'"):
        load_hf_folder(tmp_path)


def test_missing_tensor(tmp_path):
    tiny_hf("llama", tmp_path)
    _edit_weights(tmp_path, lambda s: s.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(ModelLoadError, match=r"missing tensor 'blocks.1.ffn.down_proj.weight'"):
        load_hf_folder(tmp_path)


def test_wrong_shape(tmp_path):
    tiny_hf("bert", tmp_path)
    _edit_weights(tmp_path, lambda s: s.update({"encoder.layer.0.attention.self.key.weight": torch.zeros(32, 31)}))
    with pytest.raises(ModelLoadError, match=r"tensor 'blocks.0.attn.k_proj.weight' has shape \(32, 31\), expected \(32, 32\)"):
        load_hf_folder(tmp_path)


def test_unexpected_tensor(tmp_path):
    tiny_hf("gpt2", tmp_path)
    _edit_weights(tmp_path, lambda s: s.update({"transformer.h.0.mystery.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match=r"unexpected tensor 'transformer.h.0.mystery.weight'"):
        load_hf_folder(tmp_path)


def test_no_safetensors_means_no_pickle(tmp_path):
    tiny_hf("gpt2", tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_hf_folder(tmp_path)


def test_unsupported_rope_scaling(tmp_path):
    tiny_hf("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="rope_scaling type 'yarn'"):
        load_hf_folder(tmp_path)


@pytest.mark.parametrize("family,field,value", [
    ("gpt2", "activation_function", "silu"),
    ("gpt2", "activation_function", "swish"),
    ("gpt2", "activation_function", "mish"),
    ("bert", "hidden_act", "silu"),
])
def test_unsupported_activation_is_named_not_a_missing_tensor(tmp_path, family, field, value):
    """'silu' used to map to LLaMA's gated SwiGLU and fail later as "missing tensor gate_proj"."""
    tiny_hf(family, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as e:
        load_pretrained(str(tmp_path))
    msg = str(e.value)
    assert f"field {field}={value!r}: activation" in msg and f"for model_type {family!r}" in msg, msg
    assert "gelu" in msg and "tensor" not in msg


def test_missing_path_is_no_such_file(tmp_path):
    for name in (str(tmp_path / "nope"), "./model-dir", "~/nothing-here.gguf", "SmolLM2.gguf"):
        with pytest.raises(ModelLoadError, match=r"no such file or folder"):
            load_pretrained(name)


def test_bad_config_values():
    with pytest.raises(ModelLoadError, match="activation='gelu2'"):
        TransformerConfig(activation="gelu2")
    with pytest.raises(ModelLoadError, match="n_kv_heads=3 must divide n_heads=8"):
        TransformerConfig(n_heads=8, n_kv_heads=3)
    with pytest.raises(ModelLoadError, match="unknown TransformerConfig field 'colour'"):
        TransformerConfig.from_dict({"colour": 1})


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="unknown model 'gpt-5'.*smollm2-135m"):
        load_pretrained("gpt-5")


def test_config_round_trip():
    c = TransformerConfig(family="gpt2", norm="layernorm", activation="gelu_tanh", position="learned", n_heads=4, d_model=32)
    assert TransformerConfig.from_dict(c.to_dict()) == c
    assert c.n_kv_heads == 4 and c.head_dim == 8
