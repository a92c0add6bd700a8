"""Signals and start-up: SIGTERM cleans up like Ctrl-C in a real process; Ctrl-C while the CLI starts
gives one line, no traceback; evaluate goes on past a bad case."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import torch
from CollaGANImputeLib import ModelCard, save_model
from CollaGANImputeLib.cli import EXIT_CANCELLED, EXIT_INPUT, EXIT_TERMINATED, main
from core_fixtures import CONTRASTS


class Slow(torch.nn.Module):
    """Many 3x3 convolutions: a fraction of a second per slice, so that a signal comes during inference."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.out = torch.nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(60):
            x = torch.tanh(self.conv(x))
        return self.out(x)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_during_inference_leaves_nothing(tmp_path, sample_case):
    model = tmp_path / "slow.pt"
    save_model(Slow(), ModelCard(name="slow", contrasts=CONTRASTS), model)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "CollaGANImputeLib", "impute",
               "--input", f"t1n={sample_case / 'TCGA-HT-7882-t1n.nii.gz'}",
               "--input", f"t2f={sample_case / 'TCGA-HT-7882-t2f.nii.gz'}",
               "--target", "t1c", "--model", str(model), "--out", str(out), "--device", "cpu", "--threads", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    seen = bytearray()
    started = threading.Event()

    def read():
        while True:
            chunk = process.stderr.read1(256)
            if not chunk:
                return
            seen.extend(chunk)
            if b"/32 [" in seen:  # tqdm's bar: inference is under way
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(600), seen.decode(errors="replace")
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=600)
    reader.join(timeout=60)
    text = seen.decode(errors="replace")
    assert code == EXIT_TERMINATED, text
    assert "terminated (SIGTERM): nothing of the case in progress was written" in text and "Traceback" not in text
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_ctrl_c_while_starting_gives_one_line(tmp_path, monkeypatch, capsys):
    import CollaGANImputeLib.cli as cli

    def interrupted(model):  # the first heavy import (torch) happens while the model is loaded
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", interrupted)
    assert main(["info"]) == EXIT_CANCELLED
    err = capsys.readouterr().err
    assert err.strip() == "cancelled: nothing of the case in progress was written"


def test_batch_cancel_names_the_cases_already_written(tiny_model_path, copied_sample, tmp_path, monkeypatch,
                                                      capsys):
    import CollaGANImputeLib.pipeline as pipeline

    (copied_sample / "TCGA-HT-7882-t1c.nii.gz").unlink()
    second = tmp_path / "second"
    shutil.copytree(copied_sample, second)
    real, calls = pipeline.impute, []

    def impute(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "impute", impute)
    out = tmp_path / "out"
    assert main(["impute", str(copied_sample), str(second), "--model", str(tiny_model_path), "--out", str(out),
                 "--device", "cpu"]) == EXIT_CANCELLED
    assert "1 case(s) done before were kept: TCGA-HT-7882" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["TCGA-HT-7882-t1c-synthetic-collagan.json",
                                                     "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz"]


def test_evaluate_goes_on_after_a_bad_case(tiny_model_path, sample_case, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_case, data / "A-bad")
    for path in (data / "A-bad").iterdir():
        path.rename(path.with_name(path.name.replace("TCGA-HT-7882", "A-bad")))
    (data / "A-bad" / "A-bad-t2f.nii.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 50)  # a broken gzip
    shutil.copytree(sample_case, data / sample_case.name)
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--out", str(out), "--model", str(tiny_model_path), "--target", "t1c",
                 "--device", "cpu"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "1 of 2 cases failed" in err and "A-bad:" in err
    report = json.loads((out / "scores.json").read_text())
    assert [row["case"] for row in report["cases"]] == [sample_case.name]
    assert [f["case"] for f in report["failed_cases"]] == ["A-bad"]
    assert "not scored: A-bad" in (out / "scores_summary.md").read_text()
    assert (out / "montage_t1c_from_t1n+t2f.png").is_file()
