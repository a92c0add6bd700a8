"""The one atomic writer: a file or folder appears whole or not at all, with the umask's permissions."""

from __future__ import annotations

import os
import stat

import pytest
from CollaGANImputeLib.atomic import atomic_path, remove_stale_temporaries, temporary_sibling, write_text_atomic


def test_text_lands_whole_with_umask_permissions(tmp_path):
    target = tmp_path / "deeper" / "report.md"
    previous = os.umask(0o022)
    try:
        write_text_atomic(target, "# Report\n")
    finally:
        os.umask(previous)
    assert target.read_text() == "# Report\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("previous\n")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a ta")
            raise RuntimeError("disk went away")
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_temporary_keeps_the_extension_writers_choose_the_format_by(tmp_path):
    with atomic_path(tmp_path / "a-t1c.nii.gz") as tmp:
        assert tmp.name.startswith(".a-t1c.") and tmp.name.endswith(".tmp.nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "figure", suffix=".png") as tmp:
        assert tmp.name.endswith(".tmp.png")
        tmp.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-t1c.nii.gz", "figure"]


def test_folder_appears_with_its_files_or_not_at_all(tmp_path):
    case = tmp_path / "P1"
    with pytest.raises(OSError):
        with atomic_path(case, directory=True) as tmp:
            (tmp / "P1-t1n.nii.gz").write_bytes(b"x")
            raise OSError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(case, directory=True) as tmp:
        (tmp / "P1-t1n.nii.gz").write_bytes(b"x")
    assert [p.name for p in case.iterdir()] == ["P1-t1n.nii.gz"]
    assert os.access(case, os.X_OK) and stat.S_IMODE(case.stat().st_mode) & 0o500 == 0o500


def test_stale_temporary_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path):
    target = tmp_path / "model.pt"
    live = temporary_sibling(target)  # this process: alive
    dead = tmp_path / live.name.replace(f"-{os.getpid()}.", "-999999999.")
    dead.write_bytes(b"left by a killed run")
    assert remove_stale_temporaries(target) == [dead]
    assert live.exists() and not dead.exists()
