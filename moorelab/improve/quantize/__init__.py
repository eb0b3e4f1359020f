"""Weight-only and dynamic quantization of ``nn.Linear`` layers (torchao-style API).

Three schemes, one module each, each replacing ``nn.Linear`` modules in place:

* :class:`Int8WeightOnlyConfig` -> :class:`Int8WeightOnlyLinear` (:mod:`.int8`): symmetric int8
  weights with one float32 scale per OUTPUT channel (row of ``W[out, in]``):
  ``s[n] = max_k |W[n,k]| / 127``, ``q = round(W / s)`` in -127..127. An outlier in one output
  channel only coarsens that channel.
* :class:`Int4WeightOnlyConfig` -> :class:`Int4WeightOnlyLinear` (:mod:`.int4`): asymmetric
  int4, one (scale, min) pair per group of ``group_size`` consecutive input features of a row
  (GGML Q4_1 / torchao "float zero-point" style): ``scale = (max - min) / 15``,
  ``q = round((W - min) / scale)`` in 0..15, ``Ŵ = scale * q + min``; scale and min stored as
  float16. Packing: two values per byte, ``packed[n, j] = q[n, 2j] | (q[n, 2j+1] << 4)``, i.e.
  the LOW nibble holds the EVEN input index, values unsigned 0..15 (no sign bit).
* :class:`Int8DynamicConfig` -> :class:`Int8DynamicLinear` (:mod:`.int8_dynamic`): int8 weights
  as above, and the activations quantized at run time, symmetric int8 with one scale per token
  (row of ``x``): ``sx = max|x| / 127`` (LLM.int8()/SmoothQuant-style "per-token" dynamic
  quantization, without outlier decomposition); int8 x int8 products summed exactly in int32.
  ``Int8DynamicConfig(activation_block=32)`` -> :class:`Int8DynamicBlockLinear`: one activation
  scale per 32 consecutive values of a token instead (GGML ``Q8_0``'s activation blocks).

:func:`quantize_` (:mod:`.driver`) applies a config to a model and returns a
:class:`QuantizeReport` (:mod:`.report`); :class:`QuantizedLinear` (:mod:`.base`) is what the
three modules share.

Kernels: decode (few rows ``M``) runs moorelab's AVX2 GEMV kernels
(:mod:`moorelab.kernels`), which read 4x (int8) or ~6.4x (int4, g32) fewer weight
bytes than float32; many rows (prefill) dequantize the weight to float32 with a C loop and run
torch's float32 matmul. Without gcc/AVX2 a pure-torch path runs. Every quantized module names
its kernels in ``kernel`` (decode, ``M <= m_threshold``), ``prefill_kernel`` and
``last_kernel`` (the one the latest call used).

Tied embeddings: when ``lm_head.weight is embed.weight`` (SmolLM2), the lm_head gets its own
quantized copy and the embedding table stays float32 (a row lookup reads only d_model floats
per token, so quantizing it would save storage, not decode time). The report marks such rows
``tied=True``.

The quantized modules are for inference: when autograd needs a gradient through ``x``, the
pure-torch path runs so gradients still flow (the quantized weights are constants).
"""

from moorelab.improve.quantize.base import QuantizedLinear
from moorelab.improve.quantize.driver import quantize_
from moorelab.improve.quantize.int4 import (
    Int4WeightOnlyConfig,
    Int4WeightOnlyLinear,
    dequantize_int4,
    pack_int4,
    quantize_int4_groupwise,
    round_activations_blocks,
    unpack_int4,
)
from moorelab.improve.quantize.int8 import (
    Int8WeightOnlyConfig,
    Int8WeightOnlyLinear,
    quantize_int8_per_channel,
    round_activations_rows,
)
from moorelab.improve.quantize.int8_dynamic import (
    Int8DynamicBlockLinear,
    Int8DynamicConfig,
    Int8DynamicLinear,
    quantize_activations_per_block,
    quantize_activations_per_token,
)
from moorelab.improve.quantize.report import LayerQuantReport, QuantizeReport, sqnr_db, weight_bytes

__all__ = [
    "Int8WeightOnlyConfig",
    "Int4WeightOnlyConfig",
    "Int8DynamicConfig",
    "QuantizedLinear",
    "Int8WeightOnlyLinear",
    "Int4WeightOnlyLinear",
    "Int8DynamicLinear",
    "Int8DynamicBlockLinear",
    "quantize_activations_per_block",
    "LayerQuantReport",
    "QuantizeReport",
    "quantize_",
    "weight_bytes",
    "sqnr_db",
    "quantize_int8_per_channel",
    "quantize_int4_groupwise",
    "pack_int4",
    "unpack_int4",
    "dequantize_int4",
    "quantize_activations_per_token",
    "round_activations_blocks",
    "round_activations_rows",
]
