"""Headless Chromium for the tests of HTML pages (the session report, the history trend report): load a page,
collect what it showed (console errors, each plot's size and drawn data, labels that overlap) and a screenshot.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (NUL-separated JSON on file
descriptors 3 and 4): standard library only, no port, no WebDriver, nothing downloaded. Chromium comes from the
system (Debian: ``apt-get install chromium``); ``LLMPERF_CHROMIUM`` names another binary. Without one the tests
fail, so a missing browser cannot go unseen, unless ``LLMPERF_SKIP_BROWSER=1`` makes them skip. The fixtures
``chromium_binary`` and ``browser`` (one browser per test module) are in ``conftest.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Safety deadline for one protocol exchange, so a wedged browser cannot hang the suite (not a measurement).
DEADLINE_S = 60.0
# Chromium reads the protocol on descriptor 3 and writes on 4: put the pipe ends there, then become the browser.
TRAMPOLINE = (
    "import os, sys; i, o = int(sys.argv[1]), int(sys.argv[2]); os.dup2(i, 3); os.dup2(o, 4); "
    "os.close(i); os.close(o); os.execv(sys.argv[3], sys.argv[3:])"
)


def find_chromium() -> str | None:
    explicit = os.environ.get("LLMPERF_CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The browser binary; without one, fail (skip with ``LLMPERF_SKIP_BROWSER=1``) saying how to install it."""
    binary = find_chromium()
    if binary is None:
        explicit = os.environ.get("LLMPERF_CHROMIUM")
        where = (
            f"LLMPERF_CHROMIUM={explicit!r} is not an executable" if explicit else "none of " + ", ".join(BROWSER_NAMES)
        )
        message = f"no Chromium binary found ({where} on PATH); install it with: apt-get install -y chromium"
        if os.environ.get("LLMPERF_SKIP_BROWSER"):
            pytest.skip(message)
        pytest.fail(message + " (or set LLMPERF_SKIP_BROWSER=1 to skip the browser tests)", pytrace=False)
    return binary


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe pair."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        import fcntl  # POSIX only, like the pipe hand-over itself

        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Move the child's ends above 3 and 4, where the trampoline puts them, so that no dup2 clobbers the other.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 20)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 20)
        os.close(to_browser_r)
        os.close(from_browser_w)
        argv = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--hide-scrollbars",
            f"--user-data-dir={profile_dir}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.log_path = profile_dir.parent / "chromium-stderr.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", TRAMPOLINE, str(child_in), str(child_out), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(child_in, child_out),
                start_new_session=True,
            )
        os.close(child_in)
        os.close(child_out)
        self._write = to_browser_w
        self._read = from_browser_r
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"no answer from Chromium within {DEADLINE_S:.0f} s; see {self.log_path}")
            ready, _, _ = select.select([self._read], [], [], remaining)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise ProtocolError(f"Chromium closed the pipe (exit code {self.proc.poll()}); see {self.log_path}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + DEADLINE_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ProtocolError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        for event in self.events:
            if event["method"] == method and event.get("sessionId") == session:
                return event
        while True:
            reply = self._receive(deadline)
            if "method" in reply:
                self.events.append(reply)
                if reply["method"] == method and reply.get("sessionId") == session:
                    return reply

    def close(self) -> None:
        with contextlib.suppress(ProtocolError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        # Helpers (renderer, GPU, zygote) are in the browser's own process group: leave none behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        os.close(self._write)
        os.close(self._read)


class Page:
    """What a page showed: console errors, plot sizes, and a full-page screenshot."""

    def __init__(self, errors: list[str], plots: list[dict[str, Any]], facts: dict[str, Any], screenshot: Path):
        self.errors = errors
        self.plots = plots
        self.facts = facts
        self.screenshot = screenshot


# Per plot: its size, the data drawn (line paths and point markers), and each pair of labels that overlap by more
# than a sliver, as the browser laid them out.
PAGE_FACTS = """JSON.stringify({
  title: document.title,
  plots: [...document.querySelectorAll('svg.plot')].map(s => {
    const r = s.getBoundingClientRect();
    const labels = [...s.querySelectorAll('.pt-label text, .mark-label text, .ref-label text')].map(
      t => [t.textContent, t.getBoundingClientRect()]);
    const overlaps = [];
    labels.forEach(([a, p], i) => labels.slice(i + 1).forEach(([b, q]) => {
      const w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
      const h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      if (w > 1 && h > 1 && w * h > 4) overlaps.push(a + ' / ' + b);
    }));
    return {plot: s.dataset.plot, width: r.width, height: r.height, labels: labels.length, overlaps,
            drawn: s.querySelectorAll('.series-line path, .front path, .series-points use').length};
  }),
  rows: document.querySelectorAll('table.results tbody tr').length,
  sweeps: document.querySelectorAll('section.sweep').length,
  scripts: document.scripts.length,
  pageWidth: document.documentElement.scrollWidth,
  pageHeight: document.documentElement.scrollHeight,
  tooltips: [...document.querySelectorAll('.id[title]')].map(e => e.getAttribute('title')),
  brokenLinks: [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href')).filter(
    h => !document.getElementById(decodeURIComponent(h.slice(1)))),
})"""


def open_page(browser: Chromium, path: Path, screenshot: Path) -> Page:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    first_event = len(browser.events)
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired", session)
        value = browser.send("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True}, session=session)[
            "result"
        ]["value"]
        facts = json.loads(value)
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    errors = []
    for event in browser.events[first_event:]:
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        if event["method"] == "Runtime.exceptionThrown":
            errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console." + params["type"] + ": " + json.dumps(params.get("args", []))[:500])
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
    return Page(errors, facts["plots"], facts, screenshot)


def check_page(page: Page, expected_plots: set[str]) -> None:
    assert page.errors == [], page.errors
    assert page.facts["scripts"] == 0
    kinds = {p["plot"] for p in page.plots}
    assert expected_plots <= kinds, kinds
    for plot in page.plots:
        assert plot["width"] > 100, plot
        assert plot["height"] > 100, plot
        assert plot["drawn"] > 0, plot
        assert plot["overlaps"] == [], plot  # every label readable
    # Nothing overflows the window sideways (long ids are cut with an ellipsis).
    assert page.facts["pageWidth"] <= 1400, page.facts["pageWidth"]
