"""The HTML report in a real browser: headless Chromium clicks a thumbnail, checks the enlarged view,
filters the gallery and takes screenshots.

Skips where Chromium or Playwright is missing, unless ``LOSSCTL_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs Chromium), where that is a failure. ``LOSSCTL_CHROMIUM`` names another
Chromium binary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lossctl.cli import app

from .conftest import SAMPLE_GT, SAMPLE_PRED

CHROMIUM = Path(os.environ.get("LOSSCTL_CHROMIUM", "/usr/bin/chromium"))


def playwright_or_skip():
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem, sync_playwright = "playwright is not installed (pip install -e '.[test]')", None
    if problem is None and not CHROMIUM.exists():
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LOSSCTL_CHROMIUM)"
    if problem:
        if os.environ.get("LOSSCTL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{problem}; LOSSCTL_REQUIRE_BROWSER=1 requires the browser test to run")
        pytest.skip(problem)
    return sync_playwright


def test_report_in_chromium_enlarges_a_thumbnail_and_filters(tmp_path):
    sync_playwright = playwright_or_skip()
    from playwright.sync_api import expect

    page_path = tmp_path / "report.html"
    result = CliRunner().invoke(
        app, ["eval", str(SAMPLE_PRED), str(SAMPLE_GT), "-m", "l1,psnr", "--html", str(page_path), "-q"]
    )
    assert result.exit_code == 0, result.output
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())

            lightbox = page.locator("#lightbox")
            expect(lightbox).to_be_hidden()
            first = page.locator("#gallery .card").first
            expect(first.locator(".name")).to_have_text("mask/coins_mask")  # the worst l1 first
            heat = first.locator("img.thumb").nth(2)
            wanted = heat.get_attribute("data-full") or heat.get_attribute("src")
            heat.click()
            expect(lightbox).to_be_visible()
            enlarged = page.locator("#lightbox-image")
            assert enlarged.get_attribute("src") == wanted
            expect(page.locator("#lightbox-caption")).to_have_text(heat.get_attribute("data-caption"))
            assert "mask/coins_mask: l1 map 256x256" in heat.get_attribute("data-caption")
            natural = page.eval_on_selector("#lightbox-image", "img => [img.naturalWidth, img.naturalHeight]")
            assert natural[0] > 256 and natural[1] == 256  # the whole map and its colour bar
            assert enlarged.bounding_box()["width"] > 2 * heat.bounding_box()["width"]  # enlarged
            shot = tmp_path / "enlarged.png"
            page.screenshot(path=str(shot))
            with Image.open(shot) as image:
                assert image.size == (1200, 900) and len(image.convert("L").getcolors(1 << 16) or []) > 50

            page.keyboard.press("Escape")
            expect(lightbox).to_be_hidden()
            page.locator("#filter").fill("GRAY")  # case does not matter
            expect(page.locator("#gallery .card:visible")).to_have_count(1)
            expect(page.locator("#gallery .card:visible .name")).to_have_text("gray/camera_denoise")
            expect(page.locator("#shown")).to_have_text("1 of 7 shown")
            page.screenshot(path=str(tmp_path / "filtered.png"), full_page=True)
            page.locator("#filter").fill("")
            expect(page.locator("#gallery .card:visible")).to_have_count(7)
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing from a network
