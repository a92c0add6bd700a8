"""The checkpoint rule on evaluate score files: NMSE tolerance, identity, and the per-target guard."""

from __future__ import annotations

import doctest
import json

import pytest

from training.collagan_train import choose, main


def _run(folder, nmse: dict, identity: dict) -> str:
    rows = [{"case": f"C{k}", "target": t, "inputs": "+".join(c for c in nmse if c != t), "n_inputs": 2,
             "nmse": nmse[t] * (1 + 0.1 * k),
             "identity_t": identity[t]} for t in nmse for k in (-1, 1)]  # two cases, mean = the given value
    folder.mkdir(parents=True)
    (folder / "scores.json").write_text(json.dumps({"cases": rows}))
    return str(folder)


def test_rule_and_guard_from_score_files(tmp_path, capsys):
    bundled = _run(tmp_path / "bundled", {"t1n": 0.05, "t1c": 0.09, "t2f": 0.10},
                   {"t1n": 0.06, "t1c": 0.0, "t2f": 0.07})
    # lower mean NMSE and higher I_T, but FLAIR 8 % worse: ruled out by the guard
    regress = _run(tmp_path / "regress", {"t1n": 0.045, "t1c": 0.085, "t2f": 0.108},
                   {"t1n": 0.06, "t1c": 0.0, "t2f": 0.10})
    # within 5 % of the lowest mean NMSE, higher mean I than the bundled model: chosen
    better = _run(tmp_path / "better", {"t1n": 0.05, "t1c": 0.09, "t2f": 0.102},
                  {"t1n": 0.07, "t1c": 0.01, "t2f": 0.08})
    main.main(["choose", "--bundled", f"v={bundled}", "--candidate", f"regress={regress}",
               "--candidate", f"better={better}"])
    out = capsys.readouterr().out
    assert out.strip().endswith("chosen: better")
    assert "t2f (+8.0%)" in out
    # without a bundled run: the highest I_T loses when its mean NMSE is more than 5 % above the lowest
    loose = _run(tmp_path / "loose", {"t1n": 0.06, "t1c": 0.11, "t2f": 0.12}, {"t1n": 0.2, "t1c": 0.2, "t2f": 0.2})
    main.main(["choose", "--candidate", f"better={better}", "--candidate", f"loose={loose}"])
    out = capsys.readouterr().out
    assert out.strip().endswith("chosen: better") and "out: mean NMSE" in out
    main.main(["choose", "--bundled", f"v={bundled}", "--candidate", f"regress={regress}"])
    assert capsys.readouterr().out.strip().endswith("chosen: v (keep the bundled model)")


def test_bad_run_names_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="NAME=FOLDER"):
        main.main(["choose", "--candidate", str(tmp_path)])
    with pytest.raises(SystemExit, match="scores.json"):
        main.main(["choose", "--candidate", f"a={tmp_path}"])


def test_docstring_examples():
    assert doctest.testmod(choose).failed == 0
