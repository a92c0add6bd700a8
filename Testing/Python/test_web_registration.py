"""The web app's "Align inputs first" in a real browser (Debian's Chromium via Playwright): the imputation's JSON
provenance holds each input's rigid transform to the reference. Marked ``browser``; skipped locally (an error in
CI) without Chromium, Playwright or the web extra, as the other browser tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("COLLAGAN_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 420_000  # the bundled model on the whole sample case on a slow, shared CPU


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        raise RuntimeError(f"The browser tests must run in CI: {why}")
    pytest.skip(why, allow_module_level=True)


_require(Path(CHROMIUM).is_file() or shutil.which("chromium") is not None,
         f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
try:
    import trame_slicer  # noqa: F401
    from playwright.sync_api import sync_playwright
except ImportError as error:
    _require(False, f"the web extra and Playwright are needed (pip install -e '.[web]' playwright): {error}")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """A ``collagan-impute web`` server on a free port of this machine (its output in a file: a pipe could fill)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("web") / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "CollaGANImputeLib", "web", "--port", str(port), "--device",
                                "cpu", "--precision", "fp32", "--threads", "2"], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, f"The web server exited: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"The web server did not start: {log.read_text(errors='replace')}"
            if re.search("Uploads are kept in", log.read_text(errors="replace")):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5):
                        break
                except OSError:
                    pass
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_align_inputs_first_puts_the_transforms_in_the_provenance(url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                                    args=["--no-sandbox"])
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
