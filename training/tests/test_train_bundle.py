"""bundle: a chosen generator exported, scored on the validation patients and another domain, tabulated beside
earlier runs and exported again with the figures in its card; resumable; mismatched comparisons refused."""

from __future__ import annotations

import json
import shutil

import pytest
from CollaGANImputeLib.contract import load_model
from CollaGANImputeLib.errors import ModelError

from training.collagan_train.bundle import bundle
from training.collagan_train.report import load_rows
from training.collagan_train.solver import Solver

from .conftest import SAMPLE


def test_bundle_scores_tabulates_and_writes_the_figures_into_the_card(tiny_cfg, sample_slices, tmp_path):
    solver = Solver(tiny_cfg("steps=1", "clsf_warmup_steps=0"), sample_slices, None, out_dir=str(tmp_path / "run"))
    solver.train_step()
    checkpoint = solver.save("latest.pt")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": [SAMPLE.name]}))
    about = {"intended_use": "a test", "domain": "the sample case", "limitations": ["tiny"]}
    out = tmp_path / "v9"
    model = bundle(checkpoint, out, "v9", about, SAMPLE.parent, split, other=SAMPLE.parent)

    rows = load_rows(out / "eval_lgg")
    assert {r["case"] for r in rows} == {SAMPLE.name}
    card = load_model(model).card
    assert card.metrics["model"] == "v9" and card.intended_use == "a test"
    t1n = [r for r in rows if r["target"] == "t1n" and r["inputs"] == "t1c+t2f"]
    assert card.metrics["v9"]["t1n<-t1c+t2f"]["nmse"] == pytest.approx(t1n[0]["nmse"], abs=1e-4)
    assert "| target | inputs | v9 |" in (out / "report_lgg.md").read_text()
    assert (out / "report_other.md").is_file() and (out / "eval_other" / "scores.json").is_file()
    assert not load_model(out / "model_nometrics.pt").card.metrics.get("model")

    # Repeating the command resumes: finished evaluate runs are kept, the earlier model can be compared.
    stamp = (out / "eval_lgg" / "scores.json").stat().st_mtime_ns
    again = bundle(checkpoint, tmp_path / "v10", "v10", about, SAMPLE.parent, split, compare={"v9": out / "eval_lgg"})
    assert (out / "eval_lgg" / "scores.json").stat().st_mtime_ns == stamp
    assert set(load_model(again).card.metrics) >= {"v9", "v10"}
    assert "| target | inputs | v9 | v10 |" in (tmp_path / "v10" / "report_lgg.md").read_text()
    stamp = (tmp_path / "v10" / "eval_lgg" / "scores.json").stat().st_mtime_ns
    bundle(checkpoint, tmp_path / "v10", "v10", about, SAMPLE.parent, split)
    assert (tmp_path / "v10" / "eval_lgg" / "scores.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="both the new model's version"):
        bundle(checkpoint, tmp_path / "v11", "v9", about, SAMPLE.parent, split, compare={"v9": out / "eval_lgg"})


def test_a_comparison_on_other_patients_or_a_missing_checkpoint_is_refused(tiny_cfg, sample_slices, tmp_path):
    with pytest.raises(SystemExit, match="No such checkpoint"):
        bundle(tmp_path / "g.pt", tmp_path / "out", "v9", None, SAMPLE.parent, tmp_path / "split.json")
    solver = Solver(tiny_cfg("steps=1"), sample_slices, None, out_dir=str(tmp_path / "run"))
    checkpoint = solver.save("latest.pt")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": [SAMPLE.name]}))
    other = tmp_path / "other_patients"
    other.mkdir()
    rows = [{"case": "V1", "target": "t1n", "inputs": "t1c+t2f", "n_inputs": 2, "nmse": 0.1}]
    (other / "scores.json").write_text(json.dumps({"cases": rows}))
    with pytest.raises(SystemExit, match="scored other patients"):
        bundle(checkpoint, tmp_path / "out", "v9", None, SAMPLE.parent, split, compare={"v5": other})


def test_install_replaces_the_bundled_model_its_sha_and_card_header(tiny_cfg, sample_slices, tmp_path):
    from CollaGANImputeLib.contract import sha256_of
    from CollaGANImputeLib.resources import bundled_models

    from training.collagan_train.bundle import MODELS_DIR, install
    from training.collagan_train.export import export_checkpoint

    models = tmp_path / "Resources" / "Models"
    models.mkdir(parents=True)
    for name in ("models.json", "collagan_lgg_t1n_t1c_t2f.md"):
        shutil.copyfile(MODELS_DIR / name, models / name)
    (models / "collagan_lgg_t1n_t1c_t2f.pt").write_bytes(b"the old model")
    solver = Solver(tiny_cfg("steps=1"), sample_slices, None, out_dir=str(tmp_path / "run"))
    model = tmp_path / "model.pt"
    export_checkpoint(str(solver.save("latest.pt")), str(model))

    with pytest.raises(SystemExit, match="no model named 'nobody'"):
        install(model, "v9", name="nobody", models_dir=models)
    assert (models / "collagan_lgg_t1n_t1c_t2f.pt").read_bytes() == b"the old model"
    # An ONNX file that is another model's export is refused: its listed SHA-256 will stand for the card check.
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    shutil.copyfile(model, other)
    shutil.copyfile(MODELS_DIR / "collagan_lgg_t1n_t1c_t2f.onnx", other.with_suffix(".onnx"))
    with pytest.raises(SystemExit, match="does not carry the card of model.pt.*nothing was installed"):
        install(other, "v9", models_dir=models)
    assert (models / "collagan_lgg_t1n_t1c_t2f.pt").read_bytes() == b"the old model"
    assert json.loads((models / "models.json").read_text()) == json.loads((MODELS_DIR / "models.json").read_text())

    sha = install(model, "v9", models_dir=models)
    assert sha == sha256_of(model)
    assert (models / "collagan_lgg_t1n_t1c_t2f.pt").read_bytes() == model.read_bytes()
    card = (models / "collagan_lgg_t1n_t1c_t2f.md").read_text()
    assert card.startswith("# Model card: collagan-lgg-t1n-t1c-t2f (v9)") and f"| SHA-256 | `{sha}` |" in card
    assert (models / "collagan_lgg_t1n_t1c_t2f.onnx").read_bytes() == model.with_suffix(".onnx").read_bytes()
    assert sorted(p.name for p in models.iterdir()) == [
        "collagan_lgg_t1n_t1c_t2f.md", "collagan_lgg_t1n_t1c_t2f.onnx", "collagan_lgg_t1n_t1c_t2f.pt",
        "models.json"]  # no staged leftovers
    [bundled] = bundled_models(tmp_path / "Resources")
    assert bundled.sha256 == sha and bundled.onnx_sha256 == sha256_of(model.with_suffix(".onnx"))
    loaded = bundled.load()
    assert loaded.card.contrasts == ["t1n", "t1c", "t2f"] and loaded.onnx == models / "collagan_lgg_t1n_t1c_t2f.onnx"
    # A damaged ONNX file fails its listed SHA-256 on load, like the TorchScript file.
    (models / "collagan_lgg_t1n_t1c_t2f.onnx").write_bytes(b"changed")
    with pytest.raises(ModelError, match=r"collagan_lgg_t1n_t1c_t2f.onnx fails its SHA-256 check"):
        bundled.load()
