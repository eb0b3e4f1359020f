"""Resources: parameters, bytes of weights, peak resident memory, and cost per token.

Peak RSS is the process's high-water mark (``VmHWM`` in ``/proc/self/status``). It is reset
before each measured row by writing ``5`` to ``/proc/self/clear_refs`` (Linux ≥ 4.0), so a row's
figure is the peak *during its own measurement*, including the Python/torch runtime and whatever
else the process holds at that time.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch
from torch import nn

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied embedding / output head counts once).

    Args:
        model: any module.

    Returns:
        Total elements over parameters, deduplicated by storage.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in model.parameters():
        key = (p.data_ptr(), p.numel())
        if key in seen:
            continue
        seen.add(key)
        total += p.numel()
    # quantized modules keep their weights as buffers: count their logical elements too
    for m in model.modules():
        n = getattr(m, "n_weight_elements", None)
        if callable(n):
            total += int(n())
    return total


def weight_bytes(model: nn.Module) -> int:
    """Bytes of storage held by parameters and buffers (each storage counted once).

    Quantized layers that keep int8/int4 data and scales in buffers are counted at their real
    size; tied tensors once.

    Args:
        model: any module.

    Returns:
        Bytes (int).
    """
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.numel() == 0:
            continue
        seen.add(ptr)
        total += t.untyped_storage().nbytes()
    return total


def _malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so that memory released by
    earlier work does not count in the next row's resident set."""
    from moorelab.model.weight_arena import release_freed_heap

    release_freed_heap()


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark so that the next reading covers only what follows.

    Freed heap pages are first returned to the OS (``malloc_trim``) so that they do not inflate
    the new baseline.

    Returns:
        True if the kernel accepted the reset, False if not (the reading is then the peak since
        process start, and reports should say so).
    """
    _malloc_trim()
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss`, bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def usd_per_million_tokens(tokens_per_second: float, usd_per_hour: float) -> float:
    """Cost of a million tokens on a machine rented by the hour.

    Args:
        tokens_per_second: measured throughput, tokens/s (> 0).
        usd_per_hour: price of the machine, $/hour.

    Returns:
        $ per 1M tokens = usd_per_hour / (tokens_per_second · 3600) · 1e6.

    Raises:
        ValueError: non-positive throughput.
    """
    if tokens_per_second <= 0:
        raise ValueError(f"tokens_per_second must be > 0, got {tokens_per_second}")
    return usd_per_hour / (tokens_per_second * 3600.0) * 1e6


def forward_flops_per_token(n_params_non_embedding: int, n_layers: int, d_attn: int, context: int) -> float:
    """Approximate forward FLOP per token of a decoder (Kaplan et al. 2020, Table 1).

    ``C_forward ≈ 2·N + 2·n_layer·n_ctx·d_attn`` with N the non-embedding parameters.

    Args:
        n_params_non_embedding: parameters excluding token/position embeddings (the output head
            is a matmul and counts).
        n_layers: decoder layers.
        d_attn: attention width (n_heads · head_dim).
        context: tokens attended to.

    Returns:
        FLOP per token.
    """
    return 2.0 * n_params_non_embedding + 2.0 * n_layers * context * d_attn


def torch_threads() -> int:
    """Intra-op threads torch uses now."""
    return torch.get_num_threads()
