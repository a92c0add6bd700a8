"""Test helpers shared by the core tests: a small real generator and phantom volumes."""

from __future__ import annotations

import locale
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

CONTRASTS = ["t1n", "t1c", "t2f"]
REPO = Path(__file__).resolve().parents[2]


class TinyGenerator(torch.nn.Module):
    """A two-layer conv net with the CollaGAN I/O contract: (B, 2N, H, W) -> (B, 1, H, W)."""

    def __init__(self, n_contrasts: int = 3) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(2 * n_contrasts, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)



class NaNOutput(torch.nn.Module):
    """A model whose output is NaN everywhere (refused on the first batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * float("nan")


class WrongShape(torch.nn.Module):
    """A model whose output has two channels at half size (refused on the first batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2, ::2, ::2]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process that imports this checkout's CollaGANImputeLib first."""
    paths = [str(REPO / "CollaGANImpute"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), **extra}


def head_phantom(shape=(12, 48, 40), seed=0, scale=200.0, noise=0.1) -> np.ndarray:
    """An ellipsoid 'head' with a bright blob: enough structure for Otsu and p99, on a (z, y, x) grid."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = (x**2 / 0.8 + y**2 / 0.8 + z**2 / 1.2) < 1
    blob = ((x - 0.2) ** 2 + (y + 0.1) ** 2 + z**2) < 0.05
    volume = head * (0.5 + noise * rng.standard_normal(shape)) + blob * 0.4
    return (np.clip(volume, 0, None) * scale).astype(np.float32)


def make_image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def write_dicom_series(folder: Path, array: np.ndarray, number: int, description: str, tr: str, te: str,
                       ti: str = "", agent: str = "") -> str:
    """Write ``array`` (z, y, x) as a real DICOM MR series (one file per slice) with SimpleITK; returns its UID."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = f"1.2.826.0.1.3680043.2.1125.7.{number}"
    volume = sitk.Cast(make_image(array), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    previous = locale.setlocale(locale.LC_CTYPE)  # GDCM's writer sets the C locale: text reads after it would fail
    try:
        _write_slices(writer, volume, folder, uid, number, description, tr, te, ti, agent)
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    return uid


def _write_slices(writer: sitk.ImageFileWriter, volume: sitk.Image, folder: Path, uid: str, number: int,
                  description: str, tr: str, te: str, ti: str, agent: str) -> None:
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        tags = {"0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0010|0020": "P1",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.7", "0020|000e": uid, "0020|0011": str(number),
                "0008|103e": description, "0018|0080": tr, "0018|0081": te, "0018|0082": ti, "0018|0010": agent,
                "0008|0018": f"{uid}.{z + 1}", "0020|0013": str(z + 1),
                "0020|0032": "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, z)))),
                "0020|0037": "1\\0\\0\\0\\1\\0"}
        for tag, value in tags.items():
            if value:
                slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{number}-{z:03d}.dcm"))
        writer.Execute(slice_)
