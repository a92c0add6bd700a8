"""Fast inference paths: the export-time CCNR rewrite is exact, bf16 keeps the quality rule on real slices,
``auto`` falls back to fp32 without native bf16, and results never depend on the batch size.

A small real generator (the training tree's CCNR U-Net, 3 levels, random weights) runs on crops of the sample
case; the quality rule is the README's (masked SSIM within 0.002, NMSE within 1 % of fp32 eager).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import (
    InputError,
    ModelCard,
    ModelError,
    acceleration,
    hardware,
    load_model,
    prepare_case,
    save_model,
)
from CollaGANImputeLib.acceleration import plan_inference, resolve_precision
from CollaGANImputeLib.ccnr_export import count_fast_units, optimize_for_inference
from CollaGANImputeLib.inference import build_input, impute_slices
from CollaGANImputeLib.metrics import score_volume
from core_fixtures import CONTRASTS

Generator = pytest.importorskip("training.collagan_train.model", reason="needs the training tree").Generator

CROP = 128  # in-plane size of the test model: the sample case's central 128x128 (the head)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: with a second busy process (a training run) on a 2-core machine, 2 OpenMP threads
    wait on each other at every small layer (measured 6 s instead of 0.07 s per call of the small model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_generator(seed: int = 0) -> torch.nn.Module:
    """Widths 8, 16, 32: both fast forms (merged below 16 channels per branch, split from 16) appear."""
    torch.manual_seed(seed)
    generator = Generator(len(CONTRASTS), base=8, levels=3).eval()
    with torch.no_grad():  # trained norms are not the identity: give them some scale and shift
        for module in generator.modules():
            if isinstance(module, torch.nn.InstanceNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return generator


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same weights exported as training does today ("plain") and through the fast rewrite ("fast")."""
    folder = tmp_path_factory.mktemp("accel")
    generator = small_generator()
    card = ModelCard(name="small", contrasts=CONTRASTS, in_plane_size=(CROP, CROP), licence="test only")
    save_model(generator, card, folder / "plain.pt")
    save_model(optimize_for_inference(generator), card, folder / "fast.pt")
    return {"eager": generator, "plain": load_model(folder / "plain.pt"), "fast": load_model(folder / "fast.pt")}


@pytest.fixture(scope="module")
def sample(sample_case):
    """Six central slices of the sample case, cropped to the head, in p99 units with the inputs' mask."""
    images = {c: sitk.ReadImage(str(sample_case / f"TCGA-HT-7882-{c}.nii.gz")) for c in CONTRASTS}
    case = prepare_case(images, mask_from=["t1n", "t2f"])
    middle, top = case.mask.shape[0] // 2, (case.mask.shape[1] - CROP) // 2
    region = (slice(middle - 3, middle + 3), slice(top, top + CROP), slice(top, top + CROP))
    return {c: a[region] for c, a in case.arrays.items()}, case.mask[region]


def eager_fp32(generator: torch.nn.Module, inputs: dict, target: str) -> np.ndarray:
    """The reference: the eager fp32 generator on the whole stack at once."""
    n, h, w = next(iter(inputs.values())).shape
    x = build_input({c: torch.from_numpy(a) for c, a in inputs.items()}, CONTRASTS, target, (n, h, w))
    with torch.no_grad():
        return generator(x)[:, 0].numpy()


def test_fast_export_is_the_same_function_in_fp32(models, sample):
    arrays, _ = sample
    inputs = {c: arrays[c] for c in ("t1n", "t2f")}
    names = {getattr(m, "original_name", "") for m in models["fast"].module.modules()}
    assert {"FastCCNR", "MergedCCNR"} <= names and "CCNR" not in names
    assert count_fast_units(models["fast"].module) == 10  # 2 x (2 encoder levels + bottom + 2 decoder levels)
    reference = eager_fp32(models["eager"], inputs, "t1c")
    for channels_last in (False, True):
        out = impute_slices(models["fast"], inputs, "t1c", device="cpu", precision="fp32",
                            channels_last=channels_last)
        np.testing.assert_allclose(out, reference, atol=2e-4 * np.abs(reference).max())


def test_default_path_keeps_the_quality_rule_on_real_slices(models, sample):
    arrays, mask = sample
    inputs = {c: arrays[c] for c in ("t1n", "t2f")}
    truth = score_volume(eager_fp32(models["eager"], inputs, "t1c"), arrays["t1c"], mask)
    for model, precision in ((models["fast"], "auto"), (models["fast"], "bf16"), (models["plain"], "bf16")):
        scores = score_volume(impute_slices(model, inputs, "t1c", device="cpu", precision=precision),
                              arrays["t1c"], mask)
        assert abs(scores["ssim"] - truth["ssim"]) <= 0.002, (precision, scores, truth)
        assert abs(scores["nmse"] - truth["nmse"]) <= 0.01 * truth["nmse"], (precision, scores, truth)
    plan = plan_inference(models["fast"].module, CPU, "bf16")
    assert plan.describe() == "bf16 weights, channels-last, one slice at a time"


