"""Render a local HTML page in headless Chromium and report what went wrong and what rendered.

Uses only the standard library: Chromium is driven over the DevTools protocol through
``--remote-debugging-pipe``, where the browser reads commands from fd 3 and writes responses
and events to fd 4, each message a JSON object terminated by a NUL byte.

Typical use, on the page ``dvc plots show`` writes::

    report = render_page(Path("dvc_plots/index.html"))
    assert report.errors == []
    assert report.charts == 3
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-pipe",
]

# Run in a small Python process between Popen and Chromium: it moves the two pipe ends it is
# given onto fds 3 and 4, where Chromium expects them, and then becomes Chromium. Popen's
# pass_fds keeps a descriptor's number, so it cannot place them there by itself.
_REMAP_FDS = """\
import fcntl, os, sys
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
os.dup2(high[0], 3)
os.dup2(high[1], 4)
os.close(high[0])
os.close(high[1])
os.execv(sys.argv[3], sys.argv[3:])
"""

# Evaluated in the page: what has rendered so far.
_COUNT_JS = """(() => {
  const images = Array.from(document.images);
  const src = (img) => (img.currentSrc || img.src || '').slice(0, 200);
  return {
    ready: document.readyState,
    charts: document.querySelectorAll('svg.marks, canvas.marks').length,
    images: images.filter((img) => img.complete && img.naturalWidth > 0).length,
    broken: images.filter((img) => img.complete && img.naturalWidth === 0).map(src),
    pending: images.filter((img) => !img.complete).map(src),
  };
})()"""


class BrowserError(RuntimeError):
    """Chromium could not be started, died, timed out, or refused a command."""


@dataclass
class PageReport:
    """What a page did while it loaded and rendered.

    ``errors`` holds console errors, uncaught exceptions (including unhandled promise
    rejections), browser-reported errors and failed resource loads; ``warnings`` holds console
    warnings, for information. ``charts`` counts rendered Vega views (``svg.marks`` or
    ``canvas.marks``), ``images`` counts ``<img>`` elements that decoded, and ``broken_images``
    lists the sources of those that did not.
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    charts: int = 0
    images: int = 0
    broken_images: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """The Chromium executable to use, or ``None`` if there is none.

    The ``CHROMIUM`` environment variable (a path or a command name) takes precedence; when it is
    set and does not resolve, there is no fallback. Otherwise the first of ``chromium``,
    ``chromium-browser`` and ``google-chrome`` on ``PATH``.
    """
    override = os.environ.get("CHROMIUM")
    if override:
        return shutil.which(override)
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    """A DevTools connection over a pair of pipes to a running Chromium."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int, read_fd: int, log: Path):
        self.proc = proc
        self.write_fd = write_fd
        self.read_fd = read_fd
        self.log = log
        self.buffer = b""
        self.last_id = 0

    def send(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> int:
        """Send a command without waiting for its response; returns its id."""
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self.write_fd, data) :]
        except BrokenPipeError:
            raise self._died() from None
        return self.last_id

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The next message, or ``None`` if none arrives before ``deadline``."""
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.read_fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise self._died()
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def _died(self) -> BrowserError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return BrowserError(
            f"Chromium closed the DevTools pipe (exit code {code}); stderr:\n{tail}"
        )


