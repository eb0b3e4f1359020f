"""Data-parallel training with PyTorch's own pieces: ``torch.distributed.run`` (torchrun) starts
the processes, ``DistributedDataParallel`` over the gloo backend averages the gradients.

Each rank reads a disjoint shard of every global batch (:class:`moorelab.train.TokenWindows`
with ``shard=(rank, world)``). The training loop makes the average *token-weighted*: every rank
divides its summed loss by the global number of loss tokens (an all-reduce) and multiplies by
the world size, so DDP's mean of the ranks' gradients equals the gradient of one process that
saw the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from moorelab.errors import MoorelabError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, ``local_rank`` of
    ``local_world`` on this machine (all from torchrun's environment variables)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes checkpoints, logs and the output folder."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's variables (``RANK``, ``WORLD_SIZE``) are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env() -> DistInfo:
    """Join the process group torchrun prepared (gloo backend), or return a one-process
    :class:`DistInfo` when not launched by torchrun.

    Raises:
        MoorelabError: the rendezvous fails (message from torch, first line).
    """
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )
    if info.world > 1 and not dist.is_initialized():
        try:
            dist.init_process_group("gloo")
        except Exception as exc:  # noqa: BLE001 - torch raises several types here
            raise MoorelabError(f"could not join the process group: {str(exc).splitlines()[0]}") from None
    return info


def world_info() -> DistInfo:
    """The current :class:`DistInfo` (one process when no group is initialised)."""
    if not dist.is_available() or not dist.is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def all_reduce_sum(value: float) -> float:
    """Sum of ``value`` over all ranks (float64 on the wire); the value itself with one process."""
    if not dist.is_available() or not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` is ignored elsewhere); identity with one process."""
    if not dist.is_available() or not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def launch_local(nproc: int, module_args: Sequence[str], module: str = "moorelab") -> int:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node nproc -m module
    *module_args`` and wait for it.

    Args:
        nproc: processes on this machine (≤ the cores available).
        module_args: arguments of ``python -m module`` (without the launcher's ``--nproc``).

    Returns:
        torchrun's exit code.

    Raises:
        MoorelabError: ``nproc`` below 1 or above the cores this process may use.
    """
    cores = available_cores()
    if nproc < 1 or nproc > cores:
        raise MoorelabError(f"--nproc {nproc}: this machine has {cores} core(s) available; use 1 to {cores}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", module, *module_args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    return subprocess.call(cmd, env=env)
