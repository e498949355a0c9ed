"""report.html in a real browser: headless Chromium (the distribution's package, driven by
Playwright) loads it offline, every image decodes, the console shows no error, and a
full-page screenshot is kept (copied to /tmp/report-screenshot.png for a person to look at)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from taskexpert.recipes.report import run_report

from .conftest import LEAKAGE, ROUTING, write_json

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run does)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is absent (pip install -e '.[dev]')"
    )
    return playwright.sync_playwright


def test_report_loads_in_chromium_with_every_image_and_no_console_error(
    sync_playwright, run_copy, tmp_path
):
    write_json(run_copy / "stages/eval/moe-seed0/routing.json", ROUTING)
    write_json(run_copy / "stages/leakage/leakage.json", LEAKAGE)
    html_path, _ = run_report(run_copy)
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) >= 8  # verdict, similarity, source mix, K-shot, 2 training, 2 routing
    broken = [alt for alt, complete, width in images if not complete or width <= 0]
    assert broken == []
    assert overflow <= 0  # nothing wider than the window: wide tables scroll in their box
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)
