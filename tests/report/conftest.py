"""Jobs run in these tests append to the run history: keep it in each test's tmp folder, never in
the user's cache (``$MOORELAB_HISTORY`` is inherited by subprocesses too)."""

import pytest


@pytest.fixture(autouse=True)
def _private_history(tmp_path, monkeypatch):
    monkeypatch.setenv("MOORELAB_HISTORY", str(tmp_path / "history.sqlite"))
