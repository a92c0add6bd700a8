"""The command line end to end on the bundled sample case, and the exit codes scripts rely on."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import SimpleITK as sitk
from CollaGANImputeLib.cli import EXIT_INPUT, EXIT_MODEL, EXIT_NO_MODEL, EXIT_OK, main
from CollaGANImputeLib.contract import sha256_of
from core_fixtures import child_env


def test_impute_case_folder(tiny_model_path, copied_sample, tmp_path, capsys):
    (copied_sample / "TCGA-HT-7882-t1c.nii.gz").unlink()
    out = tmp_path / "out"
    assert main(["impute", str(copied_sample), "--model", str(tiny_model_path), "--out", str(out),
                 "--device", "cpu"]) == EXIT_OK
    written = out / "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz"
    assert written.is_file() and "SYNTHETIC" in capsys.readouterr().out
    assert sitk.ReadImage(str(written)).GetSize() == (256, 256, 32)


def test_impute_explicit_files(tiny_model_path, sample_case, tmp_path):
    out = tmp_path / "explicit"
    code = main(["impute", "--input", f"t2f={sample_case / 'TCGA-HT-7882-t2f.nii.gz'}", "--target", "t1n",
                 "--target", "t1c", "--model", str(tiny_model_path), "--out", str(out), "--name", "p1"])
    assert code == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["p1-t1c-synthetic-collagan.json",
                                                     "p1-t1c-synthetic-collagan.nii.gz",
                                                     "p1-t1n-synthetic-collagan.json",
                                                     "p1-t1n-synthetic-collagan.nii.gz"]


def test_evaluate_writes_scores_and_montages(tiny_model_path, sample_case, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(sample_case, data / sample_case.name)
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--out", str(out), "--model", str(tiny_model_path),
                 "--target", "t2f", "--device", "cpu"]) == EXIT_OK
    rows = list(csv.DictReader((out / "scores_per_case.csv").open()))
    assert [(r["case"], r["target"], r["inputs"]) for r in rows] == [("TCGA-HT-7882", "t2f", "t1n+t1c")]
    assert float(rows[0]["nmse"]) > 0 and 0 < float(rows[0]["ssim"]) < 1
    assert float(rows[0]["lesion_voxels"]) > 0
    report = json.loads((out / "scores.json").read_text())
    assert report["summary"][0]["target"] == "t2f"
    assert (out / "montage_t2f_from_t1n+t1c.png").stat().st_size > 10_000
    assert "| t2f |" in (out / "scores_summary.md").read_text()


def test_evaluate_warns_where_the_real_target_has_no_data(tiny_model_path, sample_case, tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("whole", "short-slab"):
        shutil.copytree(sample_case, data / name)
        for path in (data / name).iterdir():
            path.rename(path.with_name(path.name.replace(sample_case.name, name)))
    flair_path = data / "short-slab" / "short-slab-t2f.nii.gz"
    flair = sitk.ReadImage(str(flair_path))
    values = sitk.GetArrayFromImage(flair)
    values[:4] = 0  # the FLAIR slab ends four slices before the T1's
    cut = sitk.GetImageFromArray(values)
    cut.CopyInformation(flair)
    sitk.WriteImage(cut, str(flair_path))
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--out", str(out), "--model", str(tiny_model_path), "--target", "t2f",
                 "--device", "cpu"]) == EXIT_OK
    rows = {r["case"]: r for r in csv.DictReader((out / "scores_per_case.csv").open())}
    assert float(rows["whole"]["real_no_data"]) == 0.0
    assert 0.03 < float(rows["short-slab"]["real_no_data"]) < 0.2
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "short-slab t2f: the acquired t2f has no data in" in warnings[0]
    assert "scored where it was acquired only" in warnings[0]
    assert json.loads((out / "scores.json").read_text())["protocol"] == "EVALUATION.md v3"
    # v3 leaves the slices without data out; v2 scores the synthetic image against their zeros
    v2 = tmp_path / "eval_v2"
    assert main(["evaluate", str(data), "--out", str(v2), "--model", str(tiny_model_path), "--target", "t2f",
                 "--device", "cpu", "--protocol", "v2"]) == EXIT_OK
    rows_v2 = {r["case"]: r for r in csv.DictReader((v2 / "scores_per_case.csv").open())}
    assert json.loads((v2 / "scores.json").read_text())["protocol"] == "EVALUATION.md v2"
    assert rows_v2["whole"]["nmse"] == rows["whole"]["nmse"]  # nothing missing: the same numbers
    assert float(rows_v2["short-slab"]["nmse"]) > float(rows["short-slab"]["nmse"])
    assert {"identity_t", "identity"} <= set(rows["whole"]) and "I_T" in (out / "scores_summary.md").read_text()


def test_evaluate_scores_the_uncertainty_map_on_request(tiny_model_path, sample_case, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(sample_case, data / sample_case.name)
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--out", str(out), "--model", str(tiny_model_path), "--target", "t2f",
                 "--device", "cpu", "--uncertainty"]) == EXIT_OK
    row = next(csv.DictReader((out / "scores_per_case.csv").open()))
    assert -1 <= float(row["rho_u"]) <= 1
    auroc = float(row["auroc_u"])  # NaN when no voxel (or every voxel) is wrong by more than 0.2
    assert auroc != auroc or 0 <= auroc <= 1
    assert -1 <= float(row["lesion_rho_u"]) <= 1  # the sample case has a lesion mask
    summary = (out / "scores_summary.md").read_text()
    assert "| rho_U | AUROC_U |" in summary and "rho_U: Spearman" in summary
    # without the option nothing about uncertainty is computed or shown
    plain = tmp_path / "plain"
    assert main(["evaluate", str(data), "--out", str(plain), "--model", str(tiny_model_path), "--target", "t2f",
                 "--device", "cpu"]) == EXIT_OK
    assert "rho_u" not in (plain / "scores_per_case.csv").read_text() and "rho_U" not in (
        plain / "scores_summary.md").read_text()


def _resources_with(tmp_path, sample_case, model_path=None):
    resources = tmp_path / "Resources"
    shutil.copytree(sample_case, resources / "SampleData" / sample_case.name)
    (resources / "Models").mkdir(parents=True)
    if model_path is not None:
        shutil.copy(model_path, resources / "Models" / "tiny.pt")
        (resources / "Models" / "models.json").write_text(json.dumps({"default": "tiny-test", "models": [
            {"name": "tiny-test", "file": "tiny.pt", "sha256": sha256_of(model_path), "card": None}]}))
    return resources


def test_demo_without_bundled_model_says_so(tmp_path, sample_case, monkeypatch, capsys):
    monkeypatch.setenv("COLLAGAN_RESOURCES", str(_resources_with(tmp_path, sample_case)))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == EXIT_NO_MODEL
    assert "No trained model is bundled" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_with_bundled_model(tmp_path, sample_case, tiny_model_path, monkeypatch, capsys):
    monkeypatch.setenv("COLLAGAN_RESOURCES", str(_resources_with(tmp_path, sample_case, tiny_model_path)))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--target", "t1c", "--device", "cpu"]) == EXIT_OK
    assert (out / "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz").is_file()
    assert (out / "montage_t1c_from_t1n+t2f.png").is_file() and (out / "scores_summary.csv").is_file()
    assert "peak memory" in capsys.readouterr().out


def test_tampered_bundled_model_is_refused(tmp_path, sample_case, tiny_model_path, monkeypatch):
    resources = _resources_with(tmp_path, sample_case, tiny_model_path)
    with open(resources / "Models" / "tiny.pt", "ab") as handle:
        handle.write(b"tampered")
    monkeypatch.setenv("COLLAGAN_RESOURCES", str(resources))
    assert main(["info"]) == EXIT_MODEL


def test_exit_codes_for_bad_input_and_bad_model(tmp_path, tiny_model_path, capsys):
    assert main(["impute", str(tmp_path / "nope"), "--model", str(tiny_model_path)]) == EXIT_INPUT
    assert "Case folder not found" in capsys.readouterr().err
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("no")
    assert main(["info", str(bogus)]) == EXIT_MODEL
    assert main(["impute", "--input", "t1n", "--model", str(tiny_model_path)]) == EXIT_INPUT
    with pytest.raises(SystemExit) as usage:
        main(["impute", "--bogus-flag"])
    assert usage.value.code == 2


def test_info_and_module_entry_point(tiny_model_path):
    result = subprocess.run([sys.executable, "-m", "CollaGANImputeLib", "info", str(tiny_model_path)],
                            capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Contrasts: t1n (T1), t1c (T1+Gd), t2f (T2-FLAIR)" in result.stdout
    assert "SHA-256: " + sha256_of(tiny_model_path) in result.stdout


def test_impute_batch_goes_on_past_a_bad_case_and_draws_montages(tiny_model_path, copied_sample, tmp_path, capsys):
    (copied_sample / "TCGA-HT-7882-t1c.nii.gz").unlink()
    empty = tmp_path / "empty-case"
    empty.mkdir()
    out = tmp_path / "batch"
    code = main(["impute", str(empty), str(copied_sample), "--model", str(tiny_model_path), "--out", str(out),
                 "--montage", "--device", "cpu"])
    assert code == EXIT_INPUT
    assert "1 of 2 cases failed: empty-case" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["TCGA-HT-7882-t1c-synthetic-collagan.json",
                                                     "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz",
                                                     "TCGA-HT-7882-t1c-synthetic-collagan.png"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the carried-over peak is Linux's")
def test_demo_peak_memory_is_its_own_not_the_starting_process():
    """Started by a process holding 300 MB, a small one reports its own peak memory: Linux keeps ``ru_maxrss``
    across exec, which would report the starter's."""
    code = ("import subprocess, sys\n"
            "held = bytearray(300 * 2**20)\n"
            "child = 'from CollaGANImputeLib.cli_evaluate import _peak_memory; print(_peak_memory())'\n"
            "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True).stdout)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 0, done.stderr[-2000:]
    mib = float(done.stdout.split()[0])
    assert 5 < mib < 250, done.stdout
