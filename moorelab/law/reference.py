"""Reference trends for expressing a measured gain as months of the field's progress.

Each entry is a published figure that this project reproduces from its data (the command that
does so is named), so that a run without the data sets can still place a gain on the trend.
:func:`moorelab.law.months.months_of_reference` converts a gain with them, and
``moorelab trend months GAIN --trend NAME`` accepts each name, so every months figure a run
reports can be reproduced by one command.
"""

from __future__ import annotations

REFERENCE_TRENDS: dict[str, dict] = {
    "algorithmic_efficiency": {
        "description": "compute needed for a fixed capability falls (algorithmic progress)",
        "factor_per_year": 2.90,
        "ci90": (2.12, 3.98),
        "source": "Epoch AI capabilities index 2025-11-07, two-stage fit over 80 models (Ho et al., "
                  "arXiv 2512.00193); reproduced by `moorelab trend efficiency`",
    },
    "llm_price_at_fixed_capability": {
        "description": "price of the cheapest LLM reaching GPT-4-level GPQA Diamond falls",
        "factor_per_year": 42.0,
        "ci90": (4.4, 401.0),
        "source": "Epoch AI, 'LLM inference prices have fallen rapidly but unequally across tasks' "
                  "(March 2025); reproduced by `moorelab trend prices`",
    },
}
