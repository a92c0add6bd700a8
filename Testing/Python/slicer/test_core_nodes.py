"""The node <-> SimpleITK path (CollaGANImputeLib.scene.nodes) on 3D Slicer's own libraries (slicer-core).

Slicer's reader and SimpleITK read the same files; their geometry is compared through Slicer's own IJK-to-RAS
matrix (not through the code under test), then through the conversion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_core_support import require_slicer_core

slicer = require_slicer_core()
import vtk  # noqa: E402 - vtk comes with slicer-core
from CollaGANImputeLib import InputError  # noqa: E402
from CollaGANImputeLib.scene.logic import new_scene  # noqa: E402
from CollaGANImputeLib.scene.nodes import (  # noqa: E402
    LABEL_MAP_VOLUME,
    image_from_node,
    node_from_image,
    read_volume_node,
)

pytestmark = pytest.mark.slicer_core
LPS = np.diag([-1.0, -1.0, 1.0])


def _rotation(degrees: float) -> np.ndarray:
    """30 degrees about x then y: oblique in every plane."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _variant(image: sitk.Image, kind: str) -> sitk.Image:
    """A copy of ``image`` with other header geometry (same voxels): what other scanners and tools write."""
    out = sitk.Image(image)
    if kind == "flipped":  # left-handed: the first axis runs right-to-left... and the slices bottom-up
        out.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
        out.SetOrigin((120.0, -40.0, 15.0))
    elif kind == "oblique":
        out.SetDirection(tuple(_rotation(30).ravel()))
        out.SetOrigin((-12.5, 30.25, 7.0))
    elif kind == "anisotropic":
        out.SetSpacing((0.9, 1.1, 3.3))
        out.SetOrigin((5.0, -7.0, 11.0))
    return out


def _node_ras(node, index) -> np.ndarray:
    """RAS of a voxel centre by Slicer's own matrix."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint([*map(float, index), 1.0])[:3])


@pytest.fixture
def scene():
    return new_scene()


@pytest.mark.parametrize("kind", ["original", "flipped", "oblique", "anisotropic"])
@pytest.mark.parametrize("contrast", ["t1n", "seg"])
def test_slicer_reader_and_simpleitk_agree(tmp_path, sample_case, scene, kind, contrast):
    """Same voxels at the same physical places, whichever reader, for the sample case and three header variants."""
    path = tmp_path / f"{kind}-{contrast}.nii.gz"
    sitk.WriteImage(_variant(sitk.ReadImage(str(sample_case / f"TCGA-HT-7882-{contrast}.nii.gz")), kind), str(path))
    reference = sitk.ReadImage(str(path))
    node = read_volume_node(scene, path, labelMap=contrast == "seg")
    assert node.GetName() == path.name.removesuffix(".nii.gz")
    assert node.IsA(LABEL_MAP_VOLUME) == (contrast == "seg")
    size = np.array(reference.GetSize())
    voxels = slicer.util.arrayFromVolume(node)
    assert voxels.dtype == sitk.GetArrayViewFromImage(reference).dtype == np.uint8  # no cast to float
    # 1. Slicer's own geometry: each corner voxel of the file lies where SimpleITK puts it (RAS = LPS flipped).
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in size])).T.reshape(-1, 3)
    ras_to_ijk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(node)))
    for corner in corners:
        lps = np.array(reference.TransformIndexToPhysicalPoint([int(c) for c in corner]))
        ijk = (ras_to_ijk @ np.append(LPS @ lps, 1.0))[:3]
        assert np.allclose(ijk, np.round(ijk), atol=1e-4), (corner, ijk)
        k, j, i = np.round(ijk[::-1]).astype(int)
        assert voxels[k, j, i] == reference[tuple(int(c) for c in corner)]
    # 2. The conversion: the same image in physical space (Slicer stores a left-handed file with its slice axis
    #    reversed, so compare on SimpleITK's grid) and, for right-handed files, the very same grid and array.
    image = image_from_node(node)
    on_grid = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(on_grid), sitk.GetArrayViewFromImage(reference))
    if np.linalg.det(np.reshape(reference.GetDirection(), (3, 3))) > 0:
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference))
        assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-5)
        assert np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
        assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    else:
        assert np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) > 0


def _ijk_to_ras(node) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


@pytest.mark.parametrize("pixel", [sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32,
                                   sitk.sitkFloat32, sitk.sitkFloat64])
def test_image_to_node_and_back_keeps_type_voxels_and_oblique_geometry(scene, pixel):
    rng = np.random.default_rng(pixel)
    image = sitk.Cast(sitk.GetImageFromArray(rng.integers(0, 100, size=(5, 7, 9)).astype(np.float64)), pixel)
    image.SetSpacing((0.5, 0.7, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(tuple(_rotation(30).ravel()))
    node = node_from_image(image, scene, "round trip")
    # The node's matrix from first principles: RAS = diag(-1, -1, 1) (origin + direction @ (spacing * ijk)).
    expected = np.eye(4)
    expected[:3, :3] = LPS @ _rotation(30) @ np.diag([0.5, 0.7, 2.0])
    expected[:3, 3] = LPS @ np.array([10.0, -20.0, 30.0])
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(node)), expected, atol=1e-12)
    assert np.allclose(_node_ras(node, (8, 6, 4)), LPS @ image.TransformIndexToPhysicalPoint((8, 6, 4)))
    back = image_from_node(node)
    assert back.GetPixelID() == pixel
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)


def test_label_maps_stay_label_maps_with_label_colours(scene):
    labels = sitk.GetImageFromArray(np.arange(60, dtype=np.uint16).reshape(3, 4, 5) % 4)
    node = node_from_image(labels, scene, "lesion", className=LABEL_MAP_VOLUME)
    assert node.IsA(LABEL_MAP_VOLUME) and node.GetDisplayNode().IsA("vtkMRMLLabelMapVolumeDisplayNode")
    assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeLabels"  # Slicer's label colours
    assert image_from_node(node).GetPixelID() == sitk.sitkUInt16
    wide = sitk.GetImageFromArray(np.full((2, 2, 2), 7, dtype=np.int64))  # 64-bit: narrowed, values kept
    assert slicer.util.arrayFromVolume(node_from_image(wide, scene, "wide")).dtype == np.int32
    with pytest.raises(InputError, match="64-bit"):
        node_from_image(sitk.GetImageFromArray(np.full((2, 2, 2), 2**40, dtype=np.int64)), scene, "too wide")


def test_linear_parent_transform_is_applied_and_warping_refused(scene):
    image = sitk.GetImageFromArray(np.ones((3, 4, 5), dtype=np.float32))
    node = node_from_image(image, scene, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # 10 mm to the right (RAS +x) = LPS -x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(image_from_node(node).GetOrigin(), (-10.0, 0.0, 0.0))
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    warp.SetAndObserveTransformToParent(vtk.vtkThinPlateSplineTransform())
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="Harden transform"):
        image_from_node(node)


def test_unusable_nodes_are_refused_in_plain_words(scene, tmp_path):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="holds no voxels"):
        image_from_node(empty)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(vector, np.zeros((2, 3, 4, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="3 components"):
        image_from_node(vector)
    with pytest.raises(InputError, match="not a scalar volume"):
        image_from_node(scene.AddNewNodeByClass("vtkMRMLTableNode"))
    before = scene.GetNumberOfNodes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a volume")
    with pytest.raises(InputError, match="could not read"):
        read_volume_node(scene, broken)
    assert scene.GetNumberOfNodes() == before  # nothing left behind
    with pytest.raises(InputError, match="not found"):
        read_volume_node(scene, tmp_path / "missing.nii.gz")
