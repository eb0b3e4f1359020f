"""Check a report page in a real browser: headless Chromium, driven over the DevTools protocol.

:func:`check_pages` opens each HTML file in a window of a given width (default 1280 CSS pixels),
waits for the page to load, takes a full-page screenshot and returns what a reader would hit:

* **console errors**: ``console.error``/``console.assert`` calls, uncaught exceptions, and the
  browser's own error log entries (a resource that failed to load, a blocked request);
* **broken images**: every ``<img>`` that did not decode (``naturalWidth`` 0 once loaded);
* **too wide**: a page wider than the window (``scrollWidth`` of the document above its
  ``clientWidth``: the reader must scroll sideways), any element that scrolls sideways inside
  the page (``overflow-x: auto|scroll`` with content wider than its box), and text spilling out
  of its box over its neighbours (a table cell, paragraph, list item, caption or heading whose
  content is wider than it);
* **network fetches**: any request that is not ``data:``, ``blob:`` or ``about:`` (a ``file:``
  other than the page itself counts too: the report must stand alone and work offline). Host resolution is mapped to nothing, so such a
  fetch also fails (and shows as a broken image or a console error) rather than reaching out.

It works on any report (``moorelab run``, ``moorelab improve``, a later ``moorelab ladder``).
The protocol runs over ``--remote-debugging-pipe`` (file descriptors 3 and 4, messages of JSON
separated by NUL bytes), so it needs nothing beyond the standard library and a Chromium binary:
Debian's ``chromium`` (``apt-get install chromium``; ``make test`` installs it where apt-get is
usable as root), ``chromium-browser``, ``google-chrome``, or the path in ``$MOORELAB_CHROMIUM``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from moorelab.errors import MoorelabError

#: executables tried in order when ``$MOORELAB_CHROMIUM`` is not set
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: URL schemes a self-contained page may load from
LOCAL_SCHEMES = ("data:", "blob:", "about:", "file:", "chrome-error:", "devtools:")

_PAGE_JS = r"""
(() => {
  const de = document.documentElement;
  const broken = Array.from(document.images)
    .filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => (i.alt ? `alt="${i.alt}" ` : '') + 'src=' + (i.getAttribute('src') || '').slice(0, 60));
  const scrollers = [];
  for (const el of document.body ? document.body.querySelectorAll('*') : []) {
    const ox = getComputedStyle(el).overflowX;
    if ((ox === 'auto' || ox === 'scroll') && el.scrollWidth > el.clientWidth + 1) {
      scrollers.push(`<${el.tagName.toLowerCase()}> content ${el.scrollWidth} px in a ${el.clientWidth} px box`);
    }
  }
  // text spilling out of its own box (a long word in a fixed-width table cell): drawn over its neighbours
  const spills = [];
  for (const el of document.body ? document.body.querySelectorAll('td,th,p,li,figcaption,caption,h1,h2,h3,dt,dd') : []) {
    if (getComputedStyle(el).overflowX === 'visible' && el.scrollWidth > el.clientWidth + 1) {
      spills.push(`<${el.tagName.toLowerCase()}> "${el.textContent.trim().slice(0, 40)}": ${el.scrollWidth} px of text in a ${el.clientWidth} px box`);
    }
  }
  // the widest elements sticking out of the window, to say what made a page too wide
  const out = [];
  for (const el of document.body ? document.body.querySelectorAll('*') : []) {
    const r = el.getBoundingClientRect();
    if (r.right > de.clientWidth + 1) out.push([r.right, `<${el.tagName.toLowerCase()}> right edge at ${Math.round(r.right)} px`]);
  }
  out.sort((a, b) => b[0] - a[0]);
  return {scrollWidth: de.scrollWidth, clientWidth: de.clientWidth, innerWidth: window.innerWidth,
          height: de.scrollHeight, images: document.images.length, broken, scrollers, spills,
          sticking_out: out.slice(0, 3).map(x => x[1]), title: document.title};
})()
"""


class BrowserNotFound(MoorelabError):
    """No Chromium (or Chrome) executable: the page cannot be checked in a browser."""


@dataclass
class PageCheck:
    """What headless Chromium found on one page (widths in CSS pixels)."""

    path: Path
    window_width: int
    page_width: int = 0
    page_height: int = 0
    images: int = 0
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    horizontal_scrollers: list[str] = field(default_factory=list)
    spilling_text: list[str] = field(default_factory=list)
    sticking_out: list[str] = field(default_factory=list)
    network_requests: list[str] = field(default_factory=list)
    title: str = ""
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        """One line per problem a reader would hit; empty when the page is clean."""
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"broken image: {b}" for b in self.broken_images]
        if self.page_width > self.window_width:
            out.append(f"page wider than the window: {self.page_width} px in a {self.window_width} px window"
                       + (f" ({'; '.join(self.sticking_out)})" if self.sticking_out else ""))
        out += [f"scrolls sideways inside the page: {s}" for s in self.horizontal_scrollers]
        out += [f"text spills out of its box: {s}" for s in self.spilling_text]
        out += [f"network fetch (the page must work offline): {u}" for u in self.network_requests]
        return out

    @property
    def ok(self) -> bool:
        """True when :attr:`problems` is empty."""
        return not self.problems


def find_chromium() -> str | None:
    """Path of the Chromium executable: ``$MOORELAB_CHROMIUM`` if set, else the first of
    :data:`CHROMIUM_NAMES` on ``PATH``; None when there is none."""
    env = os.environ.get("MOORELAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    """The DevTools protocol over Chromium's ``--remote-debugging-pipe``."""

    def __init__(self, write_fd: int, read_fd: int, proc: subprocess.Popen, timeout: float):
        self.w, self.r, self.proc, self.timeout = write_fd, read_fd, proc, timeout
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict | None:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.r], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise MoorelabError(f"chromium closed the DevTools pipe (exit code {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m is None:
                raise MoorelabError(f"chromium did not answer {method} within {self.timeout:g} s")
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise MoorelabError(f"chromium: {method} failed: {m['error'].get('message')}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_for(self, method: str, session: str, seconds: float) -> bool:
        """Collect events until ``method`` arrives for ``session`` (True) or ``seconds`` pass."""
        if any(e["method"] == method and e.get("sessionId") == session for e in self.events):
            return True
        deadline = time.monotonic() + seconds
        while True:
            m = self._read_message(deadline)
            if m is None:
                return False
            if "method" in m:
                self.events.append(m)
                if m["method"] == method and m.get("sessionId") == session:
                    return True

    def drain(self, seconds: float) -> None:
        """Collect the events arriving within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (m := self._read_message(deadline)) is not None:
            if "method" in m:
                self.events.append(m)


def _console_text(event: dict) -> str | None:
    """The text of an error event, or None when the event is not an error."""
    p = event["params"]
    if event["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
        return " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
    if event["method"] == "Runtime.exceptionThrown":
        d = p["exceptionDetails"]
        return (d.get("exception", {}).get("description") or d.get("text", "exception")).splitlines()[0]
    if event["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
        e = p["entry"]
        return e["text"] + (f" ({e['url'][:80]})" if e.get("url") else "")
    return None


def check_pages(paths: Iterable[Path], *, width: int = 1280, height: int = 900, screenshot_dir: Path | None = None,
                timeout: float = 60.0, chromium: str | None = None) -> list[PageCheck]:
    """Open each page in one headless Chromium and report what a reader would hit.

    Args:
        paths: HTML files (opened as ``file://`` URLs).
        width, height: window size in CSS pixels (device scale 1).
        screenshot_dir: where to write ``<folder>-<file stem>.png`` (e.g. ``out-report.png``), a
            full-page screenshot of each page, 1280 pixels wide by default (none taken when None).
        timeout: seconds to wait for Chromium's answer to one command, and for one page to load.
        chromium: executable (default: :func:`find_chromium`).

    Returns:
        One :class:`PageCheck` per path, in order; :attr:`PageCheck.problems` lists what failed.

    Raises:
        BrowserNotFound: no Chromium executable.
        MoorelabError: a path that is not a file; Chromium that fails to start or to answer.
    """
    paths = [Path(p).resolve() for p in paths]
    for p in paths:
        if not p.is_file():
            raise MoorelabError(f"{p}: no such page to check")
    exe = chromium or find_chromium()
    if not exe:
        raise BrowserNotFound("chromium not found: install Debian's `chromium` (apt-get install chromium) "
                              "or set MOORELAB_CHROMIUM to a Chromium/Chrome executable")
    if screenshot_dir is not None:
        Path(screenshot_dir).mkdir(parents=True, exist_ok=True)
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    # Chromium reads commands on fd 3 and writes answers on fd 4: move both ends there in the child
    child_r, child_w = _above(to_chrome_r, 10), _above(from_chrome_w, 10)

    def _plumb():  # runs in the child, before exec
        os.dup2(child_r, 3)
        os.dup2(child_w, 4)

    profile = tempfile.mkdtemp(prefix="moorelab-chromium-")
    log = tempfile.TemporaryFile()
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={width},{height}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost", "about:blank"]
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=False,
                                preexec_fn=_plumb)
    except OSError as exc:
        raise MoorelabError(f"{exe}: cannot start ({exc.strerror})") from None
    finally:
        for fd in (to_chrome_r, from_chrome_w, child_r, child_w):
            os.close(fd)
    pipe = _Pipe(to_chrome_w, from_chrome_r, proc, timeout)
    results = []
    try:
        for p in paths:
            results.append(_check_one(pipe, p, width, height, screenshot_dir, timeout))
        try:
            pipe.send("Browser.close")
        except MoorelabError:
            pass
    except MoorelabError as exc:
        log.seek(0)
        tail = log.read()[-1500:].decode(errors="replace").strip()
        raise MoorelabError(f"{exc}" + (f"; chromium said: {tail.splitlines()[-1]}" if tail else "")) from None
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
    return results


def check_page(path: Path, **kwargs) -> PageCheck:
    """:func:`check_pages` for one page (same keyword arguments)."""
    return check_pages([path], **kwargs)[0]


def _above(fd: int, floor: int) -> int:
    """A duplicate of ``fd`` numbered ≥ ``floor`` (so that moving it to 3 or 4 clobbers nothing)."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD, floor)


def _check_one(pipe: _Pipe, path: Path, width: int, height: int, screenshot_dir: Path | None,
               timeout: float) -> PageCheck:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for method in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
        pipe.send(method, session=session)
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    first = len(pipe.events)
    nav = pipe.send("Page.navigate", {"url": path.as_uri()}, session)
    check = PageCheck(path=path, window_width=width)
    if nav.get("errorText"):
        check.console_errors.append(f"navigation failed: {nav['errorText']}")
    if not pipe.wait_for("Page.loadEventFired", session, timeout):
        check.console_errors.append(f"the page did not finish loading within {timeout:g} s")
    pipe.drain(0.3)  # late console messages and failed loads
    info = pipe.send("Runtime.evaluate", {"expression": _PAGE_JS, "returnByValue": True}, session)["result"]["value"]
    pipe.drain(0.1)
    for e in pipe.events[first:]:
        if e.get("sessionId") != session:
            continue
        text = _console_text(e)
        if text is not None:
            check.console_errors.append(text)
        if e["method"] == "Network.requestWillBeSent":
            url = e["params"]["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES):
                check.network_requests.append(url[:120])
            elif url.startswith("file:") and url.split("#")[0] != path.as_uri():
                check.network_requests.append(f"{url[:120]} (a separate file: the page does not stand alone)")
    check.page_width, check.page_height = info["scrollWidth"], info["height"]
    check.window_width = info["clientWidth"] or width
    check.images, check.broken_images = info["images"], info["broken"]
    check.horizontal_scrollers, check.sticking_out, check.title = info["scrollers"], info["sticking_out"], info["title"]
    check.spilling_text = info["spills"]
    if screenshot_dir is not None:
        shot_h = min(max(info["height"], height), 16000)
        shot = pipe.send("Page.captureScreenshot",
                         {"format": "png", "captureBeyondViewport": True,
                          "clip": {"x": 0, "y": 0, "width": width, "height": shot_h, "scale": 1}}, session)
        check.screenshot = Path(screenshot_dir) / f"{path.parent.name}-{path.stem}.png"
        check.screenshot.write_bytes(base64.b64decode(shot["data"]))
    pipe.send("Target.closeTarget", {"targetId": target})
    pipe.events = pipe.events[:first]
    return check
