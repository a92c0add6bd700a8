"""The web app (``collagan-impute web``) driven end to end in a real browser: Debian's Chromium via Playwright.

Each test talks to one server started on a free port with the bundled model (fp32, as ``evaluate`` imputes). Locally
the tests skip with a message when Chromium, Playwright or the web extra are missing; in CI (``CI`` set) that is an
error. Marked ``browser``.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from web_fixtures import Server, chromium_path, require_browser

pytestmark = pytest.mark.browser

CASE = "TCGA-HT-7882"
TIMEOUT_MS = 420_000  # the bundled model on the whole sample case on a slow, shared CPU

require_browser()
from playwright.sync_api import sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("web") / "server.log", threads=2)
    running.wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    page.get_by_text("Load sample case").wait_for()
    page.get_by_text("Load sample case").click()
    page.locator("#status").filter(has_text="Sample case").wait_for()
    return page


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


def test_cancel_mid_run_leaves_no_result(page):
    page.locator("#impute").click()
    page.locator("#cancel:not([disabled])").wait_for()
    page.wait_for_function("() => { const p = document.querySelector('#progress');"
                           " return p && Number(p.getAttribute('aria-valuenow')) > 0; }")
    page.locator("#cancel").click()
    page.locator("#status").filter(has_text="Cancelled").wait_for()
    assert page.get_by_text("(synthetic, CollaGAN)").count() == 0
    assert page.locator("#synthetic-banner").count() == 0


def test_corrupt_upload_gives_a_clear_message(page, tmp_path):
    bad = tmp_path / "broken-t1n.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file" * 40)
    page.locator("#upload input[type=file], input[type=file]").first.set_input_files(str(bad))
    error = page.locator("#error")
    error.wait_for()
    text = error.inner_text()
    assert "broken-t1n.nii.gz" in text and "was not loaded" in text


def test_impute_shows_the_labeled_result_in_slice_views(page, tmp_path):
    start = time.perf_counter()
    page.locator("#impute").click()
    page.get_by_text("t1c (synthetic, CollaGAN)").first.wait_for()
    elapsed = time.perf_counter() - start
    print(f"click to result: {elapsed:.1f} s")
    banner = page.locator("#synthetic-banner")
    assert "SYNTHETIC" in banner.inner_text() and "t1c (synthetic, CollaGAN)" in banner.inner_text()
    assert page.locator("#synthetic-banner").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(211, 47, 47)"
    page.wait_for_timeout(3000)  # the streamed view image
    views = page.locator("#slice-views")
    shot = _pixels(views.screenshot(path=str(tmp_path / "views.png")))
    right = shot[:, shot.shape[1] // 2:]
    assert right.std() > 10 and (right > 60).mean() > 0.05, (right.mean(), right.std())


def _compared(page) -> dict[str, str]:
    """Impute (unless done) and compare; the scores table as shown (label -> value)."""
    if page.get_by_text("t1c (synthetic, CollaGAN)").count() == 0:
        page.locator("#impute").click()
        page.get_by_text("t1c (synthetic, CollaGAN)").first.wait_for()
    page.locator("#compare").click()
    page.locator("#scores .score-row").first.wait_for()
    return {r.locator(".metric").inner_text(): r.locator(".value").inner_text()
            for r in page.locator("#scores .score-row").all()}


def test_compare_table_equals_collagan_impute_evaluate(page, tmp_path):
    from CollaGANImputeLib.resources import sample_case_dir

    shown = _compared(page)
    assert page.locator("#legend").inner_text().count("blue = synthetic too dark") == 1
    assert page.locator("#ssim-plot").get_attribute("src").startswith("data:image/png;base64,")
    out = tmp_path / "eval"
    subprocess.run([sys.executable, "-m", "CollaGANImputeLib", "evaluate", str(sample_case_dir().parent),
                    "--cases", CASE, "--target", "t1c", "--out", str(out), "--threads", "2", "--device", "cpu"],
                   check=True, capture_output=True)
    from CollaGANImputeLib.scene.comparison import score_table

    rows = list(csv.DictReader((out / "scores_per_case.csv").open()))
    assert len(rows) == 1
    row = rows[0]
    scores = {}
    for key, value in row.items():
        try:
            scores[key] = float(value)
        except (TypeError, ValueError):
            continue
    expected = {label: text for label, text, _ in score_table({k: v for k, v in scores.items()
                                                                if k in _score_keys(shown)})}
    assert expected and all(shown[label] == text for label, text in expected.items()), (shown, expected)
    assert {"NMSE", "SSIM"} <= set(shown)


def test_the_scores_download_as_the_table_shows_them(page):
    shown = _compared(page)
    with page.expect_download() as download:
        page.locator("#download-scores").click()
    assert download.value.suggested_filename == "t1c-scores.csv"
    rows = {row["metric"]: row["value"] for row in csv.DictReader(Path(download.value.path()).open())}
    assert rows["protocol"] == "v3" and f"{float(rows['nmse']):.4f}" == shown["NMSE"]
    assert f"{float(rows['ssim']):.4f}" == shown["SSIM"]


def _score_keys(shown: dict) -> set:
    from CollaGANImputeLib.scene.comparison import SCORE_LABELS

    labels = {label: key for key, (label, _) in SCORE_LABELS.items()}
    return {labels.get(label, label) for label in shown}


def test_download_gives_the_labeled_volume_and_its_provenance(page, tmp_path):
    import SimpleITK as sitk

    if page.get_by_text("t1c (synthetic, CollaGAN)").count() == 0:
        page.locator("#impute").click()
        page.get_by_text("t1c (synthetic, CollaGAN)").first.wait_for()
    with page.expect_download() as download:
        page.locator("#download-nifti").click()
    volume = tmp_path / download.value.suggested_filename
    download.value.save_as(volume)
    assert volume.name == "t1c-synthetic-collagan.nii.gz"
    image = sitk.ReadImage(str(volume))
    assert image.GetSize()[:2] == (256, 256) and sitk.GetArrayViewFromImage(image).std() > 0.05
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(volume))
    reader.ReadImageInformation()
    assert reader.GetMetaData("descrip").startswith("SYNTHETIC t1c")  # labeled in the header itself
    with page.expect_download() as download:
        page.locator("#download-json").click()
    record = json.loads(Path(download.value.path()).read_text())
    assert record["collagan_target"] == "t1c" and record["model"]["sha256"]
    assert record["collagan_inputs"] == "t1n,t2f"


def test_uncertainty_overlay_and_legend(page):
    page.locator("#uncertainty").check()
    page.locator("#impute").click()
    page.locator("#uncertainty-legend").wait_for()  # shown only for a result with an uncertainty map
    legend = page.locator("#uncertainty-legend").inner_text()
    assert "disagree" in legend and "not a confidence map" in legend
    page.locator("#uncertainty").uncheck()


def test_stopping_the_server_deletes_the_uploads(server):
    folder = server.upload_dir()
    assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"  # this user only
    assert server.stop() == 143  # SIGTERM, as a service manager stops it
    assert not folder.exists()
