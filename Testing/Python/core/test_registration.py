"""Rigid co-registration of misaligned inputs: a known motion of a real volume is found again, the CLI records
the transform in the sidecar, and without the flag nothing changes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import impute, load_model
from CollaGANImputeLib.cli import EXIT_OK, main
from CollaGANImputeLib.contract import sha256_of
from CollaGANImputeLib.errors import InputError
from CollaGANImputeLib.geometry import align_to_reference
from CollaGANImputeLib.registration import large_motion, moved, register_inputs, register_rigid
from CollaGANImputeLib.scene.job import ChunkedImputation

torch.set_num_threads(1)

#: 3 mm shift and 5 degrees about the superior-inferior axis, about the volume's centre.
SHIFT_MM = (2.0, -2.0, 1.0)
ROTATION_DEG = 5.0


def motion(image: sitk.Image) -> sitk.Euler3DTransform:
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    return sitk.Euler3DTransform(centre, 0.0, 0.0, math.radians(ROTATION_DEG), SHIFT_MM)


def points_inside(image: sitk.Image) -> np.ndarray:
    """Physical points spread over the volume (corners of an inner box), where a transform's error is measured."""
    size = np.array(image.GetSize()) - 1
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in corner])
                     for corner in np.array(np.meshgrid(*[[0.25 * s, 0.75 * s] for s in size])).T.reshape(-1, 3)])


def worst_error_mm(found: sitk.Transform, known: sitk.Transform, where: np.ndarray) -> float:
    return max(float(np.linalg.norm(np.subtract(found.TransformPoint(p.tolist()), known.TransformPoint(p.tolist()))))
               for p in where)


@pytest.fixture(scope="module")
def sample_images(sample_case) -> dict[str, sitk.Image]:
    return {c: sitk.ReadImage(str(sample_case / f"TCGA-HT-7882-{c}.nii.gz")) for c in ("t1n", "t1c", "t2f")}


def test_registration_recovers_a_known_shift_and_rotation_of_a_real_volume(sample_images):
    t1n, t2f = sample_images["t1n"], sample_images["t2f"]
    known = motion(t2f)
    alignment = register_rigid(t1n, moved(t2f, known), "t2f", "t1n")
    assert worst_error_mm(alignment.transform, known, points_inside(t1n)) < 1.0
    assert abs(alignment.shift_mm - 3.0) < 1.0 and abs(alignment.rotation_deg - ROTATION_DEG) < 1.0
    assert alignment.metric < -0.3  # mutual information found: two contrasts of one head, aligned


def test_register_aligns_an_input_whose_header_lost_its_place(sample_images):
    # An export that lost its origin: 400 mm away, no overlap; refused by headers, aligned with registration.
    known = sitk.Euler3DTransform(motion(sample_images["t2f"]).GetCenter(), 0.0, 0.0, 0.0, (400.0, 0.0, 0.0))
    far = moved(sample_images["t2f"], known)
    with pytest.raises(InputError, match="does not overlap.*--register"):
        align_to_reference({"t1n": sample_images["t1n"], "t2f": far})
    alignments = register_inputs({"t1n": sample_images["t1n"], "t2f": far})
    assert worst_error_mm(alignments["t2f"].transform, known, points_inside(sample_images["t1n"])) < 1.0
    assert abs(alignments["t2f"].shift_mm - 400.0) < 1.0
    assert "more than patients move within one examination" in large_motion(alignments)[0]


def test_register_inputs_leaves_the_reference_and_the_images_alone(sample_images):
    t2f = moved(sample_images["t2f"], motion(sample_images["t2f"]))
    before = (t2f.GetOrigin(), t2f.GetDirection(), sitk.GetArrayViewFromImage(t2f).copy())
    alignments = register_inputs({"t1n": sample_images["t1n"], "t2f": t2f})
    assert list(alignments) == ["t2f"] and alignments["t2f"].reference == "t1n"
    assert (t2f.GetOrigin(), t2f.GetDirection()) == before[:2]
    assert np.array_equal(sitk.GetArrayViewFromImage(t2f), before[2])


def test_cli_register_writes_the_transform_in_the_sidecar(tiny_model_path, sample_images, tmp_path):
    t1n_path, t2f_path = tmp_path / "p-t1n.nii.gz", tmp_path / "p-t2f.nii.gz"
    known = motion(sample_images["t2f"])
    sitk.WriteImage(sample_images["t1n"], str(t1n_path))
    sitk.WriteImage(moved(sample_images["t2f"], known), str(t2f_path))
    hashes = [sha256_of(t1n_path), sha256_of(t2f_path)]
    out = tmp_path / "out"
    assert main(["impute", "--input", f"t1n={t1n_path}", "--input", f"t2f={t2f_path}", "--target", "t1c",
                 "--register", "--model", str(tiny_model_path), "--out", str(out), "--device", "cpu"]) == EXIT_OK
    sidecar = json.loads((out / "p-t1c-synthetic-collagan.json").read_text())
    record = sidecar["registration"]["t2f"]
    assert record["reference"] == "t1n" and record["metric"] == "Mattes mutual information"
    assert record["final_metric_value"] < -0.3
    found = sitk.Euler3DTransform()
    found.SetFixedParameters(record["fixed_parameters"])
    found.SetParameters(record["parameters"])
    assert worst_error_mm(found, known, points_inside(sample_images["t1n"])) < 1.0
    assert "t2f: rigid to t1n" in sidecar["collagan_registration"]
    assert sidecar["collagan_synthetic"] == "true"
    assert [sha256_of(t1n_path), sha256_of(t2f_path)] == hashes  # inputs are never modified


