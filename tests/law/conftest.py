"""Shared fixtures for the law tests: the ../shared trend data beside the checkout."""

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TRENDS = SHARED / "data" / "trends"


def require_trends() -> Path:
    """Return ../shared/data/trends, or skip (fail when env CI is set) if it is absent."""
    if not TRENDS.is_dir():
        msg = f"shared trend data not found at {TRENDS} (a user's clone has no ../shared)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return TRENDS


@pytest.fixture
def trends_dir() -> Path:
    return require_trends()
