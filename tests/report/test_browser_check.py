"""The browser check itself (moorelab/report/browser_check.py): a clean page passes, and each planted
fault is caught and named — a check that cannot fail would prove nothing about report.html."""

import base64
import io
import os
from pathlib import Path

import pytest

from moorelab.errors import MoorelabError
from moorelab.report.browser_check import BrowserNotFound, check_pages


def _png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1), dpi=50)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


PAGES = {
    "clean": "<p>fine</p><img alt='plot' src='data:image/png;base64,{png}'>"
             "<table><tr><td>a long cell that wraps</td></tr></table>",
    "console": "<p>x</p><script>console.error('planted console error')</script>",
    "exception": "<script>null.planted</script>",
    "broken_image": "<img alt='planted broken' src='data:image/png;base64,AAAA'>",
    "too_wide": "<div style='width:1500px'>planted wide block</div>",
    "scrolls_inside": "<div style='overflow-x:auto'><table><tr><td style='min-width:2000px'>x</td></tr></table></div>",
    "spills": "<table style='table-layout:fixed;width:300px'><tr><th>a</th><th>activation_bits_planted_too_long_for_it</th>"
              "<th>c</th></tr></table>",
    "network": "<img alt='remote' src='https://example.com/planted.png'>",
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    # one browser for every page (module scope); skipped without chromium, failed when CI is set
    from moorelab.report.browser_check import find_chromium

    exe = find_chromium()
    if exe is None:
        why = "chromium not installed: `make test` installs Debian's chromium where apt-get runs as root"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {why}")
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("pages")
    png = _png()
    paths = []
    for name, body in PAGES.items():
        p = folder / f"{name}.html"
        p.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title></head>"
                     f"<body>{body.format(png=png)}</body></html>")
        paths.append(p)
    results = check_pages(paths, screenshot_dir=folder / "shots", chromium=exe)
    return {r.path.stem: r for r in results}


def test_a_clean_page_passes_and_is_photographed(checked):
    r = checked["clean"]
    assert r.ok, r.problems
    assert r.title == "clean" and r.images == 1 and r.page_width == r.window_width == 1280
    head = r.screenshot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 1280


@pytest.mark.parametrize("page,needle", [
    ("console", "console error: planted console error"),
    ("exception", "console error: TypeError"),
    ("broken_image", "broken image: alt=\"planted broken\""),
    ("too_wide", "page wider than the window: 15"),
    ("scrolls_inside", "scrolls sideways inside the page: <div> content 20"),
    ("spills", "text spills out of its box: <th> \"activation_bits_planted"),
    ("network", "network fetch (the page must work offline): https://example.com/planted.png"),
])
def test_each_planted_fault_is_caught(checked, page, needle):
    r = checked[page]
    assert not r.ok
    assert any(p.startswith(needle) for p in r.problems), r.problems


def test_a_remote_image_is_also_a_broken_image_offline(checked):
    # host names resolve to nothing in the checked browser: the page cannot reach out
    assert any("planted.png" in b for b in checked["network"].broken_images)


def test_missing_page_and_missing_browser(tmp_path, monkeypatch):
    with pytest.raises(MoorelabError, match="no such page"):
        check_pages([tmp_path / "nope.html"])
    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    monkeypatch.setenv("MOORELAB_CHROMIUM", str(tmp_path / "no-chromium-here"))
    with pytest.raises(BrowserNotFound, match="MOORELAB_CHROMIUM"):
        check_pages([page])
