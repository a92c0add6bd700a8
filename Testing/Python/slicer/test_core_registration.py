"""'Align inputs first' through the Slicer module's logic on 3D Slicer's own libraries (slicer-core): volumes read
by Slicer's reader, one of them moved, imputed with ``register=True``; the scene's inputs are left as they were."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_core_support import require_slicer_core

slicer = require_slicer_core()
import vtk  # noqa: E402
from CollaGANImputeLib import load_model  # noqa: E402
from CollaGANImputeLib.registration import moved  # noqa: E402
from CollaGANImputeLib.scene.logic import SceneLogic, new_scene  # noqa: E402

pytestmark = pytest.mark.slicer_core
CASE = "TCGA-HT-7882"


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def test_align_inputs_first_records_the_transform_and_leaves_the_scene_inputs_alone(tiny_model_path, sample_case,
                                                                                 tmp_path):
    t2f = sitk.ReadImage(str(sample_case / f"{CASE}-t2f.nii.gz"))
    centre = t2f.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in t2f.GetSize()])
    sitk.WriteImage(moved(t2f, sitk.Euler3DTransform(centre, 0.0, 0.0, math.radians(5.0), (2.0, -2.0, 1.0))),
                    str(tmp_path / f"{CASE}-t2f.nii.gz"))
    logic = SceneLogic(new_scene())
    nodes = {"t1n": logic.readVolume(sample_case / f"{CASE}-t1n.nii.gz"),
             "t2f": logic.readVolume(tmp_path / f"{CASE}-t2f.nii.gz")}
    before = {c: (slicer.util.arrayFromVolume(n).copy(), _matrix(n)) for c, n in nodes.items()}
    model = load_model(tiny_model_path)
    plain = logic.imputeNodes(nodes, model=model, target="t1c", device="cpu")
    aligned = logic.imputeNodes(nodes, model=model, target="t1c", device="cpu", register=True)
    assert plain.GetAttribute("collagan_registration") is None
    record = aligned.GetAttribute("collagan_registration")
    assert record.startswith("t2f: rigid to t1n") and aligned.GetAttribute("collagan_synthetic") == "true"
    rotation = logic.lastResults[aligned.GetID()].case.registration["t2f"].rotation_deg
    assert abs(rotation - 5.0) < 1.0
    assert not np.array_equal(slicer.util.arrayFromVolume(plain), slicer.util.arrayFromVolume(aligned))
    for contrast, node in nodes.items():
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before[contrast][0])
        np.testing.assert_array_equal(_matrix(node), before[contrast][1])
