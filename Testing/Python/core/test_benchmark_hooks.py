"""The benchmarks time the core's own stages by wrapping the functions it calls: a wrapped name that the core no
longer calls would time nothing (or fail on a GPU machine), so each stage must be timed on a real imputation."""

from __future__ import annotations

import torch
from CollaGANImputeLib import imputation_steps
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import load_model
from core_fixtures import REPO


def test_bench_volume_times_every_stage_that_impute_runs(phantom_case, tiny_model_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_volume

    wrapped = imputation_steps.prepare_case
    images = read_case(phantom_case, ["t1n", "t2f"])
    times, result = bench_volume.timed_imputations(images, load_model(tiny_model_path), torch.device("cpu"), "fp32",
                                                   repeats=0)
    assert result.images["t1c"].GetSize() == images["t1n"].GetSize()
    assert all(times[stage][0] > 0 for stage in ("mask + normalize", "infer", "label")), dict(times)
    assert imputation_steps.prepare_case is wrapped  # the timers are undone
