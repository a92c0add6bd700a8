"""Export round trip through the core contract, the voxel-regression baseline, and the evaluation table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import load_model
from CollaGANImputeLib.pipeline import impute

from training.collagan_train.baselines import VoxelRegression, export_voxel_regression, fit, quadratic_features
from training.collagan_train.evaluate import evaluate
from training.collagan_train.export import check_export, export_checkpoint
from training.collagan_train.solver import Solver, build_input

from .conftest import SAMPLE


def _trained_checkpoint(tiny_cfg, sample_slices, tmp_path):
    solver = Solver(tiny_cfg("steps=3", "clsf_warmup_steps=1"), sample_slices, None, out_dir=str(tmp_path))
    for _ in range(3):
        solver.train_step()
    return solver, solver.save("latest.pt")


def test_export_round_trip_equals_eager(tiny_cfg, sample_slices, tmp_path):
    solver, ckpt = _trained_checkpoint(tiny_cfg, sample_slices, tmp_path)
    path = export_checkpoint(str(ckpt), str(tmp_path / "model.pt"), metrics={"note": "test"})
    loaded = load_model(path, contrasts=["t1n", "t2f"])
    card = loaded.card
    assert card.contrasts == ["t1n", "t1c", "t2f"]
    assert card.licence.startswith("CC BY-NC-SA 4.0")
    assert card.training["steps"] == 3 and card.training["method"] == "collagan"
    assert card.architecture["levels"] == 3 and card.metrics == {"note": "test"}
    images = torch.from_numpy(np.asarray(sample_slices.images[:2], dtype=np.float32))
    available = torch.tensor([[True, False, True], [False, True, True]])
    x = build_input(images, available, torch.tensor([1, 0]))
    solver.G.eval()
    with torch.no_grad():  # fp32 sums in another order (the fast-CCNR rewrite): agreement to a few 1e-5
        assert torch.allclose(loaded.module(x), solver.G(x), atol=5e-5)
    assert check_export(solver.G, path, x) <= 5e-5
    # The core's fast-CCNR rewrite is applied by default (same function) and can be turned off.
    from CollaGANImputeLib.ccnr_export import count_fast_units
    assert count_fast_units(loaded.module) == 2 * (2 * 3 - 1)  # 3 levels: 2 CCNR per encoder/bottom/decoder
    plain = load_model(export_checkpoint(str(ckpt), str(tmp_path / "plain.pt"), optimize=False))
    assert count_fast_units(plain.module) == 0
    # The ONNX export of the same module lies beside each file, with the same card.
    assert loaded.onnx == tmp_path / "model.onnx" and plain.onnx == tmp_path / "plain.onnx"
    from CollaGANImputeLib.contract import read_card
    assert read_card(loaded.onnx).to_json() == card.to_json()
    assert load_model(export_checkpoint(str(ckpt), str(tmp_path / "plain.pt"), optimize=False, onnx=False)).onnx is None
    assert not (tmp_path / "plain.onnx").exists()  # an export of other weights is not left beside it
    with torch.no_grad():
        assert torch.allclose(plain.module(x), loaded.module(x), atol=5e-5)


def test_exported_model_runs_through_the_core_pipeline(tiny_cfg, sample_slices, tmp_path):
    _, ckpt = _trained_checkpoint(tiny_cfg, sample_slices, tmp_path)
    model = load_model(export_checkpoint(str(ckpt), str(tmp_path / "model.pt")))
    images = read_case(SAMPLE, ["t1n", "t2f"])
    result = impute(images, model, device="cpu")
    image = result.images["t1c"]
    assert image.GetSize() == images["t1n"].GetSize()
    assert image.GetMetaData("collagan_synthetic") == "true"


def test_voxel_regression_recovers_a_known_polynomial():
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 32, 32)), rng.random((4, 32, 32))
    c = 0.5 + 2 * a - b + 3 * a * b + 0.25 * b * b  # target 't1c' as a quadratic of t1n (a) and t2f (b)
    images = np.stack([a, c, b], axis=1).astype(np.float32)
    coef = fit(images, np.ones((4, 32, 32), bool), max_voxels=4000)
    # features: 1, x0, x1, x2, x0x0, x0x1, x0x2, x1x1, x1x2, x2x2; subset {0, 2} = bitmask 5
    expected = np.array([0.5, 2, 0, -1, 0, 0, 3, 0, 0, 0.25])
    assert np.allclose(coef[1, 5].numpy(), expected, atol=1e-4)
    module = VoxelRegression(coef)
    x = build_input(torch.from_numpy(images), torch.tensor([[True, False, True]] * 4), torch.tensor([1] * 4))
    assert torch.allclose(module(x)[:, 0], torch.from_numpy(c).float(), atol=1e-3)
    assert quadratic_features(torch.zeros(1, 3, 2, 2)).shape[1] == 10


def test_voxel_regression_exports_and_scores_through_evaluate(sample_slices, tiny_cfg, tmp_path):
    coef = fit(np.asarray(sample_slices.images, dtype=np.float32), np.asarray(sample_slices.masks))
    voxreg = export_voxel_regression(coef, ["t1n", "t1c", "t2f"], str(tmp_path / "voxreg.pt"))
    assert torch.jit.load(str(voxreg)) is not None
    _, ckpt = _trained_checkpoint(tiny_cfg, sample_slices, tmp_path)
    tiny = export_checkpoint(str(ckpt), str(tmp_path / "tiny.pt"))
    summary = evaluate({"voxreg": str(voxreg), "tiny": str(tiny)}, [SAMPLE], tmp_path / "eval")
    out = tmp_path / "eval"
    assert {"table.md", "table.csv", "rows.csv", "summary.json", "montage.png"} <= {p.name for p in out.iterdir()}
    table = (out / "table.md").read_text()
    assert "| t1c |" in table and "Lesion SSIM" in table and "voxreg | tiny" in table
    rows = list(csv.DictReader(open(out / "rows.csv")))
    assert len(rows) == 6 and all(float(r["lesion_voxels"]) > 0 for r in rows)
    # fitted on this very case, the regression must beat a 3-step tiny GAN
    assert summary["voxreg"]["t1n"]["nmse"]["mean"] < summary["tiny"]["t1n"]["nmse"]["mean"]
    assert json.loads((out / "summary.json").read_text())["cases"] == [SAMPLE.name]


def test_slice_scale_report_separates_brightness_from_anatomy(sample_slices):
    from training.collagan_train.diagnose import slice_scale_report

    images, masks, _ = sample_slices.batch(list(range(4)), torch.Generator())
    n = images.shape[1]
    factors = torch.tensor([1.0, 2.0, 0.5, 1.0])

    def brightness_wrong(x):  # the real target, each slice scaled by its own wrong factor
        target = x[:, n:].mean(dim=(2, 3)).argmax(dim=1)
        real = torch.stack([images[i, int(t)] for i, t in enumerate(target)])[:, None]
        return real * factors[: len(x), None, None, None]

    report = slice_scale_report(brightness_wrong, images, masks, ["t1n", "t1c", "t2f"])
    for row in report.values():
        assert row["nmse"] > 0.1 and row["nmse_slice_rescaled"] < 1e-10
        assert np.isclose(row["scale_mean"], float((1 / factors).mean()), atol=1e-5)


def test_card_names_every_warm_start_stage_and_the_head_rule(tiny_cfg, sample_slices, tmp_path):
    (tmp_path / "first").mkdir()
    _, first = _trained_checkpoint(tiny_cfg, sample_slices, tmp_path / "first")
    (tmp_path / "first" / "commands.txt").write_text("python -m training.collagan_train.main train --stage one\n")
    second = Solver(tiny_cfg("method=l2", f"init_g={first}", "head_only_loss=true"), sample_slices, None,
                    out_dir=str(tmp_path / "second"))
    second.train_step()
    card = load_model(export_checkpoint(str(second.save("latest.pt")), str(tmp_path / "model.pt"))).card
    lineage = card.training["warm_start"]
    assert [stage["checkpoint"] for stage in lineage] == [str(first)]
    assert lineage[0]["steps"] == 3 and lineage[0]["method"] == "collagan"
    assert lineage[0]["command"] == ["python -m training.collagan_train.main train --stage one"]
    assert card.outside_head == "zero" and card.training["losses"]["head_only_loss"] is True


def test_voxel_regression_gives_the_same_output_for_channels_last_input():
    torch.manual_seed(0)
    module = VoxelRegression(torch.randn(3, 8, 10))
    x = torch.rand(2, 6, 32, 32)
    x[:, 3:] = 0
    x[:, 4] = 1
    with torch.no_grad():
        assert torch.allclose(module(x.contiguous(memory_format=torch.channels_last)), module(x), atol=1e-6)


def test_card_words_name_the_version_given(tmp_path):
    from training.collagan_train.cases import REPO_ROOT
    from training.collagan_train.export import load_about

    card = REPO_ROOT / "training" / "collagan_train" / "configs" / "card_lgg.json"
    about = load_about(str(card), "v6")
    assert "(v6)" in about["description"] and "{version}" not in json.dumps(about)
    assert about["limitations"] == json.loads(card.read_text())["limitations"]
    with pytest.raises(SystemExit, match="--version"):
        load_about(str(card))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"description": "no version here"}))
    assert load_about(str(plain)) == {"description": "no version here"}
