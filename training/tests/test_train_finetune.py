"""Fine-tuning the bundled model on a cohort: a contrast added without changing the known imputations, and the
whole command on the two OpenMS patients (T2w added), whose model the core loads and imputes a T2w with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from CollaGANImputeLib import load_model
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.pipeline import impute

from training.collagan_train.cases import REPO_ROOT
from training.collagan_train.main import main
from training.collagan_train.model import Generator
from training.collagan_train.solver import build_input
from training.collagan_train.source_model import expand_generator

OPENMS = REPO_ROOT.parent / "shared" / "data" / "openms"


def test_an_added_contrast_leaves_the_known_imputations_unchanged():
    torch.manual_seed(0)
    old = Generator(3, base=4, levels=3, input_coefficients=True).eval()
    torch.nn.init.normal_(old.coef.weight, std=0.1)  # as after training: the coefficients matter
    new = Generator(4, base=4, levels=3, input_coefficients=True).eval()
    new.load_state_dict(expand_generator(old.state_dict(), ["t1n", "t1c", "t2f"], ["t1n", "t1c", "t2w", "t2f"]))
    images = torch.rand(2, 4, 32, 32)  # t1n, t1c, t2w, t2f
    for target in (0, 1, 3):  # every known target, from every other contrast (the new one included)
        available = torch.ones(2, 4, dtype=torch.bool)
        available[:, target] = False
        known = [0, 1, 3]
        with torch.no_grad():
            before = old(build_input(images[:, known], available[:, known], torch.full((2,), known.index(target))))
            after = new(build_input(images, available, torch.full((2,), target)))
        assert torch.allclose(before, after, atol=1e-5)
    with torch.no_grad():  # the new target has an output of its own (the mean target plane), not a copy of one
        t2w = new(build_input(images, torch.tensor([[1, 1, 0, 1]] * 2).bool(), torch.full((2,), 2)))
    assert torch.isfinite(t2w).all() and not torch.allclose(t2w, after)


def test_finetune_on_openms_adds_t2w_and_exports_a_model_the_core_runs(openms_cohort: Path, openms_finetune: Path):
    out = openms_finetune  # two steps on patient07's slices, patient19 held out (conftest)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["model.onnx", "model.pt", "report.md"]
    model = load_model(out / "model.pt")
    assert model.onnx == out / "model.onnx"  # the CPU runtimes' file, with the same card, beside it
    card = model.card
    assert card.contrasts == ["t1n", "t1c", "t2w", "t2f"]
    assert card.training["fine_tuned_from"]["contrasts_added"] == ["t2w"]
    assert card.metrics["held_out_cases"] == ["OpenMS-patient19"] and "nmse" in card.metrics["t2w"]
    scored = load_model(out / "run" / "model.pt").card  # the blend as exported and scored: its figures added
    assert card == dataclasses.replace(scored, metrics=card.metrics) and not scored.metrics
    report = (out / "report.md").read_text()
    for row in ("| t2w | fine-tuned | t1n+t1c+t2f |", "| t2w | voxel regression |", "| t2f | bundled | t1n+t1c |",
                "| t2f | fine-tuned, bundled's inputs | t1n+t1c |"):
        assert row in report
    assert "| t2w | bundled" not in report  # the bundled model has no T2w to score
    shares = card.training["blend"]["unet_share"]  # blended with the voxel regression at shares chosen on patient19
    assert sorted(shares) == sorted(card.contrasts) and all(0 <= v <= 1 for v in shares.values())
    assert card.architecture["unet_share"] == shares  # the exported generator is the blend
    blend = report.split("## The blend with a polynomial")[1]
    assert "| t2w | voxel regression |" in blend  # the bundled model's polynomial has no T2w
    assert card.training["blend"]["polynomial"]["t2w"] == "voxel regression"

    images = read_case(openms_cohort / "complete" / "OpenMS-patient19", ["t1n", "t1c", "t2f"])
    result = impute(images, model, targets=["t2w"], device="cpu")
    synthetic = result.images["t2w"]
    assert synthetic.GetSize() == images["t1n"].GetSize()
    assert np.isfinite(result.arrays["t2w"]).all() and result.arrays["t2w"].std() > 0


def test_finetune_refuses_an_unknown_held_out_case(tmp_path: Path):
    if not OPENMS.is_dir():
        pytest.skip("the OpenMS patients are not beside the repository")
    with pytest.raises(SystemExit, match="--holdout-cases OpenMS-patient99: not among the complete cases"):
        main(["finetune", str(OPENMS), "--holdout-cases", "OpenMS-patient99", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()  # nothing written


def test_a_profile_of_one_training_case_judges_no_spread(openms_cohort: Path):
    """One training scan has no spread to judge another against; a z-scored scan is still unlike it."""
    from CollaGANImputeLib.case import prepare_case
    from CollaGANImputeLib.case_files import training_profile_from_folders
    from CollaGANImputeLib.contract import ModelCard
    from CollaGANImputeLib.input_check import check_case

    contrasts = ["t1n", "t1c", "t2f"]
    complete = openms_cohort / "complete"
    profile = training_profile_from_folders([complete / "OpenMS-patient07"], contrasts, source="1 case")
    card = ModelCard(name="one-case", contrasts=contrasts, input_profile=profile)
    images = read_case(complete / "OpenMS-patient19", contrasts)
    assert check_case(card, prepare_case(images)).findings == []
    zscored = prepare_case(images)
    zscored.arrays = {c: (a - a.mean()) / a.std() for c, a in zscored.arrays.items()}
    findings = check_case(card, zscored).findings
    assert any("negative intensities" in f for f in findings)
    assert not any("histogram distance" in f or "head mask" in f for f in findings)


def test_a_model_file_gives_back_the_generator_it_was_exported_from():
    from training.collagan_train.source_model import source_checkpoint

    path, state = source_checkpoint(str(REPO_ROOT / "Resources" / "Models" / "collagan_lgg_t1n_t1c_t2f.pt"))
    trained = torch.load(REPO_ROOT / "training" / "checkpoints" / "lgg_v6_mean_g.pt", map_location="cpu",
                         weights_only=False)["G"]
    assert set(state["G"]) == set(trained)
    assert all(torch.equal(state["G"][k].float(), trained[k].float()) for k in trained)
    assert state["config"]["contrasts"] == ["t1n", "t1c", "t2f"] and state["config"]["head_only_loss"]


def test_finetune_from_a_file_that_is_no_model_says_so_in_one_line(tmp_path: Path):
    if not OPENMS.is_dir():
        pytest.skip("the OpenMS patients are not beside the repository")
    bogus = tmp_path / "scan_list.pt"
    bogus.write_bytes(b"not a model")
    with pytest.raises(SystemExit, match=r"^error: --from .*scan_list\.pt: neither a model file nor a training "):
        main(["finetune", str(OPENMS), "--from", str(bogus), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_finetune_again_from_its_own_model_file(openms_cohort: Path, openms_finetune: Path, tmp_path: Path):
    """A fine-tuned model.pt is a valid --from: its network trains on, and the card names the file it started from."""
    from training.collagan_train.main import main

    from .conftest import OPENMS_HELD_OUT

    source, out = openms_finetune / "model.pt", tmp_path / "again"
    main(["finetune", str(openms_cohort), "--from", str(source), "--holdout-cases", OPENMS_HELD_OUT, "--steps", "1",
          "--threads", "1", "--set", "crop=64", "--set", "val_slices=4", "--network-only", "--out", str(out)])
    card = load_model(out / "model.pt").card
    assert card.training["fine_tuned_from"]["model"] == str(source) and "unet_share" not in card.architecture
    assert card == dataclasses.replace(load_model(out / "run" / "network.pt").card, metrics=card.metrics)
    assert card.training["warm_start"] == [{"checkpoint": str(source), "model_file": True}]


def test_the_report_names_the_targets_where_the_bundled_model_is_closer():
    from training.collagan_train.cohort_report import bundled_ahead

    def row(target, inputs, nmse):
        return {"target": target, "inputs": inputs, "nmse": nmse}

    runs = {"bundled": [row("t1c", "t1n+t2f", 0.03), row("t2f", "t1n+t1c", 0.10)],
            "fine-tuned": [row("t1c", "t1n+t2w+t2f", 0.032), row("t1c", "t1n", 0.05),
                           row("t2f", "t1n+t1c+t2w", 0.024), row("t2w", "t1n+t1c+t2f", 0.05)]}
    line = bundled_ahead(runs, "fine-tuned", ["t1n", "t1c", "t2w", "t2f"])
    assert "for t1c (NMSE 0.0300 from t1n+t2f against 0.0320 from t1n+t2w+t2f). For" in line and "t2f (" not in line
    runs["fine-tuned"][0]["nmse"] = 0.029
    assert bundled_ahead(runs, "fine-tuned", ["t1c", "t2f"]) == ""
    assert bundled_ahead({"fine-tuned": runs["fine-tuned"]}, "fine-tuned", ["t1c"]) == ""
