"""The web app's "Align inputs first" in a real browser (Debian's Chromium via Playwright): the imputation's JSON
provenance holds each input's rigid transform to the reference. Marked ``browser``; skipped locally (an error in
CI) without Chromium, Playwright or the web extra, as the other browser tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web_fixtures import Server, chromium_path, require_browser

pytestmark = pytest.mark.browser

TIMEOUT_MS = 420_000  # the bundled model on the whole sample case on a slow, shared CPU

require_browser()
from playwright.sync_api import sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """A ``collagan-impute web`` server on a free port of this machine."""
    server = Server(tmp_path_factory.mktemp("web") / "server.log", threads=2)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


def test_align_inputs_first_puts_the_transforms_in_the_provenance(url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.get_by_text("Load sample case").click()
            page.locator("#status").filter(has_text="Sample case").wait_for()
            page.locator("#register").check()
            page.locator("#impute").click()
            page.get_by_text("t1c (synthetic, CollaGAN)").first.wait_for()
            with page.expect_download() as download:
                page.locator("#download-json").click()
            record = json.loads(Path(download.value.path()).read_text())
        finally:
            browser.close()
    assert record["collagan_synthetic"] == "true" and record["collagan_inputs"] == "t1n,t2f"
    alignment = record["registration"]["t2f"]
    assert alignment["reference"] == "t1n" and alignment["metric"] == "Mattes mutual information"
    assert alignment["final_metric_value"] < -0.3
    # The sample case's contrasts are co-registered: what registration finds is within its own accuracy.
    assert alignment["largest_displacement_mm"] < 0.5 and alignment["applied"] is False
    assert record["collagan_registration"].startswith("t2f: rigid to t1n")
