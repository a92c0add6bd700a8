"""One clear line instead of a traceback or a misleading message: header-plus-data files missing their data, a
gzip named .nii, negative intensities, a sheared sform (into the provenance), a case name too long for the file
system, the temporaries a killed process left. Real files through SimpleITK, a real SIGKILL."""

from __future__ import annotations

import gzip
import json
import re
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import impute_case, load_model
from CollaGANImputeLib.errors import InputError
from CollaGANImputeLib.io import MAX_CASE_NAME_BYTES, OutputSet, read_volume
from CollaGANImputeLib.pipeline import sidecar_path
from core_fixtures import child_env, head_phantom, make_image


@pytest.fixture(scope="module")
def model(tiny_model_path):
    torch.set_num_threads(1)
    return load_model(tiny_model_path)


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    paths = {}
    for seed, contrast in enumerate(("t1n", "t2f")):
        paths[contrast] = tmp_path / f"P1-{contrast}.nii.gz"
        sitk.WriteImage(make_image(head_phantom(seed=seed)), str(paths[contrast]))
    return paths


def test_a_mhd_without_its_data_file_names_the_data_file(tmp_path):
    header = tmp_path / "scan.mhd"
    sitk.WriteImage(make_image(head_phantom()), str(header), useCompression=False)
    data = tmp_path / "scan.raw"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(InputError, match=rf"scan.mhd's data file {data} is truncated: the header announces 92160 "
                                         "bytes, the file holds 1000"):
        read_volume(header)
    data.unlink()
    with pytest.raises(InputError, match=rf"scan.mhd's data file {data} is missing"):
        read_volume(header)


def test_a_gzip_named_nii_says_to_rename_it(tmp_path, inputs):
    wrong = tmp_path / "P1-t2f.nii"
    wrong.write_bytes(inputs["t2f"].read_bytes())
    with pytest.raises(InputError, match=r"is gzip-compressed but named \.nii.*rename it to P1-t2f\.nii\.gz"):
        read_volume(wrong)
    plain = tmp_path / "plain.nii"
    plain.write_bytes(gzip.decompress(inputs["t2f"].read_bytes()))
    assert read_volume(plain).GetSize() == (40, 48, 12)  # a real plain .nii still reads


def test_negative_intensities_name_the_input(model, tmp_path, inputs):
    negative = tmp_path / "negative-t2f.nii.gz"
    sitk.WriteImage(make_image(-head_phantom(seed=1)), str(negative))
    with pytest.raises(InputError, match=rf"^Input 't2f' \({re.escape(str(negative))}\): Cannot normalize: the 99th"):
        impute_case({"t1n": inputs["t1n"], "t2f": negative}, model, out_dir=tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_a_sheared_sform_is_warned_about_in_the_sidecar(model, tmp_path, inputs):
    sheared = tmp_path / "P1-t2f-sheared.nii"
    sitk.WriteImage(sitk.ReadImage(str(inputs["t2f"])), str(sheared))
    header = bytearray(sheared.read_bytes())
    header[280:296] = struct.pack("<4f", -1.0, 0.3, 0.0, 0.0)  # srow_x with a shear
    sheared.write_bytes(bytes(header))
    with pytest.warns(UserWarning, match="sform is sheared"):
        written = impute_case({"t1n": inputs["t1n"], "t2f": sheared}, model, out_dir=tmp_path / "out",
                              targets=["t1c"], device="cpu")
    record = json.loads(sidecar_path(written["t1c"]).read_text())
    assert any("Input 't2f': P1-t2f-sheared.nii's sform is sheared" in w for w in record["warnings"])


def test_a_case_name_too_long_for_the_file_system_is_refused_first(model, tmp_path, inputs):
    with pytest.raises(InputError, match=rf"is {MAX_CASE_NAME_BYTES + 1} bytes long.*shorter --name"):
        impute_case(inputs, model, out_dir=tmp_path / "a" / "out", name="x" * (MAX_CASE_NAME_BYTES + 1),
                    device="cpu")
    assert not (tmp_path / "a").exists()
    written = impute_case(inputs, model, out_dir=tmp_path / "a" / "out", name="x" * MAX_CASE_NAME_BYTES,
                          device="cpu", uncertainty=True)
    assert written["t1c"].exists()


def test_a_rerun_removes_the_temporaries_a_killed_process_left(tmp_path):
    target = tmp_path / "P1-t1c-synthetic-collagan.nii.gz"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from CollaGANImputeLib.io import OutputSet
        outputs = OutputSet()
        outputs.stage(Path({str(target)!r}), lambda tmp: Path(tmp).write_bytes(b"half"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], env=child_env(OMP_NUM_THREADS="1"))
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".P1-t1c-synthetic-collagan.") and ".tmp" in left[0]
    running = OutputSet()  # a temporary of a live process (this one) is kept while it runs
    running.stage(target, lambda tmp: Path(tmp).write_bytes(b"live"))
    with OutputSet() as outputs:
        outputs.stage(target, lambda tmp: Path(tmp).write_bytes(np.arange(4).tobytes()))
        outputs.commit()
    assert running.commit() == [target] and target.read_bytes() == b"live"
    assert [p.name for p in tmp_path.iterdir()] == ["P1-t1c-synthetic-collagan.nii.gz"]
