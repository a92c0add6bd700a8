"""The report arranges core evaluate rows correctly: full-input comparison, paired wins, missing-N."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.collagan_train.main import main
from training.collagan_train.report import load_rows, wins_table

CONTRASTS = ["t1n", "t1c", "t2f"]


def _rows(model: str, offset: float) -> list:
    """Score rows in the shape `CollaGANImputeLib.evaluation_report.write_report` writes (two cases, all subsets)."""
    rows = []
    for case, base in (("A", 0.1), ("B", 0.3)):
        for t in CONTRASTS:
            others = [c for c in CONTRASTS if c != t]
            for inputs in ["+".join(others), *others]:
                n = len(inputs.split("+"))
                rows.append({"case": case, "target": t, "inputs": inputs, "n_inputs": n, "model": model,
                             "nmse": base + offset + (0.05 if n == 1 else 0), "psnr": 20 - base, "ssim": 0.7 - base,
                             "lesion_nmse": None if case == "B" else 0.5, "lesion_ssim": 0.4, "lesion_voxels": 10})
    return rows


@pytest.fixture
def runs(tmp_path: Path) -> dict:
    folders = {}
    for name, offset in (("voxreg", 0.02), ("collagan", 0.0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "scores.json").write_text(json.dumps({"protocol": "EVALUATION.md v1", "cases": _rows(name, offset)}))
        folders[name] = folder
    return folders


def test_report_tables_and_card_metrics(runs, tmp_path, capsys):
    out, card = tmp_path / "r.md", tmp_path / "card.json"
    main(["report", "--run", f"voxreg={runs['voxreg']}", "--run", f"collagan={runs['collagan']}",
          "--out", str(out), "--card-metrics", str(card)])
    text = out.read_text()
    # NMSE of t1n from t1c+t2f: collagan (0.1, 0.3) -> 0.2000 ± 0.1000 in bold, voxreg 0.2200 not.
    assert "| t1n | t1c+t2f | 0.2200 ± 0.1000 | **0.2000 ± 0.1000** |" in text
    assert "| t2f | t1c | " in text  # missing-N rows for single inputs
    metrics = json.loads(card.read_text())
    assert metrics["validation_patients"] == 2
    assert metrics["collagan"]["t1c<-t1n+t2f"]["nmse"] == pytest.approx(0.2)
    assert metrics["voxreg"]["t1c<-t1n+t2f"]["lesion_nmse"] == pytest.approx(0.5)  # null (case B) ignored


def test_wins_are_paired_by_case(runs):
    rows = {name: load_rows(folder) for name, folder in runs.items()}
    table = wins_table(rows, CONTRASTS, "collagan", "voxreg")
    assert "| t1n | 2/2 | 0/2 | 0/2 | 0/1 | 0/2 |" in table  # lower NMSE wins; equal scores do not


def test_missing_scores_file_is_explained(tmp_path):
    with pytest.raises(SystemExit, match="collagan-impute evaluate"):
        load_rows(tmp_path)
