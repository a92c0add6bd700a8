"""Volume nodes <-> SimpleITK images: the one path between an MRML scene and the core, in 3D Slicer and under
the ``slicer-core`` wheel alike (Slicer's ``sitkUtils`` needs the application; this needs only MRML).

A node holds its voxels in IJK order (``slicer.util.arrayFromVolume``: a (K, J, I) numpy view) and its geometry
as one IJK-to-RAS matrix; a SimpleITK image holds the same voxels as a (z, y, x) array with origin, spacing and
direction in LPS. The two spaces differ by the sign of their first two axes, so ``LPS = diag(-1, -1, 1) RAS``;
spacing is the length of each matrix column, direction the columns divided by it (oblique and flipped axes
pass through unchanged). Voxel types are kept (uint8 stays uint8); label maps stay label maps. A volume under
a linear transform is taken where it is shown (the transform applied to its geometry); under a warping
transform it is refused.

Example (Slicer's Python console, or Python with slicer-core):
    >>> image = image_from_node(getNode("TCGA-HT-7882-t1n"))               # doctest: +SKIP
    >>> image.GetDirection(), image.GetOrigin()                            # LPS, as sitk.ReadImage gives them
    >>> node = node_from_image(image, slicer.mrmlScene, "copy")            # doctest: +SKIP
    >>> node = read_volume_node(slicer.mrmlScene, "case-seg.nii.gz", labelMap=True)   # Slicer's own reader
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import InputError

#: RAS <-> LPS: flip the first two axes (the matrix is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SCALAR_VOLUME = "vtkMRMLScalarVolumeNode"
LABEL_MAP_VOLUME = "vtkMRMLLabelMapVolumeNode"
_VOLUME_SUFFIXES = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd|\.mgz|\.hdr|\.img)$", re.IGNORECASE)


def ijk_to_ras(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix (4x4) where it is shown: a linear parent transform is applied to it."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    result = slicer.util.arrayFromVTKMatrix(matrix)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise InputError(f"'{node.GetName()}' is under the warping transform '{transform.GetName()}': harden "
                             "the transform first (Data module: right-click the volume, 'Harden transform').")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        result = slicer.util.arrayFromVTKMatrix(to_world) @ result
    return result


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction) in LPS, SimpleITK's convention (direction row-major, columns = axes)."""
    lps = RAS_TO_LPS @ np.asarray(matrix, dtype=np.float64)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(lps)):
        raise InputError(f"The volume's IJK-to-RAS matrix is degenerate (voxel spacing {spacing.tolist()}).")
    direction = axes / spacing
    return tuple(lps[:3, 3].tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix (4x4) a node needs to show ``image`` where it lies."""
    lps = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)  # scales column j by spacing j
    lps[:3, 3] = image.GetOrigin()
    return RAS_TO_LPS @ lps


def image_from_node(node) -> sitk.Image:
    """A copy of a scalar volume node (or label map) as a SimpleITK image in LPS, voxel type kept.

    Raises :class:`InputError` for nodes without voxels, vector volumes and volumes under a warping transform.
    """
    if node is None or not node.IsA(SCALAR_VOLUME):
        raise InputError(f"{_describe(node)} is not a scalar volume: choose an MR volume (or a label map).")
    data = node.GetImageData()
    if data is None or data.GetPointData() is None or data.GetPointData().GetScalars() is None:
        raise InputError(f"'{node.GetName()}' holds no voxels: load the volume again.")
    if data.GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{node.GetName()}' has {data.GetNumberOfScalarComponents()} components per voxel (a "
                         "vector or colour volume): extract one scalar component first.")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)  # VTK owns the view's memory: copy it
    image = sitk.GetImageFromArray(array, isVector=False)
    origin, spacing, direction = geometry_from_ijk_to_ras(ijk_to_ras(node))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def node_from_image(image: sitk.Image, scene, name: str, className: str = SCALAR_VOLUME, node=None):
    """Put ``image`` into the scene: a new node of ``className`` (or ``node``, overwritten), voxel type kept.

    The node's IJK-to-RAS is the image's geometry; display nodes are created (a label map gets label colours).
    Metadata are not copied (the caller sets the attributes it wants, e.g. ``collagan_*``).
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"Only 3-D scalar images become volume nodes (got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components).")
    array = sitk.GetArrayFromImage(image)
    if array.dtype == np.int64:  # VTK volumes of 'long long' do not display: narrow when no value is lost
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise InputError(f"'{name}': 64-bit integer voxels beyond the 32-bit range cannot be shown in Slicer.")
        array = array.astype(np.int32)
    if node is None:
        node = scene.AddNewNodeByClass(className, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_image(image)))
    slicer.util.updateVolumeFromArray(node, array)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def read_volume_node(scene, path: Union[str, os.PathLike], name: Optional[str] = None, labelMap: bool = False):
    """Read a volume file with Slicer's own reader (``vtkMRMLVolumeArchetypeStorageNode``, the reader behind
    *Add data*) into a new node named after the file (``case-t1n.nii.gz`` -> ``case-t1n``); a label map node
    with ``labelMap=True``. Nothing is left in the scene if reading fails.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Volume file not found: {path}.")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)  # this file only, not a numbered series of its neighbours
    node = scene.AddNewNodeByClass(LABEL_MAP_VOLUME if labelMap else SCALAR_VOLUME,
                                   name or _VOLUME_SUFFIXES.sub("", path.name))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node) or node.GetImageData() is None:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"Slicer could not read {path} as a volume. Supported: NIfTI, NRRD, MHA/MHD.")
    node.CreateDefaultDisplayNodes()
    return node


def _describe(node) -> str:
    if node is None:
        return "No volume"
    return f"'{node.GetName()}' ({node.GetClassName()})"
