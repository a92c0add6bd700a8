"""The research studies read their data from the command line or the environment, never from a place outside the
repository, and say what to pass when nothing is given."""

from __future__ import annotations

import pytest

from research import DEFAULT_SPLIT, LGG_ENV, REPO, lgg_folder
from research import validate_uncertainty as study


def test_without_data_the_study_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.delenv(LGG_ENV, raising=False)
    with pytest.raises(SystemExit, match=rf"Give --lgg PATH .*or set \${LGG_ENV}"):
        study.main(["--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_lgg_folder_comes_from_the_environment(monkeypatch, tmp_path):
    (tmp_path / "complete" / "TCGA-XX-0001").mkdir(parents=True)
    monkeypatch.setenv(LGG_ENV, str(tmp_path))
    assert lgg_folder(None) == tmp_path / "complete"
    assert lgg_folder(str(tmp_path / "complete")) == tmp_path / "complete"
    with pytest.raises(SystemExit, match="is not a folder"):
        lgg_folder(str(tmp_path / "absent"))


def test_defaults_stay_inside_the_repository():
    assert DEFAULT_SPLIT.is_file() and REPO in DEFAULT_SPLIT.parents
    for path in (REPO / "research").glob("*.py"):  # no default that climbs out of the checkout
        text = path.read_text()
        assert "REPO.parent" not in text and "shared/data" not in text, path.name
