"""Checkpoints that resume exactly, written with safetensors and JSON only (never pickle).

Layout of ``<checkpoint_dir>/step_<NNNNNN>/``:

* ``model.safetensors`` — the model's state (``safetensors.torch.save_model``: tied tensors
  stored once; pruning masks are buffers and are included).
* ``optimizer.safetensors`` — AdamW per-parameter state, keys ``"<param name>.<exp_avg |
  exp_avg_sq | step>"``, plus ``"rng.torch"`` (the torch CPU RNG state, uint8).
* ``trainer.json`` — optimizer steps done, the :class:`TrainConfig`, and the optimizer's param
  groups (hyper-parameters and parameter *names*, in order).

Each checkpoint is written to a temporary folder and renamed into place, so a crash never
leaves a half-written ``step_*`` folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from moorelab.errors import MoorelabError

FORMAT = 1


def save_checkpoint(checkpoint_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, config=None) -> Path:
    """Write model, optimizer and RNG state after ``step`` optimizer steps.

    Args:
        checkpoint_dir: parent folder; the checkpoint goes to ``step_<step:06d>/``.
        model: the model being trained.
        optimizer: optimizer made by :func:`moorelab.train.make_optimizer` (groups carry names).
        step: optimizer steps done.
        config: the :class:`TrainConfig` (stored for the record), optional.

    Returns:
        Path of the checkpoint folder.
    """
    parent = Path(checkpoint_dir)
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_", dir=parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        groups = []
        for g in optimizer.param_groups:
            names = g.get("names")
            if names is None or len(names) != len(g["params"]):
                raise MoorelabError("save_checkpoint: optimizer param groups need 'names' (use make_optimizer)")
            for name, p in zip(names, g["params"]):
                for key, value in optimizer.state.get(p, {}).items():
                    if not torch.is_tensor(value):
                        value = torch.tensor(value)
                    tensors[f"{name}.{key}"] = value.detach().contiguous().clone()
            groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"})
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = {
            "format": FORMAT,
            "step": step,
            "config": config.to_dict() if config is not None else None,
            "param_groups": groups,
        }
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint folder, else its newest ``step_*`` child.

    Raises:
        MoorelabError: no checkpoint found at ``path``.
    """
    path = Path(path)
    if (path / "trainer.json").is_file():
        return path
    steps = sorted(p for p in path.glob("step_*") if (p / "trainer.json").is_file())
    if not steps:
        raise MoorelabError(f"{path}: no checkpoint (trainer.json) found")
    return steps[-1]


def read_trainer_json(ckpt: Path) -> dict:
    """``ckpt/trainer.json`` as a dict.

    Raises:
        MoorelabError: unreadable or not a moorelab checkpoint record (named file).
    """
    path = Path(ckpt) / "trainer.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoorelabError(f"{path}: corrupted checkpoint ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("step"), int):
        raise MoorelabError(f"{path}: corrupted checkpoint (no format {FORMAT} record with a step)")
    return meta


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``step_*`` folders (≥ 1 always kept).

    Returns:
        The folders deleted.
    """
    steps = sorted(p for p in Path(checkpoint_dir).glob("step_*") if p.is_dir())
    gone = steps[: max(0, len(steps) - max(1, keep))]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore model, optimizer and torch RNG state from :func:`save_checkpoint` output.

    The model must already have the checkpoint's structure (same pruned shapes, same masks
    registered: see :func:`moorelab.improve.prune.load_pruned`).

    Args:
        path: a ``step_*`` folder or its parent (the newest is taken).
        model: module to load into (strict: every tensor must match by name and shape).
        optimizer: optimizer over the same parameter names, or None.

    Returns:
        Optimizer steps done at the checkpoint.

    Raises:
        MoorelabError: missing files, or a parameter/tensor name that does not match (named).
    """
    ckpt = latest_checkpoint(path)
    meta = read_trainer_json(ckpt)
    for name in ("model.safetensors", "optimizer.safetensors"):
        if not (ckpt / name).is_file():
            raise MoorelabError(f"{ckpt / name}: missing (corrupted checkpoint)")
    try:
        load_model(model, str(ckpt / "model.safetensors"), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MoorelabError(f"{ckpt / 'model.safetensors'}: does not match the model ({first})") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on bad bytes
        raise MoorelabError(f"{ckpt / 'model.safetensors'}: corrupted checkpoint ({str(exc).splitlines()[0]})") from None
    try:
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
    except Exception as exc:  # noqa: BLE001
        raise MoorelabError(f"{ckpt / 'optimizer.safetensors'}: corrupted checkpoint ({str(exc).splitlines()[0]})") from None
    if "rng.torch" not in tensors:
        raise MoorelabError(f"{ckpt / 'optimizer.safetensors'}: no RNG state (corrupted checkpoint)")
    torch.set_rng_state(tensors.pop("rng.torch"))
    if optimizer is not None:
        saved_groups = meta["param_groups"]
        if len(saved_groups) != len(optimizer.param_groups):
            raise MoorelabError(f"{ckpt}: {len(saved_groups)} optimizer groups saved, optimizer has {len(optimizer.param_groups)}")
        state: dict[int, dict] = {}
        groups = []
        index = 0
        for saved, g in zip(saved_groups, optimizer.param_groups):
            if saved["names"] != g.get("names"):
                raise MoorelabError(f"{ckpt / 'trainer.json'}: optimizer parameter names differ from the model's")
            ids = []
            for name in g["names"]:
                entry = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
                if entry:
                    state[index] = entry
                ids.append(index)
                index += 1
            restored = dict(saved)
            restored["betas"] = tuple(restored.get("betas", g["betas"]))
            restored["params"] = ids
            groups.append(restored)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    return int(meta["step"])
