"""Issue 11.2: every end-of-sequence id is kept, and generation stops at any of them."""

from __future__ import annotations

import json

import pytest
import torch

from moorelab.errors import ModelLoadError
from moorelab.model.config import TransformerConfig
from moorelab.model.generate import generate
from moorelab.model.load_gguf import load_gguf
from moorelab.model.load_hf import load_hf_folder
from model_helpers import tiny_hf
from test_gguf import write_tiny_gguf

PROMPTS = torch.tensor([[5, 17, 42, 8], [60, 3, 99, 21]])


def _free_run(model, n=12):
    return generate(model, PROMPTS, max_new_tokens=n)[:, PROMPTS.shape[1]:]


def test_config_list_of_eos_ids_is_kept_and_generation_matches_transformers(tmp_path):
    ref = tiny_hf("llama", tmp_path)
    ours = load_hf_folder(tmp_path)
    free = _free_run(ours)
    # the second id is what row 0 emits at step 3 (and not before); the first is never emitted
    second = int(free[0, 3])
    assert second not in free[0, :3].tolist()
    first = next(t for t in range(103) if t not in free.flatten().tolist())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["eos_token_id"] = [first, second]
    cfg["pad_token_id"] = first  # transformers fills finished rows with the pad id; we use the first eos
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").unlink(missing_ok=True)
    ours = load_hf_folder(tmp_path)
    assert ours.config.eos_token_ids == [first, second] and ours.config.eos_token_id == first

    got = generate(ours, PROMPTS, max_new_tokens=12, eos_token_id=ours.config.eos_token_ids)
    ref.generation_config.eos_token_id = [first, second]
    ref.generation_config.pad_token_id = first
    with torch.no_grad():
        theirs = ref.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS), max_new_tokens=12,
                              do_sample=False)
    assert got.tolist() == theirs.tolist()
    # row 0 stopped at the second id (step 3) and was filled with the first from then on
    assert got[0, 4 + 3] == second and (got[0, 4 + 4:] == first).all()
    # with the first id only (what moorelab kept before), row 0 runs past the second id
    assert generate(ours, PROMPTS, max_new_tokens=12, eos_token_id=first)[0, 4 + 4:].tolist() == free[0, 4:].tolist()


def test_generation_config_eos_ids_are_added(tmp_path):
    tiny_hf("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["eos_token_id"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7, 9]}))
    assert load_hf_folder(tmp_path).config.eos_token_ids == [2, 7, 9]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "7"}))
    with pytest.raises(ModelLoadError, match="generation_config.json: field eos_token_id='7'"):
        load_hf_folder(tmp_path)


def test_gpt2_eos_list(tmp_path):
    tiny_hf("gpt2", tmp_path, eos_token_id=[50, 60])
    assert load_hf_folder(tmp_path).config.eos_token_ids == [50, 60]


def test_gguf_eos_eot_eom_ids(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf")

    def extra(w):
        w.add_eos_token_id(2)
        w.add_eot_token_id(7)
        w.add_eom_token_id(9)

    write_tiny_gguf(tmp_path / "m.gguf", ref, extra=extra)
    cfg = load_gguf(tmp_path / "m.gguf").config
    assert cfg.eos_token_ids == [2, 7, 9] and cfg.eos_token_id == 2
    # the converted cache writes them all where transformers reads them
    assert cfg.to_hf_dict()["eos_token_id"] == [2, 7, 9]


def test_config_eos_fields_consistent():
    assert TransformerConfig(eos_token_id=4).eos_token_ids == [4]
    assert TransformerConfig(eos_token_ids=[4, 5]).eos_token_id == 4
    with pytest.raises(ModelLoadError, match="eos_token_id=3 is not among eos_token_ids=\\[4, 5\\]"):
        TransformerConfig(eos_token_id=3, eos_token_ids=[4, 5])
    c = TransformerConfig(eos_token_ids=[4, 5])
    assert TransformerConfig.from_dict(c.to_dict()) == c
