"""A small, reusable training loop: AdamW with decay groups, warmup + cosine schedule counted in
optimizer steps, gradient accumulation normalised by tokens, seeds, exact-resume checkpoints
(safetensors + JSON, never pickle) and TensorBoard logs.

Used by :mod:`moorelab.improve.distill` and by tests/benchmarks that fine-tune pruned models.
"""

from moorelab.train.checkpoint import load_checkpoint, save_checkpoint
from moorelab.train.data import TokenWindows, calibration_batches, tokenize_text
from moorelab.train.loop import (
    TrainConfig,
    TrainReport,
    default_token_count,
    lr_at,
    make_optimizer,
    next_token_loss,
    param_groups,
    set_seed,
    train,
)

__all__ = [
    "TrainConfig",
    "TrainReport",
    "TokenWindows",
    "calibration_batches",
    "default_token_count",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "next_token_loss",
    "param_groups",
    "save_checkpoint",
    "set_seed",
    "tokenize_text",
    "train",
]
