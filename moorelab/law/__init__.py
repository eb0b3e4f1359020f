"""moorelab.law: how fast does it double, and how sure are we?

Trend fits on the log scale with OLS and bootstrap intervals (:mod:`.fit`), strict dates
(:mod:`.dates`), frontier selection and date windows (:mod:`.frontier`), loaders with schema
checks for the public trend data (:mod:`.data`, Epoch AI, CC-BY 4.0), embedded facts about
notable language models (:mod:`.facts`), and the ``moorelab trend ...`` analyses (:mod:`.cli`).
"""

from moorelab.law.fit import GrowthFit, fit_growth

__all__ = ["GrowthFit", "fit_growth"]
