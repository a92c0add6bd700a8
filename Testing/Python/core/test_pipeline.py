"""The imputation pipeline: subsets, progress, cancel, determinism, out of memory, the mask and p99 rule."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import Cancelled, InputError, impute, impute_case, load_model, prepare_case
from CollaGANImputeLib.contract import ModelCard, save_model
from CollaGANImputeLib.inference import build_input, impute_slices
from CollaGANImputeLib.normalization import foreground_mask, normalize, p99
from core_fixtures import CONTRASTS, head_phantom, make_image


def test_mask_is_head_and_p99_is_one(sample_case):
    images = {c: sitk.ReadImage(str(sample_case / f"TCGA-HT-7882-{c}.nii.gz")) for c in ("t1n", "t2f")}
    case = prepare_case(images)
    assert 0.2 < case.mask.mean() < 0.8
    assert not case.mask[:, 0, :].any() and not case.mask[:, :, 0].any(), "image borders are background"
    for array in case.arrays.values():
        assert np.percentile(array[case.mask], 99) == pytest.approx(1.0, abs=1e-3)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_case / "TCGA-HT-7882-seg.nii.gz"))) > 0
    assert case.mask[lesion].mean() > 0.99, "the tumour lies inside the head mask"


def test_mask_uses_only_inputs():
    a, b = head_phantom(seed=1), head_phantom(seed=2)
    mask = foreground_mask([a, b])
    assert np.array_equal(mask, foreground_mask([a, b]))
    expected = head_phantom(noise=0.0) > 0
    assert (mask == expected).mean() > 0.97


def _full_grid_mask(arrays):
    """The mask rule computed on the whole grid with scipy's fill (what foreground_mask did before it worked
    on the head's bounding box with a labelling fill): the reference for exactness."""
    from scipy import ndimage

    mean = sum(np.asarray(a, np.float32) / np.float32(p99(a)) for a in arrays) / len(arrays)
    binary = sitk.OtsuThreshold(sitk.GetImageFromArray(mean.astype(np.float32)), 0, 1, 256)
    binary = sitk.BinaryFillhole(binary, fullyConnected=False, foregroundValue=1)
    largest = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(binary),
                                                           sortByObjectSize=True)) == 1
    return ndimage.binary_fill_holes(largest, structure=_in_plane_structure())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mask_on_the_bounding_box_equals_the_full_grid_rule(seed):
    rng = np.random.default_rng(seed)
    a = head_phantom(seed=seed).astype(np.float32)
    a[:, 20:26, 30:34] = 0  # a hole open through the slices: only the in-plane fill closes it
    a[rng.integers(0, a.shape[0]), 0, rng.integers(0, a.shape[2])] = a.max()  # a bright speck on the edge
    arrays = [a, head_phantom(seed=seed + 10)]
    assert np.array_equal(foreground_mask(arrays), _full_grid_mask(arrays))


