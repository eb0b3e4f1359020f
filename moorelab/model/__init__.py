"""moorelab.model: a readable Transformer built from its formulas, loading real checkpoints.

* :mod:`~moorelab.model.config` — :class:`TransformerConfig` (gpt2 / llama / bert switches).
* :mod:`~moorelab.model.transformer` — the model in one file (attention, FFN, norms, RoPE, KV cache).
* :mod:`~moorelab.model.load_hf` / :mod:`~moorelab.model.load_gguf` — safetensors and GGUF readers
  (never pickle); :mod:`~moorelab.model.zoo` — named models and the converted-checkpoint cache.
* :mod:`~moorelab.model.fused_decode` — every layer of a LLaMA-family decode step in one compiled
  call; :mod:`~moorelab.model.decode` — the call decoding loops make: that fast path when
  eligible, else the reference model (which does not know it exists).
* :mod:`~moorelab.model.generate` — greedy / temperature / top-k / top-p decoding with the cache.
* :mod:`~moorelab.model.parity` — agreement with ``transformers``; :mod:`~moorelab.model.explain`
  — the worked examples behind ``moorelab explain``.
"""