def test_auto_falls_back_to_fp32_without_native_bf16(models, sample, monkeypatch):
    arrays, _ = sample
    inputs = {c: arrays[c] for c in ("t1n", "t2f")}
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    assert plan_inference(models["plain"].module, CPU).describe() == "fp32, NCHW, one slice at a time"
    auto = impute_slices(models["plain"], inputs, "t1c", device="cpu")
    assert np.array_equal(auto, impute_slices(models["plain"], inputs, "t1c", device="cpu", precision="fp32"))
    with torch.no_grad():  # the fp32 path is exactly the model called on each slice
        for index in range(auto.shape[0]):
            x = build_input({c: torch.from_numpy(a[index:index + 1]) for c, a in inputs.items()}, CONTRASTS,
                            "t1c", (1, CROP, CROP))
            assert np.array_equal(auto[index], models["plain"].module(x)[0, 0].numpy())
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    acceleration.cpu_has_native_bf16.cache_clear()
    try:
        monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "avx512bw", "avx512vl"})
        assert not acceleration.cpu_has_native_bf16(), "AVX-512 without BF16 only emulates bf16: stay fp32"
        acceleration.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
        assert acceleration.cpu_has_native_bf16() == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    finally:
        acceleration.cpu_has_native_bf16.cache_clear()


def test_batch_size_and_empty_slices_do_not_change_results(models, sample):
    arrays, _ = sample
    inputs = {c: arrays[c].copy() for c in ("t1n", "t2f")}
    for array in inputs.values():
        array[[1, 2]] = 0  # two slices outside the head: every input is zero there
    seen = []
    one = impute_slices(models["fast"], inputs, "t1c", device="cpu", batch_size=1, precision="bf16")
    four = impute_slices(models["fast"], inputs, "t1c", device="cpu", batch_size=4, precision="bf16",
                         progress=lambda done, total: seen.append((done, total)))
    assert np.array_equal(one, four)
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # The empty slices were computed once and copied: each equals the model run on that slice alone.
    plan = plan_inference(models["fast"].module, CPU, "bf16")
    zero = build_input({c: torch.zeros(1, CROP, CROP) for c in inputs}, CONTRASTS, "t1c", (1, CROP, CROP))
    with torch.inference_mode():
        alone = plan(zero)[0, 0].numpy()
    assert np.abs(alone).max() > 0.01, "the model's output on a blank slice is not blank"
    assert np.array_equal(four[1], alone) and np.array_equal(four[2], alone)
    assert not np.array_equal(four[0], four[1])


def test_cpu_plan_skips_the_profiling_executor_without_changing_results(models, sample):
    arrays, _ = sample
    plan = plan_inference(models["fast"].module, CPU, "bf16")
    assert not plan.optimized_executor, "on the CPU the profiling executor only costs its first calls"
    inputs = {c: torch.from_numpy(arrays[c][:2]) for c in ("t1n", "t2f")}
    x = build_input(inputs, CONTRASTS, "t1c", (2, CROP, CROP))
    with torch.inference_mode():
        plain = plan(x)
        plan.optimized_executor = True
        profiled = [plan(x) for _ in range(3)][-1]  # the third call runs the profiled, optimized graph
    assert torch.equal(plain, profiled)


def test_bf16_run_leaves_the_loaded_model_untouched(models, sample):
    arrays, _ = sample
    before = {k: v.clone() for k, v in models["fast"].module.state_dict().items()}
    impute_slices(models["fast"], {"t1n": arrays["t1n"]}, "t1c", device="cpu", precision="bf16")
    after = models["fast"].module.state_dict()
    assert all(v.dtype == torch.float32 and torch.equal(v, after[k]) for k, v in before.items())


def test_bad_precision_and_wrong_module_are_refused(models):
    with pytest.raises(InputError, match="Unknown precision 'int8'.*auto, fp32, bf16, fp16"):
        impute_slices(models["fast"], {"t1n": np.ones((1, 8, 8), np.float32)}, "t1c", precision="int8")
    with pytest.raises(ModelError, match="eager"):
        optimize_for_inference(models["plain"].module)
    with pytest.raises(ModelError, match="no CCNR unit"):
        optimize_for_inference(torch.nn.Conv2d(6, 1, 3))