def _in_plane_structure() -> np.ndarray:
    """4-connected neighbours within a slice, none through the plane: scipy's slice-by-slice fill."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return structure


def test_in_plane_fill_equals_scipy_on_random_masks():
    from CollaGANImputeLib.normalization import fill_holes_in_plane
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = rng.random((int(rng.integers(1, 6)), int(rng.integers(3, 40)), int(rng.integers(3, 40))))
        mask = mask < rng.uniform(0.2, 0.9)
        expected = ndimage.binary_fill_holes(mask, structure=_in_plane_structure())
        assert np.array_equal(fill_holes_in_plane(mask), expected)


def test_3d_fill_equals_itk_binary_fillhole_on_random_masks():
    from CollaGANImputeLib.normalization import fill_holes_3d

    rng = np.random.default_rng(1)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(2, 24, 3))
        mask = rng.random(shape) < rng.uniform(0.3, 0.85)  # dense masks: many enclosed background pockets
        expected = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)),
                                                              fullyConnected=False, foregroundValue=1)) == 1
        filled = fill_holes_3d(mask)
        assert np.array_equal(filled, expected), shape
        assert not filled[~mask].all() or mask.all(), "some background reaches the faces and stays background"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_upper_percentile_is_numpys_percentile_bit_for_bit(dtype):
    from CollaGANImputeLib.normalization import upper_percentile

    rng = np.random.default_rng(0)
    for trial in range(40):
        values = rng.gamma(2.0, 1.0, int(rng.integers(20_000, 400_000))) * rng.uniform(0.01, 1000)
        if trial % 2:
            values = np.round(values)  # 8-bit-like data: many ties at the percentile
        values = values.astype(dtype)
        for q in (99.0, 95.0, 99.9):
            expected = np.percentile(values, q)
            got = upper_percentile(values.copy(), q)
            assert got == expected and np.asarray(got).dtype == np.asarray(expected).dtype, (trial, q)


def test_upper_percentile_falls_back_when_the_sample_misleads():
    from CollaGANImputeLib.normalization import upper_percentile

    values = np.zeros(200_000, np.float32)
    values[::4] = np.arange(50_000, dtype=np.float32) + 10  # the strided sample sees only these
    assert upper_percentile(values.copy(), 99.0) == np.percentile(values, 99.0)
    with_nan = values.copy()
    with_nan[1] = np.nan
    assert np.isnan(upper_percentile(with_nan, 99.0))


def test_normalize_refuses_blank_mask():
    with pytest.raises(InputError, match="mask is empty"):
        normalize(np.ones((2, 3, 3)), np.zeros((2, 3, 3), bool))
    assert p99(np.arange(101, dtype=float), np.ones(101, bool)) == pytest.approx(99.0)


def test_build_input_layout():
    shape = (2, 4, 4)
    x = build_input({"t1n": torch.ones(shape), "t1c": torch.full(shape, 5.0)}, ["t1n", "t1c", "t2f"], "t1c", shape)
    assert x.shape == (2, 6, 4, 4)
    assert x[:, 0].eq(1).all() and x[:, 1].eq(0).all() and x[:, 2].eq(0).all(), "target and missing are zeros"
    assert x[:, 3].eq(0).all() and x[:, 4].eq(1).all() and x[:, 5].eq(0).all(), "one-hot target mask"


def _phantoms():
    return {"t1n": make_image(head_phantom(seed=1)), "t2f": make_image(head_phantom(seed=2))}


def test_every_missing_contrast_from_any_subset(tiny_model_path):
    model = load_model(tiny_model_path)
    one = impute({"t2f": _phantoms()["t2f"]}, model, device="cpu")
    assert sorted(one.images) == ["t1c", "t1n"]
    assert one.images["t1n"].GetMetaData("collagan_inputs") == "t2f"
    two = impute(_phantoms(), model, targets=["t1c"], device="cpu")
    assert list(two.images) == ["t1c"]


def test_refuses_unknown_contrast_and_nothing_missing(tiny_model_path):
    model = load_model(tiny_model_path)
    with pytest.raises(InputError, match="not contrasts of model"):
        impute({"t2w": _phantoms()["t1n"]}, model)
    full = dict(_phantoms(), t1c=make_image(head_phantom(seed=3)))
    with pytest.raises(InputError, match="nothing is missing"):
        impute(full, model)
    with pytest.raises(InputError, match="No input left"):
        impute({"t1c": full["t1c"]}, model, targets=["t1c"])


def test_progress_reaches_total_and_cpu_is_deterministic(tiny_model_path):
    model = load_model(tiny_model_path)
    seen = []
    first = impute(_phantoms(), model, device="cpu", batch_size=5, progress=lambda d, t: seen.append((d, t)))
    second = impute(_phantoms(), model, device="cpu", batch_size=3)
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert np.array_equal(first.arrays["t1c"], second.arrays["t1c"]), "batch size does not change the result"


def test_cancel_mid_run_writes_nothing(tiny_model_path, copied_sample):
    model = load_model(tiny_model_path)
    flag = threading.Event()
    before = sorted(p.name for p in copied_sample.iterdir())

    def progress(done, total):
        if done >= 8:
            flag.set()  # the user presses Cancel after the first batch

    with pytest.raises(Cancelled):
        impute_case(copied_sample, model, targets=["t1c"], device="cpu", batch_size=8, progress=progress,
                    cancel=flag)
    assert sorted(p.name for p in copied_sample.iterdir()) == before


class _OutOfMemoryAboveTwo(torch.nn.Module):
    """Acts like a GPU that runs out of memory for batches larger than two slices."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_halves_the_batch(tiny_model_path):
    model = load_model(tiny_model_path)
    inputs = {"t1n": np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)}
    reference = impute_slices(model, inputs, "t1c", device="cpu", batch_size=8)
    model.module = _OutOfMemoryAboveTwo(model.module)
    out = impute_slices(model, inputs, "t1c", device="cpu", batch_size=8)
    assert model.module.batches == [5, 4, 2, 2, 1]  # 8 fails on 5 slices, 4 fails, then 2 + 2 + 1
    np.testing.assert_allclose(out, reference, atol=1e-6)


