"""What a newcomer meets first: `info` (purpose, domain, limits, licence, the model's own numbers), a plain
`--help`, quiet pipes, progress with a total, and start-up that imports only what the command needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import CollaGANImputeLib
import pytest
from CollaGANImputeLib import ModelCard
from CollaGANImputeLib.cli import EXIT_OK, main
from CollaGANImputeLib.model_info import format_overview, markdown_section, model_overview, own_metrics

HEAVY = ("torch", "SimpleITK", "skimage", "matplotlib", "CollaGANImputeLib.evaluate", "CollaGANImputeLib.metrics")


def _run(*args: str, stdout=subprocess.PIPE, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300, **kwargs)


def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_info_of_the_bundled_model_puts_use_limits_and_its_own_numbers_first(capsys):
    assert main(["info"]) == EXIT_OK
    text = capsys.readouterr().out
    for heading in ("Purpose:", "Domain:", "Contrasts:", "Licence:", "Validation (this model", "Limits:"):
        assert heading in text, heading
    assert text.index("Purpose:") < text.index("Validation") < text.index("Limits:") < text.index("SHA-256")
    assert "Research: fill in a missing or unusable" in text and "CC BY-NC-SA 4.0" in text
    assert "T1+Gd contrast enhancement is not imputed" in text
    assert "not supported by this model: t2w (T2)" in text
    assert "t1n <- t1c+t2f   0.0880" in text  # the bundled model's own entry, in the card's contrast order
    for internal in ("Training epochs", "checkpoint", "runs/", '"voxreg": {'):
        assert internal not in text, internal


def test_info_of_a_bare_model_file_says_what_its_card_does_not_state(tiny_model_path, capsys):
    assert main(["info", str(tiny_model_path)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "Purpose:   not stated in the card" in text
    assert "The card states no limits of its own" in text and "SYNTHETIC" in text
    assert "none in the card (score it: collagan-impute evaluate" in text
    assert "Licence:   test only" in text


def test_own_metrics_is_the_model_entry_not_a_baseline():
    scores = {"t1c<-t1n+t2f": {"nmse": 0.1}}
    card = ModelCard(name="mine", contrasts=["t1n", "t1c", "t2f"],
                     metrics={"voxreg": {"t1c<-t1n+t2f": {"nmse": 0.2}}, "mine": scores})
    assert own_metrics(card) == ("mine", scores)
    card.metrics = {"model": "cg", "cg": scores, "mine": {}, "protocol": "v2"}
    assert own_metrics(card) == ("cg", scores)
    card.metrics = {"protocol": "training validation", "step": 250, "mean_nmse": 0.11}
    assert own_metrics(card) == (None, {"step": 250, "mean_nmse": 0.11})
    card.metrics = {"voxreg": scores}
    assert own_metrics(card)[0] is None  # another method's numbers are never shown as the model's own


def test_card_fields_and_the_markdown_card_feed_the_overview(tiny_model_path, tmp_path):
    from CollaGANImputeLib.contract import load_model

    markdown = tmp_path / "card.md"
    markdown.write_text("# card\n\n## Intended use\n\nFilling a **missing** T1.\n\n## Limits\n\n- Adults only.\n"
                        "- No `t2w`,\n  ever.\n\n## Other\n\nx\n")
    assert markdown_section(markdown.read_text(), "Limits").startswith("- Adults only.")
    model = load_model(tiny_model_path)
    overview = model_overview(model, markdown)
    assert overview["purpose"] == "Filling a missing T1." and overview["limits"] == ["Adults only.", "No t2w, ever."]
    assert overview["domain"] == "not stated in the card" and "Full card: " in format_overview(overview)
    model.card.intended_use, model.card.domain, model.card.limitations = "Research.", "Adult glioma MRI", ["2-D."]
    overview = model_overview(model, markdown)  # the card's own fields come first
    assert (overview["purpose"], overview["domain"], overview["limits"]) == ("Research.", "Adult glioma MRI", ["2-D."])


def test_info_json_into_a_closed_pipe_prints_no_traceback(tiny_model_path):
    process = subprocess.Popen([sys.executable, "-m", "CollaGANImputeLib", "info", "--json", str(tiny_model_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `| head` that has gone before the card is printed
    stderr = process.communicate(timeout=300)[1].decode()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_top_level_help_is_plain_text_and_imports_nothing_heavy():
    result = _run("-X", "importtime", "-m", "CollaGANImputeLib", "--help")
    assert result.returncode == 0
    assert "``" not in result.stdout and "collagan-impute: impute a missing MR contrast" in result.stdout
    assert "Exit codes" in result.stdout and "Examples:" in result.stdout
    assert not _imported(result.stderr) & set(HEAVY)


def test_package_import_is_lazy_and_the_public_names_still_resolve():
    code = ("import sys, CollaGANImputeLib as c; assert 'torch' not in sys.modules; "
            "from CollaGANImputeLib import impute_case, InputError; assert 'impute_case' in dir(c); "
            "print(impute_case.__module__, InputError.__module__)")
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["CollaGANImputeLib.pipeline", "CollaGANImputeLib.errors"]
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        CollaGANImputeLib.nothing_here  # noqa: B018
    assert set(CollaGANImputeLib.__all__) <= set(dir(CollaGANImputeLib))


def test_impute_loads_neither_evaluation_nor_scipy_nor_matplotlib(tiny_model_path, copied_sample, tmp_path):
    (copied_sample / "TCGA-HT-7882-t1c.nii.gz").unlink()
    result = _run("-X", "importtime", "-m", "CollaGANImputeLib", "impute", str(copied_sample), "--model",
                  str(tiny_model_path), "--out", str(tmp_path / "out"), "--device", "cpu", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    modules = _imported(result.stderr)
    assert {"torch", "SimpleITK"} <= modules  # what imputing needs
    assert not modules & {"skimage", "scipy", "matplotlib", "CollaGANImputeLib.evaluate", "CollaGANImputeLib.metrics",
                          "CollaGANImputeLib.figures"}


def test_evaluate_progress_has_a_total_and_a_single_case_has_no_plus_minus(tiny_model_path, sample_case, tmp_path,
                                                                          capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_case, data / sample_case.name)
    assert main(["evaluate", str(data), "--out", str(tmp_path / "eval"), "--model", str(tiny_model_path),
                 "--target", "t1c", "--target", "t2f", "--device", "cpu"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "2/2" in captured.err  # the bar knows its total: two imputations
    table = [line for line in captured.out.splitlines() if line.startswith("| tiny-test")]
    assert len(table) == 2 and not any("±" in line for line in table)
    summary = (tmp_path / "eval" / "scores_summary.md").read_text()
    assert "± 0.0000" not in summary and Path(tmp_path / "eval" / "scores.json").is_file()
