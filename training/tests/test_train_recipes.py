"""Recipes: one base plus overlays; the lgg recipe's stages are the settings the bundled generator's lineage was
trained with; a recipe's stages run in order from each other's generators and end in a weight mean; ``train
--recipe NAME COHORT_DIR --out OUT_DIR`` on a BraTS download delivers what ``finetune`` delivers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from CollaGANImputeLib import load_model

from training.collagan_train.cases import REPO_ROOT, locate_lgg, select_cases
from training.collagan_train.cohort import pick_holdout
from training.collagan_train.config import (
    CONFIG_DIR,
    load_config,
    make_config,
    read_recipe,
    recipe_names,
    recipe_overlay,
)
from training.collagan_train.finetune import DEFAULT_STEPS, FINETUNE_SETTINGS
from training.collagan_train.main import main
from training.collagan_train.stages import BLEND, MEAN, plan

#: Settings that say where a run was (its folders, the machine: threads, and bf16 autocast, which the default
#: switches on where the CPU has native bf16, as the lineage's did), not how it trained.
WHERE = {"init_g", "out_dir", "data_dir", "cache_dir", "threads", "progress", "loader_workers", "steps", "bf16"}
#: The committed generators of the bundled model's lineage and the lgg stage each one ends.
LINEAGE = {"e": "lgg_v3_stage_e_g.pt", "f": "lgg_v4_stage_f_g.pt", "g": "lgg_v5_stage_g_g.pt",
           "i": "lgg_v6_mean_g.pt"}  # the weight mean keeps its last input's (stage i's) settings


def test_every_shipped_recipe_builds_a_config():
    assert {"lgg", "brats", "finetune", "tiny"} <= set(recipe_names())
    assert sorted(p.name for p in CONFIG_DIR.glob("*.json") if not p.name.startswith("card_")) == \
        sorted(["base.json", *(f"{name}.json" for name in recipe_names())])
    for name in recipe_names():
        recipe = read_recipe(name)
        for stage in recipe.stages or [{}]:
            make_config(recipe.stage_settings(stage))
    brats = load_config("brats")
    assert brats.contrasts == ["t1n", "t1c", "t2w", "t2f"] and brats.crop == 0


@pytest.mark.parametrize("stage", sorted(LINEAGE))
def test_lgg_stages_are_the_settings_the_bundled_lineage_was_trained_with(stage: str):
    recipe = read_recipe("lgg")
    mine = recipe.stage_settings(next(s for s in recipe.stages if s["name"] == stage))
    state = torch.load(REPO_ROOT / "training" / "checkpoints" / LINEAGE[stage], map_location="cpu",
                       weights_only=False)
    recorded = make_config(state["config"]).to_dict()
    ours = make_config(mine).to_dict()
    differ = {k: (ours[k], recorded[k]) for k in ours if k not in WHERE and ours[k] != recorded[k]}
    assert differ == {}
    assert mine["steps"] == state["step"]  # each stage ends at the step its generator was taken from


def test_lgg_recipe_chains_its_stages_averages_the_last_two_and_blends():
    recipe = read_recipe("lgg")
    steps = plan(recipe, Path("runs/lgg"))
    assert [name for name, _, _ in steps] == ["d", "d", "e", "f", "g", "i"]
    assert steps[0][2] == "" and steps[1][2] == ""  # a fresh start, then the same run continued
    assert [start for _, _, start in steps[2:]] == [f"runs/lgg/{n}/latest.pt" for n in ("d", "e", "f", "g")]
    assert recipe.average == ["g", "i"]
    state = torch.load(REPO_ROOT / "training/checkpoints/lgg_v6_mean_g.pt", map_location="cpu", weights_only=False)
    assert [Path(path).name for path, _ in state["averaged_from"]] == ["lgg_v5_stage_g_g.pt", "g_002000.pt"]
    bundled = torch.load(REPO_ROOT / "training/checkpoints/lgg_v8_blend_g.pt", map_location="cpu", weights_only=False)
    assert bundled["blended_from"]["mix"] == recipe.blend  # the recipe ends in the shares of the bundled model
    assert all(torch.equal(bundled["G"][k], v) for k, v in state["G"].items())  # around the weight mean's network


def test_finetune_defaults_are_the_finetune_recipe():
    assert FINETUNE_SETTINGS == recipe_overlay("finetune")
    assert DEFAULT_STEPS == load_config("finetune").steps
    assert read_recipe("finetune").settings["w_identity_pooled"] == 0.0  # on top of lgg's last stage (10)


def test_holdout_and_set_aside_cases_are_one_seeded_pick():
    cases = [f"case-{i:02d}" for i in range(12)]
    assert pick_holdout(cases, 3, [], 7) == select_cases(cases, 3, 7)
    assert len(pick_holdout(cases, None, [], 0)) == 2  # a fifth by default


@pytest.mark.skipif(locate_lgg() is None, reason="LGG data (../shared/data/lgg or COLLAGAN_LGG_DIR) absent")
def test_a_staged_recipe_runs_its_stages_from_each_other_averages_and_blends(tmp_path: Path, capsys):
    recipe = tmp_path / "two.json"
    recipe.write_text(json.dumps({"base": str(CONFIG_DIR / "tiny.json"), "max_cases": 2, "val_every": 2,
                                  "cache_dir": str(tmp_path / "cache"),
                                  "stages": [{"name": "a", "steps": 2}, {"name": "b", "steps": 2, "lr_g": 1e-4}],
                                  "average": ["a", "b"], "blend": {"t1n": 1.0, "t1c": 0.5, "t2f": 0.0}}))
    out = tmp_path / "run"
    main(["train", "--recipe", str(recipe), "--out", str(out)])
    b = json.loads((out / "b" / "config.json").read_text())
    assert b["init_g"] == str(out / "a" / "latest.pt") and b["lr_g"] == 1e-4
    mean = torch.load(out / MEAN, map_location="cpu", weights_only=False)
    assert [m["checkpoint"] for m in mean["averaged_from"]] == [str(out / "a" / "latest.pt"),
                                                                 str(out / "b" / "latest.pt")]
    blended = torch.load(out / BLEND, map_location="cpu", weights_only=False)  # the mean, blended per target
    assert blended["config"]["g_prior_mix"] == [1.0, 0.5, 0.0] and blended["blended_from"]["checkpoint"] == MEAN
    assert torch.equal(blended["G"]["out.weight"], mean["G"]["out.weight"])
    assert blended["G"]["prior.coef"].abs().sum() > 0  # the polynomial fitted on the recipe's training patients
    capsys.readouterr()
    main(["train", "--recipe", str(recipe), "--out", str(out)])  # a rerun: both stages are done
    printed = capsys.readouterr().out
    assert "stage 1/2 'a': done" in printed and "stage 2/2 'b': done" in printed


def test_train_recipe_on_a_brats_download_exports_a_model_and_report(openms_download: Path, tmp_path: Path):
    """The download as unpacked (case folders one level down, BraTS 2021 names) is prepared into OUT/data."""
    out = tmp_path / "model"
    main(["train", "--recipe", "tiny", str(openms_download.parent), "--out", str(out),
          "--set", 'contrasts=["t1n","t1c","t2w","t2f"]', "--set", "steps=2", "--set", "val_every=2"])
    assert sorted(p.name for p in (out / "data" / "complete").iterdir()) == ["OpenMS-patient07", "OpenMS-patient19"]
    model = load_model(out / "model.pt")
    assert model.card.contrasts == ["t1n", "t1c", "t2w", "t2f"]
    assert model.card.training["recipe"] == "tiny"
    held = model.card.metrics["held_out_cases"]
    assert len(held) == 1 and "nmse" in model.card.metrics["t2w"]
    report = (out / "report.md").read_text()
    for row in ("| t2w | trained | t1n+t1c+t2f |", "| t2w | voxel regression |", "| t2f | bundled | t1n+t1c |"):
        assert row in report
    assert held[0] in report


def test_train_on_a_cohort_needs_an_out_folder(openms_download: Path):
    with pytest.raises(SystemExit, match="give --out OUT_DIR"):
        main(["train", "--recipe", "tiny", str(openms_download)])


def test_an_adversarial_fine_tune_starts_from_the_shipped_discriminator():
    from training.collagan_train.model import Discriminator
    from training.collagan_train.source_model import BUNDLED_DISCRIMINATORS, starting_discriminator

    old, four = ["t1n", "t1c", "t2f"], ["t1n", "t1c", "t2w", "t2f"]
    base = {**load_config("finetune").to_dict(), "contrasts": four}
    shipped = torch.load(REPO_ROOT / BUNDLED_DISCRIMINATORS["collagan-lgg-t1n-t1c-t2f"], map_location="cpu",
                         weights_only=False)
    assert shipped["config"]["freeze_g"] and shipped["config"]["init_g"].endswith("lgg_v6_mean_g.pt")
    start = starting_discriminator("collagan-lgg-t1n-t1c-t2f", make_config({**base, "w_gan": 1.0}), old)
    Discriminator(4).load_state_dict(start)
    assert torch.equal(start["clsf_head.weight"][3], shipped["D"]["clsf_head.weight"][2])  # t2f keeps its row
    assert torch.equal(start["gan_head.weight"], shipped["D"]["gan_head.weight"])
    off = make_config({**base, "w_gan": 0.0, "w_g_clsf": 0.0, "w_d_clsf": 0.0})
    assert starting_discriminator("collagan-lgg-t1n-t1c-t2f", off, old) is None
