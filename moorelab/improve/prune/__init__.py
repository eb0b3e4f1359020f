"""Pruning: unstructured (magnitude, Wanda) with masks, and structured (attention heads, FFN
channels) that really shrinks the matrices. torchao-style API: a config dataclass and
``prune_(model, config, calibration=None) -> PruneReport`` (:mod:`.driver`).

Unstructured methods
--------------------
* :class:`MagnitudePruneConfig` (:mod:`.magnitude`) — zero the smallest ``|W|`` (Han et al.
  2015), either over all counted tensors at once (``scope="global"``) or
  ``round(sparsity·numel)`` in each tensor (``scope="layer"``).
* :class:`WandaConfig` (:mod:`.wanda`) — Wanda (Sun et al. 2023, "A Simple and Effective Pruning
  Approach for LLMs"): score ``S_ij = |W_ij| · ‖X_j‖₂`` with ``X_j`` the j-th input feature over
  calibration tokens; in each output row, the ``round(sparsity·in_features)`` lowest scores are
  zeroed. Calibration runs block by block as in the paper: the inputs of block ``i`` come from
  blocks ``< i`` already pruned.

**Denominator** (:data:`DENOMINATOR`): the weight matrices of every ``nn.Linear`` inside
``model.blocks`` (attention q/k/v/o, FFN gate/up/down). Embeddings, the output head (tied to
the embedding in SmolLM2), norms and biases are neither pruned nor counted. Counts are exact:
ties at the threshold are broken by position so exactly ``k`` weights are masked.

Masks (:mod:`.base`) survive save/load and further training in one of two modes (``mask_mode``):

* ``"parametrize"`` (default): ``torch.nn.utils.parametrize`` makes ``weight = original ⊙ mask``
  at every forward, so an optimizer step cannot revive a pruned weight; the mask is the buffer
  ``<linear>.parametrizations.weight.0.mask`` and is saved with the state dict.
* ``"buffer"``: the mask is the buffer ``<linear>.weight_mask`` and the weight is plain; call
  :func:`reapply_masks_` after every optimizer step (``train(..., after_step=...)``).

:func:`save_pruned` / :func:`load_pruned` (:mod:`.save`) write/read ``model.safetensors`` +
``pruning.json`` (the per-layer shapes and which masks exist), so a pruned model reloads with
its masks. :func:`remove_masks_` bakes the zeros in and drops the masks (plain dense
``nn.Linear``). Unstructured sparsity stored densely makes the model neither smaller nor
faster; the benchmark measures that rather than assuming it.

Structured methods (:mod:`.structured`)
---------------------------------------
* :class:`HeadPruneConfig` — remove attention heads. q/k/v rows ``[h·head_dim, (h+1)·head_dim)``
  and o_proj columns of the same range go (RoPE acts within a head, so it is unaffected).
  Grouped-query attention (query head ``h`` reads kv head ``h // (n_heads/n_kv_heads)``):
  ``unit="kv_group"`` removes whole groups (their query heads and their k/v head);
  ``unit="query"`` removes the same number of query heads from every group and keeps all k/v
  heads, so the new mapping ``h' // (n_heads'/n_kv_heads)`` still sends each kept head to its
  own kv head. ``remove={layer: [heads]}`` (or ``"0:1+3/2:0"``) names the heads instead, by their
  original index; each pruned layer keeps its ``head_map`` (original index of every remaining
  head, and those removed), saved with the layout, so a second round and a reader know which
  heads are gone.
* :class:`FFNChannelPruneConfig` — remove FFN hidden channels: rows of gate/up and columns of
  down.
Importance ``"activation"`` (calibration text needed): the mean squared norm of the unit's
contribution to the residual stream, ``E‖W_o[:, h]·a_h‖²`` for head ``h``, ``E[a_j²]·‖W_down[:, j]‖²``
for channel ``j`` (output-norm importance, cf. Michel et al. 2019 and Ma et al. 2023
"LLM-Pruner", first-order-free variant). ``"weight"``: product of the Frobenius norms of the
unit's input rows and output columns (data-free).

Each ``Attention`` keeps its own ``n_heads``/``n_kv_heads`` (updated here) and ``FeedForward``
reads its width from the weights, so layers may differ after pruning.

Errors: sparsity or fraction outside ``[0, 1)``, pruning every head/group of a layer, a
missing calibration set — :class:`moorelab.errors.MoorelabError`, raised before any tensor is
changed.
"""

from moorelab.improve.prune.base import (
    DENOMINATOR,
    LayerSparsity,
    PruneReport,
    StructuredLayer,
    WeightMask,
    current_mask,
    prunable_linears,
    reapply_masks_,
    remove_masks_,
    sparsity_report,
)
from moorelab.improve.prune.driver import prune_
from moorelab.improve.prune.magnitude import MagnitudePruneConfig
from moorelab.improve.prune.save import apply_layout_, layout, load_pruned, save_pruned
from moorelab.improve.prune.structured import FFNChannelPruneConfig, HeadPruneConfig, check_head_plan, head_map
from moorelab.improve.prune.wanda import WandaConfig

__all__ = [
    "DENOMINATOR",
    "MagnitudePruneConfig",
    "WandaConfig",
    "HeadPruneConfig",
    "FFNChannelPruneConfig",
    "LayerSparsity",
    "StructuredLayer",
    "PruneReport",
    "prune_",
    "prunable_linears",
    "sparsity_report",
    "reapply_masks_",
    "remove_masks_",
    "save_pruned",
    "load_pruned",
    "layout",
    "apply_layout_",
    "current_mask",
    "WeightMask",
    "head_map",
    "check_head_plan",
]