class _Page:
    """One page target: sends commands to it and turns its events into a report."""

    def __init__(self, pipe: _Pipe, deadline: float):
        self.pipe = pipe
        self.deadline = deadline
        self.session = ""
        self.loaded = False
        self.report = PageReport()
        self.urls: dict[str, str] = {}
        self.failed: set[str] = set()

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a command to the page (or the browser, before attaching) and await its result."""
        sent = self.pipe.send(method, params, self.session)
        while True:
            message = self.pipe.receive(self.deadline)
            if message is None:
                raise BrowserError(f"timed out waiting for Chromium to answer {method}")
            if message.get("id") == sent:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            self.handle(message)

    def pump(self, until: float) -> None:
        """Handle events until ``until`` (or the overall deadline, whichever is first)."""
        until = min(until, self.deadline)
        while (message := self.pipe.receive(until)) is not None:
            self.handle(message)

    def handle(self, message: dict[str, Any]) -> None:
        """Record one event from the page."""
        if message.get("sessionId") != self.session or "method" not in message:
            return
        method, params = message["method"], message.get("params", {})
        errors, warnings = self.report.errors, self.report.warnings
        if method == "Page.loadEventFired":
            self.loaded = True
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_object_text(arg) for arg in params.get("args", []))
            if params["type"] in ("error", "assert"):
                errors.append(f"console.{params['type']}: {text}")
            elif params["type"] == "warning":
                warnings.append(f"console.warn: {text}")
        elif method == "Runtime.exceptionThrown":
            errors.append(_exception_text(params["exceptionDetails"]))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            where = f" ({_short(entry['url'])})" if entry.get("url") else ""
            if entry["level"] == "error":
                # A failed load also comes as Network.loadingFailed: report it once.
                if entry["source"] != "network" or self.first_failure(entry.get("url", "")):
                    errors.append(f"{entry['source']}: {entry['text']}{where}")
            elif entry["level"] == "warning":
                warnings.append(f"{entry['source']}: {entry['text']}{where}")
        elif method == "Network.requestWillBeSent":
            self.urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            url = self.urls.get(params["requestId"], "?")
            if self.first_failure(url):
                errors.append(f"failed to load {_short(url)}: {params.get('errorText', '')}")
        elif method == "Page.javascriptDialogOpening":
            warnings.append(f"{params['type']} dialog: {params['message']}")
            self.pipe.send("Page.handleJavaScriptDialog", {"accept": True}, self.session)

    def first_failure(self, url: str) -> bool:
        """Whether this is the first report of ``url`` failing to load (and note that it is)."""
        if url in self.failed:
            return False
        self.failed.add(url)
        return True

    def counts(self) -> dict[str, Any]:
        """What has rendered so far, as counted by ``_COUNT_JS`` in the page."""
        result = self.call("Runtime.evaluate", {"expression": _COUNT_JS, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"counting failed: {_exception_text(result['exceptionDetails'])}")
        return result["result"]["value"]


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _remote_object_text(obj: dict[str, Any]) -> str:
    """A console argument as text: primitives by value, objects by their description."""
    if "value" in obj:
        value = obj["value"]
        return value if isinstance(value, str) else json.dumps(value)
    preview = obj.get("preview")
    if preview and preview.get("type") == "object" and preview.get("subtype") is None:
        fields = ", ".join(
            f"{p['name']}: {p.get('value', p['type'])}" for p in preview["properties"]
        )
        return f"{{{fields}{', ...' if preview.get('overflow') else ''}}}"
    return str(obj.get("description", obj.get("unserializableValue", obj.get("type", "?"))))


def _exception_text(details: dict[str, Any]) -> str:
    """An uncaught exception as one line: its message and where it was thrown."""
    exception = details.get("exception")
    description = _remote_object_text(exception).split("\n")[0] if exception else ""
    frames = details.get("stackTrace", {}).get("callFrames", [])
    at = frames[0] if frames else details
    where = ""
    if at.get("url"):
        where = (
            f" ({_short(at['url'])}:{at.get('lineNumber', 0) + 1}:{at.get('columnNumber', 0) + 1})"
        )
    return f"{details.get('text', 'Uncaught')} {description}".strip() + where


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill Chromium and every process it started (they share its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def render_page(
    html: Path,
    timeout: float = 60,
    settle: float = 1.0,
    chromium: str | None = None,
) -> PageReport:
    """Load ``html`` in headless Chromium and report errors and what rendered.

    After the load event the page is polled until the rendered counts have not changed for
    ``settle`` seconds (Vega renders asynchronously). ``timeout`` bounds the whole call; if the
    page has not fired its load event by then or stops answering, :class:`BrowserError` is
    raised (as it is if Chromium cannot start or dies); if it is merely still changing, the
    counts so far are returned. ``chromium`` defaults to :func:`find_chromium`.
    """
    executable = chromium or find_chromium()
    if executable is None:
        raise BrowserError("no Chromium found: install chromium or set CHROMIUM")
    if not Path(html).is_file():
        raise FileNotFoundError(html)
    deadline = time.monotonic() + timeout
    url = Path(html).resolve().as_uri()
    tmp = Path(tempfile.mkdtemp(prefix="chromium-"))
    log = tmp / "stderr.log"
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    proc = None
    try:
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", _REMAP_FDS, str(to_browser_r), str(from_browser_w)]
                + [executable, *FLAGS, f"--user-data-dir={tmp / 'profile'}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(to_browser_r, from_browser_w),
                start_new_session=True,
            )
        # Only Chromium may hold these ends, so that its death shows up here as EOF.
        os.close(to_browser_r)
        os.close(from_browser_w)
        to_browser_r = from_browser_w = -1
        page = _Page(_Pipe(proc, to_browser_w, from_browser_r, log), deadline)

        target = page.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = page.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        page.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            page.call(f"{domain}.enable")
        navigated = page.call("Page.navigate", {"url": url})
        if "errorText" in navigated:
            raise BrowserError(f"could not open {url}: {navigated['errorText']}")
        while not page.loaded:
            message = page.pipe.receive(deadline)
            if message is None:
                raise BrowserError(f"{html} did not finish loading within {timeout} s")
            page.handle(message)

        last, stable_since = page.counts(), time.monotonic()
        while time.monotonic() < deadline:
            page.pump(time.monotonic() + 0.1)
            now = page.counts()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif last["ready"] == "complete" and time.monotonic() - stable_since >= settle:
                break
        page.pump(time.monotonic() + 0.05)  # events that raced the last count

        report = page.report
        report.charts, report.images = last["charts"], last["images"]
        report.broken_images = last["broken"] + last["pending"]
        return report
    finally:
        for fd in (to_browser_r, to_browser_w, from_browser_r, from_browser_w):
            if fd >= 0:
                os.close(fd)
        if proc is not None:
            _kill(proc)
        for _ in range(3):  # a dying renderer may still be writing to its profile
            shutil.rmtree(tmp, ignore_errors=True)
            if not tmp.exists():
                break
            time.sleep(0.2)
