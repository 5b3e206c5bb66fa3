"""Paired comparisons with intervals over training seeds and test windows (numpy / scipy only).

Every claim "variant A beats variant B" is a statement about a paired difference: the same
(dataset, backbone), the same training seed (the paired design gives A and B the same initial
weights and the same original windows) and the same test window. The test losses of a run
(:func:`nuwa.evaluate.losses_dataset`: ``mse(window, lead)``, ``mae(window, lead)``) give, for
each paired seed s and test window w (in time order), the difference

    d[s, w] = loss_A[s, w] - loss_B[s, w]        (loss averaged over the leads, or at one lead)

and the claim is about the mean of ``d`` over seeds and windows: negative means A has the lower
loss.

The interval (:func:`paired_interval`)
--------------------------------------
Two sources of chance stand behind ``d``: which training seeds were run, and which test windows
the test split happened to hold. The bootstrap resamples both at once, independently (the
two-way or "pigeonhole" bootstrap of a seeds x windows array, Owen 2007; McCullagh 2000):

* seeds: ``S`` seeds drawn with replacement from the ``S`` paired seeds;
* windows: a **circular block bootstrap** (Politis & Romano 1992), the circular form of Künsch's
  (1989) moving block bootstrap: ``ceil(W / b)`` blocks of ``b`` consecutive windows, each
  starting at a uniformly drawn window and wrapping around the end of the split, concatenated
  and cut to ``W`` windows. Test windows overlap in time (a window shares frames with the next
  ``ceil((input + output frames) / stride) - 1`` windows) and weather persists, so neighbouring
  windows' differences are correlated; resampling single windows would treat them as
  independent and give too narrow an interval. Blocks of ``b`` windows keep that dependence
  within a block. The circular form gives every window the same chance to be drawn, so the
  resampled mean is unbiased for the sample mean (the moving block bootstrap under-weights the
  ends of the split).

The same window draw applies to every resampled seed (windows are shared across seeds: a hard
window is hard for every seed). Each resample's statistic is the mean of the resampled array;
the interval is the percentile interval (the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
quantiles of ``resamples`` resampled means). BCa is not used: its acceleration comes from a
jackknife, which has no standard form for a two-way, block-resampled statistic; for a mean the
percentile interval is first-order correct. With one seed the interval covers the test windows'
sampling alone (not the seed-to-seed spread), and with few seeds the seed resampling understates
their spread by the factor (S - 1) / S of the variance: the report says how many seeds stand
behind each interval.

References: H. R. Künsch (1989), The jackknife and the bootstrap for general stationary
observations, Ann. Statist. 17(3), 1217-1241. D. N. Politis and J. P. Romano (1992), A circular
block-resampling procedure for stationary data, in Exploring the Limits of Bootstrap, Wiley,
263-270. A. B. Owen (2007), The pigeonhole bootstrap, Ann. Appl. Stat. 1(2), 386-411.

The draws come from ``numpy.random.default_rng(seed)`` in a fixed order: the same inputs and
``seed`` give the same interval, on any machine.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

__all__ = [
    "VERDICTS",
    "compare_runs",
    "default_block",
    "extreme_windows",
    "holm",
    "lead_time_table",
    "paired_interval",
    "sign_test",
    "skill",
    "verdict",
]

#: What :func:`verdict` says of a loss difference A - B (and, with too few units behind it, ``TOO_FEW``).
VERDICTS = ("better", "worse", "no detectable difference", "too few windows and seeds to tell")

# resamples drawn and evaluated at once (bounds memory at ~ _CHUNK x windows x 8 bytes, twice);
# fixed, so that the draws' order, and the interval, never depend on the size of the data
_CHUNK = 64


def default_block(input_frames: int, output_frames: int, stride: int) -> int:
    """Block length, in windows, for :func:`paired_interval`: the windows that share a frame with
    a window's first frame lie within ``ceil((input_frames + output_frames) / stride)`` consecutive
    windows, so that many form one block (at least 1)."""
    for name, value in (("input_frames", input_frames), ("output_frames", output_frames), ("stride", stride)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if stride == 0:
        raise ValueError("stride must be a positive integer, got 0")
    return max(1, -(-(int(input_frames) + int(output_frames)) // int(stride)))


def _circular_blocks(rng: np.random.Generator, windows: int, block: int, count: int) -> np.ndarray:
    """``count`` circular-block-bootstrap index sets of ``windows`` windows: (count, windows) int64."""
    blocks = -(-windows // block)
    starts = rng.integers(0, windows, size=(count, blocks))
    index = (starts[:, :, None] + np.arange(block)[None, None, :]) % windows
    return index.reshape(count, blocks * block)[:, :windows]


def _check_confidence(confidence: float) -> float:
    value = float(confidence)
    if not 0.0 < value < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return value


def paired_interval(diff: Any, block: int, confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Mean of the paired differences ``diff`` (seeds, windows) and its bootstrap interval.

    ``diff[s, w]``: variant A's loss minus variant B's for seed ``s`` and test window ``w``
    (windows in time order; a 1-D array is one seed). Seeds are resampled with replacement and
    windows in circular blocks of ``block`` consecutive windows (see the module docstring);
    the interval is the percentile interval of the resampled means. Returns
    ``(mean, low, high)`` as floats; deterministic for a given ``seed``.
    """
    values = np.asarray(diff, dtype=np.float64)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"diff must be a non-empty (seeds, windows) array, got shape {np.shape(diff)}")
    if not np.isfinite(values).all():
        raise ValueError(f"diff has {int(np.count_nonzero(~np.isfinite(values)))} non-finite value(s)")
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer (windows), got {block!r}")
    if isinstance(resamples, (bool, np.bool_)) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    level = _check_confidence(confidence)
    seeds, windows = values.shape
    block = min(int(block), windows)
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples), dtype=np.float64)
    for first in range(0, int(resamples), _CHUNK):
        count = min(_CHUNK, int(resamples) - first)
        drawn = rng.integers(0, seeds, size=(count, seeds))
        # how often each seed was drawn, / S: the resampled seeds' mean per window is weights @ values
        weights = (drawn[:, :, None] == np.arange(seeds)[None, None, :]).sum(axis=1) / seeds
        per_window = weights @ values  # (count, windows)
        index = _circular_blocks(rng, windows, block, count)
        means[first:first + count] = np.take_along_axis(per_window, index, axis=1).mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(values.mean()), float(low), float(high)


