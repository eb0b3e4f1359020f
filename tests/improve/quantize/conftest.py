"""Shared set-up for tests/improve/quantize: helpers on the path, two threads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Test helpers live beside this file (quantize_helpers.py); importlib import mode adds no path.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _two_threads():
    """Run these tests on two threads, so the kernels' multi-threaded paths run too (large
    layers and prefill split their rows over the threads). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
