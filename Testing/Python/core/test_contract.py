"""The model contract: round trip, and every refusal with a message that says what to do."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import pytest
import torch
from CollaGANImputeLib import ModelCard, ModelError, load_model, read_card, save_model
from CollaGANImputeLib.contract import FORMAT_VERSION, METADATA_FILE, sha256_of
from core_fixtures import CONTRASTS, TinyGenerator


def test_round_trip_keeps_card_and_outputs(tmp_path):
    model = TinyGenerator().eval()
    card = ModelCard(name="rt", contrasts=CONTRASTS, metrics={"t1c": {"nmse": 0.1}}, licence="CC BY-NC-SA 4.0")
    digest = save_model(model, card, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", contrasts=["t1n", "t2f"], sha256=digest)
    assert loaded.card == dataclasses.replace(card, weights_sha256=loaded.card.weights_sha256)
    assert len(loaded.card.weights_sha256) == 64 and card.weights_sha256 == ""  # the caller's card untouched
    assert loaded.sha256 == digest == sha256_of(tmp_path / "m.pt")
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model(x), atol=1e-6)
    assert read_card(tmp_path / "m.pt").contrasts == CONTRASTS
    assert not list(tmp_path.glob(".*tmp")), "atomic save leaves no temporary file"


def test_refuses_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_refuses_non_torchscript_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a model")
    with pytest.raises(ModelError, match="not a TorchScript model file"):
        load_model(path)


def test_refuses_torchscript_without_metadata(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(TinyGenerator()), str(path))
    with pytest.raises(ModelError, match="not a CollaGAN model"):
        load_model(path)


def _rewrite_card(path, **changes):
    """Edit the embedded JSON in place, as a file from another tool or a newer release would have it."""
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    name = next(n for n in entries if n.endswith(f"extra/{METADATA_FILE}"))
    data = json.loads(entries[name])
    data.update(changes)
    entries[name] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for entry, content in entries.items():
            archive.writestr(entry, content)


def test_refuses_newer_format(tmp_path):
    path = tmp_path / "future.pt"
    save_model(TinyGenerator(), ModelCard(name="f", contrasts=CONTRASTS), path)
    _rewrite_card(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelError, match="newer than this CollaGANImpute reads.*Upgrade"):
        load_model(path)


def test_refuses_foreign_format(tmp_path):
    path = tmp_path / "foreign.pt"
    save_model(TinyGenerator(), ModelCard(name="f", contrasts=CONTRASTS), path)
    _rewrite_card(path, format="someone-else")
    with pytest.raises(ModelError, match="not a CollaGANImpute model"):
        load_model(path)


def test_refuses_contrast_mismatch(tiny_model_path):
    with pytest.raises(ModelError, match=r"\['t2w'\] are not among them"):
        load_model(tiny_model_path, contrasts=["t1n", "t2w"])


def test_refuses_checksum_mismatch(tiny_model_path):
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(tiny_model_path, sha256="0" * 64)


def test_card_needs_two_distinct_contrasts():
    with pytest.raises(ModelError, match="two distinct"):
        ModelCard(name="x", contrasts=["t1n", "t1n"])


def test_card_outside_head_is_checked():
    assert ModelCard(name="x", contrasts=["t1n", "t2f"]).outside_head == "model"
    with pytest.raises(ModelError, match="outside_head"):
        ModelCard(name="x", contrasts=["t1n", "t2f"], outside_head="blank")


def test_a_copy_with_another_card_keeps_the_weights_and_its_onnx_export(tmp_path):
    """The card of an exported model (and of its ONNX export beside it) takes other metrics without exporting the
    weights again: the copy loads with its weights' hash checked and gives the same outputs from both files."""
    onnx = pytest.importorskip("onnx")
    from CollaGANImputeLib.contract import copy_with_card, onnx_path_for, save_onnx

    torch.manual_seed(0)
    model = TinyGenerator().eval()
    source = tmp_path / "draft" / "network.pt"
    source.parent.mkdir()
    save_model(model, ModelCard(name="draft", contrasts=CONTRASTS, metrics={}), source)
    save_onnx(model, read_card(source), onnx_path_for(source), torch.rand(2, 6, 32, 32))
    before = {p.name: p.read_bytes() for p in source.parent.iterdir()}
    card = dataclasses.replace(read_card(source), metrics={"t1c": {"nmse": 0.1}})
    out = copy_with_card(source, tmp_path / "model.pt", card)
    copied = load_model(out)
    assert copied.card == card and copied.onnx == tmp_path / "model.onnx"  # the ONNX card checked against it
    assert copied.card.weights_sha256 == read_card(source).weights_sha256
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        assert torch.equal(copied.module(x), load_model(source).module(x))  # the hash was checked on this load
    graphs = [onnx.load(str(p)) for p in (onnx_path_for(source), copied.onnx)]
    for graph in graphs:
        del graph.metadata_props[:]
    assert graphs[0].SerializeToString() == graphs[1].SerializeToString()
    assert {p.name: p.read_bytes() for p in source.parent.iterdir()} == before  # the source is only read
    copy_with_card(source, source, card)  # in place
    assert load_model(source).card == card and read_card(onnx_path_for(source)) == card
    onnx_path_for(source).unlink()  # without an ONNX export, none stays beside the copy
    copy_with_card(source, out, card)
    assert load_model(out).onnx is None and not onnx_path_for(out).exists()
