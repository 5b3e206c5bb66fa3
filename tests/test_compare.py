"""Paired comparisons (nuwa.compare): intervals over seeds and blocks of test windows, verdicts,
the sign test, Holm's correction, skill and the lead-time table, on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from nuwa import compare


def losses(mse: np.ndarray, starts: np.ndarray | None = None, target_max: np.ndarray | None = None,
           **attrs) -> xr.Dataset:
    """A test-losses dataset (as nuwa.evaluate makes it) from an mse array (windows, leads)."""
    mse = np.asarray(mse, dtype=np.float64)
    windows, leads = mse.shape
    starts = np.arange(0, 2 * windows, 2) if starts is None else np.asarray(starts)
    target_max = np.linspace(1.0, 2.0, windows) if target_max is None else np.asarray(target_max, dtype=float)
    return xr.Dataset({"mse": (("window", "lead"), mse), "mae": (("window", "lead"), np.sqrt(mse)),
                       "target_mean": ("window", target_max / 2), "target_max": ("window", target_max)},
                      coords={"source_index": ("window", starts.astype(np.int64)),
                              "lead": ("lead", np.arange(1, leads + 1))},
                      attrs={"units": "K", **attrs})


def ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float) -> np.ndarray:
    """Rows of a stationary AR(1) series with unit variance."""
    out = np.empty(shape)
    out[:, 0] = rng.standard_normal(shape[0])
    for t in range(1, shape[1]):
        out[:, t] = phi * out[:, t - 1] + math.sqrt(1 - phi ** 2) * rng.standard_normal(shape[0])
    return out


# ------------------------------------------------------------------------------------------- #
# the interval and the verdict
# ------------------------------------------------------------------------------------------- #
def test_a_clear_win_a_clear_loss_and_a_tie():
    rng = np.random.default_rng(1)
    noise = 0.01 * rng.standard_normal((3, 200))
    mean, low, high = compare.paired_interval(-0.1 + noise, block=4)
    assert mean == pytest.approx(-0.1 + noise.mean())
    assert low < mean < high < 0 and compare.verdict(low, high) == "better"
    mean, low, high = compare.paired_interval(0.1 + noise, block=4)
    assert 0 < low < mean < high and compare.verdict(low, high) == "worse"
    tie = noise - noise.mean()  # zero-mean noise: the observed mean is 0
    mean, low, high = compare.paired_interval(tie, block=4)
    assert mean == pytest.approx(0.0, abs=1e-15)
    assert low < 0 < high and compare.verdict(low, high) == "no detectable difference"


def test_verdict_is_read_off_the_interval():
    assert compare.verdict(-2.0, -1.0) == "better"
    assert compare.verdict(1.0, 2.0) == "worse"
    assert compare.verdict(-1.0, 1.0) == "no detectable difference"
    assert compare.verdict(0.0, 1.0) == "no detectable difference"  # 0 inside: no claim
    assert compare.verdict(-1.0, 0.0) == "no detectable difference"
    with pytest.raises(ValueError, match="not an interval"):
        compare.verdict(1.0, -1.0)


def test_the_interval_of_independent_windows_matches_normal_theory():
    # one seed, independent windows, block 1: the percentile interval is mean +- 1.96 sd / sqrt(n)
    rng = np.random.default_rng(2)
    diff = rng.standard_normal(400)
    mean, low, high = compare.paired_interval(diff, block=1, resamples=4000)
    expected = 2 * 1.959964 * diff.std() / math.sqrt(len(diff))
    assert high - low == pytest.approx(expected, rel=0.1)
    assert (low + high) / 2 == pytest.approx(mean, abs=0.1 * expected)


def test_the_interval_is_deterministic_for_a_seed_and_moves_with_it():
    diff = np.random.default_rng(3).standard_normal((3, 50))
    first = compare.paired_interval(diff, block=5, seed=7)
    assert compare.paired_interval(diff, block=5, seed=7) == first
    assert compare.paired_interval(diff, block=5, seed=8) != first
    assert compare.paired_interval(diff, block=5, seed=7, confidence=0.5)[1] > first[1]  # narrower


def test_blocks_widen_the_interval_of_autocorrelated_differences():
    # overlapping windows: neighbours' differences are strongly correlated (AR(1), phi = 0.95)
    diff = ar1(np.random.default_rng(4), (2, 1000), phi=0.95)
    _, low1, high1 = compare.paired_interval(diff, block=1)
    _, low50, high50 = compare.paired_interval(diff, block=50)
    # independent-window resampling ignores the dependence: ~sqrt((1 + phi) / (1 - phi)) = 6x too narrow
    assert high50 - low50 > 3 * (high1 - low1)


def test_the_pairing_narrows_the_interval():
    # windows differ a lot in difficulty; A is B minus 0.1 plus a little noise, window by window
    rng = np.random.default_rng(5)
    hardness = rng.uniform(1.0, 10.0, size=(1, 300)) * np.ones((2, 1))
    b = {s: losses(np.repeat(hardness[s][:, None], 2, axis=1)) for s in (0, 1)}
    a = {s: losses(b[s]["mse"].values - 0.1 + 0.01 * rng.standard_normal((300, 2))) for s in (0, 1)}
    paired = compare.compare_runs(a, b, block=3)
    assert paired["verdict"] == "better" and paired["mean_difference"] == pytest.approx(-0.1, abs=0.01)
    # the same numbers with B's windows permuted (source_index kept): the pairing is broken
    order = rng.permutation(300)
    shuffled = {s: b[s].copy(data={"mse": b[s]["mse"].values[order], "mae": b[s]["mae"].values[order],
                                   "target_mean": b[s]["target_mean"].values,
                                   "target_max": b[s]["target_max"].values}) for s in (0, 1)}
    broken = compare.compare_runs(a, shuffled, block=3)
    assert broken["mean_difference"] == pytest.approx(paired["mean_difference"])  # the same means ...
    assert broken["high"] - broken["low"] > 10 * (paired["high"] - paired["low"])  # ... far less certain
    assert broken["verdict"] == "no detectable difference"


def test_seeds_are_resampled_too():
    # every window agrees within a seed, but the seeds disagree: the interval must show it
    diff = np.array([[-1.0] * 50, [0.5] * 50, [0.4] * 50])
    _, low, high = compare.paired_interval(diff, block=5)
    assert low <= -1.0 + 1e-12 and high >= 0.4 - 1e-12  # resampled seeds range from all -1 to all 0.5
    _, low_one, high_one = compare.paired_interval(diff[:1], block=5)
    assert low_one == high_one == -1.0  # one seed, constant windows: no spread to show


def test_paired_interval_refuses_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        compare.paired_interval([[1.0, float("nan")]], block=1)
    with pytest.raises(ValueError, match="block"):
        compare.paired_interval([[1.0, 2.0]], block=0)
    with pytest.raises(ValueError, match="non-empty"):
        compare.paired_interval(np.zeros((2, 0)), block=1)
    with pytest.raises(ValueError, match="confidence"):
        compare.paired_interval([[1.0, 2.0]], block=1, confidence=1.0)


def test_default_block_holds_the_windows_that_share_frames():
    assert compare.default_block(10, 10, 1) == 20
    assert compare.default_block(10, 10, 5) == 4
    assert compare.default_block(4, 4, 3) == 3  # ceil(8 / 3)
    assert compare.default_block(4, 4, 8) == 1
    assert compare.default_block(4, 4, 100) == 1  # disjoint windows: blocks of one
    with pytest.raises(ValueError, match="stride"):
        compare.default_block(4, 4, 0)


# ------------------------------------------------------------------------------------------- #
# comparing runs
# ------------------------------------------------------------------------------------------- #
def test_compare_runs_pairs_by_seed_and_reports_everything():
    a = {0: losses([[1.0, 3.0], [2.0, 2.0]]), 1: losses([[1.0, 1.0], [1.0, 1.0]]),
         2: losses([[9.0, 9.0], [9.0, 9.0]])}
    b = {0: losses([[2.0, 4.0], [3.0, 3.0]]), 1: losses([[2.0, 2.0], [2.0, 2.0]]),
         5: losses([[0.0, 0.0], [0.0, 0.0]])}
    result = compare.compare_runs(a, b, block=1)
    assert result["seeds"] == [0, 1] and result["n_seeds"] == 2 and result["unpaired_seeds"] == [2, 5]
    assert result["n_windows"] == 2 and result["block"] == 1
    assert result["mean_a"] == pytest.approx(1.5) and result["mean_b"] == pytest.approx(2.5)
    assert result["mean_difference"] == pytest.approx(-1.0)
    assert result["low"] == pytest.approx(-1.0) and result["high"] == pytest.approx(-1.0)  # every pair: -1
    assert result["relative_difference"] == pytest.approx(-0.4)
    # every pair says -1, but 2 seeds x 2 windows are 4 units: too few for any interval to mean something
    assert result["verdict"] == compare.TOO_FEW and result["units"] == 4
    assert result["seed_differences"] == [-1.0, -1.0]
    # one lead alone, and mae
    assert compare.compare_runs(a, b, block=1, lead=2)["mean_a"] == pytest.approx(1.75)
    assert compare.compare_runs(a, b, block=1, metric="mae")["mean_difference"] < 0


def test_compare_runs_block_comes_from_the_losses_attributes():
    a = {0: losses(np.ones((30, 2)), input_frames=4, output_frames=4, window_stride=2)}
    b = {0: losses(np.full((30, 2), 2.0), input_frames=4, output_frames=4, window_stride=2)}
    assert compare.compare_runs(a, b)["block"] == 4
    del a[0].attrs["window_stride"]
    with pytest.raises(ValueError, match="window_stride"):
        compare.compare_runs(a, b)


def test_compare_runs_refuses_different_windows():
    a = {0: losses(np.ones((4, 2)), starts=np.array([0, 2, 4, 6])),
         3: losses(np.ones((4, 2)), starts=np.array([0, 2, 4, 8]))}
    b = {0: losses(np.ones((4, 2)), starts=np.array([0, 2, 4, 6])),
         3: losses(np.ones((4, 2)), starts=np.array([0, 2, 4, 6]))}
    with pytest.raises(ValueError, match=r"A seed 3: its test windows differ .*only in A seed 3: 1 \(8\).*"
                                         r"only in B seed 0: 1 \(6\)"):
        compare.compare_runs(a, b, block=1)
    with pytest.raises(ValueError, match="no seed in both runs"):
        compare.compare_runs({0: a[0]}, {1: b[0]}, block=1)
    with pytest.raises(ValueError, match="time order"):
        compare.compare_runs({0: losses(np.ones((3, 1)), starts=np.array([4, 2, 6]))},
                             {0: losses(np.ones((3, 1)), starts=np.array([4, 2, 6]))}, block=1)
    different_data = {0: losses(np.ones((4, 2)), starts=np.array([0, 2, 4, 6]), target_max=np.arange(4.0) + 7)}
    with pytest.raises(ValueError, match="not the same test data"):
        compare.compare_runs({0: a[0]}, different_data, block=1)


def test_extreme_windows_select_the_top_share():
    peak = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0] * 10)  # 100 windows
    data = losses(np.ones((100, 1)), target_max=peak)
    mask = compare.extreme_windows(data, 0.95)
    assert mask.dtype == bool and mask.sum() == 10  # the 10 windows tied at 9.0 (5 asked for)
    assert np.all(peak[mask] == 9.0)
    distinct = losses(np.ones((100, 1)), target_max=np.arange(100.0))
    assert np.flatnonzero(compare.extreme_windows(distinct, 0.95)).tolist() == [95, 96, 97, 98, 99]
    assert compare.extreme_windows(distinct, 0.999).sum() == 1  # at least one window
    assert compare.extreme_windows(distinct, 0.0).all()
    # the comparison on the extreme windows alone: A is worse there, better elsewhere
    mse_b = np.ones((100, 1))
    mse_a = np.where(np.arange(100)[:, None] >= 95, 3.0, 0.5)
    runs_a, runs_b = {0: losses(mse_a, target_max=np.arange(100.0))}, {0: losses(mse_b, target_max=np.arange(100.0))}
    extreme = compare.compare_runs(runs_a, runs_b, block=1, select=compare.extreme_windows(runs_b[0]))
    assert extreme["n_windows"] == 5 and extreme["mean_difference"] == pytest.approx(2.0)
    assert extreme["verdict"] == "worse"
    assert compare.compare_runs(runs_a, runs_b, block=1)["verdict"] == "better"
    with pytest.raises(ValueError, match="boolean mask"):
        compare.compare_runs(runs_a, runs_b, block=1, select=np.ones(99, dtype=bool))


# ------------------------------------------------------------------------------------------- #
# tests across comparisons, skill, lead time
# ------------------------------------------------------------------------------------------- #
def test_sign_test_against_the_binomial_by_hand():
    assert compare.sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 2 ** 10)  # 0.021484375
    assert compare.sign_test(1, 9) == pytest.approx(2 * (1 + 10) / 2 ** 10)
    assert compare.sign_test(10, 0) == pytest.approx(2 / 2 ** 10)
    assert compare.sign_test(3, 3) == pytest.approx(1.0)
    assert compare.sign_test(5, 2) == pytest.approx(2 * (1 + 7 + 21) / 2 ** 7)  # 0.453125
    assert compare.sign_test(0, 0) == 1.0
    with pytest.raises(ValueError):
        compare.sign_test(-1, 2)


def test_holm_by_hand():
    adjusted = compare.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04; monotone: 0.03, 0.06, 0.06
    assert list(adjusted) == ["a", "b", "c"]
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert compare.holm({"x": 0.5, "y": 0.6}) == pytest.approx({"x": 1.0, "y": 1.0})  # capped at 1
    assert compare.holm({}) == {}
    with pytest.raises(ValueError):
        compare.holm({"a": 1.5})


def test_skill_against_a_reference():
    assert compare.skill(0.5, 2.0) == pytest.approx(0.75)
    assert compare.skill(2.0, 2.0) == 0.0
    assert compare.skill(4.0, 2.0) == pytest.approx(-1.0)
    np.testing.assert_allclose(compare.skill(np.array([1.0, 3.0]), 2.0), [0.5, -0.5])
    with pytest.raises(ValueError):
        compare.skill(1.0, 0.0)


def test_lead_time_table():
    table = compare.lead_time_table({("nuwa", 0): losses([[1.0, 4.0], [3.0, 16.0]]),
                                     ("ori", 0): losses([[4.0, 4.0], [4.0, 4.0]])})
    expected = pd.DataFrame({"key": [("nuwa", 0), ("nuwa", 0), ("ori", 0), ("ori", 0)], "lead": [1, 2, 1, 2],
                             "mse": [2.0, 10.0, 4.0, 4.0], "mae": [(1 + math.sqrt(3)) / 2, 3.0, 2.0, 2.0]})
    pd.testing.assert_frame_equal(table, expected)


def test_an_interval_of_too_few_units_gets_no_verdict_however_narrow():
    """Two windows in one block: every resample is the same mean, a zero-width interval below 0
    (seen on the radar's extreme windows): no verdict, not 'better'."""
    rng = np.random.default_rng(3)
    b = {0: losses(1.0 + 0.1 * rng.random((13, 2)))}
    a = {0: losses(b[0]["mse"].values - 0.5)}
    two = np.zeros(13, dtype=bool)
    two[[3, 4]] = True
    result = compare.compare_runs(a, b, block=12, select=two)
    assert result["low"] == result["high"] and result["verdict"] == compare.TOO_FEW
    assert compare.compare_runs(a, b, block=1)["verdict"] == "better"  # 13 independent windows
    assert compare.compare_runs(a, b, block=12)["verdict"] == compare.TOO_FEW  # 13 windows, one block


def test_the_verdict_itself_refuses_an_interval_of_too_few_units():
    assert compare.verdict(-2.0, -1.0) == "better"
    assert compare.verdict(-2.0, -1.0, units=compare.MIN_UNITS) == "better"
    assert compare.verdict(-2.0, -1.0, units=compare.MIN_UNITS - 1) == compare.TOO_FEW
    assert compare.TOO_FEW in compare.VERDICTS