def test_impute_steps_one_at_a_time_give_the_result_of_impute_and_stop_when_cancelled(tiny_model_path):
    from CollaGANImputeLib.imputation_steps import impute_steps

    model, images = load_model(tiny_model_path), _phantoms()
    options = dict(device="cpu", precision="fp32", uncertainty=True)
    expected = impute(images, model, targets=["t1c"], **options)
    steps = impute_steps(images, model, ["t1c"], slices_per_step=5, **options)
    seen = [(step.stage, step.done, step.total) for step in steps]
    n_slices = expected.case.mask.shape[0]
    assert steps.passes == 4 and seen[0] == ("prepared", 0, 0) and seen[-1] == ("imputed", 4 * n_slices, 4 * n_slices)
    done = [d for stage, d, _total in seen if stage == "slices"]
    assert done == sorted(done) and len(done) == 4 * -(-n_slices // 5)  # every pass in chunks of five slices
    np.testing.assert_array_equal(steps.result.arrays["t1c"], expected.arrays["t1c"])
    np.testing.assert_array_equal(steps.result.uncertainty_arrays["t1c"], expected.uncertainty_arrays["t1c"])
    flag = threading.Event()
    steps = impute_steps(images, model, ["t1c"], slices_per_step=5, cancel=flag, **options)
    next(steps), next(steps)
    flag.set()
    with pytest.raises(Cancelled):
        next(steps)
    assert steps.result is None and steps.done == 5


class _OutOfMemoryOffTheCpu(torch.nn.Module):
    """Acts like a GPU too small for even one slice: on any device but the CPU every batch runs out of memory."""

    def __init__(self, inner):
        super().__init__()
        self.__dict__["inner"] = inner  # not a submodule: moving the wrapper leaves the model's weights on the CPU
        self.batches = []

    def forward(self, x):
        if x.device.type != "cpu":
            self.batches.append(x.shape[0])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_falls_back_to_the_cpu_the_same_way_for_impute_and_the_slicer_job(tiny_model_path):
    from CollaGANImputeLib.scene.job import ChunkedImputation

    images = _phantoms()
    expected = impute(images, load_model(tiny_model_path), targets=["t1c"], device="cpu", precision="fp32")
    said = "ran out of memory even one slice at a time; the rest ran on the CPU"
    results = {}
    for caller in ("impute", "job"):
        model = load_model(tiny_model_path)
        model.module = _OutOfMemoryOffTheCpu(model.module)
        # 'meta' runs nothing: with the wrapper it stands for an accelerator without the memory for one slice.
        with pytest.warns(RuntimeWarning, match=said):
            if caller == "impute":
                results[caller] = impute(images, model, targets=["t1c"], device="meta", batch_size=8,
                                         precision="fp32")
            else:
                job = ChunkedImputation(images, model, "t1c", device="meta", batch_size=8, precision="fp32",
                                        slices_per_step=4)
                results[caller] = job.run()
                assert job.device.type == "cpu" and len(job.notes) == 1 and said in job.notes[0]
        assert model.module.batches == [8, 4, 2, 1] if caller == "impute" else [4, 2, 1], model.module.batches
        np.testing.assert_array_equal(results[caller].arrays["t1c"], expected.arrays["t1c"])
        image = results[caller].images["t1c"]  # the labels name what ran: the CPU, not the device asked for
        assert [image.GetMetaData(f"collagan_{k}") for k in ("runtime", "device", "precision")] == ["torch", "cpu",
                                                                                                   "fp32"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(results["impute"].images["t1c"]),
                                  sitk.GetArrayFromImage(results["job"].images["t1c"]))


def test_impute_case_writes_labeled_output_and_keeps_inputs(tiny_model_path, copied_sample, tmp_path):
    (copied_sample / "TCGA-HT-7882-t1c.nii.gz").unlink()
    before = {p.name: p.read_bytes() for p in copied_sample.iterdir()}
    written = impute_case(copied_sample, load_model(tiny_model_path), out_dir=tmp_path / "out", device="cpu")
    assert list(written) == ["t1c"]
    assert written["t1c"].name == "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz"
    image = sitk.ReadImage(str(written["t1c"]))
    assert image.GetMetaData("descrip").startswith("SYNTHETIC t1c")
    reference = sitk.ReadImage(str(copied_sample / "TCGA-HT-7882-t1n.nii.gz"))
    assert image.GetSize() == reference.GetSize() and image.GetOrigin() == reference.GetOrigin()
    assert {p.name: p.read_bytes() for p in copied_sample.iterdir()} == before


def test_given_target_never_shapes_its_own_mask(tiny_model_path):
    # A 'target' volume with a much larger head: if it entered the mask, the mask would grow.
    images = dict(_phantoms(), t1c=make_image(head_phantom(shape=(12, 48, 40), seed=5) + 50.0))
    result = impute(images, load_model(tiny_model_path), targets=["t1c"], device="cpu")
    expected = prepare_case(_phantoms()).mask
    assert np.array_equal(result.cases["t1c"].mask, expected)


def test_outside_head_zero_blanks_only_outside_the_mask(tmp_path):
    from CollaGANImputeLib import ModelCard, save_model
    from core_fixtures import CONTRASTS, TinyGenerator

    torch.manual_seed(0)
    generator, results = TinyGenerator(), {}
    for rule in ("model", "zero"):
        path = tmp_path / f"{rule}.pt"
        save_model(generator, ModelCard(name=rule, contrasts=CONTRASTS, outside_head=rule), path)
        results[rule] = impute(_phantoms(), load_model(path), targets=["t1c"], device="cpu", precision="fp32")
    mask = results["zero"].cases["t1c"].mask
    kept, zeroed = results["model"].arrays["t1c"], results["zero"].arrays["t1c"]
    assert np.abs(kept[~mask]).max() > 0, "the tiny model's output is non-zero outside the head"
    assert not zeroed[~mask].any()
    assert np.array_equal(zeroed[mask], kept[mask])


class TargetPlaneMean(torch.nn.Module):
    """Outputs, everywhere, the mean of the t1c target plane over the model's whole field."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 4:5].mean(dim=(2, 3), keepdim=True).expand(-1, -1, x.shape[2], x.shape[3]).contiguous()


@pytest.mark.parametrize("shape, spacing", [((3, 40, 30), (1.0, 1.0)), ((3, 20, 15), (2.0, 2.0))])
def test_target_planes_cover_the_model_field_for_small_or_resampled_slices(tmp_path, shape, spacing):
    """A slice smaller than the model's field (a brain-only scan cropped to the brain) is padded; the target
    planes must still be 1 over the whole field as in training, not only over the slice."""
    path = tmp_path / "planes.pt"
    save_model(TargetPlaneMean(), ModelCard(name="planes", contrasts=CONTRASTS, in_plane_size=(64, 64),
                                            pixel_spacing=(1.0, 1.0)), path)
    model = load_model(path)
    inputs = {"t1n": np.ones(shape, np.float32), "t2f": np.ones(shape, np.float32)}
    out = impute_slices(model, inputs, "t1c", device="cpu", spacing=spacing)
    assert out.shape == shape
    assert np.allclose(out, 1.0), "the target plane was not 1 over the whole field"
