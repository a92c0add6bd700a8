"""The model that ships: it loads through the core's contract (checksum, card) and imputes the sample case."""

from __future__ import annotations

import numpy as np
import pytest
from CollaGANImputeLib import impute
from CollaGANImputeLib.metrics import nmse
from CollaGANImputeLib.models import bundled_models, default_model
from CollaGANImputeLib.pipeline import read_case


def test_default_model_is_listed_loads_and_carries_its_card():
    entries = bundled_models()
    model = default_model()
    assert model.card.name in [e.name for e in entries]
    assert model.card.contrasts == ["t1n", "t1c", "t2f"]
    assert "CC BY-NC-SA" in model.card.licence and model.card.training.get("data")
    assert (entries[0].path.stat().st_size) <= 20 * 2**20, "the bundled model stays under 20 MB"


@pytest.mark.parametrize("target", ["t1n", "t1c", "t2f"])
def test_default_model_imputes_the_sample_case_better_than_a_blank(sample_case, target):
    model = default_model()
    images = read_case(sample_case, model.card.contrasts)
    real = images.pop(target)
    result = impute(images, model, targets=[target], device="cpu", precision="fp32")
    case = result.cases[target]
    prediction, truth = result.arrays[target], case.normalize_like_inputs(real)
    assert np.isfinite(prediction).all()
    assert nmse(prediction, truth, case.mask) < 0.5  # a blank (all-zero) prediction scores 1.0
    if model.card.outside_head == "zero":
        assert not prediction[~case.mask].any()


def test_benchmarks_naive_path_runs_the_bundled_weights():
    """bench_inference/bench_volume time the naive eager path on the bundled model's own weights: the fast
    export's rewrite, undone, must give the same function (and a corrupted merged kernel is refused)."""
    import torch

    from benchmarks.benchlib import eager_from_model

    model = default_model()
    architecture = model.card.architecture
    generator = eager_from_model(model.module, 3, architecture["base_channels"], architecture["levels"])
    assert sum(p.numel() for p in generator.parameters()) == architecture["parameters"]
    x = torch.rand(2, 6, 64, 64)
    x[:, 1], x[:, 3:] = 0, 0
    x[:, 4] = 1  # target t1c
    with torch.no_grad():
        np.testing.assert_allclose(generator(x).numpy(), model.module(x).numpy(), atol=1e-5)
    broken = torch.jit.load(str(bundled_models()[0].path))
    with torch.no_grad():
        broken.state_dict()["encoders.0.0.conv.weight"][0, 0, 0, 0] = 1.0  # a rim tap in the 1x1 half
    with pytest.raises(ValueError, match="non-zero rim"):
        eager_from_model(broken, 3, architecture["base_channels"], architecture["levels"])
