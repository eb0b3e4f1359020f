"""Jobs run in these tests append to the run history: keep it in each test's tmp folder, never in
the user's cache (``$MOORELAB_HISTORY`` is inherited by subprocesses too).

``browser_check``: open a report page in headless Chromium (:mod:`moorelab.report.browser_check`)
and fail on a console error, a broken image, a page wider than a 1280-pixel window or a network
fetch; skipped with the reason when no Chromium is installed, failed instead when ``$CI`` is set.
"""

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_history(tmp_path, monkeypatch):
    monkeypatch.setenv("MOORELAB_HISTORY", str(tmp_path / "history.sqlite"))


def need_chromium() -> str:
    """The Chromium executable; skips the test without one (fails it when ``$CI`` is set)."""
    from moorelab.report.browser_check import find_chromium

    exe = find_chromium()
    if exe is None:
        why = ("chromium not installed: `make test` installs Debian's chromium where apt-get runs as root; "
               "or set MOORELAB_CHROMIUM")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {why}")
        pytest.skip(why)
    return exe


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header; fails on a file that is not a PNG."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture
def chromium_exe() -> str:
    """The Chromium executable (see :func:`need_chromium`)."""
    return need_chromium()


@pytest.fixture
def browser_check(tmp_path):
    """``browser_check(report_html) -> PageCheck``: the page checked in headless Chromium at
    1280 px with a full-page screenshot (in the test's tmp folder, and in
    ``$MOORELAB_SCREENSHOT_DIR`` when set, for CI artifacts); asserts the page is clean."""
    exe = need_chromium()

    def check(page: Path, width: int = 1280):
        from moorelab.report.browser_check import check_page

        shots = Path(os.environ.get("MOORELAB_SCREENSHOT_DIR") or tmp_path / "screenshots")
        result = check_page(Path(page), width=width, screenshot_dir=shots, chromium=exe)
        assert result.ok, f"{page}: " + "; ".join(result.problems)
        assert png_size(result.screenshot)[0] == width
        return result

    return check
