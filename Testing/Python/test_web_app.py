"""The web app's server side without a browser: upload handling, the one-job rule, the CLI entry point.

Needs the web extra (trame-slicer); skipped with a message without it (in CI it is installed).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from CollaGANImputeLib.errors import InputError

web = pytest.importorskip("CollaGANImputeLib.web", reason="the web extra is needed: pip install -e '.[web]'")
pytest.importorskip("trame_slicer", reason="the web extra is needed: pip install -e '.[web]'")


def test_sanitize_filename_keeps_only_a_safe_base_name():
    assert web.sanitize_filename("../../etc/passwd") == "passwd"
    assert web.sanitize_filename("C:\\x\\case t1c.nii.gz") == "case_t1c.nii.gz"
    assert web.sanitize_filename("...") == "upload"
    assert web.volume_extension("A-T1C.NII.GZ") == ".nii.gz" and web.volume_extension("a.png") is None


@pytest.fixture(scope="module")
def app():
    application = web.WebApp(device="cpu", precision="fp32")
    yield application
    application.cleanup()


def test_uploads_go_to_a_private_folder_and_bad_ones_are_refused(app):
    from CollaGANImputeLib.models import sample_case_dir

    assert stat.S_IMODE(os.stat(app.upload_dir).st_mode) == 0o700
    with pytest.raises(InputError, match="unsupported file type"):
        app.read_upload("notes.txt", b"hello")
    with pytest.raises(InputError, match="empty"):
        app.read_upload("x-t1n.nii.gz", b"")
    with pytest.raises(Exception, match="(?i)nifti|read|damaged|truncated"):
        app.read_upload("broken-t1n.nii.gz", b"not a nifti" * 50)
    assert not any(app.upload_dir.iterdir())  # a refused upload is not kept
    name = app.read_upload("../" + "TCGA-HT-7882-t1n.nii.gz",
                           (sample_case_dir() / "TCGA-HT-7882-t1n.nii.gz").read_bytes())
    assert name == "TCGA-HT-7882-t1n" and (app.upload_dir / "TCGA-HT-7882-t1n.nii.gz").is_file()


def test_upload_size_limit(app, monkeypatch):
    monkeypatch.setattr(web, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(InputError, match="upload limit"):
        app.read_upload("big-t1n.nii.gz", b"x" * 1001)


def test_one_imputation_at_a_time(app):
    app.load_sample_case()
    assert app.state.target == "t1c" and app.state.input_t1n and app.state.input_t2f
    assert app._job_lock.acquire(blocking=False)  # a job is running
    try:
        app.impute()
        assert "one imputation at a time" in app.state.error
    finally:
        app._job_lock.release()


def test_web_command_defaults_to_this_machine_only():
    text = subprocess.run([sys.executable, "-m", "CollaGANImputeLib", "web", "--help"], capture_output=True,
                          text=True, check=True).stdout
    assert "default: 127.0.0.1" in text and "--port" in text and "--model" in text
