"""Bad inputs and faults of ``collagan-impute``, one parametrized test: the source of docs/RELIABILITY.md's table.

Each row sets up one fault, runs the command line in this process, and checks the exit code, the message and
what is left on disk (inputs unchanged, no temporary file anywhere). ``test_docs_table_is_current`` compares
the table in docs/RELIABILITY.md with :func:`render_table`, which appends the web app's rows
(``reliability/test_web.py``) as a separate block; to regenerate it after changing a row:

    PYTHONPATH=Testing/Python python3 Testing/Python/reliability/test_table.py --write
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from core_fixtures import (
    CONTRASTS,
    REPO,
    NaNOutput,
    TinyGenerator,
    WrongShape,
    child_env,
    head_phantom,
    make_image,
    write_dicom_series,
)

DOC = REPO / "docs" / "RELIABILITY.md"
BEGIN = "<!-- fault table: generated from Testing/Python/reliability/test_table.py; do not edit by hand -->"
END = "<!-- end of fault table -->"

NOTHING = "nothing"
KEPT = "the outputs and their JSON sidecars, which record the warning"


@dataclass
class Env:
    """What a row's setup works with: a case folder of phantom volumes (t1n, t2f), models, the output folder."""

    root: Path
    case: Path
    model: Path
    out: Path
    monkeypatch: pytest.MonkeyPatch
    profiled: Optional[Path] = None

    def file(self, contrast: str) -> Path:
        return self.case / f"P1-{contrast}.nii.gz"

    def write(self, name: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
        path = self.root / name
        sitk.WriteImage(make_image(array, spacing=spacing, origin=origin), str(path))
        return path

    def impute(self, *extra: str, t1n: Optional[Path] = None, t2f: Optional[Path] = None, model=None) -> list[str]:
        return ["impute", "--input", f"t1n={t1n or self.file('t1n')}", "--input", f"t2f={t2f or self.file('t2f')}",
                "--target", "t1c", "--model", str(model or self.model), "--out", str(self.out), "--device", "cpu",
                *extra]

    def saved_model(self, module: torch.nn.Module, name: str, **card) -> Path:
        from CollaGANImputeLib import ModelCard, save_model

        path = self.root / name
        save_model(module, ModelCard(name=name, contrasts=CONTRASTS, **card), path)
        return path


@dataclass
class Fault:
    id: str
    what: str
    setup: Callable[[Env], list[str]]
    code: int
    message: str  # a fragment of the one-line message (stderr), as the table shows it
    left: str = NOTHING
    kept: bool = False  # outputs are expected (rc 0 warnings, batches)
    check: Optional[Callable[[Env], None]] = None  # the row's own checks of what was written, right after the run
    child: Optional[str] = None  # run the CLI through this script in a child process instead of in this one


# ------------------------------------------------------------------------------------------------ the rows

def _truncated_gz(env: Env) -> list[str]:
    data = env.file("t2f").read_bytes()
    (env.root / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return env.impute(t2f=env.root / "cut.nii.gz")


def _truncated_nii(env: Env) -> list[str]:
    data = gzip.decompress(env.file("t2f").read_bytes())
    (env.root / "cut.nii").write_bytes(data[: len(data) // 2])
    return env.impute(t2f=env.root / "cut.nii")


def _nan(env: Env) -> list[str]:
    array = head_phantom(seed=1)
    array[3, 20, 20] = np.nan
    return env.impute(t2f=env.write("nan.nii.gz", array))


def _float64(env: Env) -> list[str]:
    return env.impute(t2f=env.write("huge.nii.gz", head_phantom(seed=1).astype(np.float64) * 1e298))


def _zeros(env: Env) -> list[str]:
    return env.impute(t2f=env.write("zeros.nii.gz", np.zeros((12, 48, 40), np.float32)))


def _two_d(env: Env) -> list[str]:
    return env.impute(t2f=env.write("slice.nii.gz", head_phantom(seed=1)[:1]))


def _twice(env: Env) -> list[str]:
    return [*env.impute(), "--input", f"t2f={env.file('t1n')}"]


def _unknown_contrast(env: Env) -> list[str]:
    return [*env.impute(), "--input", f"t2w={env.file('t1n')}"]


def _no_overlap(env: Env) -> list[str]:
    return env.impute(t2f=env.write("far.nii.gz", head_phantom(seed=1), origin=(500.0, 0.0, 0.0)))


def _output_is_input(env: Env) -> list[str]:
    victim = env.case / "P1-t1c-synthetic-collagan.nii.gz"
    shutil.copy(env.file("t1n"), victim)
    args = env.impute("--input", f"t1c={victim}")
    return [a for a in args if a != "--out" and a != str(env.out)]  # outputs next to the inputs


def _name_escapes(env: Env) -> list[str]:
    return env.impute("--name", "../../x")


def _out_is_file(env: Env) -> list[str]:
    env.out.write_text("a file")
    return env.impute()


def _out_unwritable(env: Env) -> list[str]:
    env.out = Path("/proc/collagan-out")
    return env.impute()


def _folder_in_the_way(env: Env) -> list[str]:
    (env.out / "P1-t1c-synthetic-collagan.nii.gz").mkdir(parents=True)
    return env.impute()


def _disk_full(env: Env) -> list[str]:
    real = os.replace
    calls = []

    def replace(src, dst):
        if str(dst).endswith(".nii.gz"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    env.monkeypatch.setattr(os, "replace", replace)
    return env.impute("--target", "t1n")  # two targets: the second file fails after the first was renamed


def _bogus_device(env: Env) -> list[str]:
    return [a if a != "cpu" else "bogus" for a in env.impute()]


def _negative_threads(env: Env) -> list[str]:
    return env.impute("--threads", "-1")


def _missing_model(env: Env) -> list[str]:
    return env.impute(model=env.root / "absent.pt")


def _model_folder(env: Env) -> list[str]:
    folder = env.root / "models"
    folder.mkdir()
    shutil.copy(env.model, folder / "tiny.pt")
    return env.impute(model=folder)


def _weights_member(path: Path) -> zipfile.ZipInfo:
    with zipfile.ZipFile(path) as archive:
        return next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 16)


def _data_offset(data: bytes, member: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header, whose extra field torch pads for alignment."""
    offset = member.header_offset
    return offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + int.from_bytes(
        data[offset + 28:offset + 30], "little")


def _flipped_byte(env: Env) -> list[str]:
    path = env.root / "flipped.pt"
    shutil.copy(env.model, path)
    member = _weights_member(path)
    data = bytearray(path.read_bytes())
    data[_data_offset(data, member) + 5] ^= 0x01
    path.write_bytes(bytes(data))
    return env.impute(model=path)


def _rewritten(env: Env, name: str, edit: Callable[[str, bytes], bytes]) -> Path:
    path = env.root / name
    with zipfile.ZipFile(env.model) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item, edit(item.filename, zin.read(item)))
    return path


def _weights_changed(env: Env) -> list[str]:
    member = _weights_member(env.model).filename
    return env.impute(model=_rewritten(env, "changed.pt", lambda name, data: bytes([data[0] ^ 1]) + data[1:]
                                       if name == member else data))


def _not_torchscript(env: Env) -> list[str]:
    (env.root / "notes.pt").write_text("not a model")
    return env.impute(model=env.root / "notes.pt")


def _card_edit(change: Callable[[bytes], bytes]) -> Callable[[str, bytes], bytes]:
    return lambda name, data: change(data) if name.endswith("extra/collagan.json") else data


def _non_utf8_card(env: Env) -> list[str]:
    return env.impute(model=_rewritten(env, "latin1.pt", _card_edit(
        lambda data: data.replace(b'"tiny-test"', '"tiny-t\u00e9st"'.encode("latin-1")))))


def _negative_size(env: Env) -> list[str]:
    def edit(data: bytes) -> bytes:
        card = json.loads(data)
        card["in_plane_size"] = [-256, 256]
        return json.dumps(card).encode()

    return env.impute(model=_rewritten(env, "negative.pt", _card_edit(edit)))


def _wrong_channels(env: Env) -> list[str]:
    return env.impute(model=env.saved_model(TinyGenerator(n_contrasts=4), "four-contrast-weights"))


def _nan_model(env: Env) -> list[str]:
    return env.impute(model=env.saved_model(NaNOutput(), "nan-output"))


def _shape_model(env: Env) -> list[str]:
    return env.impute(model=env.saved_model(WrongShape(), "wrong-shape"))


def _bundled(env: Env, model: Optional[Path], tamper: bool = False) -> None:
    from CollaGANImputeLib.contract import sha256_of

    resources = env.root / "Resources"
    (resources / "Models").mkdir(parents=True)
    if model is not None:
        shutil.copy(model, resources / "Models" / "tiny.pt")
        (resources / "Models" / "models.json").write_text(json.dumps({"default": "tiny-test", "models": [
            {"name": "tiny-test", "file": "tiny.pt", "sha256": sha256_of(model), "card": None}]}))
        if tamper:
            with open(resources / "Models" / "tiny.pt", "ab") as handle:
                handle.write(b"tampered")
    env.monkeypatch.setenv("COLLAGAN_RESOURCES", str(resources))


def _tampered_bundled(env: Env) -> list[str]:
    _bundled(env, env.model, tamper=True)
    return [a for a in env.impute() if a not in ("--model", str(env.model))]


def _no_bundled(env: Env) -> list[str]:
    _bundled(env, None)
    return [a for a in env.impute() if a not in ("--model", str(env.model))]


def _interrupt_with(env: Env, interrupt: Callable[[], None]) -> None:
    import CollaGANImputeLib.imputation_steps as steps

    real = steps.impute_slices

    def impute_slices(*args, **kwargs):
        if kwargs.get("progress_offset", 0) > 0:  # the second target: the first one is computed
            interrupt()
        return real(*args, **kwargs)

    env.monkeypatch.setattr(steps, "impute_slices", impute_slices)


def _ctrl_c(env: Env) -> list[str]:
    def interrupt():
        raise KeyboardInterrupt

    _interrupt_with(env, interrupt)
    return env.impute("--target", "t1n")


def _sigterm(env: Env) -> list[str]:
    _interrupt_with(env, lambda: os.kill(os.getpid(), signal.SIGTERM))
    return env.impute("--target", "t1n")


def _batch_bad_case(env: Env) -> list[str]:
    bad = env.root / "P2"
    bad.mkdir()
    (bad / "P2-t1n.nii.gz").write_bytes(env.file("t1n").read_bytes()[:200])
    return ["impute", str(bad), str(env.case), "--model", str(env.model), "--out", str(env.out), "--device", "cpu",
            "--target", "t1c"]


def _evaluate_bad_case(env: Env) -> list[str]:
    data = env.root / "data"
    good, bad = data / "P1", data / "P2"
    shutil.copytree(env.case, good)
    shutil.copy(good / "P1-t1n.nii.gz", good / "P1-t1c.nii.gz")
    shutil.copytree(good, bad)
    for path in bad.iterdir():
        path.rename(bad / path.name.replace("P1", "P2"))
    (bad / "P2-t2f.nii.gz").write_bytes((bad / "P2-t2f.nii.gz").read_bytes()[:300])  # truncated
    return ["evaluate", str(data), "--out", str(env.out), "--model", str(env.model), "--device", "cpu",
            "--target", "t1c"]


def _unlike_training(env: Env) -> list[str]:
    if env.profiled is None:
        pytest.skip("needs the bundled model's training profile")
    array = head_phantom(seed=1)
    return env.impute(t2f=env.write("zscored.nii.gz", (array - array.mean()) / array.std()), model=env.profiled)


def _head_too_large(env: Env) -> list[str]:
    return env.impute(t1n=env.write("wide-t1n.nii.gz", head_phantom((6, 320, 320))),
                      t2f=env.write("wide-t2f.nii.gz", head_phantom((6, 320, 320), seed=1)))


def _fine_pixels(env: Env) -> list[str]:
    return env.impute(t1n=env.write("fine-t1n.nii.gz", head_phantom((6, 96, 80)), spacing=(0.5, 0.5, 1.0)),
                      t2f=env.write("fine-t2f.nii.gz", head_phantom((6, 96, 80), seed=1), spacing=(0.5, 0.5, 1.0)))


def _other_grid(env: Env) -> list[str]:
    return env.impute(t2f=env.write("shifted.nii.gz", head_phantom(seed=1), origin=(2.0, 0.0, 0.0)))


FAULTS = [
    Fault("truncated-gzip", "a `.nii.gz` cut short (interrupted copy)", _truncated_gz, 2,
          "is damaged: its gzip stream is truncated or corrupt"),
    Fault("truncated-nii", "a plain `.nii` cut short", _truncated_nii, 2, "is truncated: its header announces"),
    Fault("nan", "NaN or Inf voxels (any format; ITK reads them as 0 in NIfTI)", _nan, 2, "NaN or infinite voxels"),
    Fault("float64-overflow", "float64 values beyond float32's range (e.g. 1e300)", _float64, 2,
          "beyond the float32 range"),
    Fault("all-zero", "an all-zero volume", _zeros, 2, "is all zeros"),
    Fault("2-d", "a single 2-D slice", _two_d, 2, "is 2-D"),
    Fault("contrast-twice", "the same contrast given twice", _twice, 2, "is given twice"),
    Fault("unknown-contrast", "a contrast the model does not know", _unknown_contrast, 2, "are not contrasts of model"),
    Fault("no-overlap", "inputs that do not overlap in space (not co-registered)", _no_overlap, 2,
          "does not overlap"),
    Fault("output-is-input", "an output path that is an input file", _output_is_input, 2,
          "would overwrite an input", "nothing; the input is unchanged"),
    Fault("name-escapes", "`--name ../../x` (outside the output folder)", _name_escapes, 2, "cannot name output files"),
    Fault("out-is-file", "`--out` names a file", _out_is_file, 2, "is a file, not a folder",
          "nothing (the file named by `--out` is untouched)"),
    Fault("out-unwritable", "`--out` where nothing can be written (/proc, read-only, no permission)", _out_unwritable,
          2, "Cannot write in the output folder"),
    Fault("folder-in-the-way", "a folder where an output file belongs", _folder_in_the_way, 2,
          "A folder is in the way", "nothing new (the folder stays)"),
    Fault("disk-full", "the disk fills up while the outputs are written (ENOSPC)", _disk_full, 2,
          "No space left on device (ENOSPC); nothing was written", NOTHING + "; files it replaced are restored"),
    Fault("bogus-device", "`--device bogus`", _bogus_device, 2, "is not a device"),
    Fault("negative-threads", "`--threads -1`", _negative_threads, 2, "is not a positive whole number"),
    Fault("model-missing", "`--model` file not found", _missing_model, 3, "Model file not found"),
    Fault("model-folder", "`--model` names a folder", _model_folder, 3, "is a folder, not a model file"),
    Fault("model-flipped-byte", "a model file with one weight byte flipped", _flipped_byte, 3, "fails its CRC check"),
    Fault("model-weights-changed", "a model file whose weights were changed (archive CRCs redone)", _weights_changed, 3,
          "weights do not match the hash"),
    Fault("model-not-torchscript", "a model file that is not TorchScript", _not_torchscript, 3,
          "is not a TorchScript model file"),
    Fault("card-not-utf8", "a model card that is not UTF-8", _non_utf8_card, 3, "is not UTF-8 text"),
    Fault("card-negative-size", "a model card with a negative in-plane size", _negative_size, 3,
          "must be two positive sizes"),
    Fault("model-channels", "a model whose weights expect another channel count than its card", _wrong_channels, 3,
          "does not match its card"),
    Fault("model-nan-output", "a model whose output is NaN/Inf (refused on the first batch)", _nan_model, 3,
          "returned NaN or infinite values"),
    Fault("model-output-shape", "a model whose output has the wrong shape", _shape_model, 3,
          "returned an output of shape"),
    Fault("bundled-tampered", "a bundled model changed after installation", _tampered_bundled, 3,
          "fails its SHA-256 check"),
    Fault("no-bundled-model", "no model bundled and no `--model`", _no_bundled, 4, "No trained model is bundled"),
    Fault("ctrl-c", "Ctrl-C (SIGINT) while imputing the second of two targets", _ctrl_c, 130,
          "cancelled: nothing of the case in progress was written"),
    Fault("sigterm", "SIGTERM (cluster time limit) while imputing the second of two targets", _sigterm, 143,
          "terminated (SIGTERM): nothing of the case in progress was written"),
    Fault("batch-bad-case", "`impute` of several cases, one of them bad", _batch_bad_case, 2, "1 of 2 cases failed",
          "the good cases' outputs", kept=True),
    Fault("evaluate-bad-case", "`evaluate` with one bad case", _evaluate_bad_case, 2, "1 of 2 cases failed",
          "the good cases' scores, montages; the failed case listed in scores.json and scores_summary.md", kept=True),
    Fault("unlike-training", "inputs unlike the model's training data (z-scored, skull-stripped, ...)",
          _unlike_training, 0, "warning: The inputs are unlike the data", KEPT, kept=True),
    Fault("head-too-large", "a head larger than the model's field of view", _head_too_large, 0,
          "warning: The head does not fit the field of view", KEPT, kept=True),
    Fault("fine-pixels", "slices finer than the model's pixel grid (e.g. 512x512 at 0.5 mm)", _fine_pixels, 0,
          "warning: The slices have 0.5 x 0.5 mm pixels", "the outputs, on the input grid", kept=True),
    Fault("other-grid", "inputs on different grids", _other_grid, 0, "resampled onto it", "the outputs, on the "
          "reference's grid", kept=True),
]


# ---- case inputs from clinical exports: names, other cases, synthetic inputs, DICOM, one scan twice, concurrency

def _without_out(args: list[str], out: Path) -> list[str]:
    at = args.index("--out")
    return [*args[:at], "--out", str(out), *args[at + 2:]]


def _sidecar(env: Env, folder: Optional[Path] = None, name: str = "P1") -> dict:
    return json.loads(((folder or env.out) / f"{name}-t1c-synthetic-collagan.json").read_text())


def _registered_names(env: Env) -> list[str]:
    t1n, t2f = env.root / "TCGA-HT-7882-t1n.nii.gz", env.root / "TCGA-HT-7882-t2f_reg.nii.gz"
    shutil.copy(env.file("t1n"), t1n)
    shutil.copy(env.file("t2f"), t2f)
    return env.impute(t1n=t1n, t2f=t2f)


def _named_whole(env: Env) -> None:
    assert sorted(p.name for p in env.out.iterdir()) == ["TCGA-HT-7882-t1c-synthetic-collagan.json",
                                                         "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz"]


def _another_case(env: Env) -> list[str]:
    shared = env.root / "shared"
    assert run_cli(_without_out(env.impute(), shared))[0] == 0  # patient P1's outputs
    other = env.root / "P2"
    other.mkdir()
    for seed, contrast in ((5, "t1n"), (6, "t2f")):
        sitk.WriteImage(make_image(head_phantom(seed=seed)), str(other / f"P2-{contrast}.nii.gz"))
    return _without_out(env.impute("--name", "P1", t1n=other / "P2-t1n.nii.gz", t2f=other / "P2-t2f.nii.gz"), shared)


def _brats_2021(env: Env) -> list[str]:
    case = env.root / "B1"
    case.mkdir()
    shutil.copy(env.file("t1n"), case / "B1_t1.nii.gz")
    shutil.copy(env.file("t2f"), case / "B1_flair.nii.gz")
    return ["impute", str(case), "--model", str(env.model), "--out", str(env.out), "--device", "cpu"]


def _both_2021_inputs_used(env: Env) -> None:
    assert _sidecar(env, name="B1")["collagan_inputs"] == "t1n,t2f"


def _mixed_conventions(env: Env) -> list[str]:
    shutil.copy(env.file("t2f"), env.case / "P1_flair.nii.gz")
    return ["impute", str(env.case), "--model", str(env.model), "--out", str(env.out), "--device", "cpu"]


def _labelled_synthetic(env: Env) -> Path:
    """A volume whose NIfTI header says it is this package's synthetic output, renamed like an acquired scan."""
    from CollaGANImputeLib.io import write_volume
    from CollaGANImputeLib.provenance import synthetic_description

    path = env.root / "P9-t2f.nii.gz"
    write_volume(make_image(head_phantom(seed=4)), path, description=synthetic_description("t2f", ["t1n", "t1c"]))
    return path


def _synthetic_input(env: Env) -> list[str]:
    return env.impute(t2f=_labelled_synthetic(env))


def _synthetic_allowed(env: Env) -> list[str]:
    return env.impute("--allow-synthetic-input", t2f=_labelled_synthetic(env))


def _synthetic_recorded(env: Env) -> None:
    record = _sidecar(env)
    assert record["collagan_synthetic_inputs"] == "t2f" and "'t2f' is not an acquired scan" in record["warnings"][0]


def _exam(env: Env, second: tuple[str, str, str, str]) -> Path:
    exam = env.root / "exam"
    write_dicom_series(exam, head_phantom(seed=1), 3, "AX FLAIR", "9000", "120", "2500")
    write_dicom_series(exam, head_phantom(seed=0), 5, *second)
    return exam


def _dicom_two_series(env: Env) -> list[str]:
    exam = _exam(env, ("AX T1 SE", "500", "12", ""))
    return env.impute("--name", "P1", t1n=exam, t2f=exam)


def _dicom_uids(env: Env) -> None:
    uids = _sidecar(env)["input_series_uid"]
    assert uids == {"t1n": "1.2.826.0.1.3680043.2.1125.7.5", "t2f": "1.2.826.0.1.3680043.2.1125.7.3"}, uids


def _dicom_ambiguous(env: Env) -> list[str]:
    exam = _exam(env, ("AX T2 TSE", "5000", "100", ""))
    return env.impute(t1n=exam)


def _same_file(env: Env) -> list[str]:
    return env.impute(t2f=env.file("t1n"))


def _same_content(env: Env) -> list[str]:
    copy = env.root / "P1-copy-t2f.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(env.file("t1n"))), str(copy))
    return env.impute(t2f=copy)


def _sagittal_slice(env: Env) -> list[str]:
    return env.impute(t2f=env.write("sagittal.nii.gz", head_phantom(seed=1)[:, :, 20:21]))


def _run_concurrently(argv: list[str], start) -> None:
    start.wait(60)
    code, err = run_cli(argv)
    os._exit(code)


def _concurrent_runs(env: Env) -> list[str]:
    import multiprocessing

    import CollaGANImputeLib.pipeline as pipeline

    context = multiprocessing.get_context("fork")
    start = context.Event()
    args = ["--name", "P1", "--overwrite", "--uncertainty"]
    env.processes = []
    for seed in range(3):
        t2f = env.write(f"P1-{seed}-t2f.nii.gz", head_phantom(seed=10 + seed))
        env.processes.append(context.Process(target=_run_concurrently, args=(env.impute(*args, t2f=t2f), start)))
        env.processes[-1].start()
    real = pipeline.impute

    def impute(*a, **k):  # the other runs start with this one's computation, once the inputs are recorded
        start.set()
        return real(*a, **k)

    env.monkeypatch.setattr(pipeline, "impute", impute)
    return env.impute(*args)


def _one_run_per_set(env: Env) -> None:
    for process in env.processes:
        process.join(120)
        assert process.exitcode == 0
    synthetic = _sidecar(env)
    uncertainty = json.loads((env.out / "P1-t1c-uncertainty-collagan.json").read_text())
    assert synthetic["input_files"] == uncertainty["input_files"], "a mixed output set"
    assert len(list(env.out.iterdir())) == 4


def _mhd(env: Env, keep: int) -> list[str]:
    header = env.root / "P1-t2f.mhd"
    sitk.WriteImage(sitk.ReadImage(str(env.file("t2f"))), str(header), useCompression=False)
    data = env.root / "P1-t2f.raw"
    if keep:
        data.write_bytes(data.read_bytes()[:keep])
    else:
        data.unlink()
    return env.impute(t2f=header)


def _gzip_named_nii(env: Env) -> list[str]:
    wrong = env.root / "P1-t2f.nii"
    wrong.write_bytes(env.file("t2f").read_bytes())
    return env.impute(t2f=wrong)


def _negative(env: Env) -> list[str]:
    return env.impute(t2f=env.write("negative.nii.gz", -head_phantom(seed=1)))


def _folder_named_synthetic(env: Env) -> list[str]:
    case = env.root / "synthetic_phantom_01"
    case.mkdir()
    for contrast in ("t1n", "t2f"):
        shutil.copy(env.file(contrast), case / f"synthetic_phantom_01-{contrast}.nii.gz")
    return ["impute", str(case), "--model", str(env.model), "--out", str(env.out), "--device", "cpu"]


def _read_as_a_case(env: Env) -> None:
    assert (env.out / "synthetic_phantom_01-t1c-synthetic-collagan.nii.gz").is_file()


def _sheared(env: Env) -> list[str]:
    import struct

    sheared = env.root / "sheared-t2f.nii"
    sitk.WriteImage(sitk.ReadImage(str(env.file("t2f"))), str(sheared))
    header = bytearray(sheared.read_bytes())
    header[280:296] = struct.pack("<4f", -1.0, 0.3, 0.0, 0.0)  # srow_x with a shear
    sheared.write_bytes(bytes(header))
    return env.impute(t2f=sheared)


def _long_name(env: Env) -> list[str]:
    return env.impute("--name", "p" * 200)


#: Run in a child process (so the cap cannot reach the test session's other threads): the CLI with this run's
#: address space capped at what it uses plus 40 MiB once the inputs are read, as `ulimit -v` does.
_CAPPED_CLI = """
import resource, sys
import CollaGANImputeLib.pipeline as pipeline
from CollaGANImputeLib.cli import main
real = pipeline.impute
def impute(*a, **k):
    with open("/proc/self/status") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    limits = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + 40 * 2**20, limits[1]))
    try:
        return real(*a, **k)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limits)
pipeline.impute = impute
sys.exit(main(sys.argv[1:]))
"""


def _out_of_memory(env: Env) -> list[str]:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to cap the address space")
    shape = (96, 256, 256)
    return env.impute(t1n=env.write("big-t1n.nii", head_phantom(shape, noise=0)),
                      t2f=env.write("big-t2f.nii", head_phantom(shape, seed=1, noise=0) + 1))


def _killed_before(env: Env) -> list[str]:
    import subprocess
    import textwrap

    env.out.mkdir()
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from CollaGANImputeLib.io import OutputSet
        OutputSet().stage(Path({str(env.out / "P1-t1c-synthetic-collagan.nii.gz")!r}), lambda tmp: None)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script], env=child_env()).returncode == -signal.SIGKILL
    assert [p.name for p in env.out.iterdir() if ".tmp" in p.name], "the killed run left its temporary file"
    return env.impute()


def _outputs_only(env: Env) -> None:
    assert sorted(p.name for p in env.out.iterdir()) == ["P1-t1c-synthetic-collagan.json",
                                                         "P1-t1c-synthetic-collagan.nii.gz"]


CASE_INPUT_FAULTS = [
    Fault("case-name-cut", "inputs named `TCGA-HT-7882-t1n`, `TCGA-HT-7882-t2f_reg`", _registered_names, 0, "",
          "the outputs, named `TCGA-HT-7882-...` (a case name is never cut inside a name)", kept=True,
          check=_named_whole),
    Fault("another-case", "a second patient imputed into a folder holding another case's outputs of the same name",
          _another_case, 2, "is the output of another case", "nothing; the other case's outputs are unchanged "
          "(`--overwrite` replaces them)"),
    Fault("brats-2021-names", "a case folder with BraTS 2021 names (`_t1`, `_t1ce`, `_t2`, `_flair`, `_seg`)",
          _brats_2021, 0, "", "the outputs, imputed from every acquired contrast", kept=True,
          check=_both_2021_inputs_used),
    Fault("mixed-conventions", "a case folder with `-t2f` and `_flair` files (two conventions for one contrast)",
          _mixed_conventions, 2, "mixes naming conventions for contrast 't2f'"),
    Fault("synthetic-input", "a synthetic volume (its header or JSON sidecar says so) given as an input",
          _synthetic_input, 2, "is not an acquired scan"),
    Fault("synthetic-input-allowed", "the same with `--allow-synthetic-input`", _synthetic_allowed, 0,
          "warning: The input 't2f' is not an acquired scan", "the outputs; their sidecars name the synthetic input",
          kept=True, check=_synthetic_recorded),
    Fault("dicom-several-series", "a DICOM folder with a FLAIR and a T1 series, given for t1n and t2f",
          _dicom_two_series, 0, "", "the outputs, from the series whose tags match; the sidecar records their "
          "series UIDs", kept=True, check=_dicom_uids),
    Fault("dicom-ambiguous", "a DICOM folder whose series' tags do not tell which one is the contrast",
          _dicom_ambiguous, 2, "holds 2 DICOM series and none whose tags say 't1n'"),
    Fault("same-file-twice", "one file given for two contrasts", _same_file, 2, "are the same file"),
    Fault("same-content-twice", "two files with identical voxels for two contrasts", _same_content, 2,
          "have identical voxels"),
    Fault("sagittal-slice", "a single sagittal (or coronal) slice", _sagittal_slice, 2, "is 2-D"),
    Fault("mhd-data-missing", "a `.mhd` header whose `.raw` data file is missing", lambda env: _mhd(env, 0), 2,
          "P1-t2f.raw is missing"),
    Fault("mhd-data-short", "a `.mhd` header whose `.raw` data file is cut short", lambda env: _mhd(env, 1000), 2,
          "P1-t2f.raw is truncated"),
    Fault("gzip-named-nii", "a gzip-compressed file named `.nii`", _gzip_named_nii, 2,
          "is gzip-compressed but named .nii"),
    Fault("negative-intensities", "an input with negative intensities only", _negative, 2,
          "negative.nii.gz): Cannot normalize"),
    Fault("folder-named-synthetic", "a case folder (and its files) named `synthetic_...`", _folder_named_synthetic, 0,
          "", "the outputs (only this package's `-synthetic-collagan` outputs are never read as inputs)", kept=True,
          check=_read_as_a_case),
    Fault("sheared-sform", "a NIfTI whose sform is sheared (ITK places it by its qform)", _sheared, 0,
          "sform is sheared", KEPT, kept=True),
    Fault("name-too-long", "`--name` too long for the file system's 255-byte file names", _long_name, 2,
          "shorter --name"),
    Fault("out-of-memory", "not enough memory for the volumes (`ulimit -v`)", _out_of_memory, 2,
          "Not enough memory to impute case", child=_CAPPED_CLI),
    Fault("killed-before", "a rerun after a run was killed (SIGKILL) while writing its outputs", _killed_before, 0,
          "", "the outputs; the killed run's hidden temporary files are removed", kept=True, check=_outputs_only),
    Fault("concurrent-runs", "four runs writing one output set at once (`--overwrite`)", _concurrent_runs, 0, "",
          "one run's complete set (the output folder is locked while a set is committed)", kept=True,
          check=_one_run_per_set),
]
FAULTS += CASE_INPUT_FAULTS


# ---------------------------------------------------- compare: a synthetic volume scored against the acquired one

def _compare(env: Env, synthetic: Path, real: Path, *extra: str) -> list[str]:
    return ["compare", str(synthetic), "--real", str(real), "--input", f"t1n={env.file('t1n')}", "--out",
            str(env.out), *extra]


def _compare_against_synthetic(env: Env) -> list[str]:
    return _compare(env, env.file("t1n"), _labelled_synthetic(env), "--target", "t2f")


def _compare_without_target(env: Env) -> list[str]:
    return _compare(env, env.write("other-method.nii.gz", head_phantom(seed=7) / 100), env.file("t2f"))


FAULTS += [
    Fault("compare-synthetic-real", "`compare` with a synthetic volume given as the acquired one",
          _compare_against_synthetic, 2, "is not an acquired scan"),
    Fault("compare-no-target", "`compare` of another method's volume without `--target`", _compare_without_target,
          2, "give --target"),
]


# ---------------------------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def profiled_model(tmp_path_factory) -> Optional[Path]:
    """A tiny generator whose card carries the bundled model's training profile (None without a bundled model)."""
    from CollaGANImputeLib import ModelCard, save_model
    from CollaGANImputeLib.resources import bundled_models

    if not bundled_models():
        return None
    path = tmp_path_factory.mktemp("profiled") / "profiled.pt"
    save_model(TinyGenerator(), ModelCard(name="tiny-profiled", contrasts=CONTRASTS,
                                          input_profile=bundled_models()[0].load().card.input_profile), path)
    return path


@pytest.fixture
def env(tmp_path, tiny_model_path, profiled_model, monkeypatch) -> Env:
    case = tmp_path / "P1"
    case.mkdir()
    for seed, contrast in enumerate(("t1n", "t2f")):
        sitk.WriteImage(make_image(head_phantom(seed=seed)), str(case / f"P1-{contrast}.nii.gz"))
    model = tmp_path / "tiny.pt"
    shutil.copy(tiny_model_path, model)
    return Env(root=tmp_path, case=case, model=model, out=tmp_path / "out", monkeypatch=monkeypatch,
               profiled=profiled_model)


def _digests(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def run_cli(argv: list[str]) -> tuple[int, str]:
    from CollaGANImputeLib.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code)
    return code, err.getvalue()


def run_cli_in_child(script: str, argv: list[str]) -> tuple[int, str]:
    import subprocess

    done = subprocess.run([sys.executable, "-c", script, *argv], env={**child_env(), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stderr


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(fault: Fault, env: Env):
    torch.set_num_threads(1)
    argv = fault.setup(env)
    before = {p: d for p, d in _digests(env.root).items() if ".tmp" not in Path(p).name}  # inputs, not leftovers
    code, err = run_cli(argv) if fault.child is None else run_cli_in_child(fault.child, argv)
    env.monkeypatch.undo()  # os.replace and friends back before the checks below
    if fault.check is not None:
        fault.check(env)
    assert code == fault.code, err
    assert fault.message in err, err
    assert "Traceback" not in err, err
    if fault.code not in (0, 130, 143):
        assert any("error:" in line for line in err.splitlines()), err
    after = _digests(env.root)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"inputs changed: {changed}"
    leftovers = [p for p in env.root.rglob("*") if ".tmp" in p.name or p.name.startswith(".collagan")]
    assert not leftovers, leftovers
    written = [p for p in after if p not in before]
    if fault.kept:
        assert written, "outputs expected"
        if fault.code == 0 and fault.check is None:
            sidecar = next(p for p in written if p.endswith(".json"))
            record = json.loads(Path(sidecar).read_text())
            assert record["warnings"] or record["input_check"]["findings"], record
    else:
        assert not written, written
        if fault.id not in ("out-is-file", "folder-in-the-way"):
            assert not env.out.exists() or env.out == Path("/proc/collagan-out")


# ------------------------------------------------------------------------------------------- the table

def render_table() -> str:
    from test_web import render_rows as web_rows  # reliability/test_web.py, beside this file

    rows = ["| bad input or fault | exit code | message (stderr, part) | left on disk |", "|---|---|---|---|"]
    for fault in FAULTS:
        escaped = fault.message.replace("|", "\\|")
        message = f"`{escaped}`" if fault.message else "none"
        rows.append(f"| {fault.what} | {fault.code} | {message} | {fault.left} |")
    return "\n".join([BEGIN, *rows, *web_rows(), END])


def _doc_table(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def test_docs_table_is_current():
    assert _doc_table(DOC.read_text()) == render_table(), (
        "docs/RELIABILITY.md's table differs from the tested rows: run "
        "PYTHONPATH=Testing/Python python3 Testing/Python/reliability/test_table.py --write")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        text = DOC.read_text()
        DOC.write_text(text.replace(_doc_table(text), render_table()))
        print(f"wrote the table of {len(FAULTS)} rows into {DOC}")
    else:
        print(render_table())
