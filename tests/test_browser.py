"""The headless-Chromium harness in tests/browser.py, on small hand-written pages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from .browser import BrowserError, find_chromium, render_page
from .helpers import REPO

pytestmark = pytest.mark.slow  # each test starts a headless Chromium (seconds)

OFFLINE_TEMPLATE = REPO / ".dvc" / "plots" / "offline.html"


@pytest.fixture
def chromium() -> str:
    """The Chromium executable; skips the test if there is none."""
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium found (install the chromium package or set CHROMIUM)")
    return found


# Pages without Vega are done at their load event: no need to wait long for them to settle.
STATIC = 0.2


def write_page(directory: Path, body: str, name: str = "page.html") -> Path:
    """A minimal HTML page with ``body``."""
    page = directory / name
    page.write_text(
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'></head>\n<body>{body}</body></html>"
    )
    return page


def test_image_renders_without_errors(chromium: str, tmp_path: Path) -> None:
    Image.new("RGB", (4, 3), "red").save(tmp_path / "tiny.png")
    report = render_page(
        write_page(tmp_path, '<img src="tiny.png">'), chromium=chromium, settle=STATIC
    )
    assert report.errors == []
    assert report.images == 1
    assert report.broken_images == []
    assert report.charts == 0


def test_console_error_and_uncaught_exception_are_errors(chromium: str, tmp_path: Path) -> None:
    script = (
        "<script>console.warn('careful'); console.error('boom'); throw new Error('kaput');</script>"
    )
    report = render_page(write_page(tmp_path, script), chromium=chromium, settle=STATIC)
    assert any("boom" in e and "console.error" in e for e in report.errors), report.errors
    assert any("Uncaught" in e and "kaput" in e for e in report.errors), report.errors
    assert report.warnings == ["console.warn: careful"]


def test_missing_image_is_broken(chromium: str, tmp_path: Path) -> None:
    report = render_page(
        write_page(tmp_path, '<img src="missing.png">'), chromium=chromium, settle=STATIC
    )
    assert report.images == 0
    assert [Path(src).name for src in report.broken_images] == ["missing.png"]
    assert len(report.errors) == 1 and "missing.png" in report.errors[0], report.errors


def test_vega_lite_chart_renders_offline(chromium: str, tmp_path: Path) -> None:
    # What `dvc plots show` writes: the repository's offline template (Vega inlined), its
    # {plot_divs} placeholder filled with a div per plot that calls vegaEmbed.
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]},
        "mark": "line",
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": "loss", "type": "quantitative"},
        },
    }
    div = (
        '<div id="loss"><script type="text/javascript">'
        f"var spec = {json.dumps(spec)}; vegaEmbed('#loss', spec);</script></div>"
    )
    template = OFFLINE_TEMPLATE.read_text(encoding="utf-8")
    page = tmp_path / "index.html"
    page.write_text(template.replace("{refresh_tag}", "").replace("{plot_divs}", div))
    report = render_page(page, chromium=chromium)
    assert report.errors == []
    assert report.charts == 1


def test_page_that_never_loads_times_out(chromium: str, tmp_path: Path) -> None:
    page = write_page(tmp_path, "<script>while (true) {}</script>")
    with pytest.raises(BrowserError, match="did not finish loading"):
        render_page(page, timeout=2, chromium=chromium)


def test_browser_that_dies_is_a_clear_error(tmp_path: Path) -> None:
    # Needs no Chromium: `false` stands in for one that exits at once, closing the pipe.
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` command")
    with pytest.raises(BrowserError, match="closed the DevTools pipe"):
        render_page(write_page(tmp_path, "<p>hi</p>"), timeout=10, chromium=false)