def test_without_register_nothing_changes(tiny_model_path, sample_images, tmp_path):
    model = load_model(tiny_model_path)
    shifted = {"t1n": sample_images["t1n"], "t2f": moved(sample_images["t2f"], motion(sample_images["t2f"]))}
    plain = impute(shifted, model, targets=["t1c"], device="cpu", precision="fp32")
    headers_only = impute(shifted, model, targets=["t1c"], device="cpu", precision="fp32", register=False)
    registered = impute(shifted, model, targets=["t1c"], device="cpu", precision="fp32", register=True)
    aligned = impute({"t1n": sample_images["t1n"], "t2f": sample_images["t2f"]}, model, targets=["t1c"],
                     device="cpu", precision="fp32")
    assert np.array_equal(plain.arrays["t1c"], headers_only.arrays["t1c"])
    assert plain.case.registration == {} and "collagan_registration" not in plain.images["t1c"].GetMetaDataKeys()
    out = tmp_path / "plain"
    sitk.WriteImage(shifted["t2f"], str(tmp_path / "p-t2f.nii.gz"))
    sitk.WriteImage(shifted["t1n"], str(tmp_path / "p-t1n.nii.gz"))
    assert main(["impute", "--input", f"t1n={tmp_path / 'p-t1n.nii.gz'}", "--input",
                 f"t2f={tmp_path / 'p-t2f.nii.gz'}", "--target", "t1c", "--model", str(tiny_model_path), "--out",
                 str(out), "--device", "cpu", "--precision", "fp32"]) == EXIT_OK
    assert "registration" not in json.loads((out / "p-t1c-synthetic-collagan.json").read_text())
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "p-t1c-synthetic-collagan.nii.gz")))
    assert np.allclose(written, sitk.GetArrayFromImage(plain.images["t1c"]), atol=1e-6)
    # The flag does what it is for: the registered t2f input is back where the unmoved one is.
    head = aligned.case.mask
    error = {name: float(np.abs(r.case.arrays["t2f"] - aligned.case.arrays["t2f"])[head].mean())
             for name, r in (("plain", plain), ("registered", registered))}
    assert error["registered"] < 0.3 * error["plain"], error


def test_slicer_job_registers_each_input_in_its_own_step(tiny_model_path, sample_images):
    model = load_model(tiny_model_path)
    images = {"t1n": sample_images["t1n"], "t2f": moved(sample_images["t2f"], motion(sample_images["t2f"])),
              "t1c": sample_images["t1c"]}
    job = ChunkedImputation({c: images[c] for c in ("t1n", "t2f")}, model, "t1c", device="cpu", register=True,
                            slices_per_step=32)
    assert job.step() is False and list(job.alignments) == ["t2f"]  # the first step registers t2f
    result = job.run()
    assert abs(job.alignments["t2f"].rotation_deg - ROTATION_DEG) < 1.0
    assert "t2f: rigid to t1n" in result.images["t1c"].GetMetaData("collagan_registration")
    assert result.case.registration["t2f"] is job.alignments["t2f"]


def test_evaluate_register_aligns_the_inputs_and_the_real_target(tiny_model_path, sample_case, sample_images,
                                                                 tmp_path):
    data = tmp_path / "data" / "TCGA-HT-7882"
    data.mkdir(parents=True)
    for contrast, image in sample_images.items():
        sitk.WriteImage(moved(image, motion(image)) if contrast == "t1c" else image,
                        str(data / f"TCGA-HT-7882-{contrast}.nii.gz"))
    out = tmp_path / "eval"
    assert main(["evaluate", str(data.parent), "--out", str(out), "--model", str(tiny_model_path), "--target", "t2f",
                 "--register", "--save-volumes", "--device", "cpu"]) == EXIT_OK
    sidecar = json.loads((out / "TCGA-HT-7882-t2f-synthetic-collagan.json").read_text())
    alignment = sidecar["registration"]["t1c"]
    assert alignment["applied"] and abs(alignment["rotation_deg"] - ROTATION_DEG) < 1.0
    assert abs(alignment["shift_mm"] - 3.0) < 1.0