# Fewer independent units than this (seeds x whole blocks of windows) and an interval only
# reshuffles the same few numbers: it comes out narrow, or of zero width, and would claim a
# difference that nothing supports. Such a comparison gets no verdict.
MIN_UNITS = 5
TOO_FEW = VERDICTS[-1]


def independent_units(seeds: int, windows: int, block: int) -> int:
    """Seeds times the whole blocks of windows: what a paired interval can resample."""
    return int(seeds) * max(1, int(windows) // max(1, int(block)))


def verdict(low: float, high: float, units: int | None = None) -> str:
    """What an interval ``[low, high]`` of a loss difference A - B says (negative: A lower, better):
    ``"better"`` when it lies wholly below 0, ``"worse"`` wholly above, else
    ``"no detectable difference"``; :data:`TOO_FEW` when ``units`` (:func:`independent_units`
    behind the interval) is given and below :data:`MIN_UNITS`."""
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"not an interval: [{low}, {high}]")
    if units is not None and units < MIN_UNITS:
        return TOO_FEW
    if high < 0.0:
        return "better"
    if low > 0.0:
        return "worse"
    return "no detectable difference"


def _windows(losses: xr.Dataset, where: str) -> np.ndarray:
    if "source_index" not in losses.coords and "source_index" not in losses:
        raise ValueError(f"{where}: no source_index (not a test-losses dataset)")
    index = np.asarray(losses["source_index"].values, dtype=np.int64)
    if index.ndim != 1 or len(index) == 0:
        raise ValueError(f"{where}: source_index must be a non-empty 1-D array, got shape {index.shape}")
    if np.any(np.diff(index) <= 0):
        raise ValueError(f"{where}: test windows are not in time order (source_index must increase strictly)")
    return index


