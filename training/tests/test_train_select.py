"""select: snapshots exported and scored on the set-aside patients their run recorded, then the rule applied."""

from __future__ import annotations

import json
import shutil

import pytest
from CollaGANImputeLib.contract import load_model

from training.collagan_train.select import select, set_aside_cases
from training.collagan_train.solver import Solver

from .conftest import SAMPLE


def test_snapshots_are_exported_scored_on_the_set_aside_case_and_chosen(tiny_cfg, sample_slices, tmp_path):
    solver = Solver(tiny_cfg("steps=2", "clsf_warmup_steps=1"), sample_slices, None, out_dir=str(tmp_path / "run"))
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
    assert load_model(out / "g_000001" / "model.pt").card.intended_use == "a test"
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
