"""Tiny random transformers models saved as HF folders, for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch


def scramble(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give every weight a large random value so parity differences are not hidden by tiny logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name.lower() or "ln_" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            else:
                p.copy_(std * noise)


def tiny_hf(kind: str, folder: Path, **overrides):
    """Build, scramble and save a tiny random transformers model; return it (eval, float32)."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gpt2":
        kw = dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                  activation_function="gelu_new", layer_norm_epsilon=1e-5)
        kw.update(overrides)
        model = tf.GPT2LMHeadModel(tf.GPT2Config(**kw))
    elif kind == "llama":
        kw = dict(vocab_size=103, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False)
        kw.update(overrides)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**kw))
    elif kind == "bert":
        kw = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, layer_norm_eps=1e-12, hidden_act="gelu")
        kw.update(overrides)
        model = tf.BertModel(tf.BertConfig(**kw))
    else:
        raise ValueError(kind)
    scramble(model)
    model.eval()
    model.save_pretrained(str(folder))
    return model
