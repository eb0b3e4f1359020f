"""Shared set-up for tests/improve/prune: helpers on the path, one thread."""

import sys
from pathlib import Path

import pytest
import torch

# Test helpers live beside this file (prune_helpers.py); importlib import mode adds no path.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
