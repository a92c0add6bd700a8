"""select: snapshots exported and scored on the set-aside patients their run recorded, then the rule applied."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from CollaGANImputeLib.contract import load_model

from training.collagan_train.select import select, set_aside_cases
from training.collagan_train.solver import Solver

from .conftest import SAMPLE


def test_snapshots_are_exported_scored_on_the_set_aside_case_and_chosen(tiny_cfg, sample_slices, tmp_path):
    solver = Solver(tiny_cfg("steps=2", "clsf_warmup_steps=1", "n_select=1"), sample_slices, None,
                    out_dir=str(tmp_path / "run"))
    snaps = tmp_path / "run" / "snapshots"
    snaps.mkdir(parents=True)
    paths = []
    for step in (1, 2):
        solver.train_step()
        paths.append(shutil.copy(solver.save("latest.pt"), snaps / f"g_{step:06d}.pt"))
    (tmp_path / "run" / "split_used.json").write_text(json.dumps({"train": [], "select": [SAMPLE.name]}))
    about = {"intended_use": "a test", "domain": "the sample case", "limitations": ["tiny"]}
    out = tmp_path / "select"
    chosen, reasons, scored = select(paths, out, SAMPLE.parent, about=about)
    assert chosen in ("g_000001", "g_000002") and set(reasons) == {"g_000001", "g_000002"}
    rows = json.loads((out / "g_000002" / "select" / "scores.json").read_text())["cases"]
    assert {r["case"] for r in rows} == {SAMPLE.name}  # only the set-aside case, never a validation one
    assert all(0 < s.mean_nmse < 10 for s in scored.values())
    card = load_model(out / "g_000001" / "model.pt").card
    assert card.intended_use == "a test"
    # The run's records sit one folder above its snapshots: the card names the set-aside patients and the cost.
    assert SAMPLE.name in card.training["checkpoint_choice"] and " h of training steps" in card.training["cost"]
    # Scored snapshots are kept, not scored again (the command is repeated as a run writes more).
    stamp = (out / "g_000001" / "model.pt").stat().st_mtime_ns
    assert select(paths[:1], out, SAMPLE.parent)[2]["g_000001"] == scored["g_000001"]
    assert (out / "g_000001" / "model.pt").stat().st_mtime_ns == stamp


def test_a_run_without_set_aside_patients_or_a_missing_snapshot_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="No such snapshot"):
        select([tmp_path / "g_000250.pt"], tmp_path / "out", tmp_path)
    snap = tmp_path / "run" / "snapshots" / "g_000010.pt"
    snap.parent.mkdir(parents=True)
    snap.touch()
    with pytest.raises(SystemExit, match="No split_used.json"):
        set_aside_cases(snap)
    (tmp_path / "run" / "split_used.json").write_text(json.dumps({"train": ["A"], "val": ["B"]}))
    with pytest.raises(SystemExit, match="n_select > 0"):
        set_aside_cases(snap)
    (tmp_path / "run" / "split_used.json").write_text(json.dumps({"select": ["A"]}))
    other = tmp_path / "other_run" / "snapshots" / "g_000020.pt"
    other.parent.mkdir(parents=True)
    other.touch()
    (tmp_path / "other_run" / "split_used.json").write_text(json.dumps({"select": ["B"]}))
    with pytest.raises(SystemExit, match="set aside different patients"):
        select([snap, other], tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()  # refused before exporting or scoring anything


def test_average_is_the_mean_generator_and_selectable(tiny_cfg, sample_slices, tmp_path):
    from training.collagan_train import main

    solver = Solver(tiny_cfg("steps=3", "clsf_warmup_steps=1"), sample_slices, None, out_dir=str(tmp_path / "run"))
    snaps = tmp_path / "run" / "snapshots"
    snaps.mkdir(parents=True)
    first = shutil.copy(solver.save("latest.pt"), snaps / "g_000000.pt")
    for _ in range(2):  # the first step only warms up the classifier
        solver.train_step()
    second = shutil.copy(solver.save("latest.pt"), snaps / "g_000001.pt")
    (tmp_path / "run" / "split_used.json").write_text(json.dumps({"select": [SAMPLE.name]}))
    out = tmp_path / "soup" / "snapshots" / "g_soup.pt"
    main.main(["average", str(first), str(second), "--out", str(out), "--weights", "0.25", "0.75"])
    a, b, mean = (torch.load(p, weights_only=False)["G"] for p in (first, second, out))
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert changed  # one training step moved the weights
    for key in changed:
        assert torch.allclose(mean[key], 0.25 * a[key] + 0.75 * b[key], atol=1e-6)
    assert set_aside_cases(out) == [SAMPLE.name]  # select scores it on the same patients as its inputs
    from training.collagan_train.export import export_checkpoint
    card = load_model(export_checkpoint(str(out), str(tmp_path / "soup.pt"))).card
    assert [(m["checkpoint"], m["weight"], m["steps"]) for m in card.training["weight_mean_of"]] == [
        (str(first), 0.25, 0), (str(second), 0.75, 2)]
    assert card.training["weight_mean_of"][0]["losses"]["w_cyc_l1"] == solver.cfg.w_cyc_l1
    assert "last generator" in card.training["recipe_of"]
    from training.collagan_train.run_records import weight_mean_of
    assert weight_mean_of([("v5.pt", 0.5)]) == [{"checkpoint": "v5.pt", "weight": 0.5}]  # v6's own record
    assert "average" in (tmp_path / "soup" / "commands.txt").read_text()
    with pytest.raises(SystemExit, match="summing to 1"):
        main.main(["average", str(first), str(second), "--out", str(out), "--weights", "0.5", "0.6"])


def test_the_bundled_run_must_score_the_set_aside_patients(tmp_path):
    from training.collagan_train import main

    snap = tmp_path / "run" / "snapshots" / "g_000010.pt"
    snap.parent.mkdir(parents=True)
    snap.touch()
    (tmp_path / "run" / "split_used.json").write_text(json.dumps({"select": ["A", "B"]}))
    validation = tmp_path / "validation"
    validation.mkdir()
    rows = [{"case": c, "target": "t1n", "inputs": "t1c+t2f", "n_inputs": 2, "nmse": 0.1, "identity": 0.0}
            for c in ("V1", "V2")]
    (validation / "scores.json").write_text(json.dumps({"cases": rows}))
    with pytest.raises(SystemExit, match="not the set-aside patients"):
        main.main(["select", str(snap), "--out", str(tmp_path / "out"), "--data", str(tmp_path),
                   "--bundled", f"v5={validation}"])
