"""Check our Transformer against the reference implementation in ``transformers``."""

from __future__ import annotations

import torch

from moorelab.model.zoo import LoadedModel


@torch.inference_mode()
def max_logit_diff_vs_transformers(loaded: LoadedModel, text: str) -> float:
    """Largest absolute difference between our logits and ``transformers``' on ``text``.

    Loads ``AutoModelForCausalLM`` (``AutoModel`` for BERT, comparing last hidden states) from
    ``loaded.hf_dir`` in float32, tokenizes ``text`` with ``loaded.tokenizer`` and compares
    every position. Returns the max |ours - theirs| (logit units); 0-dim prompts raise ValueError.
    """
    import transformers

    ids = loaded.tokenizer.encode(text).ids
    if not ids:
        raise ValueError("empty prompt: nothing to compare")
    x = torch.tensor([ids])
    if loaded.config.is_decoder:
        ref = transformers.AutoModelForCausalLM.from_pretrained(str(loaded.hf_dir), dtype=torch.float32).eval()
        theirs = ref(x).logits
    else:
        ref = transformers.AutoModel.from_pretrained(str(loaded.hf_dir), dtype=torch.float32).eval()
        theirs = ref(x).last_hidden_state
    ours = loaded.model(x)
    del ref
    return float((ours - theirs).abs().max())
