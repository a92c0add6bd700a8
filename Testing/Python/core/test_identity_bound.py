"""The bound in research/identity_counterfactual.py: a conditional mean has r(pred, input) = ρ / R, so its
contrast identity I is positive exactly where R² > ρ; plot_identity_bound reads the table it prints; and
identity_residual splits a residual into its smooth part and the rest."""

from __future__ import annotations

import numpy as np
import pytest
from CollaGANImputeLib.fidelity import contrast_identity

from research.identity_counterfactual import regression_bound
from research.identity_residual import residual_shares
from research.plot_identity_bound import read_bound_table


@pytest.mark.parametrize("noise, identity_positive", [(0.05, True), (0.6, False)])
def test_a_conditional_mean_has_positive_identity_only_where_r2_exceeds_rho(noise, identity_positive):
    rng = np.random.default_rng(0)
    t1 = rng.uniform(0, 1, (4, 48, 48))
    predictable = t1 + 0.4 * np.sin(9 * t1)  # not linear in the input, so it is not the input itself
    real = predictable + noise * rng.standard_normal(t1.shape)
    mask = np.ones(t1.shape, bool)
    r2, rho, measured, expected = regression_bound(predictable, real, [t1], mask)
    identity = contrast_identity(predictable, real, [t1], mask)
    assert measured == pytest.approx(expected, abs=0.02)
    assert (r2 > rho) == identity_positive and (identity > 0) == identity_positive


def test_the_plot_reads_the_printed_table_and_refuses_a_file_without_it(tmp_path):
    table = tmp_path / "cf.txt"
    table.write_text("t2f from t1n+t1c; columns: ...\nTCGA-A  -0.1  +0.2\nmean  -0.1\n\n"
                     "I > 0 needs R² > ρ from a regression; columns: ...\n"
                     "TCGA-A  0.514  0.727  0.823  1.015  -0.106\nTCGA-B  0.625  0.689  0.740  0.871  +0.050\n"
                     "cases R² > ρ: 0 of 2\n")
    assert read_bound_table(table) == [("TCGA-A", 0.514, 0.727, 0.823, 1.015, -0.106),
                                       ("TCGA-B", 0.625, 0.689, 0.740, 0.871, 0.050)]
    (tmp_path / "other.txt").write_text("no table here\n")
    with pytest.raises(SystemExit, match="no R² / ρ table"):
        read_bound_table(tmp_path / "other.txt")


def test_the_residual_is_split_into_slow_intensity_changes_and_the_rest():
    rng = np.random.default_rng(1)
    mask = np.zeros((6, 64, 64), bool)
    mask[:, 8:56, 8:56] = True
    real = rng.uniform(0, 1, mask.shape)
    per_slice = np.linspace(-0.3, 0.3, 6)[:, None, None]
    smooth_share, slice_share, smooth = residual_shares(real - per_slice, real, mask, sigma=8)
    assert smooth_share == pytest.approx(1, abs=1e-6) and slice_share == pytest.approx(1, abs=1e-6)
    assert np.allclose(smooth[mask], np.broadcast_to(per_slice, mask.shape)[mask])
    smooth_share, slice_share, _ = residual_shares(real - 0.3 * rng.standard_normal(mask.shape), real, mask, 8)
    assert smooth_share < 0.02 and slice_share < 0.02
