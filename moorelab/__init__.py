"""moorelab: measure, explain and push AI's Moore's law for language models.

Parts (one sub-package each): ``model`` (the Transformer from its math), ``train``,
``improve`` (quantization, pruning, distillation), ``measure`` (quality, speed, resources,
cost), ``law`` (trend fits, doubling times) and ``report`` (CLI tables, JSON, HTML).
"""

from moorelab.version import __version__

__all__ = ["__version__"]