def _describe(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"{len(values)} ({shown}{', ...' if len(values) > limit else ''})"


def _per_window(losses: xr.Dataset, metric: str, lead: int | None, where: str) -> np.ndarray:
    if metric not in losses:
        raise ValueError(f"{where}: no variable {metric!r} (has {', '.join(map(str, losses.data_vars))})")
    values = losses[metric]
    if lead is not None:
        leads = np.asarray(losses["lead"].values)
        if lead not in leads:
            raise ValueError(f"{where}: no lead {lead} (leads {leads.min()}..{leads.max()})")
        return np.asarray(values.sel(lead=lead).values, dtype=np.float64)
    return np.asarray(values.mean("lead").values, dtype=np.float64)


def _block_from_attrs(losses: xr.Dataset, where: str) -> int:
    try:
        return default_block(int(losses.attrs["input_frames"]), int(losses.attrs["output_frames"]),
                             int(losses.attrs["window_stride"]))
    except KeyError as missing:
        raise ValueError(f"{where}: block not given and the losses have no {missing} attribute to derive it "
                         "from; pass block=default_block(input_frames, output_frames, stride)") from None


def compare_runs(losses_a: Mapping[int, xr.Dataset], losses_b: Mapping[int, xr.Dataset], metric: str = "mse",
                 block: int | None = None, select: Any = None, lead: int | None = None,
                 confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of variant A with variant B: the mean of loss_A - loss_B over the seeds
    both ran and their common test windows, with its interval (:func:`paired_interval`).

    ``losses_a``, ``losses_b``: test losses (:func:`nuwa.evaluate.losses_dataset`) by training
    seed. Pairs by seed (seeds present in only one are left out and listed under
    ``unpaired_seeds``) and by ``source_index``: every paired run must hold the same test windows
    in time order, else ``ValueError`` naming the seed and the windows that differ. The loss of a
    window is ``metric`` averaged over its leads, or at ``lead`` alone. ``block``: windows per
    block (default: :func:`default_block` from the losses' ``input_frames``, ``output_frames``
    and ``window_stride`` attributes). ``select``: a boolean mask over the windows (e.g.
    :func:`extreme_windows`): the comparison on those windows alone, blocks then running over
    the selected windows in time order.

    Returns a dict: metric, lead, seeds (the paired seeds), n_seeds, unpaired_seeds, n_windows
    (the windows compared), block, confidence, resamples, mean_a, mean_b, mean_difference
    (A - B), low, high, relative_difference (mean_difference / mean_b), verdict,
    seed_differences (the mean difference of each paired seed).
    """
    common = sorted(set(losses_a) & set(losses_b))
    if not common:
        raise ValueError(f"no seed in both runs: A has seeds {sorted(losses_a)}, B has seeds {sorted(losses_b)}")
    unpaired = sorted(set(losses_a) ^ set(losses_b))
    reference = _windows(losses_b[common[0]], f"B seed {common[0]}")
    rows_a, rows_b = [], []
    target_max = None
    for s in common:
        a, b = losses_a[s], losses_b[s]
        for name, losses in (("A", a), ("B", b)):
            where = f"{name} seed {s}"
            index = _windows(losses, where)
            if not np.array_equal(index, reference):
                only_here = np.setdiff1d(index, reference)
                only_there = np.setdiff1d(reference, index)
                raise ValueError(
                    f"{where}: its test windows differ from B seed {common[0]}'s ({len(index)} against "
                    f"{len(reference)} windows; only in {where}: {_describe(only_here)}; only in B seed "
                    f"{common[0]}: {_describe(only_there)}): paired comparisons need the same test windows")
            if "target_max" in losses:
                values = np.asarray(losses["target_max"].values, dtype=np.float64)
                if target_max is None:
                    target_max = values
                elif not np.allclose(values, target_max, rtol=1e-6, atol=0.0):
                    raise ValueError(f"{where}: the targets of its test windows differ from the other runs' "
                                     "(target_max): not the same test data")
        rows_a.append(_per_window(a, metric, lead, f"A seed {s}"))
        rows_b.append(_per_window(b, metric, lead, f"B seed {s}"))
    values_a, values_b = np.stack(rows_a), np.stack(rows_b)
    if select is not None:
        mask = np.asarray(select)
        if mask.dtype != np.bool_ or mask.shape != (len(reference),):
            raise ValueError(f"select must be a boolean mask over the {len(reference)} test windows, got dtype "
                             f"{mask.dtype} and shape {mask.shape}")
        if not mask.any():
            raise ValueError("select chooses no window")
        values_a, values_b = values_a[:, mask], values_b[:, mask]
    if block is None:
        block = _block_from_attrs(losses_a[common[0]], f"A seed {common[0]}")
    difference = values_a - values_b
    mean, low, high = paired_interval(difference, block, confidence=confidence, resamples=resamples, seed=seed)
    units = independent_units(len(common), difference.shape[1], block)
    mean_b = float(values_b.mean())
    return {
        "metric": metric, "lead": lead, "seeds": [int(s) for s in common], "n_seeds": len(common),
        "unpaired_seeds": unpaired, "n_windows": int(difference.shape[1]),
        "block": int(min(block, difference.shape[1])),
        "confidence": float(confidence), "resamples": int(resamples),
        "mean_a": float(values_a.mean()), "mean_b": mean_b,
        "mean_difference": mean, "low": low, "high": high,
        "relative_difference": mean / mean_b if mean_b != 0 else float("nan"),
        "units": units,
        "verdict": verdict(low, high, units),
        "seed_differences": [float(v) for v in difference.mean(axis=1)],
    }


def extreme_windows(losses: xr.Dataset, quantile: float = 0.95, by: str = "target_mean") -> np.ndarray:
    """Boolean mask over the test windows: those whose ``by`` (the target frames' mean intensity
    by default) is among the top ``1 - quantile`` share (``ceil((1 - quantile) * windows)`` of
    them, at least one; windows tied with the last one chosen are chosen too). The targets are
    the same for every run on one dataset, so any run's losses give the same mask. (The maximum
    ties wherever a field saturates: every moving-glyphs window peaks at 1, so ranking by it
    chose all of them.)"""
    q = float(quantile)
    if not 0.0 <= q < 1.0:
        raise ValueError(f"quantile must lie in [0, 1), got {quantile!r}")
    if by not in losses:
        raise ValueError(f"losses have no {by} (not a test-losses dataset)")
    peak = np.asarray(losses[by].values, dtype=np.float64)
    if peak.ndim != 1 or len(peak) == 0:
        raise ValueError(f"{by} must be a non-empty 1-D array, got shape {peak.shape}")
    # the tolerance keeps e.g. (1 - 0.95) * 100 = 5.000000000000004 at 5 windows
    count = min(len(peak), max(1, math.ceil((1.0 - q) * len(peak) - 1e-9)))
    threshold = np.sort(peak)[len(peak) - count]
    return peak >= threshold


def sign_test(better: int, worse: int) -> float:
    """Two-sided sign test (exact binomial, p = 1/2) of ``better`` against ``worse`` outcomes;
    ties are left out by the caller. 1.0 when there is no outcome."""
    for name, value in (("better", better), ("worse", worse)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    total = int(better) + int(worse)
    if total == 0:
        return 1.0
    return float(stats.binomtest(int(better), total, 0.5, alternative="two-sided").pvalue)


def holm(p_values: Mapping[Hashable, float]) -> dict:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input's key order: the i-th smallest
    of m p-values is multiplied by (m - i + 1), made monotone (a running maximum in sorted order)
    and capped at 1. Reject a hypothesis at level alpha when its adjusted p-value is <= alpha:
    the family-wise error rate is then at most alpha."""
    keys = list(p_values)
    values = np.array([float(p_values[key]) for key in keys], dtype=np.float64)
    if np.any(~np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {dict(p_values)!r}")
    m = len(values)
    order = np.argsort(values, kind="stable")
    scaled = values[order] * (m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return {key: float(value) for key, value in zip(keys, out)}


def skill(mse: Any, mse_reference: Any):
    """Skill score ``1 - mse / mse_reference`` (1: perfect, 0: as good as the reference, e.g.
    persistence; negative: worse). A float for scalars, an array otherwise."""
    value = np.asarray(mse, dtype=np.float64)
    reference = np.asarray(mse_reference, dtype=np.float64)
    if np.any(~(reference > 0)):
        raise ValueError(f"mse_reference must be positive, got {mse_reference!r}")
    result = 1.0 - value / reference
    return float(result) if np.ndim(result) == 0 else result


def lead_time_table(losses_by_run: Mapping[Hashable, xr.Dataset]) -> pd.DataFrame:
    """One row per (run key, lead): ``key``, ``lead``, and ``mse``, ``mae`` averaged over the
    test windows (keys in the mapping's order, leads ascending); where a run's losses hold them
    (thresholded fields), ``csi_{threshold}`` and ``fss_{threshold}_{scale}`` pooled over its test
    windows (columns named as in metrics.json; empty for runs without them)."""
    from nuwa.metrics import fss_key, threshold_key

    rows, columns = [], ["key", "lead", "mse", "mae"]
    for key, losses in losses_by_run.items():
        for name in ("mse", "mae"):
            if name not in losses:
                raise ValueError(f"{key!r}: no variable {name!r} (not a test-losses dataset)")
        mse = losses["mse"].mean("window")
        mae = losses["mae"].mean("window")
        scores = {}
        if "csi" in losses:
            for thr in losses["threshold"].values:
                scores[threshold_key("csi", float(thr))] = losses["csi"].sel(threshold=thr)
                if "fss" in losses:
                    for scale in losses["scale"].values:
                        scores[fss_key(float(thr), int(scale))] = losses["fss"].sel(threshold=thr, scale=scale)
        columns += [name for name in scores if name not in columns]
        for lead in np.asarray(losses["lead"].values):
            rows.append({"key": key, "lead": int(lead), "mse": float(mse.sel(lead=lead)),
                         "mae": float(mae.sel(lead=lead)),
                         **{name: float(value.sel(lead=lead)) for name, value in scores.items()}})
    return pd.DataFrame(rows, columns=columns)
