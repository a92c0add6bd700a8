"""Model faults: broken outputs refused on the first batch, invalid cards and tampered files refused."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from CollaGANImputeLib import ModelCard, ModelError, impute, load_model, save_model
from CollaGANImputeLib.cli import EXIT_MODEL, main
from CollaGANImputeLib.contract import METADATA_FILE
from core_fixtures import CONTRASTS, NaNOutput, TinyGenerator, WrongShape, head_phantom, make_image


class Counting(torch.nn.Module):
    """Counts its calls (a buffer, so it survives scripting) and returns garbage: the refusal must come at once."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full_like(x[:, :1], float("inf"))


def _images():
    return {c: make_image(head_phantom(seed=i)) for i, c in enumerate(["t1n", "t2f"])}


def _case_folder(tmp_path: Path) -> Path:
    """The phantom inputs written as a BraTS-named case folder."""
    import SimpleITK as sitk

    case = tmp_path / "case"
    case.mkdir()
    for contrast, image in _images().items():
        sitk.WriteImage(image, str(case / f"case-{contrast}.nii.gz"))
    return case


def _save(tmp_path, module, name="m.pt", **card):
    path = tmp_path / name
    save_model(module, ModelCard(name="faulty", contrasts=CONTRASTS, in_plane_size=(64, 64), **card), path)
    return path


@pytest.mark.parametrize("module, message", [(NaNOutput(), "NaN or infinite"), (WrongShape(), "output of shape")],
                         ids=["nan", "shape"])
def test_broken_model_output_is_refused(tmp_path, module, message):
    model = load_model(_save(tmp_path, module))
    with pytest.raises(ModelError, match=message):
        impute(_images(), model, targets=["t1c"], device="cpu")


def test_broken_output_is_refused_on_the_first_batch(tmp_path):
    model = load_model(_save(tmp_path, Counting()))
    with pytest.raises(ModelError, match="NaN or infinite"):
        impute(_images(), model, targets=["t1c"], device="cpu", batch_size=2, precision="fp32")
    assert int(model.module.calls.item()) <= 2  # the first batch of 2 slices (the CPU runs it slice by slice)


def test_wrong_channel_count_is_a_model_error(tmp_path, capsys):
    path = tmp_path / "m.pt"
    # A generator for four contrasts (8 input channels) under a card naming three.
    save_model(TinyGenerator(n_contrasts=4), ModelCard(name="mismatch", contrasts=CONTRASTS, in_plane_size=(64, 64)),
               path)
    with pytest.raises(ModelError, match="does not match its card"):
        impute(_images(), load_model(path), targets=["t1c"], device="cpu")
    case = _case_folder(tmp_path)
    assert main(["impute", str(case), "--model", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) \
        == EXIT_MODEL
    assert "does not match its card" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _rewrite_card(source, target, edit):
    """A copy of a model file with its embedded card replaced (the archive rewritten, CRCs valid)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith(f"extra/{METADATA_FILE}"):
                data = edit(data)
            zout.writestr(item, data)
    return target


def test_non_utf8_card_is_a_model_error(tmp_path):
    path = _rewrite_card(_save(tmp_path, TinyGenerator()), tmp_path / "latin1.pt",
                         lambda data: data.replace(b'"faulty"', '"f\u00e9ulty"'.encode("latin-1")))
    with pytest.raises(ModelError, match="not UTF-8"):
        load_model(path)
    assert main(["info", str(path)]) == EXIT_MODEL


@pytest.mark.parametrize("field, value, message", [
    ("in_plane_size", [-256, 256], "positive"), ("in_plane_size", 256, "two integers"),
    ("contrasts", "t1n", "list of names"), ("pixel_spacing", [0, 1], "positive"), ("metrics", [], "JSON object")])
def test_invalid_card_values_are_model_errors(tmp_path, field, value, message):
    def edit(data):
        card = json.loads(data)
        card[field] = value
        return json.dumps(card).encode()

    path = _rewrite_card(_save(tmp_path, TinyGenerator()), tmp_path / "bad.pt", edit)
    with pytest.raises(ModelError, match=message):
        load_model(path)
    assert main(["info", str(path)]) == EXIT_MODEL


def _first_weight_member(path):
    with zipfile.ZipFile(path) as archive:
        return next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 16)


def test_flipped_weight_byte_is_refused(tmp_path, capsys):
    path = _save(tmp_path, TinyGenerator())
    member = _first_weight_member(path)
    data = bytearray(path.read_bytes())
    offset = member.header_offset  # the local header's own name and extra lengths (torch pads the extra field)
    start = offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + int.from_bytes(
        data[offset + 28:offset + 30], "little")
    data[start + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))  # torch alone loads it without a word
    with pytest.raises(ModelError, match="CRC"):
        load_model(path)
    assert main(["info", str(path)]) == EXIT_MODEL
    assert "damaged" in capsys.readouterr().err


def test_changed_weights_with_valid_crcs_fail_the_weights_hash(tmp_path):
    path = _save(tmp_path, TinyGenerator())
    member = _first_weight_member(path).filename
    target = tmp_path / "changed.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == member:
                data = bytes([data[0] ^ 0x01]) + data[1:]
            zout.writestr(item, data)
    model = load_model(target)  # the card and CRCs are sound: the weights are checked when torch loads them
    assert model.has_module
    with pytest.raises(ModelError, match="weights do not match the hash its card was saved with"):
        impute(_images(), model, targets=["t1c"], device="cpu", runtime="torch")
    with pytest.raises(ModelError, match="weights do not match"):
        model.module  # noqa: B018  (asked again: refused again, never handed out)
    case = _case_folder(tmp_path)
    assert main(["impute", str(case), "--model", str(target), "--out", str(tmp_path / "out"), "--device", "cpu"]) \
        == EXIT_MODEL
    assert not (tmp_path / "out").exists()


def test_model_folder_is_not_reported_as_missing(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    _save(folder, TinyGenerator(), name="inside.pt")
    with pytest.raises(ModelError, match="is a folder.*inside.pt"):
        load_model(folder)
    assert main(["info", str(folder)]) == EXIT_MODEL
    assert "not found" not in capsys.readouterr().err
