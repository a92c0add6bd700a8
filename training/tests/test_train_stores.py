"""Training data from per-case stores: built once through the core, on the model's grid as inference sees it,
read on demand, and batched by DataLoader workers the same way whatever their number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib.case import prepare_case
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import ModelCard, load_model, save_model
from CollaGANImputeLib.errors import InputError
from CollaGANImputeLib.geometry import SliceGrid
from CollaGANImputeLib.inference import impute_slices

from training.collagan_train import stores
from training.collagan_train.data_loader import SliceData, load_data, training_batches
from training.collagan_train.prepare import prepare
from training.collagan_train.solver import build_input
from training.collagan_train.stores import CaseSlices
from training.tests.test_model_input import _weighted_sum
from training.tests.test_prepare import brats_like, needs_openms, write_brats2023

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]


def _cfg(tiny_cfg, tmp_path: Path, *overrides: str):
    return tiny_cfg(f"contrasts={CONTRASTS}".replace("'", '"'), f"cache_dir={tmp_path / 'cache'}", *overrides)


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Two BraTS 2023-named cases (240x240 at 1 mm) prepared into complete/ case folders."""
    write_brats2023(tmp_path / "src", 7, "OpenMS-patient07")
    write_brats2023(tmp_path / "src", 19, "OpenMS-patient19")
    prepare(tmp_path / "src", tmp_path / "cohort", log=None)
    return tmp_path / "cohort" / "complete"


@needs_openms
def test_brats_slices_are_padded_to_the_model_field_and_the_model_sees_what_inference_gives_it(
        cohort, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, tmp_path, "min_foreground=0")
    case_dir = cohort / "BraTS-GLI-00007-000"
    data = SliceData.build([case_dir.name], cfg, cohort)
    assert isinstance(data.images, CaseSlices) and data.images.shape == (6, 4, 256, 256)
    images = torch.from_numpy(np.asarray(data.images, dtype=np.float32))
    assert not images[..., :8, :].any() and not images[..., -8:].any()  # 240 -> 256: 8 zero pixels each side
    case = prepare_case(read_case(case_dir, CONTRASTS))
    core = np.stack([case.arrays[c] for c in CONTRASTS], axis=1)
    assert np.array_equal(np.asarray(data.images), np.pad(core, ((0, 0), (0, 0), (8, 8), (8, 8))).astype(np.float16))
    assert np.array_equal(np.asarray(data.masks)[:, 8:-8, 8:-8], case.mask)

    # The model applied to the training input equals the imputation of the case by the core.
    save_model(_weighted_sum(4), ModelCard(name="weighted-sum", contrasts=CONTRASTS), tmp_path / "m.pt")
    available = torch.tensor([[True, True, False, True]] * 6)
    with torch.no_grad():
        trained = _weighted_sum(4)(build_input(images, available, torch.full((6,), 2)))[:, 0, 8:-8, 8:-8]
    inferred = impute_slices(load_model(tmp_path / "m.pt"), {c: case.arrays[c] for c in ("t1n", "t1c", "t2f")},
                             "t2w", device="cpu", precision="fp32", spacing=case.spacing)
    np.testing.assert_allclose(inferred, trained.numpy(), rtol=1e-3, atol=2e-3)  # float16 store


@needs_openms
def test_other_spacings_are_resampled_to_the_model_grid_as_inference_does(tmp_path, tiny_cfg):
    folder = tmp_path / "complete" / "fine"
    folder.mkdir(parents=True)
    for contrast in CONTRASTS:
        image = brats_like("OpenMS-patient07", contrast, size=200)
        fine = sitk.Resample(image, [400, 400, 6], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                             (0.5, 0.5, 1.0), image.GetDirection(), 0.0, image.GetPixelID())
        sitk.WriteImage(fine, str(folder / f"fine-{contrast}.nii.gz"))
    cfg = _cfg(tiny_cfg, tmp_path, "min_foreground=0")
    data = SliceData.build(["fine"], cfg, tmp_path / "complete")
    assert data.images.shape == (6, 4, 256, 256)
    case = prepare_case(read_case(folder, CONTRASTS))
    grid = SliceGrid((400, 400), case.spacing, (256, 256), (1.0, 1.0))
    assert grid.resampled
    expected = grid.to_model(torch.from_numpy(np.stack([case.arrays[c] for c in CONTRASTS], axis=1))).numpy()
    np.testing.assert_allclose(np.asarray(data.images, dtype=np.float32), expected, atol=2e-3, rtol=1e-3)
    masks = np.asarray(data.masks)
    assert abs(masks.sum() / (case.mask.sum() / 4) - 1) < 0.03  # the head's area in mm2 kept on 1 mm pixels
    assert not masks[:, :28].any() and not masks[:, -28:].any()  # a 200 mm field in the model's 256 mm


