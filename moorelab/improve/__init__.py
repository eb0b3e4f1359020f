"""Improvements of a trained model: quantization (``quantize``), pruning (``prune``),
distillation (``distill``) and fine-tuning (``finetune``)."""
