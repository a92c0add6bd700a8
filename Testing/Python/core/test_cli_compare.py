"""``collagan-impute compare``: a written synthetic volume scored against the acquired one as ``evaluate`` scores it,
another method's volume scored the same way, and refusals that write nothing."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from CollaGANImputeLib.case_files import read_case, read_input
from CollaGANImputeLib.cli import EXIT_INPUT, EXIT_OK, main
from CollaGANImputeLib.contract import load_model
from CollaGANImputeLib.evaluate import score_imputation
from CollaGANImputeLib.io import find_lesion_mask, read_lesion_mask, synthetic_label

NAME = "TCGA-HT-7882"


@pytest.fixture
def written(tiny_model_path, copied_sample, tmp_path):
    """The sample case's T1+Gd imputed from T1 and FLAIR by the command line, beside the untouched case folder."""
    out = tmp_path / "imputed"
    assert main(["impute", "--input", f"t1n={copied_sample / f'{NAME}-t1n.nii.gz'}", "--input",
                 f"t2f={copied_sample / f'{NAME}-t2f.nii.gz'}", "--target", "t1c", "--name", NAME, "--model",
                 str(tiny_model_path), "--out", str(out), "--device", "cpu", "--precision", "fp32"]) == EXIT_OK
    return out / f"{NAME}-t1c-synthetic-collagan.nii.gz"


def _given(case, real: str = "t1c", inputs=("t1n", "t2f")) -> list[str]:
    """--real and --input arguments for files of the case folder."""
    return ["--real", str(case / f"{NAME}-{real}.nii.gz"),
            *[arg for c in inputs for arg in ("--input", f"{c}={case / f'{NAME}-{c}.nii.gz'}")]]


def _scores(path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["metric"]: float(row["value"]) for row in csv.DictReader(handle)
                if row["metric"] in ("nmse", "ssim", "psnr", "identity_t", "lesion_nmse")}


def test_a_written_output_scores_as_evaluate_scores_it(written, copied_sample, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", str(written), str(copied_sample), "--out", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "t1c from t1n+t2f" in printed and "NMSE" in printed  # target and inputs read from the sidecar
    stem = written.name[: -len(".nii.gz")]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}-{end}" for end in (
        "compare.csv", "compare.png", "error.nii.gz", "scored-region.nii.gz"))
    images = read_case(copied_sample, ["t1n", "t1c", "t2f"])
    expected = score_imputation(load_model(tiny_model_path), images, "t1c", ["t1n", "t2f"],
                                read_lesion_mask(find_lesion_mask(copied_sample)), device="cpu").scores
    for key, value in _scores(out / f"{stem}-compare.csv").items():
        assert value == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    for written_map in ("error.nii.gz", "scored-region.nii.gz"):  # never taken as an input unasked
        assert synthetic_label(read_input(out / f"{stem}-{written_map}")) is not None
    # The region file holds the voxels scored: NMSE recomputed there from the two files is the reported one.
    region = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{stem}-scored-region.nii.gz"))) == 1
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(written))).astype(np.float64)[region]
    real = sitk.GetArrayFromImage(images["t1c"]).astype(np.float64)[region]
    real /= np.percentile(real, 99)
    assert np.sum((pred - real) ** 2) / np.sum(real**2) == pytest.approx(expected["nmse"], rel=1e-5)


def test_another_methods_copy_of_an_input_has_no_target_contrast(copied_sample, tmp_path, capsys):
    t1n = read_input(copied_sample / f"{NAME}-t1n.nii.gz")
    values = sitk.GetArrayFromImage(t1n).astype(np.float32)
    relabelled = sitk.GetImageFromArray(values / np.percentile(values[values > 0], 99))
    relabelled.CopyInformation(t1n)
    other = tmp_path / "other-method.nii.gz"
    sitk.WriteImage(relabelled, str(other))
    out = tmp_path / "compare"
    assert main(["compare", str(other), "--target", "t1c", *_given(copied_sample), "--out", str(out)]) == EXIT_OK
    assert _scores(out / "other-method-compare.csv")["identity_t"] < 0  # a copy of an input: the input's contrast
    assert "p99 units" not in capsys.readouterr().err
    sitk.WriteImage(t1n, str(other))  # as acquired (8-bit, p99 about 180): the scores would be meaningless
    main(["compare", str(other), "--target", "t1c", *_given(copied_sample)])
    assert "not in p99 units" in capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("no target", "give --target"),
    ("synthetic as the real target", "is not an acquired scan"),
    ("no acquired target in the folder", "holds no acquired 't1c'"),
])
def test_refusals_name_the_fix_and_write_nothing(case, expected, written, copied_sample, tmp_path, capsys):
    out = tmp_path / "compare"
    if case == "no target":
        plain = tmp_path / "plain.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(written)), str(plain))
        argv = ["compare", str(plain), str(copied_sample)]
    elif case == "synthetic as the real target":
        argv = ["compare", str(written), *_given(copied_sample)]
        argv[argv.index("--real") + 1] = str(written)
    else:
        (copied_sample / f"{NAME}-t1c.nii.gz").unlink()
        argv = ["compare", str(written), str(copied_sample)]
    assert main([*argv, "--out", str(out)]) == EXIT_INPUT
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and expected in error[0]
    assert not out.exists()


def test_a_failed_write_leaves_no_file_and_no_new_folder(written, copied_sample, tmp_path, monkeypatch, capsys):
    import errno

    import CollaGANImputeLib.figures as figures

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(figures, "montage_png", full_disk)  # the last of the set to be written
    out = tmp_path / "new" / "compare"
    assert main(["compare", str(written), str(copied_sample), "--out", str(out)]) == EXIT_INPUT
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists() and not any(p.name.startswith(".") for p in (tmp_path / "new").iterdir())


def test_both_protocols_score_as_evaluate_where_the_real_slab_is_shorter(written, copied_sample, tiny_model_path,
                                                                         tmp_path):
    real_path = copied_sample / f"{NAME}-t1c.nii.gz"
    real = sitk.ReadImage(str(real_path))
    voxels = sitk.GetArrayFromImage(real)
    voxels[:4] = 0  # the acquired T1+Gd slab misses the first four slices
    shorter = sitk.GetImageFromArray(voxels)
    shorter.CopyInformation(real)
    sitk.WriteImage(shorter, str(real_path))
    images = read_case(copied_sample, ["t1n", "t1c", "t2f"])
    lesion = read_lesion_mask(find_lesion_mask(copied_sample))
    found = {}
    for protocol in ("v3", "v2"):
        out = tmp_path / protocol
        assert main(["compare", str(written), str(copied_sample), "--out", str(out), "--protocol", protocol]) == EXIT_OK
        found[protocol] = _scores(next(out.glob("*-compare.csv")))
        expected = score_imputation(load_model(tiny_model_path), images, "t1c", ["t1n", "t2f"], lesion, device="cpu",
                                    protocol=protocol).scores
        for key, value in found[protocol].items():
            assert value == pytest.approx(expected[key], rel=1e-5, abs=1e-7), (protocol, key)
    assert found["v2"]["nmse"] > found["v3"]["nmse"]  # v2 scores the missing slices against zeros