@needs_openms
def test_stores_are_built_once_whole_and_replaced_when_the_case_changes(cohort, tiny_cfg, tmp_path, monkeypatch):
    cfg = _cfg(tiny_cfg, tmp_path)
    cases = sorted(p.name for p in cohort.iterdir())
    first = SliceData.build(cases, cfg, cohort)
    written = sorted((tmp_path / "cache").rglob("*"))
    assert len([p for p in written if p.suffix == ".npy"]) == 6 and not [p for p in written if ".tmp" in p.name]

    def refuse(*_):
        raise AssertionError("a store was built again")
    monkeypatch.setattr(stores, "prepare_slices", refuse)
    again = SliceData.build(cases, cfg, cohort)  # reused: no case goes through the core again
    assert again.index == first.index and np.array_equal(np.asarray(again.images), np.asarray(first.images))
    part = again.subset([cases[1]])
    assert isinstance(part.images, CaseSlices) and {c for c, _ in part.index} == {cases[1]}
    assert np.array_equal(np.asarray(part.lesions), np.asarray(first.lesions)[len(first) - len(part):])
    assert np.asarray(first.lesions).any()  # the -seg lesions are stored with the head mask

    monkeypatch.undo()
    changed = cohort / cases[0] / f"{cases[0]}-t2w.nii.gz"
    image = sitk.ReadImage(str(changed))
    sitk.WriteImage(image * 2, str(changed))
    SliceData.build(cases, cfg, cohort)
    after = sorted(p.name for p in (tmp_path / "cache").rglob("*.npy"))
    assert len(after) == 6 and after != sorted(p.name for p in written if p.suffix == ".npy")  # replaced, not added


def test_batches_are_the_same_with_or_without_workers_and_after_a_resume(sample_slices, tiny_cfg):
    def take(cfg, start: int, count: int, epoch: int = 0, cursor: int = 0):
        batches = training_batches(sample_slices, cfg, start, epoch, cursor)
        return [next(batches) for _ in range(count)]

    plain = take(tiny_cfg("loader_workers=0", "batch_size=3"), 0, 7)
    workers = take(tiny_cfg("loader_workers=2", "batch_size=3"), 0, 7)
    for a, b in zip(plain, workers):
        assert tuple(a[:2]) == tuple(b[:2]) and all(torch.equal(x, y) for x, y in zip(a[2:], b[2:]))
    epoch, cursor = plain[3][:2]
    resumed = take(tiny_cfg("loader_workers=2", "batch_size=3"), 4, 3, epoch, cursor)
    for a, b in zip(plain[4:], resumed):
        assert tuple(a[:2]) == tuple(b[:2]) and all(torch.equal(x, y) for x, y in zip(a[2:], b[2:]))
    assert not torch.equal(plain[0][3], plain[1][3])  # batches differ from step to step
    assert sorted(torch.cat([b[2] for b in plain[:len(sample_slices) // 3]]).tolist()) == \
        sorted(set(torch.cat([b[2] for b in plain[:len(sample_slices) // 3]]).tolist()))  # no slice twice in an epoch


@needs_openms
def test_prepared_cases_load_in_the_trainer(cohort, tiny_cfg, tmp_path):
    with pytest.raises(InputError, match="another cohort its own split file"):  # the LGG split is not this cohort's
        load_data(_cfg(tiny_cfg, tmp_path, f"data_dir={cohort.parent}"))
    with pytest.raises(InputError, match=r"for another cohort pass --set 'val_cases_required=\[\]'"):
        load_data(_cfg(tiny_cfg, tmp_path, f"data_dir={cohort.parent}", f"split_file={tmp_path / 'split.json'}"))
    cfg = _cfg(tiny_cfg, tmp_path, f"data_dir={cohort.parent}", f"split_file={tmp_path / 'split.json'}",
               "val_cases_required=[]", "n_val=1")
    train, val, split = load_data(cfg)
    assert len(split["train"]) == len(split["val"]) == 1
    assert train.images.shape[1:] == (4, 256, 256) and len(train) > 0 and len(val) > 0
    images, masks, _ = train.batch([0, 1], torch.Generator().manual_seed(0), crop=64)
    assert images.shape == (2, 4, 64, 64) and masks.any()
