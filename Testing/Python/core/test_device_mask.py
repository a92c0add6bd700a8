"""The mask and p99 rule computed with torch (for CUDA; run here on the CPU): the CPU rule, bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import InputError, prepare_case
from CollaGANImputeLib import case as case_module
from CollaGANImputeLib.device_mask import (
    device_mask_and_scales,
    label_components,
    otsu_foreground,
    upper_percentile,
)
from CollaGANImputeLib.normalization import foreground_mask, p99
from core_fixtures import head_phantom, make_image
from scipy import ndimage

CPU = torch.device("cpu")
#: Where the device rule is checked: the CPU always, a GPU where there is one (skipped elsewhere).
DEVICES = [pytest.param(CPU, id="cpu"),
           pytest.param(torch.device("cuda"), id="cuda",
                        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"))]


def test_otsu_equals_itk_on_random_volumes():
    rng = np.random.default_rng(0)
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(2, 30, 3))
        kind = trial % 3
        if kind == 0:
            volume = rng.gamma(2.0, 1.0, shape) * rng.uniform(0.01, 500)
        elif kind == 1:  # half background, half a noisy head
            volume = np.where(rng.random(shape) < 0.5, 0, rng.normal(5, 1, shape))
        else:  # 8-bit data scaled: many values on the bin edges' neighbourhood
            volume = rng.integers(0, 255, shape) / rng.uniform(1, 300)
        volume = volume.astype(np.float32)
        expected = sitk.GetArrayFromImage(sitk.OtsuThreshold(sitk.GetImageFromArray(volume), 0, 1, 256)) == 1
        assert np.array_equal(otsu_foreground(torch.from_numpy(volume)).numpy(), expected), trial


def test_components_equal_scipy_labelling():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random(tuple(int(n) for n in rng.integers(3, 20, 3))) < rng.uniform(0.3, 0.7)
        for dims, structure in (((0, 1, 2), ndimage.generate_binary_structure(3, 1)),
                                ((1, 2), np.pad(ndimage.generate_binary_structure(2, 1)[None], ((1, 1), (0, 0),
                                                                                                (0, 0))))):
            labels = label_components(torch.from_numpy(mask), dims).numpy()
            expected, count = ndimage.label(mask, structure=structure)
            assert (labels >= 0).sum() == mask.sum() and not (labels[~mask] != -1).any()
            # the same partition: one label per scipy component and one scipy component per label
            pairs = np.unique(np.stack([labels[mask], expected[mask]]), axis=1)
            assert pairs.shape[1] == count == len(np.unique(labels[mask]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentile_is_numpys(dtype):
    rng = np.random.default_rng(2)
    for size in (1, 2, 7, 1000, 54321):
        values = np.round(rng.gamma(2.0, 1.0, size) * 50).astype(dtype)  # ties, as in 8-bit data
        assert upper_percentile(torch.from_numpy(values)) == float(np.percentile(values, 99.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mask_and_scales_equal_the_cpu_rule(seed, device):
    a = head_phantom(seed=seed).astype(np.float32)
    a[:, 20:26, 30:34] = 0  # a hole open through the slices: only the in-plane fill closes it
    a[3, 0, 5] = a.max()  # a bright speck on the edge: not the largest component
    b = head_phantom(seed=seed + 10).astype(np.float32)
    for mask_from in ([0], [0, 1], [1]):
        mask, scales = device_mask_and_scales([a, b], device, mask_from)
        expected = foreground_mask([[a, b][i] for i in mask_from])
        assert np.array_equal(mask, expected)
        assert scales == [p99(a, expected), p99(b, expected)]


@pytest.mark.parametrize("device", DEVICES)
def test_lgg_sample_case_mask_and_scales(sample_case, device):
    images = [sitk.GetArrayFromImage(sitk.ReadImage(str(sample_case / f"TCGA-HT-7882-{c}.nii.gz"))).astype(np.float32)
              for c in ("t1n", "t2f")]
    mask, scales = device_mask_and_scales(images, device, [0, 1])
    expected = foreground_mask(images)
    assert np.array_equal(mask, expected) and scales == [p99(a, expected) for a in images]


def test_blank_input_is_refused_as_on_the_cpu():
    with pytest.raises(InputError, match="mask is empty"):
        device_mask_and_scales([np.zeros((4, 8, 8), np.float32)], CPU, [0])


def _images(seed: int = 1) -> dict[str, sitk.Image]:
    return {"t1n": make_image(head_phantom(seed=seed).astype(np.float32)),
            "t2f": make_image(head_phantom(seed=seed + 1).astype(np.float32))}


def test_prepare_case_on_cuda_goes_through_the_device_rule(monkeypatch):
    """No GPU here: the CUDA branch runs with torch on the CPU, and must give the CPU rule's case exactly."""
    calls = []

    def on_cpu(arrays, device, mask_from):
        calls.append(device.type)
        return device_mask_and_scales(arrays, CPU, mask_from)

    monkeypatch.setattr(case_module, "device_mask_and_scales", on_cpu)
    images = _images()
    expected = prepare_case(images, mask_from=["t2f"])
    got = prepare_case(images, mask_from=["t2f"], device="cuda")
    assert calls == ["cuda"]
    assert np.array_equal(got.mask, expected.mask)
    assert all(np.array_equal(got.arrays[c], expected.arrays[c]) for c in images)
    assert all(got.arrays[c].dtype == np.float32 for c in images)


def test_prepare_case_falls_back_to_the_cpu_with_a_warning(monkeypatch):
    def broken(arrays, device, mask_from):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(case_module, "device_mask_and_scales", broken)
    images = _images(seed=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = prepare_case(images, device="cuda")
    assert any("used the CPU" in str(w.message) for w in caught)
    assert any("out of memory" in text for text in got.warnings)
    assert np.array_equal(got.mask, prepare_case(images).mask)
