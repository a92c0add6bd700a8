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
from CollaGANImputeLib import web_uploads  # noqa: E402


def test_sanitize_filename_keeps_only_a_safe_base_name():
    assert web_uploads.sanitize_filename("../../etc/passwd") == "passwd"
    assert web_uploads.sanitize_filename("C:\\x\\case t1c.nii.gz") == "case_t1c.nii.gz"
    assert web_uploads.sanitize_filename("...") == "upload"
    assert web_uploads.volume_extension("A-T1C.NII.GZ") == ".nii.gz" and web_uploads.volume_extension("a.png") is None


@pytest.fixture(scope="module")
def app():
    application = web.WebApp(device="cpu", precision="fp32")
    yield application
    application.cleanup()


def test_uploads_go_to_a_private_folder_and_bad_ones_are_refused(app):
    from CollaGANImputeLib.resources import sample_case_dir

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
    monkeypatch.setattr(web_uploads, "MAX_UPLOAD_BYTES", 1000)
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


def test_web_command_options_for_origins_and_idle_exit():
    text = subprocess.run([sys.executable, "-m", "CollaGANImputeLib", "web", "--help"], capture_output=True,
                          text=True, check=True).stdout
    assert "--allow-origin" in text and "--idle-timeout" in text and "default: 0, never" in text
    bad = subprocess.run([sys.executable, "-m", "CollaGANImputeLib", "web", "--allow-origin", "ftp://x/y"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not an origin" in bad.stderr and "Traceback" not in bad.stderr


def test_guard_allows_the_served_origin_and_the_named_ones_only():
    from CollaGANImputeLib.web_guard import Guard, normalize_origin

    guard = Guard(allowed_origins=["https://Proxy.example.org/"])
    served = {"Host": "127.0.0.1:8080", "Origin": "http://127.0.0.1:8080", "Upgrade": "websocket"}
    assert guard.refusal("GET", served, 8080) == ""
    assert guard.refusal("GET", {**served, "Host": "localhost:8080", "Origin": "http://localhost:8080"}, 8080) == ""
    assert guard.refusal("GET", {**served, "Host": "proxy.example.org",
                                 "Origin": "https://proxy.example.org"}, 8080) == ""
    assert "Origin" in guard.refusal("GET", {**served, "Origin": "http://127.0.0.1:9999"}, 8080)
    assert "Origin" in guard.refusal("GET", {**served, "Origin": "null"}, 8080)
    assert "no Origin" in guard.refusal("GET", {"Host": "127.0.0.1:8080", "Upgrade": "websocket"}, 8080)
    assert "no Origin" in guard.refusal("POST", {"Host": "127.0.0.1:8080"}, 8080)
    assert guard.refusal("GET", {"Host": "127.0.0.1:8080"}, 8080) == ""  # the page itself, typed in the address bar
    assert "Host" in guard.refusal("GET", {"Host": "attacker.test:8080"}, 8080)  # DNS rebinding
    assert "Host" in guard.refusal("GET", {"Host": "127.0.0.1:8081"}, 8080)
    assert len(guard.secret) >= 40 and guard.secret != Guard().secret
    with pytest.raises(InputError, match="is not an origin"):
        normalize_origin("https://proxy.example.org/path")


def _mhd(folder, name: str, data_file: str):
    path = folder / name
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 40 48 12\nElementType = MET_FLOAT\n"
                    f"ElementDataFile = {data_file}\n")
    return path


def test_header_plus_data_uploads_must_bring_their_data_file(tmp_path):
    from CollaGANImputeLib.web_uploads import check_data_file

    folder = tmp_path / "uploads"
    folder.mkdir()
    (tmp_path / "private.raw").write_bytes(bytes(40 * 48 * 12 * 4))
    with pytest.raises(InputError, match="by a path"):
        check_data_file(_mhd(folder, "a.mhd", str(tmp_path / "private.raw")), folder)
    with pytest.raises(InputError, match="by a path"):
        check_data_file(_mhd(folder, "b.mhd", "../private.raw"), folder)
    with pytest.raises(InputError, match="was not uploaded with it"):
        check_data_file(_mhd(folder, "c.mhd", "c.raw"), folder)
    with pytest.raises(InputError, match="several files or a pattern"):
        check_data_file(_mhd(folder, "d.mhd", "LIST"), folder)
    nhdr = folder / "e.nhdr"
    nhdr.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 40 48 12\nencoding: raw\n"
                    f"data file: {tmp_path / 'private.raw'}\n")
    with pytest.raises(InputError, match="by a path"):
        check_data_file(nhdr, folder)
    (folder / "f.raw").write_bytes(bytes(40 * 48 * 12 * 4))
    check_data_file(_mhd(folder, "f.mhd", "f.raw"), folder)  # uploaded together: accepted
    check_data_file(_mhd(folder, "g.mha", "LOCAL"), folder)
    nhdr.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 40 48 12\nencoding: raw\ndata file: f.raw\n")
    check_data_file(nhdr, folder)


def test_declared_size_is_checked_before_the_data_is_inflated(tmp_path):
    import gzip

    import numpy as np
    import SimpleITK as sitk
    from CollaGANImputeLib.web_uploads import check_upload, declared_bytes

    plain = tmp_path / "x.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((12, 48, 40), np.float32)), str(plain))
    data = bytearray(plain.read_bytes())
    data[40:48] = np.array([3, 2048, 2048, 256], dtype="<i2").tobytes()  # 4 GiB of float32 declared
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(bytes(data)))
    assert declared_bytes(bomb) == 4 * 2 ** 30
    with pytest.raises(InputError, match="declares 4096 MB of voxel data"):
        check_upload(bomb, tmp_path)
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(plain.read_bytes() + bytes(80 * 2 ** 20), compresslevel=1))
    with pytest.raises(InputError, match="holds more than its header declares"):
        check_upload(padded, tmp_path)
    honest = tmp_path / "honest.nii.gz"
    honest.write_bytes(gzip.compress(plain.read_bytes()))
    check_upload(honest, tmp_path)


def test_a_header_and_its_data_file_load_together(app, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((12, 48, 40)).astype(np.float32) + 1),
                    str(tmp_path / "pair-t2f.mhd"))
    with pytest.raises(InputError, match="was not uploaded with it"):
        app.read_upload("pair-t2f.mhd", (tmp_path / "pair-t2f.mhd").read_bytes())
    app._write_upload("pair-t2f.raw", (tmp_path / "pair-t2f.raw").read_bytes())
    assert app.read_upload("pair-t2f.mhd", (tmp_path / "pair-t2f.mhd").read_bytes()) == "pair-t2f"
    with pytest.raises(InputError, match="data file without its header"):
        app.read_upload("lonely.raw", b"1234")


def test_the_server_stays_up_unless_an_idle_timeout_is_given(app, monkeypatch):
    calls = []
    monkeypatch.setattr(app.server, "start", lambda **kwargs: calls.append(kwargs))
    app.start(port=0)
    app.start(port=0, idle_timeout=30, allowed_origins=["https://proxy.example.org"])
    assert calls[0]["timeout"] == 0 and calls[1]["timeout"] == 30
    assert app.guard.allowed_origins == {"https://proxy.example.org"}
    assert set(web.SERVER_OWNED_KEYS) >= {"banner", "result_name", "status", "volume_items"}
