"""Reference trends for expressing a measured gain as months of the field's progress.

Each entry is a published figure that this project reproduces from its data (the command that
does so is named), so that a run without the data sets can still place a gain on the trend.
"""

from __future__ import annotations

from moorelab.law.months import months_of_factor

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


def months_of_reference(gain: float) -> dict:
    """Months of each reference trend that a gain factor is worth.

    Args:
        gain: a factor > 0, != 1 (e.g. 2.4 = 2.4× less cost for the same quality).

    Returns:
        ``{trend name: {"value": months, "unit": "months", "ci": (lo, hi), "factor_per_year",
        "source"}}``; months are negative for a loss (gain < 1): the trend takes that long to
        win back what was lost.

    Raises:
        MoorelabError: gain ≤ 0 or == 1.
    """
    out = {}
    for name, t in REFERENCE_TRENDS.items():
        m = months_of_factor(gain, t["factor_per_year"], t["ci90"])
        if gain < 1:
            ci = m.get("ci")
            m = {**m, "value": -m["value"], "ci": None if ci is None else (-ci[1], -ci[0])}
        out[name] = {**m, "factor_per_year": t["factor_per_year"], "source": t["source"]}
    return out
